"""A run's folder: run.json, config.json, metrics.json, curve.json, predictions.json and the adapter/.

Only the store writes and reads these files; everyone else asks the Store. The folder alone
is enough to put the run back into a lost index (store/integrity.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from peftbench.store.result import Predictions, RunOutput

ADAPTER = "adapter"  # the method's saved weights (Method.save / Method.load)
HASHED_VERSIONS = ("peftbench", "torch", "transformers", "peft")  # their major.minor is part of a config's identity


def digest(config: dict[str, Any], versions: dict[str, str]) -> str:
    """A config's identity: its canonical form plus major.minor of the packages its numbers depend on."""
    v = {k: ".".join(str(versions.get(k, "")).split(".")[:2]) for k in HASHED_VERSIONS}
    blob = json.dumps({"config": config, "versions": v}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write(staged: Path, config: dict[str, Any], output: RunOutput, identity: dict[str, Any]) -> None:
    """The run's files into its staging folder (renamed into place by Store.finish).

    identity: run_id, config_hash, created and finished, as the index holds them.
    """
    (staged / "run.json").write_text(json.dumps(identity, indent=2))
    (staged / "config.json").write_text(json.dumps(config, indent=2))
    (staged / "metrics.json").write_text(json.dumps(output.result.to_dict(), indent=2))
    (staged / "curve.json").write_text(json.dumps(output.curve, indent=2))
    if output.predictions is not None:
        (staged / "predictions.json").write_text(json.dumps(output.predictions.to_dict()))


def predictions(folder: Path) -> Predictions | None:
    """The stored test predictions; None when there are none (validation-only run) or the file is unreadable."""
    try:
        doc = json.loads((folder / "predictions.json").read_text())
        return Predictions(list(doc["predictions"]), list(doc["references"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
