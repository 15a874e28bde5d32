"""Calibration counts a training step on one row, times the batch size (FlopMeter.count_step_from_row):
equal to counting the whole batch, exactly, for every family, method and packed batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl
from peftbench import runner
from peftbench.config import parse_config
from peftbench.measure.flops import FlopMeter, shape_key
from peftbench.train import lm_loss
from test_generation import config as gen_config
from test_generation import dialogue_rows


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rows-data")
    for split, n, seed in (("train", 16, 1), ("validation", 4, 2), ("test", 4, 3)):
        rows = dialogue_rows(n, seed)
        for i, r in enumerate(rows):  # varied lengths: padding and packing have work to do
            r["dialogue"] = " ".join([r["dialogue"]] * (1 + i % 3))
        write_jsonl(root / f"{split}.jsonl", rows)
    return root


def figures(raw: dict[str, Any], batch_size: int = 6) -> tuple[tuple[int, ...], tuple[int, ...], dict]:
    """(whole batch's figures, one row's times B) for the first training batch of a prepared run."""
    cfg, method = runner.normalize(parse_config(raw))
    prep = runner.prepare(cfg, method, samples=False)
    prep.model.train()
    batch = next(prep.task.train_batches(batch_size, 0))
    whole, rows = FlopMeter(), FlopMeter()
    with whole.count(batch):  # the training loop's own step: its chunked LM loss, then backward
        lm_loss.loss(prep.model, batch).backward()
    prep.model.zero_grad(set_to_none=True)
    rows.count_step_from_row(prep.model, batch, lm_loss.loss)  # calibration's (runner._calibrate)
    key = shape_key(batch)
    assert rows.total == whole.total and rows.counted_shapes == 1
    return whole.cache[key], rows.cache[key], batch


@pytest.mark.parametrize("method", ["lora", "full", "prompt"])
def test_encoder_classification(tiny_config: dict, method: str) -> None:
    whole, rows, _ = figures({**tiny_config, "method": {"name": method}})
    assert rows == whole and whole[0] > 0 and whole[1] > 0


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
@pytest.mark.parametrize("method", ["lora", "full", "prefix"])
def test_decoder_and_seq2seq_lm(tiny_models, gen_data: Path, arch: str, method: str) -> None:
    raw = gen_config(tiny_models(arch), gen_data, "summarization", method)
    whole, rows, _ = figures(raw)
    assert rows == whole and whole[0] > 0


def test_packed_decoder_batch(tiny_models, gen_data: Path) -> None:
    raw = gen_config(tiny_models("llama"), gen_data, "summarization")
    raw["train"]["packing"] = True
    whole, rows, batch = figures(raw, batch_size=8)
    assert batch["attention_mask"].dim() == 4 and batch["input_ids"].shape[0] > 1  # packed, several rows
    assert rows == whole


def test_gradient_checkpointing_recompute_scales_too(tiny_models, gen_data: Path) -> None:
    raw = gen_config(tiny_models("llama"), gen_data, "summarization")
    raw["train"]["gradient_checkpointing"] = True
    whole, rows, _ = figures(raw)
    assert rows == whole and whole[2] > 0


def test_calibration_counts_rows_and_matches_training(tiny_config: dict) -> None:
    """calibrate_flops through the runner: the same total as a real run's counted steps (test_budget.py
    checks the budget end to end); here its shapes were counted on one row each."""
    raw = {**tiny_config, "train": {**tiny_config["train"], "steps": 3}}
    calls: list[int] = []
    real = FlopMeter.train_step

    def spy(self: FlopMeter, model: Any, batch: dict, loss_fn: Any = None) -> Any:
        calls.append(batch["input_ids"].shape[0])
        return real(self, model, batch, loss_fn)

    FlopMeter.train_step = spy  # type: ignore[method-assign]
    try:
        total = runner.calibrate_flops(parse_config(raw))
    finally:
        FlopMeter.train_step = real  # type: ignore[method-assign]
    assert total > 0 and calls and set(calls) == {1}
