"""The recipe: config -> task + model + method -> train (measured) -> store.

Everything that can be wrong with the user's input is checked before the store is
touched, so bad input leaves nothing behind.
"""

from __future__ import annotations

from contextlib import closing
from importlib import metadata
from itertools import islice
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

import peftbench
from peftbench import models, reuse
from peftbench.config import DEFAULT_DATA, RunConfig
from peftbench.errors import Interrupted, UserError
from peftbench.measure import efficiency
from peftbench.measure import forgetting as forget
from peftbench.measure.flops import FlopMeter, shape_key
from peftbench.measure.latency import measure as measure_latency
from peftbench.measure.phases import phase
from peftbench.measure.memory import peak_bytes, peak_reserved_bytes, reset_peak
from peftbench.measure.size import count_parameters, dir_bytes
from peftbench.methods import get_method
from peftbench.methods.base import Context, Method, SetupData
from peftbench.store import Budget as StoredBudget
from peftbench.store import folder as run_folder
from peftbench.store import Costs, Latency, Predictions, RunOutput, RunResult, RunRow, Sample, Store
from peftbench.tasks import get_task, pooling, truncation
from peftbench.track import Tee, check_trackers, open_trackers
from peftbench.train import grad_checkpointing, lm_loss, malloc, matmul, optim, packing, parallel, precision, threads
from peftbench.train.checkpoint import Checkpoints
from peftbench.train.loop import Budget, Quiet, Reporter, train


def versions() -> dict[str, str]:
    """Exact versions of what a run's numbers depend on, stored with every run."""
    import peft

    try:  # read from metadata: importing datasets only for its version would cost a second
        data_version = metadata.version("datasets")
    except metadata.PackageNotFoundError:
        data_version = "not installed"
    return {"peftbench": peftbench.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "datasets": data_version}


def normalize(cfg: RunConfig) -> tuple[RunConfig, Method]:
    """Fill in method defaults (validating them) and the method's learning rate."""
    method = get_method(cfg.method.name)(cfg.method.params)
    _check_data_given(cfg)
    cfg = cfg.model_copy(deep=True)
    cfg.method.params = method.normalized_params()
    if not method.trains:  # nothing trains, so no rate or budget may split otherwise equal configs
        cfg.train.lr = None
        cfg.train.steps = cfg.train.epochs = cfg.train.flops = cfg.train.seconds = None
        cfg.train.gradient_checkpointing = False
    elif cfg.train.lr is None:
        if method.default_lr is None and cfg.train.optimizer != "prodigy":
            tuned = getattr(method, "tuned", None)
            why = (f": it learned at no rate tried on MiniLM / TweetEval emotion (best validation macro-F1 {tuned.validation:.3f} "
                   f"over {', '.join(f'{x:g}' for x in tuned.tried)})") if tuned else ""
            raise UserError(f"method '{method.name}' has no default learning rate{why}; pass --lr")
        cfg.train.lr = optim.default_lr(cfg.train.optimizer, method.default_lr)
    cfg.train.head_lr = optim.resolve_head_lr(cfg.train, method.default_head_lr) if method.trains else None
    cfg.task.pooling = pooling.resolve(cfg.task, cfg.model)  # auto: the checkpoint's own (decided before hashing)
    # auto decided here, for this machine: the store records and hashes what the run really uses
    cfg.train.precision, cfg.model.dtype = precision.resolve(cfg.train.precision, cfg.model.dtype, pick_device(),
                                                             method.frozen_base)
    return cfg, method


def _check_data_given(cfg: RunConfig) -> None:
    """The default data is a classification dataset: another task without data of its own would fail later
    on its columns, with a hint to remap them."""
    data = cfg.task.data
    if cfg.task.kind == "classification" or data.source != DEFAULT_DATA or data.train_file or data.test_file:
        return
    builtin = get_task(cfg.task.kind).builtin_data
    example = f"--data {builtin} (built in) or " if builtin else ""
    raise UserError(f"task '{cfg.task.kind}' needs data of its kind, and the default ({DEFAULT_DATA}) is a text "
                    f"classification dataset; pass {example}--data FILE_OR_FOLDER")


