"""Issue 17 item 4: a default learning rate for each of peft's generic tuners, chosen on validation.

The procedure of the hand-written methods' defaults (src/peftbench/methods/tuned_lrs.py says it in
full): the bundled MiniLM on TweetEval emotion, 64 steps of 32 tweets, seed 0, validation only;
rates LoRA's default x 1/3, 1, 3, widened by 3x past an edge pick, twice at most. Prints a Markdown
table for BENCHMARKS.md and the MEASURED entries for tuned_lrs.py. Runs are stored, so a rerun
resumes where it stopped.

    HF_HUB_OFFLINE=1 python benchmarks/tuner_lrs.py --results-dir peftbench-results/tuner-lrs [--methods oft,hra]
        [--param c3a.block_size=128]
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import yaml

from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.methods import REGISTRY
from peftbench.methods.lora import Lora
from peftbench.methods.peft_generic import GenericTuner
from peftbench.methods.tuned_lrs import LEARNS_MARGIN
from peftbench.runner import run

WIDEN = 2  # times the grid may grow past an edge pick


def majority_macro_f1(labels: list[Any]) -> float:
    """Macro-F1 of always predicting the most common label: one class at F1 2p/(1+p), the others 0."""
    share = Counter(labels).most_common(1)[0][1] / len(labels)
    return (2 * share / (1 + share)) / len(set(labels))


def params(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """--param TUNER.KEY=VALUE: a hyper-parameter that makes a tuner fit the model (c3a's block size must
    divide MiniLM's 384 and 1536 features); every other tuner keeps peft's defaults."""
    out: dict[str, Any] = {}
    for item in args.param:
        name, _, rest = item.partition(".")
        key, _, value = rest.partition("=")
        if name == method:
            out[key] = yaml.safe_load(value)
    return out


def score(args: argparse.Namespace, method: str, lr: float) -> float:
    cfg = parse_config({
        "model": {"name": args.model}, "method": {"name": method, "params": params(args, method)},
        "task": {"kind": "classification", "data": {"source": args.data}, "max_length": args.max_length},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": lr, "seed": 0, "test": False},
        "measure": {"latency": False},
    })
    row = run(cfg, args.results_dir).row
    return float(row.result["validation"]["macro_f1"])


def search(args: argparse.Namespace, method: str) -> tuple[dict[float, float], str | None]:
    """Validation macro-F1 per rate tried, widened past edge picks; or the refusal on this model."""
    base = Lora.default_lr
    grid = [float(f"{base * m:.3g}") for m in (1 / 3, 1.0, 3.0)]
    seen: dict[float, float] = {}
    try:
        for _ in range(WIDEN + 1):
            for lr in grid:
                if lr not in seen:
                    seen[lr] = score(args, method, lr)
            rates = sorted(seen)
            best = max(rates, key=lambda x: seen[x])
            if best == rates[0] and seen[best] > seen[rates[1]]:  # strictly better at the edge: look past it
                grid = [float(f"{best / 3:.3g}")]
            elif best == rates[-1] and seen[best] > seen[rates[-2]]:
                grid = [float(f"{best * 3:.3g}")]
            else:
                break
    except UserError as err:
        return seen, str(err)
    return seen, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", default="peftbench-results/tuner-lrs")
    p.add_argument("--methods", default="", help="comma-separated tuners (default: every generic tuner)")
    p.add_argument("--model", default="default")
    p.add_argument("--data", default="builtin:tweet_eval_emotion")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--param", action="append", default=[], help="TUNER.KEY=VALUE, e.g. c3a.block_size=128")
    args = p.parse_args()
    names = [m for m in args.methods.split(",") if m] or sorted(n for n, c in REGISTRY.items() if issubclass(c, GenericTuner))
    from peftbench.tasks import get_task

    task = get_task("classification")(parse_config({"task": {"data": {"source": args.data}}}).task, {})
    task.load_data()
    floor = majority_macro_f1([task.example("validation", i)[1] for i in range(task.split_size("validation"))])
    print(f"| tuner | rates tried → validation macro-F1 | chosen | (majority class: {floor:.3f}) |")
    print("|---|---|---|---|")
    entries = []
    for name in names:
        seen, refused = search(args, name)
        tried = ", ".join(f"{lr:.3g} → {v:.3f}" for lr, v in sorted(seen.items()))
        if refused and not seen:
            print(f"| {name} | refused on this model: {refused} | - | |")
            continue
        best = max(sorted(seen), key=lambda x: seen[x])
        learns = seen[best] > floor + LEARNS_MARGIN
        given = ", ".join(f"{k}={v}" for k, v in params(args, name).items())
        print(f"| {name}{f' ({given})' if given else ''} | {tried} | {f'**{best:.3g}**' if learns else 'none: learned at no rate'} | |")
        lr = f"{best:.3g}" if learns else "None"
        entries.append(f'    "{name}": Tuned({lr}, {seen[best]:.4f}, ({", ".join(f"{x:.3g}" for x in sorted(seen))},)),')
    print("\nMEASURED = {\n" + "\n".join(entries) + "\n}")


if __name__ == "__main__":
    main()
