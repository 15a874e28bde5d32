"""A run's folder: config.json, metrics.json, curve.json, predictions.json and the adapter/.

Only the store writes and reads these files; everyone else asks the Store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftbench.store.result import Predictions, RunOutput

ADAPTER = "adapter"  # the method's saved weights (Method.save / Method.load)


def write(staged: Path, config: dict[str, Any], output: RunOutput) -> None:
    """The run's files into its staging folder (renamed into place by Store.finish)."""
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
