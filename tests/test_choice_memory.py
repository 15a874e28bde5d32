"""Multiple-choice training memory (issue 15 item 9): a batch of questions trains as passes of at most
batch_size sequences, so a question's choices do not multiply the peak; the step is the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import parse_config
from peftbench.measure.flops import FlopMeter
from peftbench.store import Store
from peftbench.tasks.choice_strategies import ChoiceClassifier
from peftbench.train import lm_loss
from test_multiple_choice import config, data_dir, make_task

pytestmark = pytest.mark.timeout(120)


class FakeTask:
    def __init__(self, num_choices: int) -> None:
        self.num_choices = num_choices


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), choices=st.integers(2, 6), batch_size=st.integers(1, 64), length=st.integers(1, 5))
def test_pieces_hold_at_most_a_batch_of_sequences_and_rebuild_the_batch(rows: int, choices: int, batch_size: int,
                                                                        length: int) -> None:
    batch = {"input_ids": torch.arange(rows * choices * length).view(rows, choices, length),
             "attention_mask": torch.ones(rows, choices, length, dtype=torch.long), "labels": torch.arange(rows) % choices}
    pieces = ChoiceClassifier(FakeTask(choices)).pieces(batch, batch_size)  # type: ignore[arg-type]
    for piece, share in pieces:
        n = piece["labels"].shape[0]
        assert n * choices <= max(batch_size, choices)  # one question always fits, whatever its choices
        assert share == pytest.approx(n / rows)
    assert sum(s for _, s in pieces) == pytest.approx(1.0)
    for k, v in batch.items():
        assert torch.equal(torch.cat([p[k] for p, _ in pieces]), v)
    if rows * choices <= batch_size:
        assert len(pieces) == 1 and pieces[0][0] is batch


def test_a_step_in_pieces_has_the_whole_batchs_gradient_and_flops(tiny_models, tmp_path: Path) -> None:
    raw = config(tiny_models("bert"), data_dir(tmp_path / "mc"))
    task = make_task(raw)
    torch.manual_seed(0)
    model, _ = task.load_model(parse_config(raw).model)
    model.eval()  # no dropout: the two ways must agree to rounding
    batch = next(task.train_batches(8, seed=0))
    whole, parts = FlopMeter(), FlopMeter()
    params = [p for p in model.parameters() if p.requires_grad]

    whole.train_step(model, batch, lm_loss.loss)
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    pieces = task.pieces(batch, 8)
    assert len(pieces) == 4 and all(p["input_ids"].shape[:2] == (2, 4) for p, _ in pieces)  # 8 questions x 4 choices
    for piece, share in pieces:
        with parts.count(piece):
            (lm_loss.loss(model, piece) * share).backward()
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)
    assert parts.total == whole.total > 0  # FLOPs are linear in the rows: the budget is unchanged


def test_through_the_cli_no_training_pass_sees_more_than_the_batch_size(
        tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    real = lm_loss.loss

    def recording(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled():
            seen.append(tuple(batch["input_ids"].shape[:2]))
        return real(model, batch)

    monkeypatch.setattr(lm_loss, "loss", recording)
    root = data_dir(tmp_path / "mc")
    res = CliRunner().invoke(app, ["run", "--task", "multiple_choice", "--model", tiny_models("bert"), "--data", str(root),
                                   "-m", "lora", "--steps", "2", "--batch-size", "8", "--eval-batch-size", "8",
                                   "--max-length", "32", "--samples", "0", "--results-dir", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    assert seen == [(2, 4)] * 8  # 2 steps x 4 passes of 2 questions x 4 choices
    result = Store(tmp_path / "r").get(json.loads(res.stdout)["run_id"]).result
    assert result["test"]["accuracy"] >= 0 and result["costs"]["train_flops"] > 0
