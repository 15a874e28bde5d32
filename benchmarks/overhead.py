"""Overhead benchmark (issue 2, item 11): what peftbench's measuring loop costs.

Measured side by side in one run, on the bundled all-MiniLM-L6-v2 with LoRA (peft):

  (a) throughput of peftbench's real training loop (`peftbench.train.loop.train`) divided
      by a bare PyTorch + peft loop, same model, same pre-built batches, same optimizer
      and schedule, same steps. Repetitions are interleaved and the median paired ratio
      is reported, because a small shared CPU machine is noisy.
  (b) time spent on FLOP accounting as a share of training time, for the default
      comparison run (64 steps of 32) and a one-epoch run of the built-in data. FlopMeter
      counts each distinct padded shape once, on a real step, so the cost of a run is the
      sum over its shapes of (counted step - same step uncounted), measured per shape in
      alternating pairs, plus a cache lookup per step; its training time is the sum of
      its plain steps. A real run's FlopMeter.counting_seconds cross-checks it.
  (c) FLOPs measured by FlopMeter (torch's FlopCounterMode) divided by an analytic count
      for a BERT encoder of MiniLM's shape (random init), forward and backward apart:
      LoRA (peftbench's default, all linear layers), LoRA on query/value, full
      fine-tuning, LoRA's evaluation forward, and LoRA without attention dropout.

It is a report: it prints a table with targets and PASS/FAIL and always exits 0.
Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/overhead.py   (see --help)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import os
import platform
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import AutoConfig, BertForSequenceClassification, get_linear_schedule_with_warmup  # noqa: E402

import peft  # noqa: E402
import peftbench  # noqa: E402
from peftbench import models  # noqa: E402
from peftbench.config import ModelSpec, TaskSpec, TrainSpec  # noqa: E402
from peftbench.measure.flops import FlopMeter, shape_key  # noqa: E402
from peftbench.methods.base import Context  # noqa: E402
from peftbench.methods.baselines import Full  # noqa: E402
from peftbench.methods.lora import Lora  # noqa: E402
from peftbench.tasks.base import Batch, EvalResult, Task  # noqa: E402
from peftbench.tasks.classification import Classification  # noqa: E402
from peftbench.train.budget import Budget  # noqa: E402
from peftbench.train.loop import train  # noqa: E402

transformers.logging.set_verbosity_error()

# One recipe for both loops: peftbench's TrainSpec defaults and LoRA's default rate.
LR, WEIGHT_DECAY, WARMUP_RATIO, CLIP = Lora.default_lr, 0.01, 0.06, 1.0
DEFAULT_STEPS = 64  # the default comparison's budget (cli.MAIN_JOB_STEPS), batch 32
TARGET_RATIO, TARGET_SHARE, TARGET_FLOPS = 0.97, 0.03, 0.02
CPU = torch.device("cpu")
Shape = tuple[int, ...]  # a padded batch shape (batch, length)


# --------------------------------------------------------------------------- setup


def load_task() -> Classification:
    task = Classification(TaskSpec())  # builtin:tweet_eval_emotion, max_length 128
    task.load_data()
    return task


def lora_model(task: Classification) -> nn.Module:
    torch.manual_seed(0)
    model, _ = task.load_model(ModelSpec())  # the bundled all-MiniLM-L6-v2
    model = Lora({}).apply(model, Context(task.peft_task_type, str(models.bundled_model_path()), 1))
    model.train()
    return model


def take(it: Iterator[Batch], n: int) -> list[Batch]:
    return [next(it) for _ in range(n)]


class PrebuiltTask(Task):
    """The real task's batches, pre-built once, so both loops train on the very same tensors.

    Validation is a stub: `train` excludes evaluation from `train_seconds`, so skipping it
    changes nothing measured and keeps the benchmark short.
    """

    kind, peft_task_type = "classification", "SEQ_CLS"

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def load_data(self) -> None: ...

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        raise NotImplementedError

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        return itertools.cycle(self.batches)

    def evaluate(self, model: nn.Module, split: str, batch_size: int, flops: Any = None, *_: Any, **__: Any) -> EvalResult:
        return EvalResult(metrics={"macro_f1": 0.0, "accuracy": 0.0, "loss": 0.0})

    @property
    def train_size(self) -> int:
        return len(self.batches)


# --------------------------------------------------------------------------- (a) throughput


def run_peftbench(model: nn.Module, batches: list[Batch], meter: FlopMeter) -> float:
    """peftbench's own loop; returns its training seconds (evaluation excluded by `train`)."""
    n = len(batches)
    spec = TrainSpec(steps=n, batch_size=batches[0]["input_ids"].shape[0], eval_every=n, lr=LR,
                     weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP_RATIO, max_grad_norm=CLIP)
    out = train(model, Lora({}), PrebuiltTask(batches), spec, LR, Budget("steps", n), CPU, meter, FlopMeter())
    return out.train_seconds


