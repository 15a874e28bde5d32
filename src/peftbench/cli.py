"""The peftbench command line. Thin: it builds a RunConfig and calls the runner."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # libraries' own bars (GGUF dequantizing); ours are rich

import typer
import typer.core

try:  # typer >= 0.20 bundles its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from peftbench.config import deep_merge, load_yaml, nest, parse_config
from peftbench.errors import UserError


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a flag of the wrong type, a missing argument) as one line, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except UsageError as e:
            where = f"; see: {e.ctx.command_path} --help" if e.ctx else ""
            err.print(f"[bold red]error:[/] {escape(e.format_message().rstrip('.'))}{where}", highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        except typer.Abort:  # Ctrl-C
            raise SystemExit(130) from None
        raise SystemExit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Fine-tune with PEFT methods and compare them fairly.")
results_app = typer.Typer(help="List and show stored runs.", invoke_without_command=True)
app.add_typer(results_app, name="results")
out = Console(width=None if sys.stdout.isatty() else 120)  # pipes and logs get the whole table
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

DEFAULT_METHODS = "base,head,full,lora,ia3,prompt"
# The bundled default comparison's budget: 64 steps of 32 (~0.6 epoch of TweetEval emotion)
# keeps six methods within 5 minutes on 2 CPU cores. Any budget flag or config replaces it.
MAIN_JOB_STEPS = 64
RESULTS_DIR = "./peftbench-results"


def friendly(fn: Callable) -> Callable:
    """Bad input: one line on stderr, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


