"""Training throughput against HF Trainer + peft (issue 13, item 7).

peftbench's training loop (`peftbench.train.loop.train`, set up as runner.prepare does it) and
`transformers.Trainer` train the same model (built once per run by peftbench's method, so both
start from the same weights), on the same tokenized batches (built once, fed in the same order),
with the same optimizer settings (AdamW, lr, weight decay, linear warm-up and decay, clipping 1.0).
Runs alternate A/B (which goes first alternates too), `--reps` times each, with a fresh model and
the same seed every run. The first `--warmup` steps are trained but not timed.

- CPU: time is CPU time (time.process_time) at a fixed thread count. The base model loads once
  and each run trains a deep copy (SmolLM2's GGUF load takes ~35 s here). Memory is peak RSS
  (reset per run through /proc/self/clear_refs) and, fairer in one process, the RSS the run added
  over what it started with (alternating the order spreads the allocator's reuse over both arms).
  FLOP counting (once per padded shape; benchmarks/overhead.py costs it apart) is done before
  the clock starts, as in a long run.
- GPU (`--device cuda`): wall time between CUDA syncs; peak memory is max allocated, reset per
  run; a Llama-3.2-1B-shaped model with random weights (built from its config, nothing
  downloaded), bf16, sequence 1024: LoRA (r 16, all linear), QLoRA (bitsandbytes) and full.
  MFU = counted model FLOPs per second / the GPU's bf16 peak (measure/efficiency.py).

Prints: median tokens/s ratio (peftbench / Trainer) with range, median peak-memory ratio,
and the last step's loss for both. Run (see --help):
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/throughput.py --cases minilm,smollm2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import peftbench  # noqa: E402
from peftbench import models  # noqa: E402
from peftbench.config import ModelSpec, RunConfig, TaskSpec, TrainSpec  # noqa: E402
from peftbench.measure import efficiency  # noqa: E402
from peftbench.measure.flops import FlopMeter, shape_key  # noqa: E402
from peftbench.measure.memory import peak_bytes, reset_peak  # noqa: E402
from peftbench.methods import get_method  # noqa: E402
from peftbench.methods.base import Context, Method  # noqa: E402
from peftbench.tasks.base import EvalResult  # noqa: E402
from peftbench.train import lm_loss, optim, precision  # noqa: E402
from peftbench.train.budget import Budget  # noqa: E402
from peftbench.train.loop import train  # noqa: E402

from llama_shape import BATCH as BATCH_GPU, LORA as GPU_LORA, llama_1b, qlora_ready, synthetic_batches  # noqa: E402

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    device: str
    model: str = "default"
    task: str = "classification"
    data: str = "builtin:tweet_eval_emotion"
    batch: int = 32
    max_length: int = 128
    max_target_length: int = 32
    steps: int = 8
    params: tuple[tuple[str, Any], ...] = ()

    def config(self) -> RunConfig:
        """The peftbench config this case trains (also gives the method's lr and the optimizer settings)."""
        task = TaskSpec(kind=self.task, data={"source": self.data}, max_length=self.max_length,
                        max_target_length=self.max_target_length)
        prec = "bf16" if self.device == "cuda" else "fp32"
        return RunConfig(model=ModelSpec(name=self.model), task=task, method={"name": self.method, "params": dict(self.params)},
                         train=TrainSpec(batch_size=self.batch, precision=prec, steps=self.steps))


CASES = {
    "minilm": Case("minilm", "lora", "cpu", steps=12),
    "smollm2": Case("smollm2", "lora", "cpu", model="smollm2", task="summarization", data="builtin:dialogsum",
                    batch=4, max_length=48, max_target_length=16, steps=4),
    "llama1b-lora": Case("llama1b-lora", "lora", "cuda", model="llama1b", batch=BATCH_GPU, steps=10, params=GPU_LORA),
    "llama1b-qlora": Case("llama1b-qlora", "qlora", "cuda", model="llama1b", batch=BATCH_GPU, steps=6, params=GPU_LORA),
    "llama1b-full": Case("llama1b-full", "full", "cuda", model="llama1b", batch=BATCH_GPU, steps=10),
}
GROUPS = {"llama1b": ["llama1b-lora", "llama1b-qlora", "llama1b-full"]}


# --------------------------------------------------------------------------- models and batches


def batch_tokens(b: Batch) -> int:
    """Tokens fed, as Task.batch_tokens counts them for these (encoder or decoder-only) batches."""
    return int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()


def plain(model: nn.Module) -> nn.Module:
    """SmolLM2's GGUF file is dequantized on load, yet transformers marks the model quantized and
    Trainer then refuses it; it trains as an ordinary model (as peftbench trains it)."""
    cfg = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if str(getattr(cfg, "quant_method", "")).lower().endswith("gguf"):
        model.hf_quantizer, model.is_quantized = None, False
    return model


class Setup:
    """What every run of a case shares: config, method, batches (built once) and, on CPU, the loaded
    base model that each run copies (so the model loads once; each run still starts afresh)."""

    def __init__(self, case: Case, n: int, qlora_dir: str | None = None) -> None:
        from peftbench import runner

        self.case, self.device, self.qlora_dir, self.base = case, torch.device(case.device), qlora_dir, None
        if case.model == "llama1b":
            cfg, self.method = normalized_gpu(case)
            self.batches = synthetic_batches(n, case.batch)
            self.ctx = Context("CAUSAL_LM", "llama1b", n, family="decoder")
        else:
            cfg, self.method = runner.normalize(case.config())
            task = runner.make_task(cfg, self.method)
            task.load_data()
            torch.manual_seed(cfg.train.seed)  # the task head's initialisation, as runner.prepare seeds it
            self.base = plain(task.load_model(cfg.model)[0])  # the tokenizer comes with it
            it = task.train_batches(case.batch, cfg.train.seed)  # drawn as peftbench's loop draws them
            self.batches = [{k: v.clone() for k, v in next(it).items()} for _ in range(n)]
            self.ctx = Context(task.peft_task_type, models.resolve(cfg.model), n, family=task.family,
                               head_modules=list(task.head_modules))
            self.method.prepare_task(task)
        self.spec = cfg.train.model_copy(update={"steps": n})

    def model(self) -> nn.Module:
        """A fresh model with the method applied, as runner.prepare builds it (same seed: same weights)."""
        _, dtype = precision.resolve(self.spec.precision, "auto", self.device, self.method.frozen_base)
        if self.base is not None:
            base = copy.deepcopy(self.base)
        elif self.method.name == "qlora":  # 4-bit weights are made by from_pretrained, from a saved random model
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.qlora_dir, **self.method.load_kwargs(),
                                                        dtype=torch.bfloat16, device_map={"": 0})
        else:
            base = llama_1b(precision.DTYPES[dtype], self.device.type, self.spec.seed)
        torch.manual_seed(self.spec.seed)
        model = precision.upcast_trainable(self.method.apply(base, self.ctx))
        return model if getattr(base, "is_loaded_in_4bit", False) else model.to(self.device)  # 4-bit: placed on load


