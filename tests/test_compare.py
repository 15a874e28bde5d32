"""`peftbench compare`: equal training FLOPs, seeds, and a learning-rate search judged on validation only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import parse_config
from peftbench.runner import calibrate_flops
from peftbench.store import Store


def compare(*args: str) -> dict:
    res = CliRunner().invoke(app, ["compare", *args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return {"doc": json.loads(res.stdout), "stderr": res.stderr}


def base_args(tiny_model: str, tiny_data: Path, results: Path) -> list[str]:
    return ["--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--results-dir", str(results)]


def test_equal_flops_seeds_and_lr_search(tiny_model, tiny_data, tmp_path):
    args = [*base_args(tiny_model, tiny_data, tmp_path), "--methods", "base,lora,ia3", "--steps", "4",
            "--seeds", "2", "--lr-grid", "1e-3,1e-2"]
    got = compare(*args)
    doc = got["doc"]
    budget = doc["budget"]["value"]
    ref = parse_config({"model": {"name": tiny_model}, "method": {"name": "lora"},
                        "task": {"data": {"source": str(tiny_data)}, "max_length": 32},
                        "train": {"steps": 4, "batch_size": 8, "eval_batch_size": 16}})
    assert budget == calibrate_flops(ref, 4)  # lora's FLOPs in 4 steps, counted before training
    assert "lora's measured training FLOPs for 4 steps" in doc["budget"]["reference"]

    runs = doc["runs"]
    assert [r["method"] for r in runs] == ["base", "base", "lora", "lora", "ia3", "ia3"]
    store = Store(tmp_path)
    done = store.list("done")
    search = [r for r in done if r.config["train"]["test"] is False]
    assert sorted((r.method, r.config["train"]["lr"]) for r in search) == [
        ("ia3", 1e-3), ("ia3", 1e-2), ("lora", 1e-3), ("lora", 1e-2)]
    assert all(r.result["test"] is None for r in search)  # the search never saw test
    for name in ("lora", "ia3"):
        val = {r.config["train"]["lr"]: r.result["validation"]["macro_f1"] for r in search if r.method == name}
        assert doc["chosen_lr"][name] == max(val, key=val.get)
        finals = [r for r in runs if r["method"] == name]
        assert {r["lr"] for r in finals} == {doc["chosen_lr"][name]}
    by_id = {r.run_id: r for r in done}
    for r in runs:
        row = by_id[r["run_id"]]
        assert row.result["test"] is not None
        if r["method"] == "base":
            assert r["train_flops"] == 0
            continue
        assert row.config["train"]["flops"] == budget and row.config["train"]["steps"] is None
        steps = row.result["costs"]["steps"]
        per_step = r["train_flops"] / steps
        assert budget <= r["train_flops"] < budget + 2 * per_step  # stopped at the first step reaching it
    assert {store.get(r["run_id"]).config["train"]["seed"] for r in runs} == {0, 1}

    again = compare(*args)  # everything is found by config hash; nothing trains twice
    assert [r["run_id"] for r in again["doc"]["runs"]] == [r["run_id"] for r in runs]
    assert len(Store(tmp_path).list()) == len(done)


def test_budget_steps_gives_every_method_the_same_steps(tiny_model, tiny_data, tmp_path):
    doc = compare(*base_args(tiny_model, tiny_data, tmp_path), "--methods", "lora,prompt", "--steps", "3",
                  "--budget", "steps")["doc"]
    store = Store(tmp_path)
    assert [store.get(r["run_id"]).result["costs"]["steps"] for r in doc["runs"]] == [3, 3]
    flops = [r["train_flops"] for r in doc["runs"]]
    assert flops[0] != flops[1]  # same steps, different compute: why flops is the default


def test_compare_refusals_are_one_line(tiny_model, tiny_data, tmp_path):
    cases = [
        (["--methods", "adalora", "--steps", "4"], "adalora"),
        (["--methods", "lora", "--lr-grid", "fast"], "--lr-grid"),
        (["--methods", "lora", "--reference", "ia3", "--steps", "2"], "reference method 'ia3'"),
        (["--methods", "lora", "--budget", "tokens"], "unknown budget"),
        (["--methods", "lora", "--lr", "1e-3", "--lr-grid", "1e-3,1e-2"], "--lr and --lr-grid"),
    ]
    for extra, words in cases:
        res = CliRunner().invoke(app, ["compare", *base_args(tiny_model, tiny_data, tmp_path), *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert words in res.stderr and res.stderr.count("error:") == 1 and "Traceback" not in res.output, res.stderr
    assert not Store(tmp_path).list()


def test_head_rates_per_method_fixed_or_searched_jointly(tiny_model, tiny_data, tmp_path):
    """Issue 16 item 6: a methods entry may fix its head rate (head_lr) or search it with the lr grid
    (head_lr_grid, every pair, on validation); the test-scored runs use the pair chosen."""
    cfg = tmp_path / "study.yaml"
    cfg.write_text("methods:\n"
                   "  - {name: lora, lr_grid: [1.0e-3, 1.0e-2], head_lr_grid: [1.0e-2, 5.0e-2]}\n"
                   "  - {name: ia3, head_lr: 5.0e-2}\n")
    doc = compare(*base_args(tiny_model, tiny_data, tmp_path / "r"), "--config", str(cfg), "--steps", "2")["doc"]
    store = Store(tmp_path / "r")
    done = store.list("done")
    search = [r for r in done if r.config["train"]["test"] is False]
    head = lambda t: t.get("head_lr", t["lr"])  # noqa: E731  (stored only where it differs from lr)
    pairs = {(r.config["train"]["lr"], head(r.config["train"])): r.result["validation"]["macro_f1"] for r in search}
    assert sorted(pairs) == [(1e-3, 1e-2), (1e-3, 5e-2), (1e-2, 1e-2), (1e-2, 5e-2)]
    assert all(r.method == "lora" for r in search)
    best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))  # ties keep the first pair tried
    assert (doc["chosen_lr"]["lora"], doc["chosen_head_lr"]["lora"]) == best
    finals = {r["method"]: store.get(r["run_id"]).config["train"] for r in doc["runs"]}
    assert (finals["lora"]["lr"], head(finals["lora"])) == best
    assert finals["ia3"]["head_lr"] == 5e-2  # fixed for ia3 alone, not searched


def test_bad_head_rates_in_a_methods_entry_are_one_line(tiny_model, tiny_data, tmp_path):
    for entry, words in [("{name: lora, head_lr: fast}", "head_lr of method 'lora' must be a positive rate"),
                         ("{name: lora, head_lr_grid: []}", "head_lr_grid of method 'lora'"),
                         ("{name: lora, head_lr: 1.0e-2, head_lr_grid: [1.0e-2]}", "both head_lr and head_lr_grid")]:
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(f"methods:\n  - {entry}\n")
        res = CliRunner().invoke(app, ["compare", *base_args(tiny_model, tiny_data, tmp_path), "--config", str(cfg)])
        assert res.exit_code == 2 and words in res.stderr and "Traceback" not in res.output, res.stderr
    assert not Store(tmp_path).list()


def test_halving_search_runs_every_rate_at_a_quarter_and_the_best_third_at_full(tiny_model, tiny_data, tmp_path):
    """Issue 18 item 4: --lr-search halving. Every rate trains to 1/4 of the budget; the best third (one of
    three) goes on to the full budget; the choice is made on validation, and no search run sees test."""
    args = [*base_args(tiny_model, tiny_data, tmp_path), "--methods", "lora", "--steps", "8",
            "--lr-grid", "1e-4,1e-3,1e-2", "--lr-search", "halving"]
    got = compare(*args)
    doc, budget = got["doc"], got["doc"]["budget"]["value"]
    search = [r for r in Store(tmp_path).list("done") if r.config["train"]["test"] is False]
    quarter = {r.config["train"]["lr"]: r.result["validation"]["macro_f1"] for r in search if r.config["train"]["flops"] == budget / 4}
    full = [r for r in search if r.config["train"]["flops"] == budget]
    assert sorted(quarter) == [1e-4, 1e-3, 1e-2] and len(full) == 1 and len(search) == 4
    leader = max(quarter, key=lambda lr: (quarter[lr], -lr))  # ties keep the first rate tried
    assert full[0].config["train"]["lr"] == leader == doc["chosen_lr"]["lora"]
    assert all(r.result["test"] is None for r in search)
    assert "go on to the full budget" in got["stderr"]
    res = CliRunner().invoke(app, ["report", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0 and "lora (flops=" in res.output, res.output  # the quarter-budget search, apart


def test_worker_processes_run_each_phase_together_with_the_same_results(tiny_model, tiny_data, tmp_path):
    """Issue 18 item 4 with local workers: --workers 2 sends every method's search runs (a halving rung),
    then every seed, out together; each run is stored once, and the chosen rate and test scores are the
    ones the same study gives in this process."""
    args = ["--methods", "lora", "--steps", "8", "--seeds", "2", "--lr-grid", "1e-3,1e-2,3e-2", "--lr-search", "halving"]
    inline = compare(*base_args(tiny_model, tiny_data, tmp_path / "inline"), *args)["doc"]
    got = compare(*base_args(tiny_model, tiny_data, tmp_path / "workers"), *args, "--workers", "2")
    doc = got["doc"]
    assert doc["chosen_lr"] == inline["chosen_lr"] and doc["budget"] == inline["budget"]
    ours, theirs = (sorted((r["method"], r["lr"], r["test_macro_f1"]) for r in d["runs"]) for d in (doc, inline))
    assert [r[:2] for r in ours] == [r[:2] for r in theirs] and len(ours) == 2
    assert [r[2] for r in ours] == pytest.approx([r[2] for r in theirs])
    rows = Store(tmp_path / "workers").list()
    assert len(rows) == 3 + 1 + 2 and all(r.done for r in rows)  # 3 rates at 1/4, 1 at full, 2 seeds
    assert len({r.config_hash for r in rows}) == len(rows)
    assert got["stderr"].count("go on to the full budget") == 1


def test_a_rerun_with_workers_reads_its_done_runs_back_without_sending_them_out(tiny_model, tiny_data, tmp_path, monkeypatch):
    """A parallel compare run again finds each done run in the store, as a sweep does, instead of training it
    again on a worker (Ray workers never see the store, so they would)."""
    args = [*base_args(tiny_model, tiny_data, tmp_path), "--methods", "base,lora", "--steps", "4", "--seeds", "2"]
    first = compare(*args, "--workers", "2")["doc"]
    sent: list[list] = []

    def refuse(jobs, *a, **k):
        sent.append(jobs)
        raise AssertionError("a done run went out to a worker")

    monkeypatch.setattr("peftbench.sweep.local.run_workers", refuse)
    monkeypatch.setattr("peftbench.sweep.ray_backend.run_ray", refuse)
    for backend in (["--workers", "2"], ["--backend", "ray"]):
        again = compare(*args, *backend)
        assert not sent and again["doc"]["runs"] == first["runs"]
        assert again["stderr"].count("already done") == len(first["runs"]) == 4  # base's and lora's two seeds
    rows = Store(tmp_path).list()
    assert len(rows) == len({r.config_hash for r in rows}) == 4  # each run stored once, by the first compare


def test_a_bad_backend_or_worker_count_is_one_line(tiny_model, tiny_data, tmp_path):
    for flags, words in [(["--backend", "slurm"], "unknown backend 'slurm'"), (["--workers", "0"], "at least 1"),
                         (["--address", "auto"], "use it with --backend ray")]:
        res = CliRunner().invoke(app, ["compare", *base_args(tiny_model, tiny_data, tmp_path), "--methods", "lora", *flags])
        assert res.exit_code == 2 and words in res.stderr and "Traceback" not in res.output, res.output
    assert not (tmp_path / "results.sqlite").exists() or not Store(tmp_path).list()


def test_an_unknown_lr_search_is_one_line(tiny_model, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["compare", *base_args(tiny_model, tiny_data, tmp_path), "--methods", "lora",
                                   "--lr-grid", "auto", "--lr-search", "bisect"])
    assert res.exit_code == 2 and "--lr-search grid or halving" in res.stderr and "Traceback" not in res.output
