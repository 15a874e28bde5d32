"""What a run produces, typed: scores, settings, costs, samples, versions, curve and predictions.

`RunResult.to_dict()` is exactly what metrics.json and the store's result column hold (same
keys, same order), so stored results stay byte-identical. `from_dict` also reads results
stored by older versions: every older-format fallback lives here, not in the readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LEGACY_METRICS = ["accuracy", "macro_f1"]  # runs stored before results named their metrics (all classification)
LEGACY_SELECT = "macro_f1"  # ... or their select metric

Curve = list[dict[str, Any]]  # validation points {step, tokens, train_flops, seconds, train_loss, metrics{...}}


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class Budget:
    kind: str  # steps, epochs, flops or seconds
    value: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def of(cls, stored: dict[str, Any] | None, config: dict[str, Any]) -> Budget:
        if stored:
            return cls(stored.get("kind", ""), stored.get("value"))
        train = config.get("train", {})  # older runs did not store their budget: the config's
        for kind in ("flops", "seconds", "steps", "epochs"):
            if train.get(kind) is not None:
                return cls(kind, float(train[kind]))
        return cls("epochs", 1.0)


@dataclass
class Latency:
    """measure.latency's figures: batch 1 and batch N, and the same for the merged model."""

    b1_ms: float | None
    bN_ms: float | None
    batch: int | None
    throughput: float | None
    merged: Latency | None = None
    merged_matches: bool | None = None  # only on the merged figures
    same_model: bool | None = None  # merged figures of a method whose model is already plain
    repeats: dict[str, int] | None = None  # timed repeats of b1 and bN (adaptive: measure/latency.py)
    interval_met: dict[str, bool] | None = None  # whether each median's 95% interval got within +-5%
    iqr_ms: dict[str, list[float]] | None = None  # b1 / bN: the repeats' first and third quartiles
    machine: dict[str, Any] | None = None  # the load while timing: other_load, cores, threads, load_average, busy
    stopped: dict[str, str] | None = None  # why each series' repeats ended: interval, cap or time

    OPTIONAL = ("merged_matches", "same_model", "repeats", "interval_met", "iqr_ms", "machine", "stopped")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Latency | None:
        if not d:
            return None
        return cls(d.get("b1_ms"), d.get("bN_ms"), d.get("batch"), d.get("throughput"), cls.from_dict(d.get("merged")),
                   *(d.get(k) for k in cls.OPTIONAL))

    @property
    def b1_q1_ms(self) -> float | None:
        return self.iqr_ms["b1"][0] if self.iqr_ms and "b1" in self.iqr_ms else None

    @property
    def b1_q3_ms(self) -> float | None:
        return self.iqr_ms["b1"][1] if self.iqr_ms and "b1" in self.iqr_ms else None

    @property
    def busy(self) -> bool:
        return bool(self.machine and self.machine.get("busy"))

    @property
    def timed_short(self) -> bool:
        """A series stopped on measure.latency_seconds before its median's interval got within +-5%."""
        return bool(self.stopped and "time" in self.stopped.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"b1_ms": self.b1_ms, "bN_ms": self.bN_ms, "batch": self.batch, "throughput": self.throughput}
        if self.merged is not None:
            out["merged"] = self.merged.to_dict()
        for key in self.OPTIONAL:  # only where measure.latency sets them
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# Costs keys added after results were stored; to_dict writes them after the older keys, and only when set.
COSTS_ADDED = ("train_hardware_flops", "tokens_per_second", "model_flops_per_second", "mfu", "peak_flops", "peak_source",
               "peak_memory_reserved_bytes", "setup_flops", "forgetting", "lm_loss_before", "lm_loss_after", "forgetting_note")


@dataclass
class Costs:
    """What the run cost; None where an older run did not measure it."""

    params_total: int | None = None
    params_trainable: int | None = None
    trainable_pct: float | None = None
    train_flops: int | None = None
    train_forward_flops: int | None = None
    train_backward_flops: int | None = None
    flop_shapes_counted: int | None = None
    eval_flops: int | None = None
    steps: int | None = None
    tokens: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    adapter_bytes: int | None = None
    latency: Latency | None = None
    # Added later (COSTS_ADDED): written only where measured, so older results round-trip unchanged.
    train_hardware_flops: int | None = None  # train_flops plus gradient checkpointing's recomputed forwards
    tokens_per_second: float | None = None  # training tokens per training second
    model_flops_per_second: float | None = None  # train_flops per training second
    mfu: float | None = None  # model_flops_per_second / peak_flops (a fraction)
    peak_flops: float | None = None  # the device's peak FLOP/s for the precision used
    peak_source: str | None = None  # where peak_flops came from (GPU table, CPU probe, --peak-tflops)
    peak_memory_reserved_bytes: int | None = None  # CUDA: the caching allocator's peak reservation
    setup_flops: int | None = None  # a data-driven initialisation's forward passes (EVA, CorDA), not in train_flops
    forgetting: float | None = None  # lm_loss_after - lm_loss_before on general text (positive: forgot)
    lm_loss_before: float | None = None  # the untuned model's LM loss on the general-text sample
    lm_loss_after: float | None = None  # the tuned model's
    forgetting_note: str | None = None  # why forgetting was not measured, where it was asked for

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Costs:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "latency"}
        return cls(**known, latency=Latency.from_dict(d.get("latency")))

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in COSTS_ADDED}
        out["latency"] = self.latency.to_dict() if self.latency else None
        out.update((k, v) for k in COSTS_ADDED if (v := getattr(self, k)) is not None)
        return out

    def value(self, path: str) -> float | None:
        """A number by dotted path ("train_flops", "latency.merged.b1_ms"); None where absent."""
        cur: Any = self
        for part in path.split("."):
            cur = getattr(cur, part, None)
        return _number(cur)