# --------------------------------------------------------------------------- the two arms


class Clock:
    """Times steps warmup+1 .. last: CPU time on CPU, wall time between syncs on CUDA.

    It is peftbench's Reporter and is called from a Trainer callback, so both arms are timed alike."""

    def __init__(self, device: torch.device, warmup: int, last: int) -> None:
        self.cuda, self.warmup, self.last = device.type == "cuda", warmup, last
        self.t0 = self.t1 = 0.0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def step(self, step: int) -> None:
        if step == self.warmup:
            self.t0 = self.now()
        if step == self.last:
            self.t1 = self.now()

    def start(self, total_steps: int) -> None:
        if self.warmup == 0:
            self.t0 = self.now()

    def evaluating(self, split: str, done: int, total: int) -> None: ...
    def evaluated(self, point: Any) -> None: ...


class LossTape:
    """Every training loss, kept on the device (no sync) and read after the run: from the model's
    output (Trainer), or from peftbench's loss function (a chunked LM loss never asks the model for one)."""

    def __init__(self, model: nn.Module) -> None:
        self.losses: list[torch.Tensor] = []
        self.handle = model.register_forward_hook(self.hook)
        self.plain = lm_loss.loss

        def recorded(m: nn.Module, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            with self.paused():
                loss = self.plain(m, batch, *args, **kwargs)
            if torch.is_grad_enabled():
                self.losses.append(loss.detach().float())
            return loss

        lm_loss.loss = recorded

    @contextlib.contextmanager
    def paused(self) -> Any:
        self.off = True
        try:
            yield
        finally:
            self.off = False

    off = False

    def hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self.off and module.training and torch.is_grad_enabled() and getattr(out, "loss", None) is not None:
            self.losses.append(out.loss.detach().float())

    def values(self) -> list[float]:
        self.handle.remove()
        lm_loss.loss = self.plain
        return [float(v) for v in self.losses]


class FixedTask:
    """What train() needs of a task: these batches in order, and a validation that costs nothing
    (validation is outside the training clock in peftbench; Trainer runs none here)."""

    select_metric = "loss"
    head_modules: list[str] = []  # nothing new beside the checkpoint's own LM head

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def train_batches(self, batch_size: int, seed: int) -> Any:
        return iter(self.batches)

    def pieces(self, batch: Batch, batch_size: int) -> list[tuple[Batch, float]]:
        return [(batch, 1.0)]  # one forward pass per batch, as Task.pieces for single-sequence examples

    def batch_tokens(self, batch: Batch) -> int:
        return batch_tokens(batch)

    def evaluate(self, *args: Any, **kwargs: Any) -> EvalResult:
        return EvalResult({"loss": 0.0})


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def begin(device: torch.device) -> int:
    """Start a run's peak afresh; the memory in use now (CUDA allocated, or RSS)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    reset_peak(device)
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else rss_bytes()


def count_flops(model: nn.Module, batches: list[Batch], device: torch.device) -> dict[Any, tuple[int, ...]]:
    """FlopMeter's per-shape figures for these batches (one counted forward + backward per padded shape)."""
    meter = FlopMeter()
    model.train()
    for b in {shape_key(b): b for b in batches}.values():
        meter.train_step(model, {k: v.to(device) for k, v in b.items()})
        model.zero_grad(set_to_none=True)
    return meter.cache


def run_peftbench(model: nn.Module, method: Method, spec: TrainSpec, batches: list[Batch],
                  device: torch.device, warmup: int, flops: dict[Any, tuple[int, ...]] | None) -> dict[str, Any]:
    meter = FlopMeter(cache=dict(flops or {}))
    clock, tape = Clock(device, warmup, len(batches)), LossTape(model)
    before = begin(device)
    torch.manual_seed(spec.seed)
    precision.enable_tf32(spec.precision, device)
    train(model, method, FixedTask(batches), spec, spec.lr, Budget("steps", len(batches)), device, meter,  # type: ignore[arg-type]
          FlopMeter(enabled=False), clock)
    step_flops = [sum(meter.cache[shape_key(b)][:2]) for b in batches]
    return finish(clock, tape, batches, device, before, warmup, sum(step_flops[warmup:]))


def run_trainer(model: nn.Module, spec: TrainSpec, batches: list[Batch], device: torch.device,
                warmup: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainerCallback, TrainingArguments

    clock = Clock(device, warmup, len(batches))

    class Timing(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.start(len(batches))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.step(state.global_step)

    class Fixed(Trainer):  # the same batches, in order (no sampler, no collation)
        def get_train_dataloader(self) -> DataLoader:
            # its own generator: the iterator's base seed would otherwise come from the global RNG (dropout's)
            return DataLoader(batches, batch_size=None, shuffle=False, generator=torch.Generator().manual_seed(0))

    cuda = device.type == "cuda"
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="thru-trainer-"), max_steps=len(batches), per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.lr, weight_decay=spec.weight_decay, warmup_steps=optim.warmup_steps(spec, len(batches)),
        lr_scheduler_type="linear", max_grad_norm=spec.max_grad_norm or 0.0, seed=spec.seed,
        optim="adamw_torch_fused" if cuda else "adamw_torch", bf16=spec.precision == "bf16", use_cpu=not cuda,
        logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, dataloader_pin_memory=False,
    )
    trainer = Fixed(model=model, args=args, train_dataset=batches, callbacks=[Timing()])
    tape = LossTape(model)
    before = begin(device)
    torch.manual_seed(spec.seed)  # as peftbench's arm: the same dropout masks
    trainer.train()
    return finish(clock, tape, batches, device, before, warmup, None)


def finish(clock: Clock, tape: LossTape, batches: list[Batch], device: torch.device, before: int,
           warmup: int, flops: int | None) -> dict[str, Any]:
    peak, kind = peak_bytes(device)
    seconds = clock.t1 - clock.t0
    tokens = sum(batch_tokens(b) for b in batches[warmup:])
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds if seconds > 0 else None,
            "peak_bytes": peak, "peak_kind": kind, "added_bytes": peak - before, "losses": tape.values(),
            "model_flops": flops}


