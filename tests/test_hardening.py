"""Hostile or unlucky input (issue 12, first items): files cannot allow remote code, run ids are literal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from peftbench.config import _asks_remote_code, load_yaml
from peftbench.errors import UserError
from peftbench.store import Store
from test_bad_input import assert_nothing_stored, assert_refused, invoke

KEYS = st.sampled_from(["model", "task", "name", "params", "base", "axes", "trust", "remote_code", "x"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4))
TREES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
                     max_leaves=12)


@pytest.mark.parametrize("value", [True, "yes", 1])
def test_a_run_config_file_cannot_turn_on_remote_code(value: Any, tiny_config: dict, tmp_path: Path) -> None:
    cfg = {**tiny_config, "model": {**tiny_config["model"], "trust_remote_code": value}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp_path / "res"
    line = assert_refused(invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", res),
                          "trust_remote_code", "--trust-remote-code", results_dir=res)
    assert "run.yaml" in line
    assert_nothing_stored(res)


def test_a_sweep_file_cannot_turn_on_remote_code_anywhere(tiny_config: dict, tmp_path: Path) -> None:
    sweep = {"base": tiny_config, "axes": {"model": [{"name": tiny_config["model"]["name"], "trust_remote_code": True}]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    res = tmp_path / "res"
    assert_refused(invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res), "trust_remote_code", results_dir=res)
    assert_nothing_stored(res)


def test_false_or_absent_is_fine(tiny_config: dict, tmp_path: Path) -> None:
    cfg = {**tiny_config, "model": {**tiny_config["model"], "trust_remote_code": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert load_yaml(tmp_path / "run.yaml")["model"]["trust_remote_code"] is False


@settings(max_examples=200, deadline=None, database=None)
@given(tree=TREES, path=st.lists(st.sampled_from(["model", "base", 0]), max_size=3))
def test_the_key_is_found_at_any_depth_and_only_when_truthy(tree: Any, path: list[Any]) -> None:
    assert not _asks_remote_code(tree)  # the strategy never writes the key
    planted: Any = {"trust_remote_code": True}
    for step in reversed(path):
        planted = [planted] if step == 0 else {step: planted}
    assert _asks_remote_code([tree, planted])
    assert _asks_remote_code({"x": tree, "y": planted})
    assert not _asks_remote_code({"x": tree, "model": {"trust_remote_code": False}})


def test_run_ids_are_literal_prefixes_not_wildcards(tiny_config: dict, tmp_path: Path) -> None:
    from peftbench.runner import run

    res = tmp_path / "res"
    from peftbench.config import parse_config

    run(parse_config(tiny_config), res)
    with Store(res) as store:
        (row,) = store.list("done")
        assert store.get(row.run_id[:6]).run_id == row.run_id  # a real prefix still works
        for ident in ("%", "_", row.run_id[:3] + "_", row.run_id.replace("-", "_"), row.run_id[:4] + "%"):
            with pytest.raises(UserError, match="no stored run matches"):
                store.get(ident)
        for ident in ("", "   "):
            with pytest.raises(UserError, match="no run id given"):
                store.get(ident)
    assert_refused(invoke("results", "show", "%", "--results-dir", res), "no stored run matches")
