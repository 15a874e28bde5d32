"""The results store: SQLite index + one folder per run."""

from peftbench.store.sqlite import RunRow, Store

__all__ = ["RunRow", "Store"]