def one_run(setup: Setup, arm: str, warmup: int, flops: dict[Any, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """A fresh model trained by one arm (peftbench or trainer) on the case's batches."""
    model = setup.model()
    if arm == "peftbench":
        out = run_peftbench(model, setup.method, setup.spec, setup.batches, setup.device, warmup, flops)
    else:
        out = run_trainer(model, setup.spec, setup.batches, setup.device, warmup)
    del model
    gc.collect()
    return out


def normalized_gpu(case: Case) -> tuple[RunConfig, Method]:
    """runner.normalize without its model check (the GPU model is built here, not found by name)."""
    cfg = case.config()
    method = get_method(cfg.method.name)(cfg.method.params)
    cfg.method.params = method.normalized_params()
    cfg.train.lr = cfg.train.lr or optim.default_lr(cfg.train.optimizer, method.default_lr)
    return cfg, method


# --------------------------------------------------------------------------- the A/B series


def series(case: Case, reps: int, steps: int | None, warmup: int) -> dict[str, Any]:
    n = warmup + (steps or case.steps)
    runs: dict[str, list[dict[str, Any]]] = {"peftbench": [], "trainer": []}
    with tempfile.TemporaryDirectory(prefix="thru-") as tmp:
        if case.method == "qlora":
            llama_1b(torch.bfloat16, "cuda", 0).save_pretrained(tmp)
        setup = Setup(case, n, tmp)
        # CPU: each padded shape counted now, as a long run has them (overhead.py costs counting apart);
        # the GPU's single shape is counted in a warm-up step.
        flops = count_flops(setup.model(), setup.batches, setup.device) if case.device == "cpu" else None
        for rep in range(reps):
            for arm in ("peftbench", "trainer") if rep % 2 == 0 else ("trainer", "peftbench"):
                runs[arm].append(r := one_run(setup, arm, warmup, flops))
                print(f"  {case.name} rep {rep + 1} {arm:9s} {r['tokens_per_s']:10.1f} tok/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB"
                      f" (+{r['added_bytes'] / 2**20:.0f})  last loss {r['losses'][-1]:.4f}", flush=True)
    return summarize(case, runs)


def summarize(case: Case, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    pb, tr = runs["peftbench"], runs["trainer"]
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(pb, tr)]
    mem = [a["peak_bytes"] / b["peak_bytes"] for a, b in zip(pb, tr)]
    added = [a["added_bytes"] / b["added_bytes"] for a, b in zip(pb, tr) if b["added_bytes"] > 0]
    out: dict[str, Any] = {
        "case": case.name, "device": case.device, "method": case.method, "reps": len(pb),
        "tokens_per_s": {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()},
        "speed_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "peak_memory_mib": {k: statistics.median(r["peak_bytes"] for r in v) / 2**20 for k, v in runs.items()},
        "peak_kind": pb[0]["peak_kind"],
        "memory_ratio": statistics.median(mem),
        "added_memory_ratio": statistics.median(added) if added else None,
        "last_loss": {k: statistics.median(r["losses"][-1] for r in v) for k, v in runs.items()},
        "loss_trajectory": {k: v[0]["losses"] for k, v in runs.items()},
        "max_loss_gap": max(abs(a - b) for a, b in zip(pb[0]["losses"], tr[0]["losses"])),
    }
    if case.device == "cuda":
        peak = efficiency.gpu_peak(torch.cuda.get_device_name(), "bf16")
        flops = pb[0]["model_flops"]
        out["mfu"] = {k: statistics.median(flops / r["seconds"] for r in v) / peak.flops if peak.flops else None
                      for k, v in runs.items()}
        out["peak_source"] = peak.source
    return out


def show(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'case':14s} {'tok/s peftbench':>16s} {'tok/s Trainer':>14s} {'ratio (range)':>22s} {'peak mem ratio':>15s}"
          f" {'last loss pb / Trainer':>24s} {'MFU pb / Trainer':>17s}")
    for r in rows:
        s, t, sr = r["tokens_per_s"], r["last_loss"], r["speed_ratio"]
        mfu = f"{r['mfu']['peftbench']:.1%} / {r['mfu']['trainer']:.1%}" if r.get("mfu") and r["mfu"]["peftbench"] else "-"
        print(f"{r['case']:14s} {s['peftbench']:16.1f} {s['trainer']:14.1f} "
              f"{sr['median']:8.3f} ({sr['min']:.3f}-{sr['max']:.3f}) {r['memory_ratio']:15.3f}"
              f" {t['peftbench']:11.4f} / {t['trainer']:.4f} {mfu:>17s}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=None, help=f"comma-separated: {', '.join([*CASES, *GROUPS])} "
                    "(default: minilm,smollm2 on cpu, llama1b on cuda)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--reps", type=int, default=5, help="A/B pairs per case (default 5)")
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (default: per case)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: 1 on cpu, 3 on cuda)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads on CPU")
    ap.add_argument("--out", default=None, help="also write the table as JSON to this file")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: --device cuda needs a CUDA GPU and this machine has none; run the CPU cases without --device",
              file=sys.stderr)
        return 2
    names = (args.cases or ("llama1b" if args.device == "cuda" else "minilm,smollm2")).split(",")
    names = [c for n in names for c in GROUPS.get(n.strip(), [n.strip()])]
    unknown = [n for n in names if n not in CASES]
    wrong = [n for n in names if n in CASES and CASES[n].device != args.device]
    if unknown or wrong:
        print(f"throughput.py: unknown case(s) {', '.join(unknown)}" if unknown else
              f"throughput.py: case(s) {', '.join(wrong)} run on the other device; pass --device "
              f"{CASES[wrong[0]].device}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 1)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"peftbench {peftbench.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}, {started:%Y-%m-%d %H:%M} UTC", flush=True)
    rows = []
    for name in names:
        case = CASES[name]
        if case.method == "qlora" and (why := qlora_ready()):
            print(f"  {name}: skipped: {why}", flush=True)
            continue
        rows.append(series(case, args.reps, args.steps, warmup))
    show(rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}; took {(datetime.datetime.now(datetime.timezone.utc) - started).seconds} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"started": f"{started:%Y-%m-%dT%H:%M:%SZ}", "threads": args.threads,
                                              "device": args.device, "command": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
