"""Methods declare what they need as class attributes; no code outside methods/ checks a method's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import peftbench
from peftbench.cli import app
from peftbench.methods import REGISTRY

SRC = Path(peftbench.__file__).parent
FLOPS_REFUSAL = "adalora's rank schedule is set in optimizer steps; compare it with --budget steps"
RUN_REFUSAL = ("adalora's rank schedule is set in optimizer steps; give it a steps or epochs budget "
               "(--steps N), not a FLOPs or seconds one")


def _names_a_method(node: ast.AST) -> bool:
    """An expression that holds a method's name: `e.name`, `cfg.method.name`, `names`, `method`."""
    ids = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)] + [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)]
    return any("name" in i or "method" in i for i in ids)


def name_checks(source: str) -> list[int]:
    """Lines comparing a method name to a literal one (==, !=, in, not in; tuples and sets too)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        literals = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        if literals & set(REGISTRY) and any(_names_a_method(s) for s in sides):
            hits.append(node.lineno)
    return hits


def test_the_check_finds_name_checks() -> None:
    assert name_checks('if flops and e.name == "adalora": pass') == [1]
    assert name_checks('x = "lora" if "lora" in names else names[0]') == [1]
    assert name_checks('if cfg.method.name in ("base", "few_shot"): pass') == [1]
    assert name_checks('if self._mode == "head": pass') == []  # a mode, not a method


def test_no_module_outside_methods_checks_a_method_name() -> None:
    found = {str(p.relative_to(SRC)): name_checks(p.read_text()) for p in SRC.rglob("*.py") if "methods" not in p.parts}
    assert {p: lines for p, lines in found.items() if lines} == {}


def test_capabilities_are_class_attributes() -> None:
    assert REGISTRY["adalora"].needs_step_budget and not REGISTRY["lora"].needs_step_budget
    assert not REGISTRY["base"].trains and REGISTRY["lora"].can_merge and not REGISTRY["prompt"].can_merge
    assert set(REGISTRY["few_shot"].families) == {"decoder", "seq2seq"} and "vision" not in REGISTRY["prefix"].families
    res = CliRunner().invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    caps = {d["method"]: d["capabilities"] for d in json.loads(res.stdout)}
    assert caps["adalora"]["needs_step_budget"] and caps["qlora"]["needs_cuda"] and caps["head"]["needs_head"]


def test_adalora_refuses_a_flops_budget_in_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["compare", "--methods", "lora,adalora", "--steps", "4", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert [line for line in res.stderr.splitlines() if line.strip()] == [f"error: {FLOPS_REFUSAL}"]
    assert not (tmp_path / "r").exists()


def test_compare_reads_the_capability_not_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(REGISTRY["ia3"], "needs_step_budget", True)
    monkeypatch.setattr(REGISTRY["ia3"], "step_schedule", "scaling schedule")
    res = CliRunner().invoke(app, ["compare", "--methods", "ia3", "--steps", "4", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "ia3's scaling schedule is set in optimizer steps" in res.stderr, res.output
    res = CliRunner().invoke(app, ["compare", "--methods", "adalora", "--budget", "steps", "--flops", "1e9", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and FLOPS_REFUSAL in res.stderr, res.output  # a FLOPs budget given outright


def test_run_refuses_adalora_under_a_flops_budget(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", "--method", "adalora", "--model", tiny_model, "--data", str(tiny_data),
                                   "--flops", "1e9", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert [line for line in res.stderr.splitlines() if line.strip()] == [f"error: {RUN_REFUSAL}"]
