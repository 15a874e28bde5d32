"""Experiment tracking (--report-to tensorboard,mlflow,wandb): the learning curve, the config and
the final costs, written to local files under the results folder; nothing is sent anywhere.

A Tracker is a training-loop Reporter; Tee runs it beside the CLI's progress bars.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from peftbench.config import flatten
from peftbench.errors import UserError, suggest

if TYPE_CHECKING:  # not at run time: checking --report-to should not wait for torch to import
    from peftbench.train.loop import EvalPoint, Reporter

# kind -> (module to import, name in messages)
KINDS = {"tensorboard": ("tensorboard", "TensorBoard"), "mlflow": ("mlflow", "MLflow"), "wandb": ("wandb", "Weights & Biases")}
EXPERIMENT = "peftbench"  # MLflow experiment and W&B project


def parse_kinds(value: str | list[str] | None) -> list[str]:
    """'mlflow,tensorboard' (or a list of such) -> known kinds, in order, once each."""
    items = value.split(",") if isinstance(value, str) else [p for v in value or [] for p in v.split(",")]
    kinds = list(dict.fromkeys(k.strip().lower() for k in items if k.strip()))
    for k in kinds:
        if k not in KINDS:
            raise UserError(f"unknown --report-to '{k}'{suggest(k, KINDS)}; known: {', '.join(sorted(KINDS))}")
    return kinds


def check_trackers(kinds: list[str]) -> None:
    """Refuse an unknown kind or a missing package before anything runs (creates nothing)."""
    import importlib.util

    for k in parse_kinds(kinds):
        module, name = KINDS[k]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--report-to {k} needs {name}: pip install 'peftbench[track]'")


def _numbers(d: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a nested dict as prefix/a/b -> float (bools and text left out)."""
    return {k: float(v) for k, v in flatten(d, prefix, "/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _plain(v: Any) -> str | int | float | bool:
    """A config value as a scalar a tracker takes as a parameter."""
    return v if isinstance(v, (str, int, float, bool)) else json.dumps(v)


class Sink(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...
    def summary(self, values: dict[str, float], step: int) -> None: ...
    def close(self, failed: bool) -> None: ...


class TensorBoardSink:
    def __init__(self, root: Path, run_name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard" / run_name))
        self.params = {k: _plain(v) for k, v in flatten(config).items()}
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def summary(self, values: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.log(values, step)
        # The HPARAMS tab: written into this run's own event file (add_hparams would open a sub-run).
        for s in hparams(self.params, values):
            self.writer.file_writer.add_summary(s)

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowSink:
    def __init__(self, root: Path, run_name: str, config: dict[str, Any]) -> None:
        # mlflow-skinny has no SQL store, and MLflow 3 refuses the file store unless asked: it is
        # still supported, and needs no server. No telemetry: nothing leaves the machine.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(root)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params = [Param(k, str(_plain(v))[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def summary(self, values: dict[str, float], step: int) -> None:
        self.log(values, step)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def tracking_uri(root: Path) -> str:
    """The MLflow store of a results folder (for: mlflow ui --backend-store-uri URI)."""
    return (Path(root).resolve() / "mlruns").as_uri()


class WandbSink:
    def __init__(self, root: Path, run_name: str, config: dict[str, Any]) -> None:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports over the network
        import wandb

        # Offline always (an argument wins over WANDB_MODE): runs sync later with `wandb sync`.
        # console="off": no capturing of stdout/stderr, where the progress bars draw.
        self.run = wandb.init(
            mode="offline", dir=str(root), project=EXPERIMENT, name=run_name, config=config, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


SINKS = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink, "wandb": WandbSink}


class Tracker:
    """A Reporter that logs each validation point, then the final result (finish), to every sink."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self.last_step = 0
        self.closed = False

    def start(self, total_steps: int) -> None: ...
    def step(self, step: int) -> None: ...
    def evaluating(self, split: str, done: int, total: int) -> None: ...

    def evaluated(self, point: EvalPoint) -> None:
        values = _numbers(point.metrics, "validation")
        values.update({"train_flops": float(point.train_flops), "tokens": float(point.tokens), "seconds": point.seconds})
        if point.train_loss is not None:
            values["train_loss"] = point.train_loss
        self.last_step = point.step
        for s in self.sinks:
            s.log(values, point.step)

    def finish(self, result: dict[str, Any]) -> None:
        """Test metrics (absent for validation-only runs), the selected validation point and the costs."""
        values = {**_numbers(result.get("test") or {}, "test"), **_numbers(result.get("costs") or {}, "costs")}
        values.update(_numbers(result.get("validation") or {}, "best_validation"))
        if result.get("best_step") is not None:
            values["best_step"] = float(result["best_step"])
        for s in self.sinks:
            s.summary(values, self.last_step)

    def close(self, failed: bool = False) -> None:
        if not self.closed:
            self.closed = True
            for s in self.sinks:
                s.close(failed)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(failed=exc_type is not None)


def open_trackers(kinds: list[str], root: Path, run_name: str, config: dict[str, Any]) -> Tracker:
    """A Tracker writing to each kind's files under root (tensorboard/, mlruns/, wandb/); none: a no-op."""
    kinds = parse_kinds(kinds)
    check_trackers(kinds)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = []
    try:
        for k in kinds:
            try:
                sinks.append(SINKS[k](root, run_name, config))
            except ImportError as err:  # installed but broken (a clashing dependency)
                raise UserError(f"--report-to {k}: {KINDS[k][1]} does not import ({err}); "
                                "pip install 'peftbench[track]'") from None
    except BaseException:
        Tracker(sinks).close(failed=True)  # the sinks already opened
        raise
    return Tracker(sinks)


class Tee:
    """Several reporters as one (the progress bars and a Tracker)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def start(self, total_steps: int) -> None:
        for r in self.reporters:
            r.start(total_steps)

    def step(self, step: int) -> None:
        for r in self.reporters:
            r.step(step)

    def evaluating(self, split: str, done: int, total: int) -> None:
        for r in self.reporters:
            r.evaluating(split, done, total)

    def evaluated(self, point: EvalPoint) -> None:
        for r in self.reporters:
            r.evaluated(point)
