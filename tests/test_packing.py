"""Issue 13 item 5: padding-free sequence packing (train.packing) for decoder training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from peftbench.config import parse_config
from peftbench.tasks.summarization import Summarization
from peftbench.tasks.text import pad
from peftbench.train import lm_loss, packing
from test_generation import gen_data  # noqa: F401  (the fixture)


def examples(n: int = 5) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(n):
        p, t = 3 + 2 * i, 2 + i % 3  # prompt and target lengths differ per example
        ids = torch.randint(4, 60, (p + t,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return rows


def padded(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    ids = [r["input_ids"] for r in rows]
    return {"input_ids": pad(ids, 0), "attention_mask": pad([[1] * len(s) for s in ids], 0),
            "labels": pad([r["labels"] for r in rows], -100)}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_packed_batch_gives_each_example_its_own_loss(tiny_models, arch: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_models(arch), dtype=torch.float32).eval()
    rows = examples()
    batch = packing.pack(rows, capacity=16, pad_id=0)
    assert batch["input_ids"].shape[0] < len(rows)  # several examples share a row
    bins = packing.rows_of([len(r["input_ids"]) for r in rows], 16)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for r, b in enumerate(bins):
            off = 0
            for i in b:
                n = len(rows[i]["input_ids"])
                seg, lab = logits[r, off : off + n - 1], torch.tensor(rows[i]["labels"][1:])
                alone = model(input_ids=torch.tensor([rows[i]["input_ids"]]), labels=torch.tensor([rows[i]["labels"]])).loss
                assert float(F.cross_entropy(seg, lab, ignore_index=-100)) == pytest.approx(float(alone), abs=1e-5)
                off += n
        # The batch loss is the padded batch's: the same real tokens, no padding.
        assert float(lm_loss.loss(model, batch)) == pytest.approx(float(model(**padded(rows)).loss), abs=1e-5)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert Summarization.__new__(Summarization).batch_tokens(inputs) == sum(len(r["input_ids"]) for r in rows)


def test_rows_are_filled_first_fit_decreasing() -> None:
    assert packing.rows_of([5, 9, 3, 7, 2], 10) == [[1], [3, 2], [0, 4]]


def run_cli(tiny_models, data: Path, tmp_path: Path, *args) -> object:
    from test_bad_input import invoke

    return invoke("run", "--task", "summarization", "--data", data, "--max-length", 48, "--max-target-length", 12,
                  "--generation", "max_new_tokens=4", "--steps", 2, "--batch-size", 8, "--results-dir", tmp_path,
                  "--json", *args)


def test_cli_packed_run_counts_the_same_real_tokens(tiny_models, gen_data: Path, tmp_path: Path) -> None:  # noqa: F811
    plain = run_cli(tiny_models, gen_data, tmp_path, "--model", tiny_models("gpt2"))
    packed = run_cli(tiny_models, gen_data, tmp_path, "--model", tiny_models("gpt2"), "--packing")
    assert plain.exit_code == 0 and packed.exit_code == 0, packed.output
    a, b = json.loads(plain.stdout), json.loads(packed.stdout)
    assert a["run_id"] != b["run_id"]  # packing is part of the config
    assert b["result"]["costs"]["tokens"] == a["result"]["costs"]["tokens"]  # real tokens only, as padded counts them
    assert b["result"]["costs"]["train_flops"] > 0


def test_packing_off_keeps_the_config_hash() -> None:
    from peftbench.runner import config_hash

    cfg = parse_config({})
    assert "packing" not in cfg.canonical()["train"]
    assert config_hash(parse_config({"train": {"packing": True}})) != config_hash(cfg)


@pytest.mark.parametrize("arch,method,words", [
    ("t5", "lora", ["train.packing", "decoder-only", "--packing"]),
    ("gpt2", "prefix", ["method 'prefix'", "--packing"]),
    ("gpt2", "prompt", ["method 'prompt'", "--packing"]),
])
def test_cli_packing_refused_where_it_cannot_be_correct(tiny_models, gen_data: Path, tmp_path: Path,  # noqa: F811
                                                         arch: str, method: str, words: list) -> None:
    from test_bad_input import assert_refused

    res = run_cli(tiny_models, gen_data, tmp_path / "r", "--model", tiny_models(arch), "-m", method, "--packing")
    assert_refused(res, *words, results_dir=tmp_path / "r")


def test_packing_refused_for_classification(tiny_models, tiny_data: Path, tmp_path: Path) -> None:
    from test_bad_input import assert_refused, invoke

    res = invoke("run", "--task", "classification", "--model", tiny_models("gpt2"), "--data", tiny_data,
                 "--steps", 1, "--packing", "--results-dir", tmp_path / "r")
    assert_refused(res, "train.packing", "classification", results_dir=tmp_path / "r")


def test_config_packing_key() -> None:
    assert parse_config({"train": {"packing": True}}).train.packing
