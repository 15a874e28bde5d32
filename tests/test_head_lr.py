"""train.head_lr / --head-lr (issue 16 item 3): the new modules, and only they, learn at their own rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import RunConfig, TrainSpec, parse_config
from peftbench.methods import get_method
from peftbench.runner import config_hash, normalize, prepare
from peftbench.store import Store
from peftbench.train import optim

pytestmark = pytest.mark.timeout(300)


def groups_of(cfg: RunConfig) -> tuple[list[dict], dict[int, str], list[str]]:
    """The optimizer's param groups for a normalized config, the names of their parameters, and the heads."""
    cfg, method = normalize(cfg)
    prep = prepare(cfg, method, samples=False)
    opt, _ = optim.build(prep.model, cfg.train, cfg.train.lr, 10, heads=prep.task.head_modules)
    names = {id(p): n for n, p in prep.model.named_parameters()}
    return opt.param_groups, names, prep.task.head_modules


@pytest.mark.parametrize("method", ["lora", "parallel_adapter", "ia3", "full"])
def test_head_lr_reaches_only_the_new_modules(tiny_config: dict, method: str) -> None:
    raw = {**tiny_config, "method": {"name": method}, "train": {**tiny_config["train"], "lr": 1e-3, "head_lr": 0.25}}
    groups, names, heads = groups_of(parse_config(raw))
    assert heads == ["classifier"]  # the tiny BERT was saved with a 2-label head: a 3-label one is new
    head_params = [names[id(p)] for g in groups if g["lr"] == 0.25 for p in g["params"]]
    body_params = [names[id(p)] for g in groups if g["lr"] == 1e-3 for p in g["params"]]
    assert {g["lr"] for g in groups} == {1e-3, 0.25}
    assert head_params and body_params
    assert all(".classifier." in f".{n}" for n in head_params)
    assert not any(".classifier." in f".{n}" for n in body_params)
    assert len(head_params) + len(body_params) == len(set(head_params) | set(body_params))  # each in one group
    # decay is kept apart as before: no weight decay on biases, in the head's groups too
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim < 2 for p in g["params"]))


def test_without_head_lr_the_groups_are_as_before(tiny_config: dict) -> None:
    groups, _, _ = groups_of(parse_config(tiny_config))
    assert len(groups) == 2 and {g["lr"] for g in groups} == {2e-3}


def test_head_lr_equal_to_lr_hashes_as_before(tiny_config: dict) -> None:
    plain = normalize(parse_config(tiny_config))[0]
    same = normalize(parse_config({**tiny_config, "train": {**tiny_config["train"], "head_lr": plain.train.lr}}))[0]
    other = normalize(parse_config({**tiny_config, "train": {**tiny_config["train"], "head_lr": 0.1}}))[0]
    assert "head_lr" not in plain.canonical()["train"]
    assert config_hash(same) == config_hash(plain)
    assert config_hash(other) != config_hash(plain) and other.canonical()["train"]["head_lr"] == 0.1


def test_method_default_head_lr_applies_and_prodigy_keeps_its_multiplier() -> None:
    for name in ("parallel_adapter", "bottleneck_adapter"):
        cls = get_method(name)
        assert cls.default_head_lr is not None and cls.default_head_lr != cls.default_lr
        cfg, _ = normalize(parse_config({"method": {"name": name}}))
        assert cfg.train.head_lr == cls.default_head_lr
        prodigy, _ = normalize(parse_config({"method": {"name": name}, "train": {"optimizer": "prodigy"}}))
        assert prodigy.train.head_lr is None  # Prodigy's lr is a multiplier: an AdamW head rate means nothing there
    assert normalize(parse_config({"method": {"name": "lora"}}))[0].train.head_lr is None
    assert normalize(parse_config({"method": {"name": "base"}, "train": {"head_lr": 0.1}}))[0].train.head_lr is None


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-6, 1.0), head=st.one_of(st.none(), st.floats(1e-6, 1.0)))
def test_resolve_head_lr(lr: float, head: float | None) -> None:
    spec = TrainSpec(lr=lr, head_lr=head)
    got = optim.resolve_head_lr(spec, None)
    assert got == (None if head is None or head == lr else head)


@pytest.mark.parametrize("bad", ["0", "-1e-3", "nan", "fast"])
def test_bad_head_lr_is_one_line_exit_2(tiny_config: dict, tmp_path: Path, bad: str) -> None:
    res = CliRunner().invoke(app, ["run", "--model", tiny_config["model"]["name"], "--data",
                                   tiny_config["task"]["data"]["source"], "--head-lr", bad, "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_head_lr_through_the_cli_is_stored_and_trains_the_head_faster(tiny_config: dict, tmp_path: Path) -> None:
    model, data = tiny_config["model"]["name"], tiny_config["task"]["data"]["source"]
    common = ["run", "--model", model, "--data", data, "--max-length", "32", "--batch-size", "8", "--steps", "3",
              "-m", "lora", "--lr", "1e-4", "--results-dir", str(tmp_path), "--json"]
    rows = []
    for extra in ([], ["--head-lr", "0.05"]):
        res = CliRunner().invoke(app, common + extra, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        rows.append(json.loads(res.output[res.output.index("{"):]))
    store = Store(tmp_path)
    cfgs = [store.get(r["run_id"]).config for r in rows]
    assert "head_lr" not in cfgs[0]["train"] and cfgs[1]["train"]["head_lr"] == 0.05
    heads = []
    for r in rows:
        from safetensors.torch import load_file

        state = load_file(str(store.get(r["run_id"]).adapter / "adapter_model.safetensors"))
        heads.append(next(v for k, v in state.items() if "classifier" in k and k.endswith("weight")))
    assert not torch.equal(heads[0], heads[1])  # same seed and body rate: only the head's rate differs
