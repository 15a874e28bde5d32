"""`peftbench methods` and `peftbench tasks`: what there is to choose from."""

from __future__ import annotations

import json
from typing import Any

import typer

from peftbench.cli.common import friendly, out

Opt = typer.Option


def _limit(meta: Any) -> str:
    for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len>=")):
        if getattr(meta, attr, None) is not None:
            return f"{sign}{getattr(meta, attr)}"
    return ""


def _capabilities(caps: dict[str, Any]) -> str:
    """A method's capabilities in a few words: only what sets it apart."""
    from peftbench.models import FAMILIES

    words = ["no training"] if not caps["trains"] else []
    words += ["mergeable"] if caps["can_merge"] else []
    words += [f"{'/'.join(caps['families'])} only"] if len(caps["families"]) < len(FAMILIES) else []
    words += ["needs a task head"] if caps["needs_head"] else []
    words += ["needs CUDA"] if caps["needs_cuda"] else []
    words += ["steps budget only"] if caps["needs_step_budget"] else []
    return "\n".join(words) or "-"


def unsuited_docs() -> list[dict[str, Any]]:
    """peft tuners peftbench does not offer, each with the reason (no parameters, nothing to run)."""
    from peftbench.methods.peft_generic import UNSUITED_FOUND

    return [{"method": name, "unsuited": why, "summary": f"peft tuner, not offered: {why}", "default_lr": None,
             "lr_tuned": True, "can_merge": False, "capabilities": {}, "params": {}} for name, why in UNSUITED_FOUND.items()]


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
                     "lr_tuned": getattr(cls, "lr_tuned", True),
                     **({"no_learn": cls.tuned.validation} if getattr(cls, "tuned", None) and cls.tuned.lr is None else {}),
                     "can_merge": cls.can_merge, "capabilities": cls.capabilities(), "params": hp})
    docs += unsuited_docs()
    if json_out:
        print(json.dumps(docs, indent=2, default=str))
        return
    table = Table(title="methods")
    for col in ("method", "default lr", "hyper-parameters (default)", "capabilities", "what it does"):
        table.add_column(col, overflow="fold")  # folded, not cut: every default stays readable
    for d in docs:
        hp = "\n".join(f"{k}={v['default']!r} {v['limits']}".strip() for k, v in d["params"].items()) or "-"
        lr = (f"{d['default_lr']:g}" + ("" if d["lr_tuned"] else " (LoRA's; not tuned)") if d["default_lr"] else
              f"none: learned at no rate tried (best validation {d['no_learn']:.3f})" if d.get("no_learn") is not None else "-")
        table.add_row(d["method"], lr, hp, _capabilities(d["capabilities"]) if "unsuited" not in d
                      else "not offered", d["summary"])
    out.print(table)


@friendly
def tasks_cmd(json_out: bool = Opt(False, "--json", help="Print as JSON.")) -> None:
    """List task kinds: the model families each takes, its metrics and column roles (Task.column_roles)."""
    from rich.table import Table

    from peftbench.tasks import REGISTRY

    docs = [{"task": k, "summary": c.summary, "families": list(c.families), "metrics": list(c.metrics),
             "select_metric": c.select_metric, "columns": c.column_docs()} for k, c in REGISTRY.items()]
    if json_out:
        print(json.dumps(docs, indent=2))
        return
    table = Table(title="tasks")
    for col in ("task", "model families", "metrics", "column roles: default column", "what it does"):
        table.add_column(col)
    for d in docs:
        table.add_row(d["task"], ", ".join(d["families"]), ", ".join(d["metrics"]),
                      "\n".join(f"{k}: {v}" for k, v in d["columns"].items()), d["summary"])
    out.print(table)