@dataclass
class Sample:
    """One test example with the untuned and the tuned model's rendered outputs."""

    input: str
    target: Any
    untuned: str
    tuned: str

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "target": self.target, "untuned": self.untuned, "tuned": self.tuned}


@dataclass
class Predictions:
    """The test predictions as scored, with their references (predictions.json)."""

    predictions: list[Any]
    references: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "references": self.references}


@dataclass
class RunResult:
    """One finished run's scores, settings and costs (metrics.json)."""

    test: dict[str, float] | None  # None for a validation-only (learning-rate search) run
    validation: dict[str, float]  # at the selected step
    metrics: list[str]  # the task's headline metrics, in order
    select_metric: str
    best_step: int | None
    lr: float | None
    budget: Budget
    optimizer: str | None
    costs: Costs
    task: dict[str, Any]  # Task.describe(): its keys vary with the task kind
    device: str | None
    processes: int | None
    versions: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    precision: str | None = None  # train.precision and model.dtype as resolved; None in runs stored before them
    dtype: str | None = None
    threads: dict[str, Any] | None = None  # {count, wait_policy, why, matmul: {backend, why}} (train/threads.py, train/matmul.py); None in older runs
    weights: str | None = None  # "dropped": a cluster run's full weights were not kept (--keep-weights adapters)

    @property
    def scored_on_test(self) -> bool:
        return self.test is not None

    def test_score(self, metric: str) -> float | None:
        return _number((self.test or {}).get(metric))

    def validation_score(self, metric: str) -> float | None:
        return _number(self.validation.get(metric))

    @property
    def labels(self) -> list[Any] | None:
        return self.task.get("labels")

    @property
    def family(self) -> str | None:
        return self.task.get("family")

    def to_dict(self) -> dict[str, Any]:
        # precision and dtype after device, only when known: older results stay byte-identical
        numerics = {k: getattr(self, k) for k in ("precision", "dtype") if getattr(self, k) is not None}
        machine = {"threads": self.threads} if self.threads is not None else {}  # likewise, after processes
        return {
            "test": self.test, "validation": self.validation, "metrics": self.metrics,
            "select_metric": self.select_metric, "best_step": self.best_step, "lr": self.lr,
            "budget": self.budget.to_dict(), "optimizer": self.optimizer, "costs": self.costs.to_dict(),
            "task": self.task, "device": self.device, **numerics, "processes": self.processes, **machine,
            "versions": self.versions,
            "samples": [s.to_dict() for s in self.samples],
            **({"weights": self.weights} if self.weights else {}),  # only where set: older results stay identical
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], config: dict[str, Any] | None = None) -> RunResult:
        """A stored result; `config` (the run's) fills in what older versions did not store."""
        config = config or {}
        return cls(
            test=d.get("test"), validation=d.get("validation") or {}, metrics=list(d.get("metrics", LEGACY_METRICS)),
            select_metric=d.get("select_metric") or LEGACY_SELECT, best_step=d.get("best_step"),
            lr=d["lr"] if "lr" in d else config.get("train", {}).get("lr"), budget=Budget.of(d.get("budget"), config),
            optimizer=d.get("optimizer"), costs=Costs.from_dict(d.get("costs") or {}), task=d.get("task") or {},
            device=d.get("device"), processes=d.get("processes"), versions=d.get("versions") or {},
            samples=[Sample(s.get("input", ""), s.get("target", ""), s.get("untuned", ""), s.get("tuned", ""))
                     for s in d.get("samples") or []],
            precision=d.get("precision"), dtype=d.get("dtype"), threads=d.get("threads"), weights=d.get("weights"),
        )


@dataclass
class RunOutput:
    """Everything a run produces, as Store.finish writes it into the run folder and the index."""

    result: RunResult
    curve: Curve
    predictions: Predictions | None  # None when test was not scored
