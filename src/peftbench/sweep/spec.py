"""The sweep file: a base run config plus axes, expanded into validated, deduplicated runs.

    name: lora-rank-ablation          # optional
    base: {model: ..., task: ..., train: {steps: 64}}   # a run config, as for `run --config`
    seeds: 3                          # shorthand for the axis train.seed: [0, 1, 2]
    axes:                             # the cartesian product of every axis, in file order
      method: [ia3, {name: lora, grid: {r: [4, 8]}}]   # section axis; a method may carry a grid
      train.lr: [1.0e-3, 3.0e-3]      # dotted key axis
      study: [{task: ...}, {...}]     # named axis: partial configs, deep-merged

Every problem is one UserError naming the file, the axis entry (or run) and the fix,
raised before anything runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from peftbench.config import RunConfig, deep_merge, explain, load_yaml, nest
from peftbench.errors import UserError, suggest

TOP_KEYS = ("name", "base", "axes", "seeds")
SECTIONS = ("model", "task", "method", "train", "measure")
SHORTHAND = {"model": "name", "task": "kind", "method": "name"}  # `method: [lora]` -> {name: lora}
REPLACED = ("model", "method")  # a different model/method starts from its defaults, not base's
BUDGETS = ("steps", "epochs", "flops", "seconds")
MAX_RUNS = 10_000


@dataclass
class SweepRun:
    config: RunConfig  # normalized (method defaults and lr filled in), as the runner hashes it
    config_hash: str
    label: str  # the values that vary across the sweep, e.g. "lora r=8 lr=0.001 seed=1"


@dataclass
class Sweep:
    name: str
    path: Path
    runs: list[SweepRun]
    duplicates: int  # configs dropped because an earlier one had the same hash


# (where it came from, e.g. "axis 'train.lr' entry 2"; the partial config; how a run label shows it)
Layer = tuple[str, dict[str, Any], str]


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _leaf_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += _leaf_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _check_dotted(key: str, where: str) -> None:
    """A dotted axis key must name a config field (anything under method.params is the method's)."""
    cur: Any = RunConfig
    for i, part in enumerate(key.split(".")):
        if cur is dict:  # method.params.<hyper-parameter>: checked with the method later
            return
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            raise UserError(f"{where}: unknown config key '{key}'{suggest(key, _leaf_keys())}; "
                            "see the run config's keys (model., task., method., train., measure.)")
        ann = field.annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (dict if part == "params" else None)
        if cur is None and i < len(key.split(".")) - 1:
            raise UserError(f"{where}: '{'.'.join(key.split('.')[:i + 1])}' is a value, not a section; fix the key")


def _method_entries(entry: Any, where: str) -> list[dict[str, Any]]:
    """One method axis entry (a name, or {name, params, grid}) as method sections, grid expanded."""
    from peftbench.methods import get_method

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UserError(f"{where}: a method entry is a name or a mapping with name: (and params:, grid:); got {_flow(entry)}")
    extra = set(entry) - {"name", "params", "grid"}
    if extra:
        raise UserError(f"{where}: unknown method entry key '{sorted(extra)[0]}'; use name:, params: and grid: "
                        "(hyper-parameters go under params: or grid:)")
    try:
        method = get_method(entry["name"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    params, grid = entry.get("params") or {}, entry.get("grid") or {}
    if not isinstance(params, dict) or not isinstance(grid, dict):
        raise UserError(f"{where}: params: and grid: must be mappings of hyper-parameter: value (grid: lists of values)")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid '{k}' must be a non-empty list of values, e.g. {k}: [4, 8]")
    if math.prod(len(v) for v in grid.values()) > MAX_RUNS:
        raise UserError(f"{where}: the grid makes more than {MAX_RUNS} runs; give fewer values")
    out = []
    for combo in itertools.product(*grid.values()):
        p = {**params, **dict(zip(grid, combo))}
        try:
            method.validate(p)
        except UserError as e:
            raise UserError(f"{where} ({_flow(p)}): {e}") from None
        out.append({"name": entry["name"], "params": p})
    return out


def _axis(path: Path, key: Any, values: Any) -> list[Layer]:
    """An axis's entries as layers: (where, partial config, label text)."""
    where = f"sweep file '{path}', axis '{key}'"
    if not isinstance(key, str):
        raise UserError(f"{where}: an axis name must be a string (a section, a dotted key or a name of yours)")
    if not isinstance(values, list):
        raise UserError(f"{where} must be a list of values (e.g. {key}: [a, b]); got {_flow(values)}")
    if not values:
        raise UserError(f"{where} is empty; give it at least one value or remove it")
    layers: list[Layer] = []
    for i, v in enumerate(values, 1):
        at = f"{where} entry {i}"
        if key == "method":
            layers += [(at, {"method": m}, _fmt(m["params"])) for m in _method_entries(v, at)]
        elif key in SECTIONS:
            if isinstance(v, str) and key in SHORTHAND:
                v = {SHORTHAND[key]: v}
            if not isinstance(v, dict):
                form = f"a {SHORTHAND[key]} or a mapping" if key in SHORTHAND else "a mapping"
                raise UserError(f"{at}: a '{key}' entry is {form} of {key} settings; got {_flow(v)}")
            only_name = key in SHORTHAND and list(v) == [SHORTHAND[key]]
            layers.append((at, {key: v}, _fmt(v[SHORTHAND[key]] if only_name else v)))
        elif "." in key:
            _check_dotted(key, where)
            layers.append((at, nest(key, v), f"{key.rsplit('.', 1)[-1]}={_fmt(v)}"))
        else:  # a named axis: linked settings, as partial configs
            if not isinstance(v, dict):
                same = [k for k in _leaf_keys() if k.endswith("." + key)]
                hint = suggest(key, SECTIONS) or (f" (did you mean '{same[0]}'?)" if same else
                                                  " (for one key use a dotted axis such as train.lr)")
                raise UserError(f"{at}: entries of a named axis are partial configs (mappings like "
                                f"{{train: {{lr: 0.001}}}}); got {_flow(v)}{hint}")
            label = v.get("label", f"{key}={i}")  # an optional label: names the entry in run labels
            layers.append((at, {k: x for k, x in v.items() if k != "label"}, str(label)))
    return layers


def _merge(cfg: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """deep_merge, except that a layer's budget replaces the earlier one (steps/epochs/flops/seconds
    exclude each other) and a different model or method replaces that section."""
    cfg = dict(cfg)
    train = partial.get("train")
    if isinstance(train, dict) and isinstance(cfg.get("train"), dict) and set(train) & set(BUDGETS):
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in BUDGETS}
    for sec in REPLACED:
        new, old = partial.get(sec), cfg.get(sec)
        default = RunConfig.model_fields[sec].default.name
        if isinstance(new, dict) and isinstance(old, dict) and "name" in new and new["name"] != old.get("name", default):
            cfg[sec] = {}
    return deep_merge(cfg, partial)


def _has(partial: Any, loc: tuple) -> bool:
    for part in loc:
        if not isinstance(partial, dict) or part not in partial:
            return False
        partial = partial[part]
    return True


def _blame(layers: list[Layer], loc: tuple, fallback: str) -> str:
    """The last layer that set the key an error is about (or a part of it)."""
    for n in range(len(loc), 0, -1):
        for where, partial, _ in reversed(layers):
            if _has(partial, loc[:n]):
                return where
    return fallback


def load(path: Path) -> tuple[str, list[Layer], list[list[Layer]]]:
    """(name, base layers, axes as lists of layers); structure checked, values not yet."""
    data = load_yaml(path, "sweep file", "peftbench sweep", "base: and axes:")
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"sweep file '{path}': unknown key '{key}'{suggest(str(key), TOP_KEYS)}; "
                            f"a sweep file has {', '.join(TOP_KEYS)} (run settings go under base:)")
    base, axes = data.get("base") or {}, data.get("axes") or {}
    if not base and not axes and "seeds" not in data:  # else one default LoRA job would start unasked
        raise UserError(f"sweep file '{path}' is empty (no base:, axes: or seeds:); give at least base: with a run "
                        "config and axes: with the values to vary, e.g. axes: {train.lr: [1.0e-4, 1.0e-3]}")
    if not isinstance(base, dict):
        raise UserError(f"sweep file '{path}': base: must be a run config mapping (model:, task:, method:, train:)")
    if not isinstance(axes, dict):
        raise UserError(f"sweep file '{path}': axes: must be a mapping of axis name: list of values")
    if "seeds" in data:
        seeds = data["seeds"]
        if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > MAX_RUNS:
            raise UserError(f"sweep file '{path}': seeds: {seeds} is more than {MAX_RUNS} runs; give a smaller count")
        if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
            seeds = list(range(seeds))
        if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise UserError(f"sweep file '{path}': seeds: must be a count (seeds: 3 runs seeds 0, 1, 2) or a list of integers")
        if "train.seed" in axes:
            raise UserError(f"sweep file '{path}': give seeds: or the axis train.seed, not both")
        axes = {**axes, "train.seed": seeds}
    base_where = f"sweep file '{path}', base"
    return str(data.get("name") or path.stem), [(base_where, base, "")], [_axis(path, k, v) for k, v in axes.items()]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return " ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, str) and "/" in v:
        return v.rstrip("/").rsplit("/", 1)[-1]  # a local path or hub id: its last part
    return str(v)


def _label(cfg: RunConfig, combo: tuple[Layer, ...], sizes: list[int]) -> str:
    """The method's name, then the entry of each axis that has more than one, e.g. 'lora r=8 lr=0.001 seed=1'."""
    return " ".join([cfg.method.name, *(s for (_, _, s), n in zip(combo, sizes) if n > 1 and s)])


def expand(path: str | Path, trust_remote_code: bool = False) -> Sweep:
    """Every run of a sweep file, validated, normalized and deduplicated by config hash.

    trust_remote_code: given on the sweep's command line (a file can never set it)."""
    from peftbench.runner import config_hash, normalize

    path = Path(path)
    name, base, axes = load(path)
    runs: list[SweepRun] = []
    seen: set[str] = set()
    sizes = [len(a) for a in axes]
    if math.prod(sizes) > MAX_RUNS:  # a typo (seeds: 10000000) must not expand for hours
        raise UserError(f"sweep file '{path}' expands to {math.prod(sizes)} runs, more than {MAX_RUNS}; "
                        "use fewer axis values or split it into several sweeps")
    combos = list(itertools.product(*axes))
    for n, combo in enumerate(combos, 1):
        layers = [*base, *combo]
        raw: dict[str, Any] = {}
        for _, partial, _ in layers:
            raw = _merge(raw, partial)
        if trust_remote_code:
            raw = _merge(raw, {"model": {"trust_remote_code": True}})
        desc = " + ".join(_flow(partial) for _, partial, _ in combo) or "base only"
        try:
            cfg = RunConfig.model_validate(raw)
        except ValidationError as err:
            loc = tuple(err.errors()[0]["loc"])
            where = _blame(layers, loc, f"sweep file '{path}', run {n} of {len(combos)} ({desc})")
            raise UserError(f"{where}: {explain(err, RunConfig)}") from None
        try:
            cfg, _ = normalize(cfg)
        except UserError as e:
            loose = any(_has(p, ("method", "params")) for w, p, _ in combo if "axis 'method'" not in w)
            hint = "; give a method's hyper-parameters in its method axis entry (params: or grid:)" if loose else ""
            raise UserError(f"sweep file '{path}', run {n} of {len(combos)} ({desc}): {e}{hint}") from None
        digest = config_hash(cfg)
        if digest not in seen:
            seen.add(digest)
            runs.append(SweepRun(cfg, digest, _label(cfg, combo, sizes)))
    return Sweep(name, path, runs, len(combos) - len(runs))
