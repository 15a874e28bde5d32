"""`peftbench run` and `peftbench compare`: build a RunConfig from flags and YAML, call the runner."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import typer

from peftbench.cli.common import err, friendly, out
from peftbench.cli.options import COMPARE, DEFAULT_METHODS, MAIN_JOB_STEPS, RUN, build_config, with_options
from peftbench.cli.progress import BarReporter
from peftbench.config import parse_config
from peftbench.errors import UserError

Opt = typer.Option


def _execute(raw: dict, results_dir: Path, force: bool, report_to: Optional[str] = None) -> Any:
    from peftbench.runner import run
    from peftbench.track import parse_kinds

    cfg = parse_config(raw)
    reporter = BarReporter(cfg.method.name)
    try:
        return run(cfg, results_dir, force=force, reporter=reporter, report_to=parse_kinds(report_to), log=reporter.log)
    finally:
        reporter.close()


def _start_threads(opts: dict[str, Any]) -> None:
    """--threads and --wait-policy, before torch is imported (OpenMP reads its wait policy once); --matmul."""
    from peftbench.train import threads

    if note := threads.start(opts["threads"], opts["wait_policy"]):
        err.print(f"note: {note}", highlight=False)
    if opts.get("matmul") is not None:  # after the wait policy: this imports torch
        from peftbench.train import matmul

        os.environ[matmul.ENV] = matmul.parse(opts["matmul"])  # worker processes read it too
        matmul.install()


def _check_report_to(value: Optional[str]) -> None:
    """Refuse an unknown or uninstalled tracker before any run starts."""
    from peftbench.track import check_trackers, parse_kinds

    check_trackers(parse_kinds(value))


def method_items(text: str) -> list[Any]:
    """--methods 'base,few_shot(k=2),lora(r=16,alpha=32)': names, or a name with its params in parentheses."""
    import re

    import yaml

    text = re.sub(r",\s*(?=,)", "", text)  # empty entries ("a,,b") are skipped, as before
    items: list[Any] = []
    for m in re.finditer(r"\s*([^,()\s]+)\s*(?:\(([^()]*)\))?\s*(?:,|$)", text):
        name, params = m.group(1), m.group(2)
        if params is None:
            items.append(name)
            continue
        pairs = [p.split("=", 1) for p in params.split(",") if p.strip()]
        if any(len(p) != 2 or not p[0].strip() for p in pairs):
            raise UserError(f"--methods entry '{m.group(0).strip(' ,')}' is not name(key=value, ...); e.g. few_shot(k=2)")
        items.append({"name": name, "params": {k.strip(): yaml.safe_load(v.strip()) for k, v in pairs}})
    if "".join(m.group(0) for m in re.finditer(r"\s*([^,()\s]+)\s*(?:\(([^()]*)\))?\s*(?:,|$)", text)).strip() != text.strip():
        raise UserError(f"--methods '{text}' is not a comma-separated list of names or name(key=value, ...)")
    return items


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or not all(0 < r < math.inf for r in rates):  # nan fails every comparison
        raise UserError(f"--lr-grid '{text}' is not 'auto' or a comma-separated list of positive rates like 1e-4,3e-4,1e-3")
    return rates


@friendly
@with_options(RUN)
def run_cmd(
    config: Optional[Path] = Opt(None, "--config", "-c", help="YAML run config (model:, task:, method:, train:)."),
    json_out: bool = Opt(False, "--json", help="Print the stored run as JSON."),
    opts: dict[str, Any] = {},
) -> None:
    """Fine-tune one method and store the measured result."""
    _start_threads(opts)
    raw, _ = build_config(config, opts)
    from peftbench.report.tables import compare_table, summary

    _check_report_to(opts["report_to"])
    res = _execute(raw, opts["results_dir"], opts["force"], opts["report_to"])
    if res.row is None:  # a helper process of `accelerate launch` / torchrun: the main process reports
        return
    if json_out:
        print(json.dumps({**summary(res.row), "skipped": res.skipped, "result": res.row.result}, indent=2))
    else:
        out.print(compare_table([res.row], title="peftbench run"))


@friendly
@with_options(COMPARE)
def compare_cmd(
    methods: str = Opt(DEFAULT_METHODS, "--methods", help="Comma-separated methods to compare; a method's params in parentheses: 'few_shot(k=2),lora(r=16)'."),
    config: Optional[Path] = Opt(None, "--config", "-c", help="YAML base config; may list methods: [...] (entries may carry lr_grid: [...], head_lr, head_lr_grid: [...])."),
    seeds: int = Opt(1, "--seeds", min=1, max=10_000, help="Run every method with N seeds (--seed, --seed+1, ...); tables show mean ± 95% CI."),
    budget: str = Opt("flops", "--budget", help="flops: every method gets the training FLOPs the reference method spends in --steps/--epochs (default); steps: the same steps for all."),
    reference: Optional[str] = Opt(None, "--reference", help="Method whose steps set the FLOPs budget (default lora if compared, else the first training method)."),
    lr_grid: Optional[str] = Opt(None, "--lr-grid", help="Search each method's learning rate on validation first: 'auto' (its default x 1/3, 1, 3) or rates like 1e-4,1e-3."),
    lr_search: str = Opt("grid", "--lr-search", help="How --lr-grid is searched: grid (every rate at the full budget) or halving "
                         "(every rate at 1/4 of the budget, the best third of them on to the full budget; judged on validation)."),
    workers: int = Opt(1, "--workers", "-w", help="Runs at once on this machine: each phase's runs (every method's search, then every seed) go out together."),
    backend: str = Opt("local", "--backend", help="local (worker processes) or ray (one task per run; a local Ray unless --address)."),
    address: Optional[str] = Opt(None, "--address", help="Ray cluster address (with --backend ray)."),
    json_out: bool = Opt(False, "--json", help="Print the comparison as JSON."),
    dry_run: bool = Opt(False, "--dry-run", help="Check every method, measure the budget, print the plan with its estimated time, and stop (nothing is stored)."),
    detach: bool = Opt(False, "--detach", help="Run in the background, on after the terminal closes; output goes to a log in the results folder (its path is printed). The same command resumes a stopped study."),
    opts: dict[str, Any] = {},
) -> None:
    """Compare methods on one model and task at an equal budget (training FLOPs by default), then tabulate."""
    from peftbench.report import constraints

    limits = constraints.parse_limits(opts)  # a bad --max-* value is refused before anything runs
    _start_threads(opts)  # first: the study imports torch
    from peftbench.compare.study import StudyPlan, entries_from, run_study
    from peftbench.report.tables import summary

    if config is None and all(opts[k] is None for k in ("steps", "epochs", "flops", "seconds")):
        opts = {**opts, "steps": MAIN_JOB_STEPS}  # the default study's budget, reported once resolved
    raw, listed = build_config(config, opts, "compare")
    items = listed if listed and methods == DEFAULT_METHODS else method_items(methods)
    grid: str | list[float] | None = None
    if lr_grid is not None:
        grid = "auto" if lr_grid.strip() == "auto" else _rates(lr_grid)
    first = opts["seed"] or 0
    plan = StudyPlan(raw, entries_from(items), [first + i for i in range(seeds)], budget=budget,
                     reference=reference, lr_grid=grid, lr_search=lr_search, drop_unfit=not listed and methods == DEFAULT_METHODS,
                     dry_run=dry_run)
    say = lambda line: err.print(line, highlight=False)  # noqa: E731
    _check_report_to(opts["report_to"])
    from peftbench.sweep.command import check_backend

    check_backend(backend, workers, address)
    if detach:  # the flags were read above: a bad one is refused here, not in the log
        from peftbench.cli.background import detach as start

        start(opts["results_dir"], out)
        return
    from peftbench.compare.backends import runner
    from peftbench.track import parse_kinds

    execute = lambda r: _execute(r, opts["results_dir"], opts["force"], opts["report_to"]).row  # noqa: E731
    with runner(execute, opts["results_dir"], opts["force"], workers, backend, address, parse_kinds(opts["report_to"]), say) as batch:
        study = run_study(plan, execute, say, batch)
    if dry_run:
        return
    from peftbench.report.aggregate import aggregate

    ids = {r.run_id for r in [*study.rows, *study.search] if r.done}
    rep = aggregate(opts["results_dir"], run_ids=ids) if ids else None  # once: the tables, the verdicts and --json read it
    found = constraints.verdicts(rep, limits) if rep and limits and json_out else []
    if json_out:
        from peftbench.report.budget_view import verdicts_json  # winner by budget and flags (issue 16)

        print(json.dumps({"budget": study.budget, "chosen_lr": study.chosen_lr, "chosen_head_lr": study.chosen_head_lr, "runs": [summary(r) for r in study.rows],
                          "failures": [f.line for f in study.failures], **verdicts_json(rep),
                          **({"verdicts": [vars(v) for v in found]} if limits else {})}, indent=2))
    elif rep is not None:
        from peftbench.report.command import print_report

        print_report(rep, out)
        found = constraints.show(rep, limits, out)
    _raise_failures(study.failures)
    constraints.refuse_unfit(found)


def _raise_failures(failures: list[Any]) -> None:
    """Under the finished methods' table: the runs that failed; a bug's own error goes on to the crash log."""
    if not failures:
        return
    for f in failures:
        err.print(f"failed: {f.line}", highlight=False)
    bug = next((f.error for f in failures if not isinstance(f.error, UserError)), None)
    if bug is not None:
        raise bug
    raise UserError(f"{len(failures)} run{'s' * (len(failures) > 1)} failed (listed above); the table shows the finished ones")