class BarReporter:
    """Progress bars for training and evaluation, one line per validation point; on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=True)
        self.bars: dict[str, Any] = {}
        self.started = False  # started on first use, so a refusal prints nothing but its line

    def _bar(self, name: str, done: int, total: int) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        if name not in self.bars:
            self.bars[name] = self.progress.add_task(f"{name} {self.label}", total=total or None)
        self.progress.update(self.bars[name], completed=done, total=total or None)
        if total and done >= total:  # a FLOPs or seconds budget has no step total: the bar counts up
            self.progress.remove_task(self.bars.pop(name))

    def start(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def step(self, step: int, loss: float | None) -> None:
        self._bar("train", step, self.total_steps)

    def evaluating(self, split: str, done: int, total: int) -> None:
        self._bar(f"eval {split}", done, total)

    def evaluated(self, point: Any) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in point.metrics.items() if isinstance(v, float))
        self.progress.console.print(f"  {self.label} step {point.step}: val {shown}", highlight=False)

    def close(self) -> None:
        if self.started:
            self.progress.stop()


def _params(items: list[str]) -> dict[str, Any]:
    params = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--param '{item}' must look like KEY=VALUE (e.g. --param r=16)")
        k, v = item.split("=", 1)
        try:
            params[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise UserError(
                f"--param '{item}': the value is not valid YAML; check its brackets and quotes "
                "(e.g. --param 'target_modules=[query, value]')"
            ) from None
    return params


def _pairs(items: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} '{item}' is not KEY=VALUE; write it like {flag} {example}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _task_flags(column: list[str], generation: list[str]) -> dict[str, Any]:
    """--column ROLE=NAME and --generation KEY=VALUE as config keys (checked by the config schema)."""
    from peftbench.config import DataSpec

    roles = sorted(k.removesuffix("_column") for k in DataSpec.model_fields if k.endswith("_column"))
    flags: dict[str, Any] = {}
    for role, name in _pairs(column, "--column", "target=summary"):
        role = role.replace("-", "_")
        if role not in roles:
            raise UserError(f"--column: unknown role '{role}'; roles: {', '.join(roles)}")
        flags[f"task.data.{role}_column"] = name
    for key, value in _pairs(generation, "--generation", "num_beams=4"):
        flags[f"task.generation.{key}"] = yaml.safe_load(value) if value else value
    return flags


def build_config(config: Optional[Path], flags: dict[str, Any], params: list[str]) -> tuple[dict, list]:
    """YAML (if any) overlaid with the flags the user gave; returns (raw config, methods list)."""
    raw = load_yaml(config) if config else {}
    methods = raw.pop("methods", None)
    over: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            over = deep_merge(over, nest(key, value))
    if params:
        over = deep_merge(over, {"method": {"params": _params(params)}})
    return deep_merge(raw, over), methods


# Shared options of run and compare (flag -> config key).
def _flags(**kw: Any) -> dict[str, Any]:
    keys = {
        "model": "model.name", "trust_remote_code": "model.trust_remote_code", "gguf_file": "model.gguf_file",
        "task": "task.kind", "prompt": "task.prompt", "samples": "task.samples",
        "max_target_length": "task.max_target_length", "test_fraction": "task.data.test_fraction",
        "optimizer": "train.optimizer", "data": "task.data.source",
        "subset": "task.data.subset", "train_file": "task.data.train_file",
        "validation_file": "task.data.validation_file", "test_file": "task.data.test_file",
        "text_column": "task.data.text_column", "text_pair_column": "task.data.text_pair_column",
        "label_column": "task.data.label_column", "max_train_examples": "task.data.max_train_examples",
        "max_eval_examples": "task.data.max_eval_examples", "max_length": "task.max_length",
        "lr": "train.lr", "steps": "train.steps", "epochs": "train.epochs", "flops": "train.flops", "seconds": "train.seconds", "batch_size": "train.batch_size", "eval_batch_size": "train.eval_batch_size",
        "grad_accum": "train.grad_accum", "eval_every": "train.eval_every", "seed": "train.seed",
    }
    flags = {keys[k]: v for k, v in kw.items() if k in keys}
    flags.update(_task_flags(kw.get("column") or [], kw.get("generation") or []))
    if not kw.get("trust_remote_code"):
        flags["model.trust_remote_code"] = None  # only an explicit flag turns it on
    return flags


Opt = typer.Option


def _execute(raw: dict, results_dir: Path, force: bool, report_to: Optional[str] = None):
    from peftbench.runner import run
    from peftbench.track import parse_kinds

    cfg = parse_config(raw)
    reporter = BarReporter(cfg.method.name)
    try:
        return run(cfg, results_dir, force=force, reporter=reporter, report_to=parse_kinds(report_to),
                   log=lambda s: reporter.progress.console.print(s, highlight=False))
    finally:
        reporter.close()


# Options run and compare share (model, task, data, budget, ...): declared once, reaching each
# command as `opts` (flag name -> value), which _flags turns into config keys.
SHARED_OPTIONS: list[tuple[str, Any, Any]] = [
    ("model", Optional[str], Opt(None, help="Hub model id or local folder; 'default' is the bundled all-MiniLM-L6-v2, 'smollm2' the bundled SmolLM2.")),
    ("trust_remote_code", bool, Opt(False, help="Allow the model repository's own Python code to run.")),
    ("gguf_file", Optional[str], Opt(None, help="A GGUF weights file inside the model folder or repo.")),
    ("task", Optional[str], Opt(None, "--task", "-t", help="Task kind (default classification; see: peftbench tasks).")),
    ("data", Optional[str], Opt(None, help="'builtin:tweet_eval_emotion' (or dialogsum, commonsense_qa), a data folder, or a hub dataset name.")),
    ("column", list[str], Opt([], "--column", help="Column of a role, ROLE=NAME (text, target, references, question, choices, answer, image, ...); repeatable.")),
    ("generation", list[str], Opt([], "--generation", "-g", help="Decoding setting KEY=VALUE (max_new_tokens, num_beams, do_sample, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size); repeatable.")),
    ("prompt", Optional[str], Opt(None, help="Prompt template with {input}, for decoder and seq2seq models.")),
    ("max_target_length", Optional[int], Opt(None, help="Truncate training targets to this many tokens.")),
    ("test_fraction", Optional[float], Opt(None, help="Carve this share of train as the test split when the data has none.")),
    ("samples", Optional[int], Opt(None, help="Test examples stored with untuned and tuned outputs (default 5).")),
    ("optimizer", Optional[str], Opt(None, help="adamw (default), adafactor or prodigy.")),
    ("subset", Optional[str], Opt(None, help="Hub dataset configuration name.")),
    ("train_file", Optional[str], Opt(None, help="Training file (.csv/.json/.jsonl/.parquet).")),
    ("validation_file", Optional[str], Opt(None, help="Validation file; carved from train when absent.")),
    ("test_file", Optional[str], Opt(None, help="Test file.")),
    ("text_column", Optional[str], Opt(None, help="Text column name (default: text).")),
    ("text_pair_column", Optional[str], Opt(None, help="Second text column for pair tasks.")),
    ("label_column", Optional[str], Opt(None, help="Label column name (default: label).")),
    ("max_train_examples", Optional[int], Opt(None, help="Use only the first N training examples.")),
    ("max_eval_examples", Optional[int], Opt(None, help="Use only the first N validation and test examples.")),
    ("max_length", Optional[int], Opt(None, help="Truncate inputs to this many tokens.")),
    ("steps", Optional[int], Opt(None, help=f"Budget in optimizer steps (compare: the same for every method, {MAIN_JOB_STEPS} when no --config/--epochs).")),
    ("epochs", Optional[float], Opt(None, help="Budget in epochs (default 1).")),
    ("flops", Optional[float], Opt(None, help="Budget in measured training FLOPs, e.g. 2.5e12 (training stops at the first step reaching it).")),
    ("seconds", Optional[float], Opt(None, help="Budget in training seconds (evaluation excluded).")),
    ("batch_size", Optional[int], Opt(None, help="Training batch size.")),
    ("eval_batch_size", Optional[int], Opt(None, help="Evaluation batch size (default 64; lower it for large vocabularies).")),
    ("grad_accum", Optional[int], Opt(None, help="Gradient accumulation steps.")),
    ("eval_every", Optional[int], Opt(None, help="Validate every N steps (default: 4 points per run).")),
    ("seed", Optional[int], Opt(None, help="Random seed.")),
    ("results_dir", Path, Opt(RESULTS_DIR, help="Results folder (SQLite + run folders).")),
    ("report_to", Optional[str], Opt(None, help="Also log runs to tensorboard, mlflow and/or wandb (comma-separated; offline, under the results folder).")),
]


def with_shared_options(fn: Callable) -> Callable:
    """Give a command the SHARED_OPTIONS after its own; they reach it as one `opts` dict."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in SHARED_OPTIONS]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        opts = {n: kwargs.pop(n) for n, _, _ in SHARED_OPTIONS}
        return fn(**kwargs, opts=opts)

    wrapper.__signature__ = inspect.Signature(own + shared)  # what Typer reads
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper


@app.command("run")
@friendly
@with_shared_options
def run_cmd(
    method: Optional[str] = Opt(None, "--method", "-m", help="Method name (default lora; see: peftbench methods)."),
    param: list[str] = Opt([], "--param", "-p", help="Method hyper-parameter KEY=VALUE; repeatable."),
    config: Optional[Path] = Opt(None, "--config", "-c", help="YAML run config (model:, task:, method:, train:)."),
    lr: Optional[float] = Opt(None, help="Learning rate (default: the method's)."),
    force: bool = Opt(False, help="Re-run even if this exact config already finished."),
    json_out: bool = Opt(False, "--json", help="Print the stored run as JSON."),
    opts: dict[str, Any] = {},
) -> None:
    """Fine-tune one method and store the measured result."""
    flags = {**_flags(**opts, lr=lr), "method.name": method}
    raw, _ = build_config(config, flags, param)
    from peftbench.report.tables import compare_table, summary

    _check_report_to(opts["report_to"])
    res = _execute(raw, opts["results_dir"], force, opts["report_to"])
    if res.row is None:  # a helper process of `accelerate launch` / torchrun: the main process reports
        return
    if json_out:
        print(json.dumps({**summary(res.row), "skipped": res.skipped, "result": res.row.result}, indent=2))
    else:
        out.print(compare_table([res.row], title="peftbench run"))


