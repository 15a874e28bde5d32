"""The recipe: config -> task + model + method -> train (measured) -> store.

Everything that can be wrong with the user's input is checked before the store is
touched, so bad input leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from contextlib import closing
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

import peftbench
from peftbench import models
from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.measure.memory import peak_bytes, reset_peak
from peftbench.measure.size import count_parameters, dir_bytes
from peftbench.methods import get_method
from peftbench.methods.base import Context, Method
from peftbench.store import RunRow, Store
from peftbench.tasks import get_task
from peftbench.train import optim
from peftbench.train.loop import Quiet, Reporter, budget_steps, train


def versions() -> dict[str, str]:
    import peft

    return {"peftbench": peftbench.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def normalize(cfg: RunConfig) -> tuple[RunConfig, Method]:
    """Fill in method defaults (validating them) and the method's learning rate."""
    method = get_method(cfg.method.name)(cfg.method.params)
    cfg = cfg.model_copy(deep=True)
    cfg.method.params = method.normalized_params()
    if not method.trains:
        cfg.train.lr = None  # nothing trains, so no rate may split otherwise equal configs
    elif cfg.train.lr is None:
        cfg.train.lr = optim.default_lr(cfg.train.optimizer, method.default_lr)
    return cfg, method


def config_hash(cfg: RunConfig) -> str:
    """Hash of the normalized config plus major.minor of the numerics-relevant packages."""
    v = {k: ".".join(s.split(".")[:2]) for k, s in versions().items()}
    blob = json.dumps({"config": cfg.canonical(), "versions": v}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_task(cfg: RunConfig, method: Method) -> Any:
    """The task, told what the method needs of the model: extra load arguments, or no new head."""
    task = get_task(cfg.task.kind)(cfg.task, method.load_kwargs())  # a method may refuse this machine here
    task.lm_scoring = method.lm_scoring
    return task


def excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class RunOutcome:
    row: RunRow
    skipped: bool


def run(
    cfg: RunConfig, results_dir: str | Path, force: bool = False, reporter: Reporter = Quiet(),
    log: Callable[[str], None] = lambda s: None,
) -> RunOutcome:
    cfg, method = normalize(cfg)
    digest = config_hash(cfg)
    if Path(results_dir, "results.sqlite").exists() and not force:
        with closing(Store(results_dir)) as existing:
            done = existing.find_done(digest)
        if done:
            log(f"{cfg.method.name}: already done as {done.run_id} (use --force to re-run)")
            return RunOutcome(done, skipped=True)

    # -- everything below may still refuse bad input; nothing is stored yet ----------
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
    task.load_data()
    model, _ = task.load_model(cfg.model)
    total_steps = budget_steps(cfg.train, task.train_size) if method.trains else 0
    ctx = Context(task.peft_task_type, models.resolve(cfg.model), max(total_steps, 1),
                  family=task.family, head_modules=list(task.head_modules))
    method.check(ctx)
    n_samples = min(cfg.task.samples, task.split_size("test"))
    untuned = task.evaluate(model, "test", cfg.train.eval_batch_size, limit=n_samples).predictions if n_samples else []
    method.prepare_task(task)
    model = method.apply(model, ctx)
    device = pick_device()
    model.to(device)
    params = count_parameters(model)

    store = Store(results_dir)
    run_id = store.begin(digest, cfg.canonical(), cfg.method.name, cfg.model.name, cfg.task.kind)
    staged = store.staging(run_id)
    try:
        torch.manual_seed(cfg.train.seed)
        reset_peak(device)
        meter, eval_meter = FlopMeter(), FlopMeter()
        log(f"{cfg.method.name}: {params['trainable']:,} trainable of {params['total']:,} parameters, "
            f"{total_steps} steps, lr {cfg.train.lr}")
        out = train(model, method, task, cfg.train, cfg.train.lr, total_steps, device, meter, eval_meter, reporter)
        t0 = time.perf_counter()
        test = task.evaluate(model, "test", cfg.train.eval_batch_size, eval_meter,  # scored once, here
                             lambda done, total: reporter.evaluating("test", done, total))
        test_seconds = time.perf_counter() - t0
        peak, peak_kind = peak_bytes(device)
        method.save(model, staged / "adapter")
        selected = next((p for p in out.curve if p.step == out.best_step), out.curve[-1])
        samples = [
            {"input": excerpt(src), "target": target, "untuned": task.render(u), "tuned": task.render(t)}
            for i, (u, t) in enumerate(zip(untuned, test.predictions))
            for src, target in [task.example("test", i)]
        ]
        result = {
            "test": test.metrics,
            "validation": selected.metrics,
            "metrics": list(task.metrics),
            "select_metric": select,
            "best_step": out.best_step,
            "lr": cfg.train.lr,
            "optimizer": cfg.train.optimizer if method.trains else None,
            "costs": {
                "params_total": params["total"], "params_trainable": params["trainable"],
                "trainable_pct": params["trainable_pct"],
                "train_flops": meter.total, "train_forward_flops": meter.forward_flops,
                "train_backward_flops": meter.backward_flops, "flop_shapes_counted": meter.counted_shapes,
                "eval_flops": eval_meter.total, "steps": out.steps, "tokens": out.tokens,
                "train_seconds": out.train_seconds, "eval_seconds": out.eval_seconds + test_seconds,
                "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
                "adapter_bytes": dir_bytes(staged / "adapter"),
            },
            "task": task.describe(),
            "device": str(device),
            "versions": versions(),
            "samples": samples,
        }
        (staged / "config.json").write_text(json.dumps(cfg.canonical(), indent=2))
        (staged / "metrics.json").write_text(json.dumps(result, indent=2))
        (staged / "curve.json").write_text(json.dumps(out.curve_dicts(), indent=2))
        (staged / "predictions.json").write_text(json.dumps({"predictions": test.predictions, "references": test.references}))
        store.finish(run_id, result, out.curve_dicts(), staged)
    except KeyboardInterrupt:
        store.fail(run_id, "interrupted", "interrupted by the user", staged)
        raise
    except BaseException as err:
        store.fail(run_id, "failed", "".join(traceback.format_exception_only(err)).strip(), staged)
        raise
    else:
        return RunOutcome(store.get(run_id), skipped=False)
    finally:
        store.close()
