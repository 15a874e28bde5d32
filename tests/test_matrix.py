"""The method x architecture matrix: every cell trains, saves and reloads identically, or refuses in one line.

The README's matrix is rendered from this run and checked against it; regenerate it with
    PEFTBENCH_WRITE_MATRIX=1 .venv/bin/python -m pytest tests/test_matrix.py
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

import pytest
import torch

from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.methods import REGISTRY, get_method
from peftbench.methods.base import Context
from peftbench.runner import make_task, normalize
from peftbench.train.budget import Budget
from peftbench.train.loop import train
from test_image_classification import class_tree

ARCHS = {"BERT": "bert", "GPT-2": "gpt2", "T5": "t5", "BART": "bart", "ViT": "vit", "Llama": "llama"}
README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"
STEPS = 4


def cell(arch: str, model: str, method: str, text_data: Path, image_data: Path, out: Path) -> tuple[str, str]:
    """("ok", "") when the method trains, saves and reloads to identical outputs; ("refused", line) otherwise."""
    kind = "image_classification" if arch == "vit" else "classification"
    raw = {"model": {"name": model},
           "task": {"kind": kind, "data": {"source": str(image_data if arch == "vit" else text_data)}, "max_length": 128},
           "method": {"name": method}, "train": {"steps": STEPS, "batch_size": 8, "eval_batch_size": 16, "eval_every": STEPS}}
    try:
        cfg, m = normalize(parse_config(raw))
        task = make_task(cfg, m)
        task.load_data()
        torch.manual_seed(0)
        base, _ = task.load_model(cfg.model)
        ctx = Context(task.peft_task_type, model, STEPS, task.family, task.head_modules)
        m.check(ctx)
        m.prepare_task(task)
        tuned = m.apply(base, ctx)
        train(tuned, m, task, cfg.train, cfg.train.lr or 0.0, Budget("steps", STEPS if m.trains else 0), torch.device("cpu"), FlopMeter(), FlopMeter())
        m.save(tuned, out)
        torch.manual_seed(1)  # another random head: the saved weights must win
        fresh, _ = task.load_model(cfg.model)
        reloaded = get_method(method)(cfg.method.params).load(fresh, out)
    except UserError as e:
        return "refused", str(e).replace(model, arch)
    batch = next(task.train_batches(4, seed=0))
    tuned.eval(), reloaded.eval()
    with torch.no_grad():
        a, b = tuned(**batch).logits, reloaded(**batch).logits
    if not torch.allclose(a, b, rtol=0, atol=1e-5):
        return "mismatch", f"reloaded outputs differ by {float((a - b).abs().max()):.2e}"
    return "ok", ""


@pytest.fixture(scope="module")
def matrix(tiny_models, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[str, str]]:
    images = class_tree(tmp_path_factory.mktemp("matrix-images"), n=12)
    root = tmp_path_factory.mktemp("matrix")
    cells = {}
    for name, arch in ARCHS.items():
        model = tiny_models(arch)
        for method in REGISTRY:
            try:
                cells[method, name] = cell(arch, model, method, tiny_data, images, root / f"{arch}-{method}")
            except Exception as e:  # a crash is a bug: reported by test_no_cell_crashes
                cells[method, name] = ("crash", "".join(traceback.format_exception_only(e)).strip()[:300])
    return cells


def render(cells: dict[tuple[str, str], tuple[str, str]]) -> str:
    """Markdown: ✓ trains, saves, reloads identically; ✗n refuses, with note n's one-line reason."""
    notes: dict[str, int] = {}
    lines = ["| method | " + " | ".join(ARCHS) + " |", "|---|" + "---|" * len(ARCHS)]
    for method in REGISTRY:
        row = []
        for name in ARCHS:
            status, why = cells[method, name]
            if status == "ok":
                row.append("✓")
                continue
            reason = re.sub(r"'(BERT|GPT-2|T5|BART|ViT|Llama|bert|gpt2|t5|bart|vit|llama)'", "this model", why)
            row.append(f"✗{notes.setdefault(reason, len(notes) + 1)}")
        lines.append(f"| `{method}` | " + " | ".join(row) + " |")
    lines += ["", "✓ trains, saves and reloads with identical outputs; ✗n refuses with this line:", ""]
    lines += [f"{n}. {reason}" for reason, n in notes.items()]
    return "\n".join(lines)


def test_no_cell_crashes_or_mismatches(matrix) -> None:
    bad = {k: v for k, v in matrix.items() if v[0] in ("crash", "mismatch")}
    assert not bad, "\n".join(f"{m} on {a}: {s}: {w}" for (m, a), (s, w) in bad.items())


def test_refusals_are_one_line_and_the_expected_ones(matrix) -> None:
    for (method, arch), (status, why) in matrix.items():
        if status == "refused":
            assert "\n" not in why and len(why) < 400, (method, arch, why)
    expected = [("loha", "GPT-2"), ("lokr", "GPT-2"), ("prefix", "ViT"), ("prompt", "ViT"), ("p_tuning", "ViT"),
                ("bitfit", "T5"), ("head", "T5")]
    if not torch.cuda.is_available():
        expected += [("qlora", a) for a in ARCHS]
    for key in expected:
        assert matrix[key][0] == "refused", (key, matrix[key])
    works = [("lora", a) for a in ARCHS] + [("parallel_adapter", a) for a in ARCHS] + [("full", a) for a in ARCHS]
    for key in works:
        assert matrix[key][0] == "ok", (key, matrix[key])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the README's matrix is the CPU run (qlora refuses there)")
def test_readme_matrix_is_this_run(matrix) -> None:
    table = render(matrix)
    text = README.read_text()
    assert START in text and END in text, f"README lacks the {START} ... {END} markers"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    fresh = f"{head}{START}\n{table}\n{END}{tail}"
    if os.environ.get("PEFTBENCH_WRITE_MATRIX") == "1":
        README.write_text(fresh)
        return
    assert fresh == text, "README's method x architecture matrix is stale; regenerate: " + __doc__.split("\n")[-2].strip()
