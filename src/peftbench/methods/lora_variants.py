"""How LoRA's variants are set up, beside peft: data-driven inits (CorDA, EVA) fed from the task's batches,
PiSSA-like adapters saved for the unchanged base, LoRA+'s rates and LoRA-FA's optimizer (methods/lora.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench.errors import UserError
from peftbench.methods.base import SetupData

EVA_PASSES = 10  # rounds over its batches EVA may take before its components are taken as converged


def _token_mask(batch: dict[str, Any], config: Any) -> torch.Tensor | None:
    """Which (row, position) of the batch are real tokens (and, for an LM, targets): EVA's SVD reads only those."""
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if ids is None:
        return None
    keep = (mask if mask is not None else torch.ones_like(ids)).bool()
    labels = batch.get("labels")
    if labels is not None and labels.shape == ids.shape:
        keep = keep & (labels != -100)
    return keep.reshape(-1, keep.shape[-1])


def _layer_rows(layer_input: Any, keep: torch.Tensor | None, name: str) -> torch.Tensor:
    """A layer's input as (rows, features): the kept tokens where it is laid out as the batch's tokens
    (batch, length, features), else every row (a pooler, a decoder of another length, image patches)."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if keep is not None and x.dim() == 3 and x.shape[:2] == keep.shape:
        return x[keep].contiguous()
    return x.reshape(-1, x.shape[-1]).contiguous()


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch as one-example batches without their padding: CorDA's statistics read one sequence at a time."""
    mask = batch.get("attention_mask")
    n = next(iter(batch.values())).shape[0]
    out = []
    for i in range(n):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        if mask is not None and mask.dim() == 2:
            keep = mask[i].nonzero().squeeze(1)
            row = {k: v.index_select(1, keep) if v.dim() >= 2 and v.shape[1] == mask.shape[1] else v for k, v in row.items()}
        out.append(row)
    return out


def _sequence_targets_only(model: nn.Module, config: Any, row: dict[str, Any]) -> None:
    """CorDA's covariance reads a layer's input as (length, features); a layer fed one vector per example
    (BERT's pooler) has none, so it is left out of CorDA's targets."""
    from peft.tuners.lora.corda import target_modules

    dims: dict[str, int] = {}

    def seen(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:  # returns None: output unchanged
            dims.setdefault(name, inputs[0].dim())
        return hook

    hooks = [m.register_forward_hook(seen(n)) for n, m in target_modules(model, config)]
    try:
        with torch.no_grad():
            model(**row)
    finally:
        for h in hooks:
            h.remove()
    flat = {n for n, d in dims.items() if d < 3}
    if flat:
        config.target_modules = sorted({n for n, _ in target_modules(model, config)} - flat)


def corda_statistics(model: nn.Module, config: Any, data: SetupData, batches: list[dict[str, Any]]) -> None:
    """CorDA's covariance of each target layer's inputs over the first batches, one sequence at a time."""
    from peft.tuners.lora.corda import preprocess_corda
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    _maybe_include_all_linear_layers(config, model)  # CorDA's hooks read target names, not 'all-linear'
    if any(b.get("input_ids") is not None and b["input_ids"].dim() > 2 for b in batches[:1]):
        raise UserError("lora init corda reads one sequence at a time, and a multiple-choice example is several; "
                        "use init pissa or eva here")
    rows = [r for b in batches for r in _rows(b)]
    _sequence_targets_only(model, config, rows[0])
    preprocess_corda(model, config, run_model=lambda: [data.forward(model, r) for r in rows])


def eva_init(model: nn.Module, data: SetupData, batches: list[dict[str, Any]], r: int, rho: float) -> None:
    """EVA: each layer's A from the SVD of its inputs on the first batches; ranks redistributed (rho)."""
    from peft import initialize_lora_eva_weights

    passes = 0

    def forward(m: nn.Module, batch: dict[str, Any]) -> Any:
        # peft cycles over the batches until every layer's components converge, which noisy or
        # degenerate data may never do: after EVA_PASSES rounds, take the components as they are.
        nonlocal passes
        passes += 1
        if passes > EVA_PASSES * len(batches):
            for module in m.modules():
                for hook in module._forward_hooks.values():
                    if hasattr(hook, "converged"):
                        hook.converged[:] = True
        return data.forward(m, batch)

    try:
        initialize_lora_eva_weights(model, dataloader=batches, forward_fn=forward, show_progress_bar=False,
                                    prepare_model_inputs_fn=_token_mask, prepare_layer_inputs_fn=_layer_rows)
    except (AttributeError, ValueError) as err:  # a layer saw fewer input rows per batch than components
        need = round(r * rho)
        raise UserError(f"lora init eva found no {need} components (r x eva_rho) for some layers ({err}); "
                        f"give it batches of at least {need} examples (--batch-size) or lower r or eva_rho") from None


def save_converted(model: nn.Module, out: Path, initial: Path) -> None:
    """A PiSSA/OLoRA/CorDA adapter saved as plain LoRA (rank 2r) for the unchanged base."""
    # peft loads the initial adapter beside the trained one to subtract it, and leaves `model` as it was
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out), safe_serialization=True,
                          path_initial_model_for_weight_conversion=str(initial))
    # peft 0.21's conversion keeps only the lora_A/lora_B tensors: put back the rest (the task head, biases)
    path = Path(out, "adapter_model.safetensors")
    saved = load_file(str(path))
    rest = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
            if "lora_A" not in k and "lora_B" not in k and k not in saved}
    if rest:
        save_file({**saved, **rest}, str(path), metadata={"format": "pt"})


