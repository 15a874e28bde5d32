"""User-facing errors: one line that names the problem and the fix; the CLI exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input. The message is shown as is, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after the store marked it interrupted: the CLI names the run."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


# other libraries' names for peftbench's short keys: too far apart for difflib to match
ALIASES = {"learning_rate": "lr", "learningrate": "lr", "max_steps": "steps", "num_steps": "steps",
           "num_train_epochs": "epochs", "num_epochs": "epochs", "per_device_train_batch_size": "batch_size"}


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    choices = list(choices)
    head, dot, leaf = word.rpartition(".")
    alias = ALIASES.get(leaf.lower())
    if alias and head + dot + alias in choices:
        return f" (did you mean '{head + dot + alias}'?)"
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