def stored_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as the store shows it: canonical, except that data read from split files names those files
    as its source (the default source would otherwise claim the built-in data). The hash stays canonical's."""
    out = cfg.canonical()
    data = out["task"]["data"]
    files = [data[k] for k in ("train_file", "validation_file", "test_file") if data.get(k)]
    if files:
        data["source"] = " + ".join(files)
    return out


def config_hash(cfg: RunConfig) -> str:
    """Hash of the normalized config plus major.minor of the numerics-relevant packages (store/folder.py)."""
    return run_folder.digest(cfg.canonical(), versions())


def make_task(cfg: RunConfig, method: Method) -> Any:
    """The task, told what the method needs of the model: extra load arguments, or no new head."""
    prec, dtype = precision.resolve(cfg.train.precision, cfg.model.dtype, pick_device(), method.frozen_base)
    kwargs = {**method.load_kwargs(), **precision.load_kwargs(dtype)}  # a method may refuse this machine here
    task = get_task(cfg.task.kind)(cfg.task, kwargs)
    task.lm_scoring = method.lm_scoring
    task.precision = prec  # evaluation runs under the training's autocast
    return task


def excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_budget(budget: Budget) -> str:
    if budget.kind == "flops":
        return f"{budget.limit:.4g} training FLOPs"
    return f"{budget.limit:g} {'steps' if budget.kind == 'steps' else 'training seconds'}"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prepared:
    task: Any
    model: torch.nn.Module  # with the method applied
    budget: Budget
    select: str
    untuned: list[Any]  # the untouched model's predictions on the first test samples
    setup_flops: int = 0  # forward passes of a data-driven initialisation (EVA, CorDA), apart from training
    forgetting: tuple[Any, float] | str | None = None  # (probe, LM loss before tuning), or why it is skipped


def prepare(cfg: RunConfig, method: Method, samples: bool, forgetting: bool = False) -> Prepared:
    """Task, data and model with the method applied; refuses bad input (UserError) before anything is stored."""
    torch.manual_seed(cfg.train.seed)  # the task head's initialisation is part of the run
    if method.trains:
        optim.require(cfg.train.optimizer)
    task = make_task(cfg, method)
    select = cfg.train.select_metric or task.select_metric
    if select not in (*task.metrics, "loss"):
        raise UserError(
            f"select metric '{select}' is not one task '{task.kind}' reports; "
            f"use one of: {', '.join((*task.metrics, 'loss'))}"
        )
    with phase("load data"):
        task.load_data()
    with phase("load model"):
        model, tokenizer = task.load_model(cfg.model)
    budget = Budget.of(cfg.train, task.train_size) if method.trains else Budget("steps", 0)
    data = SetupData(lambda n: [dict(b) for b in islice(task.train_batches(cfg.train.batch_size, cfg.train.seed), n)], FlopMeter())
    ctx = Context(task.peft_task_type, models.resolve(cfg.model), max(budget.steps, 1) if budget.steps is not None else None,
                  family=task.family, head_modules=list(task.head_modules), data=data)
    method.check(ctx)
    if cfg.train.packing and method.trains:
        packing.require(task.family, task, method.name)
        task.packing = True
    n_samples = min(cfg.task.samples, task.split_size("test")) if samples and cfg.train.test else 0
    with phase("untuned samples"):
        untuned = reuse.untuned(  # computed once per process for runs that share model, data and random state
            ("untuned", cfg.task.model_dump(mode="json"), reuse.data_stamp(cfg.task.data), cfg.model.model_dump(mode="json"), reuse.stamp(cfg.model.name),
             task.model_kwargs, task.lm_scoring, task.precision, cfg.train.eval_batch_size, n_samples),
            lambda: task.evaluate(model, "test", cfg.train.eval_batch_size, limit=n_samples).predictions) if n_samples else []
    lm_before: tuple[Any, float] | str | None = None
    if forgetting:
        def before() -> tuple[Any, float] | str:
            probe = forget.prepare(model, tokenizer, task.family, cfg.model)
            return probe if isinstance(probe, str) else (probe, probe.loss(model))

        with phase("forgetting"):  # the untouched model's LM loss on general text: once per process and model
            lm_before = reuse.memo("forgetting", reuse.key(cfg.model.model_dump(mode="json"), reuse.stamp(cfg.model.name),
                                                           task.family, task.model_kwargs, task.precision), before)
    with phase("apply method"):
        method.prepare_task(task)
        model = precision.upcast_trainable(method.apply(model, ctx))
    with phase("load data"):
        task.truncation(cfg.model)  # the share of each split max_length cuts (stored; warned once)
    if cfg.train.gradient_checkpointing:
        grad_checkpointing.enable(model, cfg.model.name)
    return Prepared(task, model, budget, select, untuned, data.meter.total, lm_before)