def loraplus_groups(model: nn.Module, groups: list[dict[str, Any]], lr: float, heads: tuple[str, ...],
                    ratio: float) -> list[dict[str, Any]]:
    """LoRA+: the groups split so that "B" tensors learn at lr x ratio; the task head keeps its rate."""
    # Which parameters are LoRA+'s "B" is peft's rule (create_loraplus_optimizer): record its groups at lr 1
    from peft.optimizers import create_loraplus_optimizer

    class Record:
        def __init__(self, param_groups: list[dict[str, Any]], **_: Any) -> None:
            self.param_groups = param_groups

    rec = create_loraplus_optimizer(model, Record, lr=1.0, loraplus_lr_ratio=ratio, loraplus_lr_embedding=1.0)  # type: ignore[arg-type]
    scale = {id(p): g["lr"] for g in rec.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}

    def mult(p: nn.Parameter) -> float:  # the task head keeps its own rate (peft would raise a head bias too)
        return 1.0 if any(m in f".{names[id(p)]}" for m in heads) else scale.get(id(p), 1.0)

    out = []
    for g in groups:
        for m in sorted({mult(p) for p in g["params"]}):
            part = [p for p in g["params"] if mult(p) == m]
            out.append({**g, "params": part, **({"lr": g.get("lr", lr) * m} if m != 1.0 else {})})
    return out


def lorafa_optimizer(model: nn.Module, groups: list[dict[str, Any]], lr: float, weight_decay: float, r: int,
                     alpha: float) -> Any:
    """peft's LoRA-FA optimizer (A frozen, B's gradient projected), one group per rate (the head keeps its own)."""
    from peft.optimizers import create_lorafa_optimizer
    from peft.optimizers.lorafa import LoraFAOptimizer

    made = create_lorafa_optimizer(model, r, alpha, lr, weight_decay)  # type: ignore[arg-type]
    [group] = made.param_groups  # every named parameter in peft's order: each A just before its B
    rates = {id(p): g.get("lr", lr) for g in groups for p in g["params"]}
    parts: dict[float, dict[str, list[Any]]] = {}
    for p, n, f in zip(group["params"], group["names"], group["scaling_factors"]):
        part = parts.setdefault(rates.get(id(p), lr), {"params": [], "names": [], "scaling_factors": []})
        part["params"].append(p), part["names"].append(n), part["scaling_factors"].append(f)
    return LoraFAOptimizer([{**part, "lr": rate, "betas": (0.9, 0.999), "weight_decay": weight_decay}
                            for rate, part in parts.items()])
