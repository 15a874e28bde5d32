"""Default learning rates of peft's generic tuners, chosen on validation (issue 17 item 4).

The procedure is the one the hand-written methods' defaults came from: the bundled MiniLM on
TweetEval emotion, 64 steps of 32 tweets, seed 0, each tuner at its defaults; rates LoRA's default
x 1/3, 1 and 3, widened by 3x past an edge pick (twice at most); the best validation macro-F1 wins.
A tuner whose best stays within LEARNS_MARGIN of always predicting the majority class "does not
learn" here: it gets no default (a run must pass --lr) rather than a made-up one.
`python benchmarks/tuner_lrs.py` reruns it and prints this table; BENCHMARKS.md records it.
"""

from __future__ import annotations

from dataclasses import dataclass

LEARNS_MARGIN = 0.05  # validation macro-F1 above the majority-class figure that counts as learning


@dataclass(frozen=True)
class Tuned:
    lr: float | None  # the rate chosen; None: it learned at no rate tried
    validation: float  # validation macro-F1 at that rate (the best seen, if none learned)
    tried: tuple[float, ...]


# name -> what the procedure found (filled from benchmarks/tuner_lrs.py's output; missing: not yet tuned)
MEASURED: dict[str, Tuned] = {
    "oft": Tuned(6e-3, 0.7040, (6.67e-4, 2e-3, 6e-3, 1.8e-2)),
    "fourierft": Tuned(5.4e-2, 0.6212, (6.67e-4, 2e-3, 6e-3, 1.8e-2, 5.4e-2)),
    "hra": Tuned(5.4e-2, 0.7048, (6.67e-4, 2e-3, 6e-3, 1.8e-2, 5.4e-2)),
    "miss": Tuned(2e-3, 0.6453, (6.67e-4, 2e-3, 6e-3)),
}
