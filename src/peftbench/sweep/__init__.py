"""Sweeps: a YAML file of axes expanded into runs, run resumably on N local workers or on Ray."""

from peftbench.sweep.command import SweepSummary, run_sweep
from peftbench.sweep.spec import Sweep, SweepRun, expand

__all__ = ["Sweep", "SweepRun", "SweepSummary", "expand", "run_sweep"]