@app.command("compare")
@friendly
@with_shared_options
def compare_cmd(
    methods: str = Opt(DEFAULT_METHODS, "--methods", help="Comma-separated methods to compare."),
    config: Optional[Path] = Opt(None, "--config", "-c", help="YAML base config; may list methods: [...] (entries may carry lr_grid: [...])."),
    seeds: int = Opt(1, "--seeds", min=1, help="Run every method with N seeds (--seed, --seed+1, ...); tables show mean ± 95% CI."),
    budget: str = Opt("flops", "--budget", help="flops: every method gets the training FLOPs the reference method spends in --steps/--epochs (default); steps: the same steps for all."),
    reference: Optional[str] = Opt(None, "--reference", help="Method whose steps set the FLOPs budget (default lora if compared, else the first training method)."),
    lr_grid: Optional[str] = Opt(None, "--lr-grid", help="Search each method's learning rate on validation first: 'auto' (its default x 1/3, 1, 3) or rates like 1e-4,1e-3."),
    lr: Optional[float] = Opt(None, help="One learning rate for every method (default: each method's own)."),
    force: bool = Opt(False, help="Re-run configs that already finished."),
    json_out: bool = Opt(False, "--json", help="Print the comparison as JSON."),
    opts: dict[str, Any] = {},
) -> None:
    """Compare methods on one model and task at an equal budget (training FLOPs by default), then tabulate."""
    from peftbench.compare.study import StudyPlan, entries_from, run_study
    from peftbench.report.tables import summary

    if config is None and all(opts[k] is None for k in ("steps", "epochs", "flops", "seconds")):
        opts = {**opts, "steps": MAIN_JOB_STEPS}  # the default study's budget, reported once resolved
    raw, listed = build_config(config, _flags(**opts, lr=lr), [])
    items = listed if listed and methods == DEFAULT_METHODS else [m.strip() for m in methods.split(",") if m.strip()]
    grid: str | list[float] | None = None
    if lr_grid is not None:
        grid = "auto" if lr_grid.strip() == "auto" else _rates(lr_grid)
    first = opts["seed"] or 0
    plan = StudyPlan(raw, entries_from(items), [first + i for i in range(seeds)], budget=budget,
                     reference=reference, lr_grid=grid)
    say = lambda line: err.print(line, highlight=False)  # noqa: E731
    _check_report_to(opts["report_to"])
    study = run_study(plan, lambda r: _execute(r, opts["results_dir"], force, opts["report_to"]).row, say)
    if json_out:
        print(json.dumps({"budget": study.budget, "chosen_lr": study.chosen_lr,
                          "runs": [summary(r) for r in study.rows]}, indent=2))
    else:
        from peftbench.report.aggregate import aggregate
        from peftbench.report.command import print_report

        ids = {r.run_id for r in [*study.rows, *study.search] if r.done}
        print_report(aggregate(opts["results_dir"], run_ids=ids), out)


def _check_report_to(value: Optional[str]) -> None:
    """Refuse an unknown or uninstalled tracker before any run starts."""
    from peftbench.track import check_trackers, parse_kinds

    check_trackers(parse_kinds(value))


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 for r in rates):
        raise UserError(f"--lr-grid '{text}' is not 'auto' or a comma-separated list of positive rates like 1e-4,3e-4,1e-3")
    return rates


@results_app.callback()
@friendly
def results_list(
    ctx: typer.Context,
    results_dir: Path = Opt(RESULTS_DIR, help="Results folder."),
    json_out: bool = Opt(False, "--json", help="Print as JSON."),
) -> None:
    """List stored runs (or: peftbench results show RUN_ID)."""
    if ctx.invoked_subcommand:
        return
    from peftbench.report.tables import runs_table, summary
    from peftbench.store import Store

    with Store.open_existing(results_dir) as store:
        rows = store.list()
    if json_out:
        print(json.dumps([summary(r) for r in rows], indent=2))
    else:
        out.print(runs_table(rows))


