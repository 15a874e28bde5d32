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
    "adamss": Tuned(0.018, 0.6574, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "beft": Tuned(0.018, 0.6278, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "boft": Tuned(0.018, 0.6666, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "c3a": Tuned(0.054, 0.6266, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "deft": Tuned(0.006, 0.6730, (0.000667, 0.002, 0.006, 0.018)),
    "delora": Tuned(0.002, 0.6917, (0.000667, 0.002, 0.006)),
    "fourierft": Tuned(0.054, 0.6212, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "frod": Tuned(0.018, 0.6728, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "glora": Tuned(0.006, 0.6375, (0.000667, 0.002, 0.006, 0.018)),
    "gralora": Tuned(0.006, 0.6777, (0.000667, 0.002, 0.006, 0.018)),
    "hira": Tuned(0.054, 0.6968, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "hra": Tuned(0.054, 0.7048, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "lily": Tuned(0.006, 0.6709, (0.000667, 0.002, 0.006, 0.018)),
    "miss": Tuned(0.002, 0.6453, (0.000667, 0.002, 0.006)),
    "oft": Tuned(6e-3, 0.7040, (6.67e-4, 2e-3, 6e-3, 1.8e-2)),
    "osf": Tuned(0.000667, 0.6810, (0.000222, 0.000667, 0.002, 0.006)),
    "peanut": Tuned(0.006, 0.6431, (0.000667, 0.002, 0.006, 0.018)),
    "psoft": Tuned(0.018, 0.6442, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "pvera": Tuned(0.054, 0.6690, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "randlora": Tuned(0.002, 0.6669, (0.000667, 0.002, 0.006)),
    "road": Tuned(0.054, 0.7028, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "shira": Tuned(0.018, 0.6778, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "supertuning": Tuned(0.054, 0.6718, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "tinylora": Tuned(0.018, 0.6208, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "unilora": Tuned(0.054, 0.6342, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "vblora": Tuned(0.018, 0.6884, (0.000667, 0.002, 0.006, 0.018, 0.054)),
    "waveft": Tuned(0.002, 0.6414, (0.000667, 0.002, 0.006)),
}
