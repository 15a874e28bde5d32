"""Progress display of a run: the train.loop Reporter as rich bars on stderr."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from peftbench.cli.common import err


class BarReporter:
    """Progress bars for training and evaluation, one line per validation point; on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=True)
        self.bars: dict[str, Any] = {}
        self.started = False  # started on first use, so a refusal prints nothing but its line

    def _bar(self, name: str, done: int, total: int) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        if name not in self.bars:
            self.bars[name] = self.progress.add_task(f"{name} {self.label}", total=total or None)
        self.progress.update(self.bars[name], completed=done, total=total or None)
        if total and done >= total:  # a FLOPs or seconds budget has no step total: the bar counts up
            self.progress.remove_task(self.bars.pop(name))

    def start(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def step(self, step: int) -> None:
        self._bar("train", step, self.total_steps)

    def evaluating(self, split: str, done: int, total: int) -> None:
        self._bar(f"eval {split}", done, total)

    def evaluated(self, point: Any) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in point.metrics.items() if isinstance(v, float))
        self.progress.console.print(f"  {self.label} step {point.step}: val {shown}", highlight=False)

    def close(self) -> None:
        if self.started:
            self.progress.stop()

    def log(self, line: str) -> None:
        """A line above the bars (printing straight to stderr would tear them)."""
        self.progress.console.print(line, highlight=False)