@results_app.command("show")
@friendly
def results_show(
    run_id: str = typer.Argument(..., help="Run id or config hash (a unique prefix is enough)."),
    results_dir: Path = Opt(RESULTS_DIR, help="Results folder."),
    json_out: bool = Opt(False, "--json", help="Print as JSON."),
) -> None:
    """Show one stored run: config, metrics, costs and its validation curve."""
    from peftbench.store import Store

    with Store.open_existing(results_dir) as store:
        row = store.get(run_id)
        curve = store.curve(row.run_id)
    doc = {"run_id": row.run_id, "status": row.status, "config_hash": row.config_hash, "folder": str(row.folder),
           "config": row.config, "result": row.result, "error": row.error, "curve": curve}
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    samples = row.run_result.samples if row.run_result else []
    out.print_json(json.dumps({**doc, "result": {k: v for k, v in (row.result or {}).items() if k != "samples"}}))
    if samples:
        from peftbench.report.tables import samples_table

        out.print(samples_table(samples))


def _limit(meta: Any) -> str:
    for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len>=")):
        if getattr(meta, attr, None) is not None:
            return f"{sign}{getattr(meta, attr)}"
    return ""


@app.command("methods")
@friendly
def methods_cmd(json_out: bool = Opt(False, "--json", help="Print as JSON.")) -> None:
    """List methods and their hyper-parameters (defaults and limits)."""
    from rich.table import Table

    from peftbench.methods import REGISTRY

    docs = []
    for name, cls in REGISTRY.items():
        hp = {}
        for key, f in cls.Params.model_fields.items():
            limits = " ".join(_limit(m) for m in f.metadata)
            hp[key] = {"default": f.default, "type": str(f.annotation).replace("typing.", ""),
                       "limits": limits, "help": f.description or ""}
        docs.append({"method": name, "summary": cls.summary, "default_lr": cls.default_lr,
                     "can_merge": cls.can_merge, "params": hp})
    if json_out:
        print(json.dumps(docs, indent=2, default=str))
        return
    table = Table(title="methods")
    for col in ("method", "default lr", "hyper-parameters (default)", "what it does"):
        table.add_column(col)
    for d in docs:
        hp = "\n".join(f"{k}={v['default']!r} {v['limits']}".strip() for k, v in d["params"].items()) or "-"
        table.add_row(d["method"], f"{d['default_lr']:g}" if d["default_lr"] else "-", hp, d["summary"])
    out.print(table)


