"""The results store: SQLite index + one folder per run, and the typed result a run produces."""

from peftbench.store.result import Budget, Costs, Curve, Latency, Predictions, RunOutput, RunResult, Sample
from peftbench.store.sqlite import RunRow, Store

__all__ = ["Budget", "Costs", "Curve", "Latency", "Predictions", "RunOutput", "RunResult", "RunRow", "Sample", "Store"]