def messages(task: Any) -> list[str]:
    """What the user should know about how the data was read (truncation, column matches); once per process."""
    cut = truncation.warning(task.truncated, task.truncation_key)
    return ([cut] if cut else []) + [f"note: {n}" for n in task.notes if reuse.first_time(n)]


def check(cfg: RunConfig) -> None:
    """Refuse (UserError) what `run` would refuse before training: the method against this task, model and
    machine, its settings against the model's layers, the data. Loads and discards the model; nothing is stored."""
    cfg, method = normalize(cfg)
    prepare(cfg, method, samples=False)


def calibrate_flops(cfg: RunConfig, steps: int | None = None) -> int:
    """Training FLOPs the config spends in its first `steps` optimizer steps (default: its own
    steps or epochs budget), counted without training.

    FLOPs depend only on batch shapes, so each distinct shape among those batches gets one
    counted forward + backward of its first row, times the batch size (gradients dropped, no
    update); the rest reuse its figure.
    """
    cfg, method = normalize(cfg)
    if not method.trains:
        raise UserError(f"method '{cfg.method.name}' trains nothing, so it cannot set a FLOPs budget; pick a training method")
    with phase("calibrate"):
        return _calibrate(cfg, method, steps)


def _calibrate(cfg: RunConfig, method: Method, steps: int | None) -> int:
    prep = prepare(cfg, method, samples=False)
    steps = steps if steps is not None else prep.budget.steps
    if steps is None:
        raise UserError("a FLOPs budget is calibrated from a steps or epochs budget; give --steps or --epochs")
    device = pick_device()
    model = prep.model.to(device)
    model.train()
    meter = FlopMeter(cache=reuse.flop_cache(cfg, "train"))  # the reference run then counts nothing again
    batches = prep.task.train_batches(cfg.train.batch_size, cfg.train.seed)
    total = 0
    for _ in range(steps * cfg.train.grad_accum):
        for batch, _share in prep.task.pieces(next(batches), cfg.train.batch_size):  # as the loop runs them
            key = shape_key(batch)
            if key not in meter.cache:
                with precision.autocast(cfg.train.precision, device.type):  # a half base's fp32 head needs it
                    meter.count_step_from_row(model, {k: v.to(device) for k, v in batch.items()}, lm_loss.loss)
                model.zero_grad(set_to_none=True)
            total += sum(meter.cache[key][:2])  # model FLOPs: forward + backward, no recomputation
    return total


def wait_for_same_config(store: Store, digest: str, log: Callable[[str], None], poll: float = 1.0) -> None:
    """Single flight: while a live process on this host trains the same config, wait for it (its result
    is then reused); one on another host is refused when this run would begin (Store.begin)."""
    said = False
    while (other := store.running(digest)) and other[2] == socket.gethostname():
        if not said:
            log(f"waiting for run {other[0]} (pid {other[1]}), which is training the same config")
            said = True
        time.sleep(poll)