@app.command("export")
@friendly
def export_cmd(
    run_id: str = typer.Argument(..., help="Run id or config hash (a unique prefix is enough)."),
    out_dir: Path = typer.Argument(..., help="New folder to write."),
    merge: bool = Opt(False, help="Write a plain Hugging Face model with the adapter merged in (checked within 1e-4)."),
    results_dir: Path = Opt(RESULTS_DIR, help="Results folder."),
    json_out: bool = Opt(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a stored run's adapter folder, or with --merge a merged plain model."""
    from peftbench.export import export
    from peftbench.store import Store

    with Store.open_existing(results_dir) as store:
        row = store.get(run_id)
    info = export(row, out_dir, merge)
    if json_out:
        print(json.dumps({**info, "folder": str(out_dir)}, indent=2))
    else:
        what = "merged model" if merge else "adapter"
        extra = f" (merged outputs within {info['max_abs_diff']:.1e} of the adapter's)" if merge else ""
        out.print(f"wrote the {what} of run {row.run_id} to {out_dir}{extra}", highlight=False)


@app.command("sweep")
@friendly
def sweep_cmd(
    file: Path = typer.Argument(..., help="Sweep file: base: (a run config) and axes: (lists whose product is run)."),
    workers: int = Opt(1, "--workers", "-w", help="Runs at once on this machine (one GPU each where GPUs exist)."),
    backend: str = Opt("local", "--backend", help="local (worker processes) or ray (one task per run; a local Ray unless --address)."),
    address: Optional[str] = Opt(None, "--address", help="Ray cluster address (with --backend ray)."),
    force: bool = Opt(False, help="Re-run configs that already finished."),
    results_dir: Path = Opt(RESULTS_DIR, help="Results folder (SQLite + run folders)."),
    report_to: Optional[str] = Opt(None, help="Also log runs to tensorboard, mlflow and/or wandb (offline)."),
) -> None:
    """Run every configuration of a sweep file, resumably (done configs are skipped by config hash)."""
    from peftbench.sweep import run_sweep
    from peftbench.track import parse_kinds

    summary = run_sweep(file, results_dir, workers=workers, backend=backend, address=address, force=force,
                        log=lambda line: out.print(line, highlight=False), report_to=parse_kinds(report_to))
    if summary.failed:
        raise typer.Exit(1)


@app.command("report")
@friendly
def report_cmd(
    results_dir: Path = Opt(RESULTS_DIR, help="Results folder."),
    html: Optional[Path] = Opt(None, "--html", help="Write one self-contained HTML report (plots, sortable tables, samples, configs)."),
    csv: Optional[Path] = Opt(None, "--csv", help="Write the comparison as CSV (one row per method cell)."),
    json_path: Optional[Path] = Opt(None, "--json", help="Write the whole aggregate as JSON."),
    markdown: Optional[Path] = Opt(None, "--markdown", "--md", help="Write the tables as Markdown."),
    plots: Optional[Path] = Opt(None, "--plots", help="Write the PNG plots into this folder."),
    resamples: int = Opt(1000, "--resamples", min=100, help="Paired-bootstrap resamples over test examples."),
    fraction: float = Opt(0.9, "--fraction", min=0.01, max=1.0, help="Report the training FLOPs to reach this fraction of the best validation score."),
) -> None:
    """Aggregate stored runs: mean ± 95% CI over seeds, paired bootstrap against the best, curves, Pareto plots."""
    from peftbench.report.command import report

    report(results_dir, html=html, csv=csv, json_path=json_path, markdown=markdown, plots_dir=plots,
           console=out, resamples=resamples, target_fraction=fraction)


@app.command("predict")
@friendly
def predict_cmd(
    run_id: str = typer.Argument(..., help="Run id or config hash (a unique prefix is enough)."),
    texts: Optional[list[str]] = typer.Argument(None, help="Inputs (image paths for image runs)."),
    file: Optional[Path] = Opt(None, "--file", help="CSV/JSON/JSONL/Parquet with the run's input columns."),
    out_file: Optional[Path] = Opt(None, "--out", help="Also write inputs + predictions as JSONL."),
    results_dir: Path = Opt(RESULTS_DIR, help="Results folder."),
) -> None:
    """Predict with a stored run: label names, generated text, or the chosen answer."""
    from peftbench.predict import predict_command

    predict_command(run_id, texts or [], file, out_file, results_dir, out)


@app.command("tasks")
@friendly
def tasks_cmd(json_out: bool = Opt(False, "--json", help="Print as JSON.")) -> None:
    """List task kinds: the model families each takes, its metrics and default columns."""
    from rich.table import Table

    from peftbench.tasks import REGISTRY

    docs = [{"task": k, "summary": c.summary, "families": list(c.families), "metrics": list(c.metrics),
             "select_metric": c.select_metric, "columns": dict(c.default_columns)} for k, c in REGISTRY.items()]
    if json_out:
        print(json.dumps(docs, indent=2))
        return
    table = Table(title="tasks")
    for col in ("task", "model families", "metrics", "default columns", "what it does"):
        table.add_column(col)
    for d in docs:
        table.add_row(d["task"], ", ".join(d["families"]), ", ".join(d["metrics"]),
                      "\n".join(f"{k}: {v}" for k, v in d["columns"].items()), d["summary"])
    out.print(table)


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()  # load reports are noise here; errors still show
    # peft 0.21 calls a transformers 5 API deprecated for v6; users can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    app()


if __name__ == "__main__":
    main()
