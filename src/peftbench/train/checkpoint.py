"""Mid-run checkpoints: a killed or interrupted run resumes where its last checkpoint left it.

A checkpoint holds everything the next step depends on, so a resumed run's numbers equal an
uninterrupted run's: trainable weights and buffers, the method's own state (AdaLoRA's rank
allocator), optimizer and scheduler state, the torch (and CUDA), Python and NumPy random states,
the data position (batches drawn: the seeded stream is regenerated and skipped), the loop's state
(step, progress, curve, best point, loss accumulator), both FLOP meters and both clocks (a
seconds budget continues from the saved training seconds).

They live in <results>/checkpoints/<config hash>/state.pt: a rerun of the same config, under a
new run id, finds them; the run removes them when it finishes. Written atomically (temporary
file, then rename), holding only tensors, numbers, strings, lists and dicts, and read with
torch.load(weights_only=True), never unrestricted pickle. Multi-process runs write none: each
process has its own random state and share of the data.

train.checkpoint_every unset ("auto"): once the first steps are measured (10 steps or 30
training seconds), a run estimated over 10 minutes (seconds / share of the budget spent)
checkpoints about every 5 training minutes; shorter runs never do.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.methods.base import Method
from peftbench.train import parallel
from peftbench.train.budget import EvalSchedule, Stopwatch, TokenCount

FORMAT = 1
FILE = "state.pt"
AUTO_OVER_SECONDS = 600.0  # runs estimated longer than this checkpoint by default ...
AUTO_PERIOD_SECONDS = 300.0  # ... about this often
PROBE_STEPS, PROBE_SECONDS = 10, 30.0  # measured before the estimate is trusted


def auto_interval(step: int, seconds: float, progress: float) -> int | None:
    """Steps between checkpoints for an unset checkpoint_every: None while too early to tell,
    0 for a run estimated at 10 minutes or less, else about 5 training minutes' worth of steps."""
    if step < PROBE_STEPS and seconds < PROBE_SECONDS and progress < 1.0:
        return None
    if progress <= 0.0 or seconds <= 0.0 or seconds / progress <= AUTO_OVER_SECONDS:
        return 0
    return max(1, int(AUTO_PERIOD_SECONDS * step / seconds))


@dataclass
class Parts:
    """The live objects of a training loop that a checkpoint saves and restores (besides its State)."""

    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    meters: tuple[FlopMeter, FlopMeter]  # training, validation
    clocks: tuple[Stopwatch, Stopwatch]  # training, validation
    batches: TokenCount
    evals: EvalSchedule
    grad_accum: int


def cpu(value: Any) -> Any:
    """A state with every tensor on the CPU (loadable on any machine), containers copied."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu(v) for v in value)
    return value


def plain(value: Any) -> bool:
    """True for what weights_only loading accepts back: tensors, numbers, strings, None and containers of them."""
    if isinstance(value, (dict, list, tuple)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return all(plain(k) and plain(v) for k, v in items)
    return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def meter_state(meter: FlopMeter) -> dict[str, Any]:
    # The shape cache too: a resumed run must not count a shape twice (flop_shapes_counted is stored).
    return {**{k: v for k, v in asdict(meter).items() if k != "cache"}, "cache": [[k, v] for k, v in meter.cache.items()]}


def set_meter_state(meter: FlopMeter, state: dict[str, Any]) -> None:
    for k, v in state.items():
        setattr(meter, k, {tuple((n, tuple(s)) for n, s in key): tuple(fb) for key, fb in v} if k == "cache" else v)
    meter._seen = set(meter.cache)  # the shapes it had used: counted_shapes goes on from the saved figure


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes in the model: trainable parameters and buffers (e.g. norm statistics)."""
    return {**{f"p:{n}": p for n, p in model.named_parameters() if p.requires_grad},
            **{f"b:{n}": b for n, b in model.named_buffers()}}