@dataclass
class RunOutcome:
    row: RunRow | None  # None in the helper processes of a multi-process run
    skipped: bool


def run(
    cfg: RunConfig, results_dir: str | Path, force: bool = False, reporter: Reporter = Quiet(),
    log: Callable[[str], None] = lambda s: None, report_to: list[str] | None = None,
) -> RunOutcome:
    """Train and measure one config and store it; returns the stored row (or the finished one found).

    report_to: optional trackers (tensorboard, mlflow, wandb) that mirror the run, offline.
    """
    check_trackers(report_to or [])
    malloc.fix_mmap_threshold()  # large activations back to the system when freed, not fragmenting the heap
    cfg, method = normalize(cfg)
    digest = config_hash(cfg)
    if Path(results_dir, "results.sqlite").exists() or Path(results_dir, "runs").is_dir():
        with closing(Store(results_dir)) as existing:  # refuses a damaged index before any work
            if parallel.is_main():  # helper processes of a multi-process run wait for nobody: the main one trains
                wait_for_same_config(existing, digest, log)
            done = None if force else existing.find_done(digest)
        if done:
            log(f"{cfg.method.name}: already done as {done.run_id} (use --force to re-run)")
            return RunOutcome(done, skipped=True)

    # -- everything below may still refuse bad input; nothing is stored yet ----------
    cpu = threads.for_run()  # torch's own count (or --threads N|auto, or a sweep worker's share); recorded below
    gemm = matmul.ensure()  # oneDNN or torch's own for fp32 CPU matmuls (train/matmul.py); recorded below
    prep = prepare(cfg, method, samples=True, forgetting=cfg.measure.forgetting)
    task, model, budget, select, untuned = prep.task, prep.model, prep.budget, prep.select, prep.untuned
    for line in messages(task):
        log(line)
    device = parallel.device() or pick_device()
    model.to(device)
    precision.enable_tf32(cfg.train.precision, device)
    params = count_parameters(model)
    if not parallel.is_main():  # a helper process of a multi-process run: train its share, store nothing
        torch.manual_seed(cfg.train.seed)
        train(model, method, task, cfg.train, cfg.train.lr, budget, device, FlopMeter(), FlopMeter())
        return RunOutcome(None, skipped=False)

    store = Store(results_dir)
    run_id = store.begin(digest, stored_config(cfg), cfg.method.name, cfg.model.name, cfg.task.kind)
    staged = store.staging(run_id)
    tracker = open_trackers(report_to or [], Path(results_dir), f"{cfg.method.name}-{run_id}",
                            {**cfg.canonical(), "run_id": run_id}) if report_to and parallel.is_main() else None
    reporter = Tee(reporter, tracker) if tracker else reporter
    try:
        torch.manual_seed(cfg.train.seed)
        reset_peak(device)
        meter, eval_meter = FlopMeter(cache=reuse.flop_cache(cfg, "train")), FlopMeter(cache=reuse.flop_cache(cfg, "eval"))
        log(f"{cfg.method.name}: {params['trainable']:,} trainable of {params['total']:,} parameters, "
            + (f"budget {describe_budget(budget)}, lr {cfg.train.lr}" if method.trains else "nothing to train"))
        checkpoints = Checkpoints(Path(results_dir, "checkpoints", digest), cfg.train.checkpoint_every, digest, log)
        with phase("train"):
            out = train(model, method, task, cfg.train, cfg.train.lr, budget, device, meter, eval_meter, reporter, checkpoints)
        t0 = time.perf_counter()
        test = None  # a learning-rate search run (train.test false) is judged on validation only
        if cfg.train.test:
            with phase("test"):
                test = task.evaluate(model, "test", cfg.train.eval_batch_size, eval_meter,  # scored once, here
                                     lambda done, total: reporter.evaluating("test", done, total))
        test_seconds = time.perf_counter() - t0
        forgot: dict[str, Any] = {}
        if isinstance(prep.forgetting, tuple):
            with phase("forgetting"):
                probe, before = prep.forgetting
                after = probe.loss(model)
                forgot = {"forgetting": after - before, "lm_loss_before": before, "lm_loss_after": after}
        elif isinstance(prep.forgetting, str):
            forgot = {"forgetting_note": prep.forgetting}
            log(f"note: {prep.forgetting}")
        peak, peak_kind = peak_bytes(device)
        # tokens/s, model FLOP/s and MFU (after the clocks stopped: a CPU's first peak probe is not training time)
        eff = efficiency.measure(out.tokens, meter.total, out.train_seconds, device, cfg.train.precision,
                                 cfg.measure.peak_tflops, parallel.world_size()) if method.trains else None
        with phase("save"):
            method.save(model, store.adapter_dir(staged))
        latency = None  # what a request costs, unmerged and merged; only for runs that are scored on test
        if cfg.measure.latency and cfg.train.test:
            with phase("latency"):
                latency = measure_latency(task, model, method, device, cfg.measure)
        selected = next((p for p in out.curve if p.step == out.best_step), out.curve[-1])
        samples = [
            Sample(excerpt(src), target, task.render(u), task.render(t))
            for i, (u, t) in enumerate(zip(untuned, test.predictions if test else []))
            for src, target in [task.example("test", i)]
        ]
        costs = Costs(
            params_total=params["total"], params_trainable=params["trainable"], trainable_pct=params["trainable_pct"],
            train_flops=meter.total, train_forward_flops=meter.forward_flops,
            train_backward_flops=meter.backward_flops, flop_shapes_counted=meter.counted_shapes,
            eval_flops=eval_meter.total, steps=out.steps, tokens=out.tokens,
            train_seconds=out.train_seconds, eval_seconds=out.eval_seconds + test_seconds,
            peak_memory_bytes=peak, peak_memory_kind=peak_kind, adapter_bytes=dir_bytes(store.adapter_dir(staged)),
            latency=Latency.from_dict(latency),
            train_hardware_flops=meter.hardware_total if method.trains else None,
            setup_flops=prep.setup_flops or None, **forgot,
            peak_memory_reserved_bytes=peak_reserved_bytes(device), **(eff.costs() if eff else {}),
        )
        result = RunResult(
            test=test.metrics if test else None, validation=selected.metrics, metrics=list(task.metrics),
            select_metric=select, best_step=out.best_step, lr=cfg.train.lr,
            budget=StoredBudget(budget.kind, budget.limit), optimizer=cfg.train.optimizer if method.trains else None,
            costs=costs, task=task.describe(), device=str(device), precision=cfg.train.precision, dtype=cfg.model.dtype,
            processes=parallel.world_size(),  # a step saw processes x batch_size examples
            versions=versions(), samples=samples, threads={**cpu.to_dict(), "matmul": gemm},
        )
        predictions = Predictions(test.predictions, test.references) if test else None
        store.finish(run_id, RunOutput(result, out.curve_dicts(), predictions), staged)
        checkpoints.remove()  # finished: nothing left to resume
        if tracker:
            tracker.finish(result.to_dict())
    except KeyboardInterrupt:
        store.fail(run_id, "interrupted", "interrupted by the user", staged)
        raise Interrupted(run_id) from None
    except BaseException as err:
        store.fail(run_id, "failed", "".join(traceback.format_exception_only(err)).strip(), staged)
        if tracker:
            tracker.close(failed=True)
            tracker = None
        raise
    else:
        return RunOutcome(store.get(run_id), skipped=False)
    finally:
        if tracker:
            tracker.close()
        store.close()