def run_bare(model: nn.Module, batches: list[Batch]) -> float:
    """What one would write by hand: AdamW (no decay on biases/norms) + linear warm-up, clipping."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=LR)
    sched = get_linear_schedule_with_warmup(opt, int(WARMUP_RATIO * len(batches)), len(batches))
    params = decay + no_decay
    model.train()
    t0 = time.perf_counter()  # like train_seconds: the step loop only
    for batch in batches:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


@dataclass
class Throughput:
    ratio: float  # median over reps of bare_seconds / peftbench_seconds
    ratios: list[float]
    bare: list[float]
    peftbench: list[float]
    cold_meter: FlopMeter  # the warm-up run's meter: it counted each shape once, as a real run


def bench_throughput(model: nn.Module, batches: list[Batch], reps: int) -> Throughput:
    # Warm-up, one of each. The peftbench warm-up counts every shape (a fresh meter); the
    # timed runs reuse its cache, so (a) is peftbench's steady state (cache hits only) and
    # the one-off counting a real run pays per shape is (b)'s business.
    cold = FlopMeter()
    run_peftbench(model, batches, cold)
    run_bare(model, batches)
    bare: list[float] = []
    ours: list[float] = []
    for r in range(reps):  # A B, B A, A B, ...: each pair shares the machine's state
        for kind in ("bare", "peftbench") if r % 2 == 0 else ("peftbench", "bare"):
            gc.collect()
            if kind == "bare":
                bare.append(run_bare(model, batches))
            else:
                ours.append(run_peftbench(model, batches, FlopMeter(cache=dict(cold.cache))))
    ratios = [b / p for b, p in zip(bare, ours)]
    return Throughput(statistics.median(ratios), ratios, bare, ours, cold)


# --------------------------------------------------------------------------- (b) FLOP accounting


def one_step(model: nn.Module, opt: torch.optim.Optimizer, params: list[nn.Parameter], batch: Batch,
             meter: FlopMeter) -> float:
    gc.collect()
    t0 = time.perf_counter()
    meter.train_step(model, batch)
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


@dataclass
class Counting:
    extra: dict[Shape, float]  # per shape: counted step - plain step (median of pairs)
    plain: dict[Shape, float]  # per shape: plain step (median)
    lookup: float  # per-step bookkeeping on a cache hit (shape key + lookup), seconds

    def predicted_extra(self, batches: list[Batch]) -> float:
        """Accounting seconds of a run over these batches: one count per distinct shape."""
        return sum(self.extra[k] for k in {key(b) for b in batches}) + self.lookup * len(batches)

    def train_seconds(self, batches: list[Batch]) -> float:
        return sum(self.plain[key(b)] for b in batches)

    def share(self, batches: list[Batch]) -> float:
        return self.predicted_extra(batches) / self.train_seconds(batches)


def key(batch: Batch) -> Shape:
    return tuple(batch["input_ids"].shape)


def bench_counting(model: nn.Module, epoch: list[Batch], reps: int) -> Counting:
    """Time each distinct shape's step counted and uncounted, paired, alternating order.

    A run counts each padded shape once (FlopMeter's cache), so over a run the accounting
    cost is the sum over its distinct shapes of (counted step - the same step uncounted),
    plus a shape-key lookup on every step; its training time is the sum of plain steps.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    sample = {key(b): b for b in epoch}
    counted: dict[Shape, list[float]] = {k: [] for k in sample}
    plain: dict[Shape, list[float]] = {k: [] for k in sample}
    one_step(model, opt, params, epoch[0], FlopMeter())  # warm the counter's first use
    for r in range(reps):
        for k, b in sample.items():
            pair = [("counted", FlopMeter()), ("plain", FlopMeter(enabled=False))]
            for name, meter in pair if r % 2 == 0 else pair[::-1]:
                (counted if name == "counted" else plain)[k].append(one_step(model, opt, params, b, meter))
    # Median of paired differences: neighbours in time share the machine's load, so slow
    # drift from other processes cancels better than in a difference of medians.
    extra = {k: statistics.median(c - p for c, p in zip(counted[k], plain[k])) for k in sample}
    med_p = {k: statistics.median(v) for k, v in plain.items()}
    hit = FlopMeter(cache={shape_key(b): (1, 1) for b in epoch})  # time the cache-hit bookkeeping alone
    t0 = time.perf_counter()
    for _ in range(1000):
        k2 = shape_key(epoch[0])
        hit.forward_flops += hit.cache[k2][0]
        hit.backward_flops += hit.cache[k2][1]
    lookup = (time.perf_counter() - t0) / 1000
    return Counting(extra, med_p, lookup)


# --------------------------------------------------------------------------- (c) FLOPs


@dataclass
class Dims:
    hidden: int
    layers: int
    heads: int
    inter: int
    labels: int


ROLES = {  # module-name pattern -> role of a linear layer in a BERT encoder
    r"attention\.self\.query$": "query", r"attention\.self\.key$": "key", r"attention\.self\.value$": "value",
    r"attention\.output\.dense$": "attn_out", r"intermediate\.dense$": "ffn_in",
    r"layer\.\d+\.output\.dense$": "ffn_out", r"pooler\.dense$": "pooler",
}


def lora_roles(model: nn.Module) -> tuple[int, set[str]]:
    """LoRA's rank and which linear roles carry an adapter (peft's 'all-linear' etc. resolved)."""
    if not hasattr(model, "peft_config"):
        return 0, set()
    roles = set()
    for name, _ in model.named_modules():
        if name.endswith(".lora_A.default"):
            base = name.removesuffix(".lora_A.default")
            roles |= {role for pat, role in ROLES.items() if re.search(pat, base)}
    return model.peft_config["default"].r, roles


def analytic_flops(d: Dims, B: int, L: int, full: bool, r: int, lora: set[str], fused: bool = False) -> dict[str, list[int]]:
    """Matmul FLOPs of BertForSequenceClassification, by kind, as [forward, backward].

    Only matmuls count (FlopCounterMode counts mm/addmm/bmm; norms, softmax, GELU, the loss and
    embedding look-ups are not). Per linear on T tokens: forward 2·T·in·out; backward
    grad-input 2·T·in·out only where the input requires grad, grad-weight only where the
    weight trains. LoRA on a linear adds x -> A (in->r) -> B (r->out): A's grad-input only
    where x requires grad. Attention: QKᵀ and P·V are bmm of 2·B·L²·H each (H = heads·head_dim);
    backward takes a grad only for operands that require grad. Padding is computed (T = B·L).
    `fused`: attention runs as one fused kernel (CPU SDPA with dropout off), whose backward
    recomputes QKᵀ and returns dQ, dK, dV regardless: 5 bmm-sized products.
    """
    T, H, I, C = B * L, d.hidden, d.inter, d.labels
    out = {"linear": [0, 0], "lora": [0, 0], "attention": [0, 0]}

    def linear(role: str, tokens: int, n_in: int, n_out: int, x_grad: bool) -> bool:
        """Count one linear; return whether its output requires grad."""
        trains = full or role == "classifier"  # the head trains in both (peft's modules_to_save)
        f = 2 * tokens * n_in * n_out
        out["linear"][0] += f
        out["linear"][1] += f * (int(x_grad) + int(trains))
        if role in lora:
            fa, fb = 2 * tokens * n_in * r, 2 * tokens * r * n_out
            out["lora"][0] += fa + fb
            out["lora"][1] += fa * (int(x_grad) + 1) + fb * 2  # A: [grad-in] + grad-w; B: grad-in + grad-w
        return x_grad or trains or role in lora

    x = full  # the embeddings' output requires grad only if the embeddings train
    for _ in range(d.layers):
        q, k, v = (linear(role, T, H, H, x) for role in ("query", "key", "value"))
        bmm = 2 * B * L * L * H
        out["attention"][0] += 2 * bmm  # QKᵀ, then P·V
        out["attention"][1] += bmm * (5 if fused else int(q) + int(k) + int(q or k) + int(v))  # [QKᵀ], dQ, dK, dP, dV
        ctx = q or k or v
        h = linear("attn_out", T, H, H, ctx) or x  # + residual, LayerNorm (frozen unless full)
        h = linear("ffn_out", T, I, H, linear("ffn_in", T, H, I, h)) or h
        x = h
    pooled = linear("pooler", B, H, H, x)  # on the [CLS] token only
    linear("classifier", B, H, C, pooled)
    return out


def by_op(analytic: dict[str, list[int]]) -> dict[str, int]:
    """Analytic counts laid out like FlopCounterMode's Global op table."""
    a = analytic
    return {"fwd addmm (linears)": a["linear"][0], "fwd mm (LoRA)": a["lora"][0],
            "fwd bmm (attention)": a["attention"][0], "bwd mm (all matmul grads)": a["linear"][1] + a["lora"][1],
            "bwd bmm (attention)": a["attention"][1]}


def measured_by_op(model: nn.Module, batch: Batch) -> dict[str, int]:
    with FlopCounterMode(display=False) as fc:
        loss = model(**batch).loss
    with FlopCounterMode(display=False) as bc:
        loss.backward()
    model.zero_grad(set_to_none=True)
    f = {str(op): n for op, n in fc.get_flop_counts()["Global"].items()}
    b = {str(op): n for op, n in bc.get_flop_counts()["Global"].items()}
    return {"fwd addmm (linears)": f.get("aten.addmm", 0), "fwd mm (LoRA)": f.get("aten.mm", 0),
            "fwd bmm (attention)": f.get("aten.bmm", 0),
            "bwd mm (all matmul grads)": b.get("aten.mm", 0) + b.get("aten.addmm", 0),
            "bwd bmm (attention)": b.get("aten.bmm", 0)}


@dataclass
class FlopCheck:
    name: str
    measured: int
    analytic: int
    breakdown: list[tuple[str, int, int]]  # (component, measured, analytic)

    @property
    def ratio(self) -> float:
        return self.measured / self.analytic


def padded_batch(B: int, L: int, labels: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (B, L), generator=g)
    lengths = torch.linspace(L, L // 4, B).long()  # row 0 full, the rest padded
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, labels, (B,), generator=g)}