class Checkpoints:
    """The checkpoints of one config: when one is due, and saving, resuming from and removing it."""

    def __init__(self, folder: str | Path, every: int | None, digest: str, log: Callable[[str], None] = lambda s: None) -> None:
        self.folder, self.digest, self.log = Path(folder), digest, log
        # None: auto, decided once the first steps are measured; 0: none written (a saved one is still resumed from)
        self.every = every
        if parallel.world_size() > 1:
            if every:
                log("checkpoints are not written in multi-process runs; a killed run starts over")
            self.every = 0

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def due(self, step: int, seconds: float, progress: float) -> bool:
        if self.every is None:
            self.every = auto_interval(step, seconds, progress)
            if self.every:
                self.log(f"checkpoint every {self.every} steps (the run is estimated over {AUTO_OVER_SECONDS / 60:g} minutes)")
        return bool(self.every) and step % self.every == 0 and progress < 1.0

    def save(self, parts: Parts, state: Any) -> None:
        """Write the loop's state atomically; a failed write (disk full) is reported and training goes on."""
        blob = cpu({
            "format": FORMAT, "config_hash": self.digest, "step": state.step,
            "state": {**vars(state), "curve": [asdict(p) for p in state.curve]},
            "weights": weights(parts.model), "method": parts.method.train_state(parts.model),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": {k: v for k, v in parts.scheduler.state_dict().items() if k != "lr_lambdas" and plain(v)},
            "meters": [meter_state(m) for m in parts.meters], "clocks": [c.total for c in parts.clocks],
            "tokens": parts.batches.tokens, "next_quarter": parts.evals.next_quarter, "rng": rng_state(),
        })
        tmp = self.folder / f".{FILE}.{os.getpid()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(blob, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self.log(f"checkpoint at step {state.step} not written ({err.strerror or err}); training goes on")

    def load(self, model: nn.Module) -> dict[str, Any] | None:
        """The saved checkpoint if there is a usable one for this model; an unusable one is ignored, in one line."""
        if parallel.world_size() > 1 or not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # partial, corrupt or foreign: start over, as if there were none
            self.log(f"ignoring checkpoint {self.path}: unreadable ({type(err).__name__}); training starts over")
            return None
        have = {n: tuple(t.shape) for n, t in weights(model).items()}
        if (not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("config_hash") != self.digest
                or {n: tuple(t.shape) for n, t in blob.get("weights", {}).items()} != have):
            self.log(f"ignoring checkpoint {self.path}: written for another config or version; training starts over")
            return None
        return blob

    def resume(self, parts: Parts, state: Any) -> None:
        """Continue from the saved checkpoint, if any: every part and the loop's state as they were then."""
        blob = self.load(parts.model)
        if blob is None:
            return
        from peftbench.train.loop import EvalPoint  # (the loop imports this module)

        device = next(parts.model.parameters()).device
        try:
            parts.optimizer.load_state_dict(blob["optimizer"])
            parts.scheduler.load_state_dict({**blob["scheduler"], "lr_lambdas": [None] * len(parts.scheduler.lr_lambdas)})
            with torch.no_grad():
                for n, t in weights(parts.model).items():
                    t.copy_(blob["weights"][n])
            parts.method.load_train_state(parts.model, blob["method"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise UserError(f"checkpoint {self.path} does not fit this run ({err}); remove it to start over") from None
        saved = blob["state"]
        for k, v in saved.items():
            setattr(state, k, v)
        state.curve = [EvalPoint(**p) for p in saved["curve"]]
        state.loss_sum = saved["loss_sum"].to(device)
        if state.best_state is not None:
            state.best_state = {n: t.to(device) for n, t in state.best_state.items()}
        for _ in range(blob["step"] * parts.grad_accum):  # the data position: the same seeded stream, skipped
            next(parts.batches)
        if parts.batches.tokens != blob["tokens"]:
            raise UserError(f"the training data changed since checkpoint {self.path} was written; "
                            "remove the checkpoint to start over")
        for meter, m in zip(parts.meters, blob["meters"]):
            set_meter_state(meter, m)
        for clock, seconds in zip(parts.clocks, blob["clocks"]):
            clock.total = seconds
        parts.evals.next_quarter = blob["next_quarter"]
        set_rng_state(blob["rng"])  # last: nothing after it may draw random numbers before the next step
        self.log(f"resuming from step {blob['step']} (checkpoint {self.path})")

    def remove(self) -> None:
        """Drop this config's checkpoint (the run finished), and the checkpoints folder once empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # other configs' checkpoints are there, or none
            self.folder.parent.rmdir()
