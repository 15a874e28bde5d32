"""Winner by budget (issue 16 item 1) on synthetic curves whose leaders and crossovers are known."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from peftbench.report.by_budget import (
    Crossover, best_so_far, by_budget, cell_series, indistinguishable, leader_path, standings,
)


def series(*seeds: list[tuple[float, float]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (FLOPs, scores) from (x, y) points."""
    return {i: (np.array([x for x, _ in pts], float), np.array([y for _, y in pts], float)) for i, pts in enumerate(seeds)}


FAST = [(1, 0.50), (2, 0.60), (3, 0.62), (4, 0.63)]  # learns early, then flattens
SLOW = [(1, 0.20), (2, 0.40), (3, 0.65), (4, 0.80)]  # overtakes it at 3


def test_known_crossover_one_seed() -> None:
    bb = by_budget({"fast": series(FAST), "slow": series(SLOW)}, "macro_f1")
    assert bb is not None and bb.reference_flops == 4.0
    assert [r.flops for r in bb.rows] == [1.0, 2.0, 3.0, 4.0]
    assert [r.leader for r in bb.rows] == ["fast", "fast", "slow", "slow"]
    assert [round(r.score.mean, 6) for r in bb.rows] == [0.5, 0.6, 0.65, 0.8]
    assert all(r.score.half_width is None for r in bb.rows)  # one seed: no interval
    assert bb.crossovers == [Crossover(3.0, "fast", "slow")] and bb.last_change == 3.0
    assert all(r.ties == [] and r.rules == ["tolerance"] for r in bb.rows)  # 0.03 apart at 3: more than 0.02


def test_one_seed_tolerance_marks_near_scores() -> None:
    bb = by_budget({"a": series([(4, 0.70)]), "b": series([(4, 0.685)]), "c": series([(4, 0.60)])}, "acc",
                   fractions=[1.0])
    assert bb.rows[0].leader == "a" and bb.rows[0].ties == ["b"]


def test_score_at_a_budget_is_the_best_so_far() -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.7, 0.6])
    assert best_so_far(x, y, 0.5) is None  # nothing measured yet
    assert best_so_far(x, y, 2.5) == 0.7 and best_so_far(x, y, 3.0) == 0.7  # the dip at 3 is not read
    assert best_so_far(x, np.array([0.9, 0.6, 0.8]), 3.0, lower_is_better=True) == 0.6  # a loss: lowest so far


def test_unevaluated_cells_and_untrained_baselines() -> None:
    cells = {"base": series([(0, 0.30)]), "late": series([(2, 0.50), (4, 0.90)]), "early": series([(1, 0.35), (4, 0.40)])}
    bb = by_budget(cells, "acc")
    first = bb.rows[0]
    assert first.leader == "early" and first.unmeasured == ["late"]  # ¼ = 1 FLOP: late has no point yet
    assert [r.leader for r in bb.rows[1:]] == ["late"] * 3
    # base scores its untrained point everywhere, so it leads until the first evaluation
    assert [(c.flops, c.before, c.after) for c in bb.crossovers] == [(1.0, "base", "early"), (2.0, "early", "late")]
    assert by_budget({"base": series([(0, 0.3)])}, "acc") is None  # nothing trained: no budget to divide


def test_paired_seeds_tell_a_constant_gap_apart() -> None:
    a = [[(4, v)] for v in (0.60, 0.70, 0.80)]
    close = series(*[[(4, v + 0.01)] for v in (0.60, 0.70, 0.80)])  # 0.01 better on every seed
    noisy = series(*[[(4, v + d)] for v, d in zip((0.60, 0.70, 0.80), (0.02, -0.03, 0.01))])
    table = standings({"close": close, "a": series(*a), "noisy": noisy}, 4.0)
    lead = table[0]
    assert lead.label == "close"
    others = {s.label: s for s in table[1:]}
    # the seeds' spread (±0.25) dwarfs the gap, yet pairing sees it on every seed
    assert not indistinguishable(lead, others["a"])
    assert indistinguishable(lead, others["noisy"])