def bench_flops(B: int, L: int) -> list[FlopCheck]:
    cfg = AutoConfig.from_pretrained(str(models.bundled_model_path()), num_labels=4)
    cfg._attn_implementation = "sdpa"  # transformers' default; the choice the counts depend on
    d = Dims(cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.num_labels)
    batch = padded_batch(B, L, d.labels)
    checks: list[FlopCheck] = []
    # peftbench's LoRA default (all linear layers), peft's BERT default (query, value: layer 0's
    # frozen key then needs no gradient at all), full fine-tuning; and LoRA on a model without
    # attention dropout, whose CPU attention is then the fused kernel, not bmm.
    variants = {"lora": (Lora({}), 0.1), "lora q,v": (Lora({"target_modules": None}), 0.1),
                "full": (Full({}), 0.1), "lora attn-drop 0": (Lora({}), 0.0)}
    for label, (method, attn_dropout) in variants.items():
        torch.manual_seed(0)
        cfg.attention_probs_dropout_prob = attn_dropout
        model = method.apply(BertForSequenceClassification(cfg), Context("SEQ_CLS", "", 1))  # random init, MiniLM's shape
        model.train()
        full = isinstance(method, Full)
        r, on = lora_roles(model)
        meter = FlopMeter()
        meter.train_step(model, batch)
        model.zero_grad(set_to_none=True)
        a = analytic_flops(d, B, L, full, r, on, fused=attn_dropout == 0.0)
        ops, a_ops = measured_by_op(model, batch), by_op(a)
        fwd_a = sum(v[0] for v in a.values())
        bwd_a = sum(v[1] for v in a.values())
        parts = [(k, ops[k], a_ops[k]) for k in a_ops]
        checks += [FlopCheck(f"{label} forward", meter.forward_flops, fwd_a, parts[:3]),
                   FlopCheck(f"{label} backward", meter.backward_flops, bwd_a, parts[3:]),
                   FlopCheck(f"{label} total", meter.total, fwd_a + bwd_a, parts)]
        if label == "lora":
            # Evaluation (model.eval(), no dropout: fused attention on CPU) through an eval meter.
            model.eval()
            em = FlopMeter()
            with torch.inference_mode():
                em.forward(model, batch)
                with FlopCounterMode(display=False) as fc:
                    model(**batch)
            g = {str(op): n for op, n in fc.get_flop_counts()["Global"].items()}
            eparts = [("fwd addmm (linears)", g.get("aten.addmm", 0), a_ops["fwd addmm (linears)"]),
                      ("fwd mm (LoRA)", g.get("aten.mm", 0), a_ops["fwd mm (LoRA)"]),
                      ("fwd bmm (attention)", g.get("aten.bmm", 0), a_ops["fwd bmm (attention)"])]
            checks.append(FlopCheck("lora eval forward", em.forward_flops, fwd_a, eparts))
    return checks


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per timed run in (a)")
    ap.add_argument("--reps", type=int, default=16, help="interleaved repetitions per variant in (a)")
    ap.add_argument("--shape-reps", type=int, default=7, help="paired counted/plain steps per shape in (b)")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch size (peftbench's default: 32)")
    ap.add_argument("--flop-batch", type=int, nargs=2, default=(8, 64), metavar=("B", "L"), help="batch shape for (c)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"], help="parts to skip")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"peftbench {peftbench.__version__} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"peft {peft.__version__} | "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads | "
          f"load {load:.2f} | {datetime.datetime.now().isoformat(timespec='seconds')}")
    rows: list[tuple[str, str, str, str]] = []
    task = model = epoch = None
    runs: dict[str, list[Batch]] = {}
    if "a" not in args.skip or "b" not in args.skip:
        task = load_task()
        model = lora_model(task)
        # The default run's batches: one epoch of peftbench's own length-grouped batching, seed 0.
        epoch = take(task.train_batches(args.batch_size, 0), -(-task.train_size // args.batch_size))
        # Reference runs for (b): the default comparison's budget, and `peftbench run`'s one epoch.
        runs = {f"default compare run ({DEFAULT_STEPS} steps)": epoch[:DEFAULT_STEPS], "one-epoch run": epoch}

    counting = None
    if "b" not in args.skip:
        counting = bench_counting(model, epoch, args.shape_reps)
        print(f"\n(b) FLOP accounting, batch {args.batch_size}, {len(counting.extra)} distinct shapes in one epoch; "
              f"per shape (median of {args.shape_reps}): plain step, counted - plain")
        for k in sorted(counting.extra):
            print(f"    {str(k):>10}  plain {counting.plain[k]:.3f} s  extra {counting.extra[k]:+.3f} s")
        print(f"    cache-hit bookkeeping: {counting.lookup * 1e6:.1f} µs per step")
        for name, run in runs.items():
            print(f"    {name}: {len(run)} steps, {len({key(b) for b in run})} shapes: training ≈ "
                  f"{counting.train_seconds(run):.1f} s, accounting ≈ {counting.predicted_extra(run):.2f} s "
                  f"= {100 * counting.share(run):.2f} %")

    if "a" not in args.skip:
        batches = epoch[: args.steps]
        tp = bench_throughput(model, batches, args.reps)
        fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        print(f"\n(a) {args.steps} steps x {args.reps} interleaved reps, batch {args.batch_size}, "
              f"shapes {sorted(set(key(b) for b in batches))}")
        print(f"    bare loop s:   {fmt(tp.bare)}")
        print(f"    peftbench s:   {fmt(tp.peftbench)}")
        print(f"    paired ratios bare/peftbench: {fmt(tp.ratios)}  (ratio of medians "
              f"{statistics.median(tp.bare) / statistics.median(tp.peftbench):.3f}, of minima "
              f"{min(tp.bare) / min(tp.peftbench):.3f})")
        rows.append(("(a) throughput peftbench ÷ bare torch+peft loop", f"{tp.ratio:.3f}", f"≥ {TARGET_RATIO}",
                     verdict(tp.ratio >= TARGET_RATIO)))
        if counting is not None:  # cross-check (b) on a real run: the warm-up counted each shape once
            m = tp.cold_meter
            seen = {key(b) for b in batches}
            print(f"    cross-check of (b): the warm-up run counted {m.counted_shapes} shapes in "
                  f"{m.counting_seconds:.2f} s (FlopMeter.counting_seconds); less (b)'s plain steps "
                  f"= {m.counting_seconds - sum(counting.plain[k] for k in seen):+.2f} s of accounting; "
                  f"(b) predicts {sum(counting.extra[k] for k in seen):+.2f} s")

    if counting is not None:
        for name, run in runs.items():
            share = counting.share(run)
            rows.append((f"(b) FLOP accounting ÷ training time, {name}", f"{100 * share:.2f} %",
                         f"≤ {100 * TARGET_SHARE:.0f} %", verdict(share <= TARGET_SHARE)))

    if "c" not in args.skip:
        B, L = args.flop_batch
        checks = bench_flops(B, L)
        print(f"\n(c) FLOPs, MiniLM-shaped BERT (random init), batch {B} x {L} with padding, train mode")
        print(f"    {'':26} {'measured':>16} {'analytic':>16}  ratio")
        for c in checks:
            print(f"    {c.name:26} {c.measured:16,d} {c.analytic:16,d}  {c.ratio:.4f}")
            if abs(c.ratio - 1) > TARGET_FLOPS:
                for comp, m, a in c.breakdown:
                    flag = "" if m == a else f"   <-- off by {m - a:+,d}"
                    print(f"      {comp:26} {m:16,d} {a:16,d}{flag}")
        for c in checks:
            rows.append((f"(c) measured ÷ analytic FLOPs, {c.name}", f"{c.ratio:.4f}", "1 ± 0.02",
                         verdict(abs(c.ratio - 1) <= TARGET_FLOPS)))

    print(f"\n{'item':72} {'measured':>10} {'target':>9}  result")
    for item, val, target, res in rows:
        print(f"{item:72} {val:>10} {target:>9}  {res}")
    if "c" not in args.skip:
        print("(c) with dropout off (eval, or attention dropout 0) CPU SDPA runs as the fused "
              "aten._scaled_dot_product_flash_attention_for_cpu;\n    torch 2.13's FlopCounterMode has no formula "
              "for it (counted 0) unless peftbench.measure.flops registers one.")
    print(f"\nload {load:.2f} at start, {os.getloadavg()[0]:.2f} at end; {time.perf_counter() - t_start:.0f} s in all")


if __name__ == "__main__":
    main()
