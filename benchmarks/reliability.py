"""Reliability figures (issue 12 item 9): bad inputs and injected faults, and whether any finished result is lost.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reliability.py [--kills 10]

Builds a tiny random BERT and a three-class dataset in a temporary folder, trains two runs,
then (1) feeds every bad input of the catalog below through the CLI, in process, and
classifies each outcome: a clean refusal (exit 2, one `error:` line, no traceback), a
traceback, or accepted; (2) injects faults in real processes: kill -9 at N points of a run
followed by a rerun, a full disk (RLIMIT_FSIZE) under run/results/report/export, a damaged
index (zeroed, truncated, garbled, deleted) followed by `results --rebuild`, and the same
config started twice at once. After everything, every finished run must still be listed with
its metrics and curve unchanged. Prints a summary table; always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
os.environ["HF_HUB_OFFLINE"] = "1"

from conftest import make_rows, write_jsonl, write_tiny_bert  # noqa: E402  (the test suite's tiny fixtures)
from typer.testing import CliRunner  # noqa: E402

from peftbench.cli import app  # noqa: E402
from peftbench.store import Store  # noqa: E402

# {M} model, {D} data folder, {R} results folder with two finished runs, {T} scratch folder, {RUN} a finished run id.
TRAIN = ["--model", "{M}", "--data", "{D}", "--steps", "2", "--batch-size", "8", "--results-dir", "{R}"]
BAD_RUN_FLAGS = [
    ["--method", "nosuch"], ["--method", "lora", "-p", "rr=4"], ["-p", "r=-1"], ["-p", "r"], ["--model", "{T}/nothing"],
    ["--data", "{T}/nothing"], ["--lr", "-1"], ["--lr", "0"], ["--lr", "nan"], ["--lr", "inf"], ["--lr", "1e9"],
    ["--steps", "0"], ["--steps", "-3"], ["--steps", "1.5"], ["--steps", "x"], ["--epochs", "inf"], ["--epochs", "0"],
    ["--flops", "inf"], ["--flops", "-5"], ["--seconds", "0"], ["--seconds", "nan"], ["--batch-size", "0"],
    ["--grad-accum", "0"], ["--seed", "-1"], ["--seed", "99999999999999999999"], ["--max-length", "0"],
    ["--max-length", "100000"], ["--text-column", "nosuch"], ["--label-column", "nosuch"], ["--text-column", "label"],
    ["--task", "nosuch"], ["--optimizer", "nosuch"], ["--eval-every", "-1"], ["--data", "builtin:"],
    ["--data", "builtin:../x"], ["--data", "builtin:nosuch"], ["--data", "{T}/empty"], ["--data", "{T}/latin1"],
    ["--data", "{T}/garbage"], ["--data", "{T}/oneclass"], ["--data", "{T}/nolabel"], ["--results-dir", ""],
    ["--results-dir", "{T}/afile"], ["--method", "qlora"], ["--config", "{T}/nothing.yaml"],
    ["--config", "{T}/unknown_key.yaml"], ["--config", "{T}/broken.yaml"], ["--config", "{T}/remote.yaml"],
    ["--config", "{T}/dupkeys.yaml"], ["--config", "{T}/steps_true.yaml"], ["--report-to", "nosuch"],
    ["--samples", "-1"], ["--test-fraction", "2"], ["--max-train-examples", "0"], ["--generation", "num_beams=0"],
]
OTHER = [
    ["compare", "--methods", "lora,nosuch", *TRAIN], ["compare", "--lr-grid", "nan", *TRAIN],
    ["compare", "--lr-grid", "-1", *TRAIN], ["compare", "--seeds", "0", *TRAIN], ["compare", "--budget", "x", *TRAIN],
    ["results", "show", "%", "--results-dir", "{R}"], ["results", "show", "", "--results-dir", "{R}"],
    ["results", "show", "nosuch", "--results-dir", "{R}"], ["results", "--results-dir", "{T}/nothing"],
    ["results", "--results-dir", "{T}/afile"], ["predict", "nosuch", "x", "--results-dir", "{R}"],
    ["predict", "{RUN}", "", "--results-dir", "{R}"], ["predict", "{RUN}", "--file", "{T}/nothing.csv", "--results-dir", "{R}"],
    ["predict", "{RUN}", "--results-dir", "{R}"], ["predict", "{RUN}", "x", "--out", "{T}", "--results-dir", "{R}"],
    ["export", "{RUN}", "{T}", "--results-dir", "{R}"], ["export", "{RUN}", ".", "--results-dir", "{R}"],
    ["export", "{RUN}", "{T}/afile", "--results-dir", "{R}"], ["export", "nosuch", "{T}/x", "--results-dir", "{R}"],
    ["report", "--results-dir", "{T}/nothing"], ["report", "--results-dir", "{R}", "--html", "{T}"],
    ["sweep", "{T}/nothing.yaml", "--results-dir", "{R}"], ["sweep", "{T}/empty.yaml", "--results-dir", "{R}"],
    ["sweep", "{T}/broken.yaml", "--results-dir", "{R}"], ["sweep", "{T}/remote_sweep.yaml", "--results-dir", "{R}"],
    ["methods", "--bogus"], ["tasks", "--bogus"], ["nosuchcommand"],
]


def scratch(t: Path, model: str) -> None:
    """The files the catalog's bad inputs point at."""
    (t / "afile").write_text("x")
    for name, rows in (("empty", []), ("oneclass", [{"text": "a b", "label": "x"}] * 12),
                       ("nolabel", [{"text": "a b"}] * 12)):
        (t / name).mkdir()
        for split in ("train", "validation", "test"):
            (t / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (t / "latin1").mkdir()
    for split in ("train", "validation", "test"):
        (t / "latin1" / f"{split}.csv").write_bytes(("text,label\n" + "caf\xe9 ok,joy\n" * 20).encode("latin-1"))
    (t / "garbage").mkdir()
    for split in ("train", "validation", "test"):
        (t / "garbage" / f"{split}.jsonl").write_bytes(os.urandom(300))
    (t / "unknown_key.yaml").write_text(f"model: {{name: {model}}}\ntrian: {{steps: 2}}\n")
    (t / "broken.yaml").write_text("model: [unclosed\n")
    (t / "remote.yaml").write_text(f"model: {{name: {model}, trust_remote_code: true}}\n")
    (t / "remote_sweep.yaml").write_text(f"base: {{model: {{name: {model}, trust_remote_code: true}}}}\naxes: {{}}\n")
    (t / "dupkeys.yaml").write_text(f"model: {{name: {model}}}\ntrain: {{steps: 2}}\ntrain: {{steps: 3}}\n")
    (t / "steps_true.yaml").write_text(f"model: {{name: {model}}}\ntrain: {{grad_accum: true}}\n")  # not a flag below
    (t / "empty.yaml").write_text("")


def fill(args: list[str], env: dict[str, str]) -> list[str]:
    return [a.format(**env) for a in args]


def classify(result: object) -> str:
    out = result.stderr  # type: ignore[attr-defined]
    if "Traceback" in result.output or (result.exception and not isinstance(result.exception, SystemExit)):  # type: ignore[attr-defined]
        return "traceback"
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    if result.exit_code == 2 and len(errors) == 1:  # type: ignore[attr-defined]
        return "clean refusal"
    return "accepted" if result.exit_code == 0 else f"exit {result.exit_code}"  # type: ignore[attr-defined]


def snapshot(res: Path) -> dict[str, object]:
    with Store(res, read_only=True) as store:
        return {r.run_id: (r.result, store.curve(r.run_id)) for r in store.list() if r.status in ("done", "superseded")}


def cli(args: list[str], cwd: Path, limit: int | None = None, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))) if limit is not None else None
    return subprocess.Popen([sys.executable, "-m", "peftbench.cli", *args], cwd=cwd, env=env, preexec_fn=pre,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def one_line(p: subprocess.Popen, timeout: float = 600) -> str:
    _, err = p.communicate(timeout=timeout)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if "Traceback" in err:
        return "traceback"
    return f"clean refusal ({errors[0][:150]})" if p.returncode == 2 and len(errors) == 1 else f"exit {p.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10, help="kill -9 points (spread over a run's life)")
    opts = ap.parse_args()
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()  # as peftbench.cli.main() does; CliRunner calls the app itself
    t = Path(tempfile.mkdtemp(prefix="peftbench-reliability-"))
    model = write_tiny_bert(Path(tempfile.mkdtemp(dir=t)))
    data = t / "data"
    data.mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        write_jsonl(data / f"{split}.jsonl", make_rows(48, seed))
    res, bad = t / "res", t / "bad"
    bad.mkdir()
    scratch(bad, model)
    env = {"M": model, "D": str(data), "R": str(res), "T": str(bad)}
    for seed in ("0", "1"):
        r = CliRunner().invoke(app, fill(["run", *TRAIN, "--seed", seed], env))
        assert r.exit_code == 0, r.output
    env["RUN"] = next(iter(snapshot(res)))
    before = snapshot(res)
    tally: dict[str, list[str]] = {}

    # (1) bad inputs, in process
    cases = [["run", *TRAIN, *flags] for flags in BAD_RUN_FLAGS] + OTHER
    os.chdir(bad)
    for case in cases:
        outcome = classify(CliRunner().invoke(app, fill(case, env)))
        tally.setdefault(outcome, []).append(" ".join(case[:1] + case[len(TRAIN) + 1:] if case[0] == "run" else case))
    os.chdir(t)
    inputs = {k: len(v) for k, v in tally.items()}

    # (2) faults, in real processes; every finished run seen so far must survive all of them
    faults: list[tuple[str, str]] = []
    known = dict(before)
    base = ["run", "--model", model, "--data", str(data), "--batch-size", "8", "--results-dir", str(res)]
    for i in range(opts.kills):  # kill -9 at points spread from start-up to the finish, then rerun
        args = [*base, "--steps", "12", "--seed", str(100 + i)]
        p = cli(args, t)
        time.sleep(1.0 + i * 1.2)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        rerun = cli(args, t)
        rerun.communicate(timeout=600)
        with Store(res) as store:
            clean = rerun.returncode == 0 and not list((res / "runs").glob(".tmp-*"))
            clean &= not [r for r in store.list() if r.status == "running"]
        faults.append((f"kill -9 after {1.0 + i * 1.2:.1f}s, then rerun", "recovered" if clean else "NOT recovered"))
        known.update(snapshot(res))
    for name, args, limit in (("run", [*base, "--steps", "2", "--seed", "7"], 32768),
                              ("results", ["results", "--results-dir", str(res)], 0),
                              ("report", ["report", "--results-dir", str(res), "--html", str(t / "r.html")], 0),
                              ("export", ["export", env["RUN"], str(t / "exported"), "--results-dir", str(res)], 0)):
        p = cli(args, t, limit=limit)
        outcome = one_line(p)
        faults.append((f"full disk under {name}", "works" if p.returncode == 0 else outcome))
    known.update(snapshot(res))
    db = res / "results.sqlite"
    for how in ("zeroed", "truncated", "garbled", "deleted"):
        raw = db.read_bytes()
        if how == "deleted":
            db.unlink()
        else:
            db.write_bytes({"zeroed": b"", "truncated": raw[: len(raw) // 2], "garbled": os.urandom(100) + raw[100:]}[how])
        refused = one_line(cli(["results", "--results-dir", str(res)], t)).split(" (")[0]
        rebuilt = cli(["results", "--rebuild", "--results-dir", str(res)], t)
        rebuilt.communicate()
        back = rebuilt.returncode == 0 and all(snapshot(res).get(k) == v for k, v in known.items())
        faults.append((f"index {how}", f"{refused}; rebuilt with every finished run" if back else f"{refused}; NOT rebuilt"))
    concurrent = [*base, "--seconds", "15", "--seed", "9"]  # long enough for the second to start meanwhile
    first = cli(concurrent, t)
    time.sleep(4)
    second = cli(concurrent, t)
    first.communicate(timeout=600)
    second.communicate(timeout=600)
    with Store(res) as store:
        trained = [r for r in store.list() if r.seed == 9]
    faults.append(("same config started twice at once",
                   f"{len(trained)} run trained, exits {first.returncode} and {second.returncode}"))
    known.update(snapshot(res))

    after = snapshot(res)
    lost = [k for k, v in known.items() if after.get(k) != v]
    print(f"\nbad inputs tried through the CLI: {len(cases)}")
    for k, n in sorted(inputs.items()):
        print(f"  {k}: {n}")
        if k != "clean refusal":
            for case in tally[k]:
                print(f"    {case}")
    print(f"\nfaults injected: {len(faults)}")
    for what, outcome in faults:
        print(f"  {what}: {outcome}")
    print(f"\nfinished runs: {len(known)}; lost or changed after everything: {len(lost)} {lost or ''}")
    shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    main()
