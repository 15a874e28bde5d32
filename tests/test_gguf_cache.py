"""The cache of dequantised GGUF models (gguf_cache.py): bit-identical loads, hash reuse, atomic and self-healing
entries, and `peftbench cache info|clear` (issue 14 item 4). A tiny quantised GGUF is built from the installed
SmolLM2 GGUF's tokenizer metadata (tests/tiny_gguf.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftbench import gguf_cache, models
from peftbench.config import ModelSpec
from peftbench.errors import UserError


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding only tiny.gguf."""
    pytest.importorskip("gguf")
    try:
        source = models.smollm2_dir() / models.SMOLLM2_FILE
    except UserError:
        pytest.skip("the bundled SmolLM2 GGUF (its tokenizer metadata) is not installed")
    from tiny_gguf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("gguf-model")
    write_tiny_gguf(source, folder / "tiny.gguf")
    return folder


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PEFTBENCH_GGUF_CACHE", raising=False)
    return tmp_path / "cache" / "gguf"


def load(folder: Path, auto: str = "AutoModelForCausalLM", **kwargs: object) -> object:
    import transformers

    return models.load_pretrained(getattr(transformers, auto), ModelSpec(name=str(folder), gguf_file="tiny.gguf"), **kwargs)


def uncached(monkeypatch: pytest.MonkeyPatch, folder: Path, auto: str = "AutoModelForCausalLM", **kwargs: object) -> object:
    with monkeypatch.context() as m:
        m.setenv("PEFTBENCH_GGUF_CACHE", "0")
        return load(folder, auto, **kwargs)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_cached_load_is_bit_identical_and_skips_dequantising(tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ref = uncached(monkeypatch, tiny_gguf)
    assert not cache.exists()  # turned off: nothing written
    first = load(tiny_gguf)
    assert "cached the dequantised tiny.gguf" in capsys.readouterr().err  # the size note
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert entry.name == gguf_cache.file_hash(tiny_gguf / "tiny.gguf")
    assert {"config.json", "model.safetensors", "tokenizer.json", gguf_cache.MANIFEST} <= {f.name for f in entry.iterdir()}
    monkeypatch.setattr(gguf_cache, "_build", lambda *a: pytest.fail("dequantised again"))
    second = load(tiny_gguf)
    assert_same_weights(ref, first)
    assert_same_weights(ref, second)
    ids = torch.tensor([[5, 77, 300, 2]])
    assert torch.equal(ref(ids).logits, second(ids).logits)
    # A task head on the decoder (classification) and another dtype come from the same entry, as from the GGUF.
    torch.manual_seed(0)
    head_ref = uncached(monkeypatch, tiny_gguf, "AutoModelForSequenceClassification", num_labels=3, dtype=torch.bfloat16)
    torch.manual_seed(0)
    assert_same_weights(head_ref, load(tiny_gguf, "AutoModelForSequenceClassification", num_labels=3, dtype=torch.bfloat16))


def test_tokenizer_and_config_come_from_the_cache_unchanged(tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok_ref, cfg_ref = uncached(monkeypatch, tiny_gguf, "AutoTokenizer"), uncached(monkeypatch, tiny_gguf, "AutoConfig")
    tok, cfg = load(tiny_gguf, "AutoTokenizer"), load(tiny_gguf, "AutoConfig")  # the first call builds the entry
    assert any(p.is_dir() for p in cache.iterdir())
    text = "Summarize: #Person1# said hello, the cat sat.<|im_end|>"
    assert tok(text)["input_ids"] == tok_ref(text)["input_ids"]
    assert (tok.eos_token, tok.pad_token, tok.bos_token, tok.chat_template) == (
        tok_ref.eos_token, tok_ref.pad_token, tok_ref.bos_token, tok_ref.chat_template)
    skip = {"_name_or_path", "_model_name_or_path", "dtype", "transformers_version", "architectures"}
    a, b = cfg_ref.to_dict(), cfg.to_dict()
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_hash_is_remembered_by_path_size_and_mtime(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "w.gguf"
    f.write_bytes(b"a" * 1000)
    digest = gguf_cache.file_hash(f)
    reads = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: (self == f and reads.append(self)) or real_open(self, *a, **k))
    assert gguf_cache.file_hash(f) == digest and reads == []  # not read again
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(1, 1))  # changed: hashed again
    reads.clear()
    assert gguf_cache.file_hash(f) != digest and reads == [f]


def test_damaged_entry_is_rebuilt(tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = uncached(monkeypatch, tiny_gguf)
    load(tiny_gguf)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated: the manifest's sizes catch it
    assert not gguf_cache.entry_ok(entry)
    assert_same_weights(ref, load(tiny_gguf))
    assert gguf_cache.entry_ok(entry)
    blob = bytearray(weights.read_bytes())
    blob[:8] = b"\xff" * 8  # same size, unreadable header: the load fails and the entry is rebuilt
    weights.write_bytes(bytes(blob))
    assert gguf_cache.entry_ok(entry)
    assert_same_weights(ref, load(tiny_gguf))


def test_an_interrupted_build_leaves_no_entry(tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(name: str, gguf: str, revision: object, into: Path) -> None:
        (into / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_build", killed)
    with pytest.raises(KeyboardInterrupt):
        load(tiny_gguf)
    assert [p for p in cache.iterdir() if p.is_dir()] == []  # the temporary folder is gone, no entry named
    monkeypatch.undo()
    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(cache.parent))
    stale = cache / ".building-killed"  # what a SIGKILL leaves: never read as an entry, counted and cleared
    stale.mkdir()
    (stale / "x").write_bytes(b"1" * 10)
    load(tiny_gguf)
    assert len([p for p in cache.iterdir() if p.is_dir() and gguf_cache.entry_ok(p)]) == 1


def test_cache_info_and_clear(tiny_gguf: Path, cache: Path) -> None:
    from peftbench.cli import app

    load(tiny_gguf)
    info = CliRunner().invoke(app, ["cache", "info", "--json"])
    assert info.exit_code == 0, info.output
    listed = json.loads(info.stdout)
    assert len(listed["entries"]) == 1 and listed["entries"][0]["gguf"].endswith("tiny.gguf")
    assert listed["bytes"] == sum(f.stat().st_size for f in cache.rglob("*") if f.is_file() and f.parent != cache) > 0
    text = CliRunner().invoke(app, ["cache", "info"])
    assert "1 cached model(s)" in text.stdout and "MB" in text.stdout
    cleared = CliRunner().invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 1 cached model(s)" in cleared.stdout
    assert [p for p in cache.iterdir() if p.is_dir()] == [] and not (cache / gguf_cache.HASHES).exists()
    assert "0 cached model(s)" in CliRunner().invoke(app, ["cache", "info"]).stdout


def test_unwritable_cache_falls_back_to_the_gguf(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(blocker))
    ref = uncached(monkeypatch, tiny_gguf)
    assert_same_weights(ref, load(tiny_gguf))
    assert "not caching the dequantised GGUF" in capsys.readouterr().err