def test_unpaired_seeds_fall_back_to_overlapping_intervals() -> None:
    a = {0: (np.array([4.0]), np.array([0.70])), 1: (np.array([4.0]), np.array([0.72]))}
    b = {5: (np.array([4.0]), np.array([0.69])), 6: (np.array([4.0]), np.array([0.71]))}
    far = {7: (np.array([4.0]), np.array([0.40])), 8: (np.array([4.0]), np.array([0.41]))}
    bb = by_budget({"a": a, "b": b, "far": far}, "acc", fractions=[1.0])
    assert bb.rows[0].leader == "a" and bb.rows[0].ties == ["b"] and bb.rows[0].rules == ["overlap"]


def test_degenerate_cells_never_lead() -> None:
    bb = by_budget({"fast": series(FAST), "slow": series(SLOW)}, "acc", exclude=["slow"])
    assert [r.leader for r in bb.rows] == ["fast"] * 4 and bb.excluded == ["slow"] and bb.crossovers == []


def test_cell_series_reads_stored_curves() -> None:
    curve = [{"step": 2, "train_flops": 20, "metrics": {"macro_f1": 0.4}},
             {"step": 1, "train_flops": 10, "metrics": {"macro_f1": 0.3}}, {"step": 3, "train_flops": 30, "metrics": {}}]
    got = cell_series([curve, []], [7, 8], "macro_f1")
    assert list(got) == [7] and got[7][0].tolist() == [10.0, 20.0] and got[7][1].tolist() == [0.3, 0.4]


# -- properties --------------------------------------------------------------------------
points = st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1)), min_size=1, max_size=6)
cells_strategy = st.dictionaries(st.sampled_from(list("abcdef")), st.lists(points, min_size=1, max_size=3),
                                 min_size=1, max_size=5)


def to_cells(raw: dict[str, list[list[tuple[int, float]]]]) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    return {k: series(*[sorted(p) for p in seeds]) for k, seeds in raw.items()}


@settings(max_examples=150, deadline=None)
@given(cells_strategy, st.integers(0, 20), st.booleans())
def test_the_leader_has_the_best_mean_at_its_budget(raw, budget, lower) -> None:
    cells = to_cells(raw)
    table = standings(cells, budget, lower)
    for s in table:  # each cell's score is its seeds' best point at or before the budget
        expect = [min(y[x <= budget]) if lower else max(y[x <= budget]) for x, y in cells[s.label].values()]
        assert np.isclose(s.score.mean, np.mean(expect))
    evaluated = {k for k, ser in cells.items() if all((x <= budget).any() for x, _ in ser.values())}
    assert {s.label for s in table} == evaluated
    if table:
        best = min(s.score.mean for s in table) if lower else max(s.score.mean for s in table)
        assert table[0].score.mean == best


@settings(max_examples=100, deadline=None)
@given(cells_strategy, st.booleans())
def test_crossovers_are_exactly_where_the_path_changes_leader(raw, lower) -> None:
    cells = to_cells(raw)
    path = leader_path(cells, lower)
    bb = by_budget(cells, "m", lower)
    if bb is None:
        return
    changes = [(x, a.label, b.label) for (_, a), (x, b) in zip(path, path[1:]) if a.label != b.label]
    assert [(c.flops, c.before, c.after) for c in bb.crossovers] == changes
    last = bb.rows[-1]
    assert last.leader == (path[-1][1].label if path else None)  # the fraction 1 is the path's end


def test_legend_says_how_the_table_was_read() -> None:
    from peftbench.report.budget_view import legend

    bb = by_budget({"fast": series(FAST), "slow": series(SLOW)}, "macro_f1")
    text = legend(bb)
    assert "its best validation macro-F1 at or before it" in text and "one seed, so no interval" in text
    assert "fast → slow at 3 FLOP (0.75)" in text and "test verdicts (the quality table) are only at the final budget" in text
    none = by_budget({"fast": series(FAST), "slow": series(SLOW)}, "macro_f1", exclude=["fast", "slow"])
    assert [r.leader for r in none.rows] == [None] * 4
    assert legend(none) == "no leader at any budget: every method is degenerate (fast, slow)"
