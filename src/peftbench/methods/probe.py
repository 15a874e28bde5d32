"""A linear probe: logistic regression on the frozen model's features (issue 16 item 4).

The features are what the classification head reads (the checkpoint's pooling, see
tasks/pooling.py), computed once for train and validation with forward passes only; those
passes are the run's training FLOPs. scikit-learn fits a logistic regression on the
standardised train features for each C of the grid, and validation picks C (the task's select
metric; ties go to the smaller C, the stronger regularisation). The fitted model becomes the
task head's weights (the standardisation folded in), so evaluation, the stored predictions,
latency and the saved artifact (head.safetensors) are those of an ordinary head.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.methods import register
from peftbench.methods.base import Context, Params
from peftbench.methods.baselines import Base
from peftbench.tasks.pooling import pool
from peftbench.train import precision

PROBE_FILE = "probe.json"  # the C grid's validation scores and the chosen C, beside the head's weights


class ProbeParams(Params):
    cs: list[float] = Field([1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], min_length=1,
                            description="inverse regularisation strengths C tried; validation picks one")
    max_iter: int = Field(2000, ge=10, le=100000, description="L-BFGS iterations per fit")


@register
class LinearProbe(Base):
    name = "linear_probe"
    summary = "Logistic regression on the frozen model's features (computed once); C chosen on validation"
    Params = ProbeParams
    trains = False  # no gradient steps: no learning rate or budget; fit() is the whole of its training
    fits = True
    needs_head = True
    families = ("encoder", "decoder")

    scores: dict[str, float] = {}

    def check(self, ctx: Context) -> None:
        if ctx.peft_task_type == "SEQ_CLS" and ctx.head_modules:
            return
        if ctx.head_modules:  # another task with a head of its own (multiple choice on an encoder): head trains it
            raise UserError("method 'linear_probe' fits a text classification head; for this task's head use -m head")
        raise UserError("method 'linear_probe' fits a classification head, and this model and task have none (a "
                        "seq2seq model generates its label); use an encoder or decoder model, or -m lora")

    def fit(self, model: nn.Module, task: Any, select: str, batch_size: int, meter: FlopMeter) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        head = self._linear_head(model, len(task.labels))
        (x, y), (vx, vy) = (features(model, head, task, split, batch_size, meter) for split in ("train", "validation"))
        bias = head.bias is not None  # GPT-2's and Llama's score layer has none: no intercept, features only scaled
        scaler = StandardScaler(with_mean=bias).fit(x)
        x, vx = scaler.transform(x), scaler.transform(vx)
        best: tuple[float, Any] | None = None
        self.scores = {}
        for c in sorted(self.params.cs):
            with warnings.catch_warnings():  # an unconverged fit at a large C is still a candidate; validation judges it
                warnings.simplefilter("ignore")
                clf = LogisticRegression(C=c, max_iter=self.params.max_iter, fit_intercept=bias).fit(x, y)
            score = validation_score(task, vy, clf.predict(vx), select)
            self.scores[f"{c:g}"] = score
            if best is None or score > best[0]:
                best = (score, clf)
        assert best is not None
        self.chosen = float(best[1].C)
        set_head(head, best[1], scaler, len(task.labels))

    def _linear_head(self, model: nn.Module, labels: int) -> nn.Linear:
        found = [model.get_submodule(h) for h in self.heads]
        head = next((m for m in found if isinstance(m, nn.Linear) and m.out_features == labels), None)
        if head is None:
            raise UserError("method 'linear_probe' needs a model whose classification head ends in one linear layer "
                            f"(BERT-, MiniLM- or GPT-2-like); this one has {', '.join(self.heads)}; use head instead")
        return head

    def save(self, model: nn.Module, out: Path) -> None:
        super().save(model, out)
        info = {"C": getattr(self, "chosen", None), "validation": self.scores, "features": "the head's input"}
        (out / PROBE_FILE).write_text(json.dumps(info, indent=2))


@torch.inference_mode()
def features(model: nn.Module, head: nn.Linear, task: Any, split: str, batch_size: int,
             meter: FlopMeter) -> tuple[np.ndarray, np.ndarray]:
    """What `head` reads for every row of a split (one forward pass each, counted), and the labels."""
    rows = task._encode(split)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # little padding
    device = next(model.parameters()).device
    chunks: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: chunks.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(order), batch_size):
            batch = {k: v.to(device) for k, v in task.strategy.collate([rows[j] for j in order[i: i + batch_size]]).items()}
            with meter.count(batch), precision.autocast(task.precision, device.type):
                model(**batch)
            if chunks[-1].ndim == 3:  # a decoder's score layer reads every position: its prediction is the last token's
                chunks[-1] = pool(chunks[-1], batch["attention_mask"].cpu(), "last")
    finally:
        handle.remove()
        model.train(was_training)
    x = np.empty((len(rows), head.in_features), dtype=np.float64)
    x[order] = torch.cat(chunks).numpy()
    return x, np.asarray(task.splits[split]["label"])


def validation_score(task: Any, refs: np.ndarray, preds: np.ndarray, select: str) -> float:
    from peftbench.metrics import classification_metrics

    metrics = classification_metrics(refs.tolist(), preds.tolist(), list(range(len(task.labels))))
    return float(metrics.get(select, metrics["macro_f1"]))  # "loss": the head's loss is not the probe's objective


def set_head(head: nn.Linear, clf: Any, scaler: Any, labels: int) -> None:
    """The fitted regression as the head's weight and bias: argmax of the logits is its prediction."""
    mean = scaler.mean_ if scaler.mean_ is not None and scaler.with_mean else 0.0
    coef = clf.coef_ / scaler.scale_
    icpt = np.broadcast_to(np.asarray(clf.intercept_, dtype=np.float64), (coef.shape[0],)) - (coef * mean).sum(1)
    weight = np.zeros((labels, coef.shape[1]))
    bias = np.zeros(labels)
    if coef.shape[0] == 1:  # binary: one logit for the second class against 0
        weight[clf.classes_[1]], bias[clf.classes_[1]] = coef[0], icpt[0]
    else:
        weight[clf.classes_], bias[clf.classes_] = coef, icpt
        absent = np.setdiff1d(np.arange(labels), clf.classes_)
        bias[absent] = -1e9  # a class train never shows is never predicted
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
