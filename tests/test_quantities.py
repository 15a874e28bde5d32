"""Sizes and counts on the command line (report/quantities.py): units, round trips, one-line refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftbench.errors import UserError
from peftbench.report.constraints import KINDS, parse_limits
from peftbench.report.quantities import (BYTE_UNITS, COUNT_UNITS, format_bytes, format_count, format_flops, parse_bytes,
                                         parse_count, parse_ms)

POSITIVE = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("text, want", [
    ("2GB", 2e9), ("1.5GiB", 1.5 * 2**30), ("500MB", 5e8), ("500 mb", 5e8), ("1024", 1024), ("64KiB", 65536),
    ("1kB", 1000), ("3B", 3), ("2.5e9", 2.5e9), (" 1TB ", 1e12), ("7.", 7),
])
def test_bytes(text: str, want: float) -> None:
    assert parse_bytes(text) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("text, want", [("1M", 1e6), ("250k", 2.5e5), ("2.5e12", 2.5e12), ("3B", 3e9), ("1G", 1e9),
                                        ("4T", 4e12), ("17", 17), ("1.5m", 1.5e6)])
def test_counts(text: str, want: float) -> None:
    assert parse_count(text) == pytest.approx(want, rel=1e-12)


def test_milliseconds() -> None:
    assert parse_ms("20") == 20 and parse_ms("20ms") == 20 and parse_ms("0.02s") == pytest.approx(20)


@settings(max_examples=200, deadline=None, database=None)
@given(x=POSITIVE, unit=st.sampled_from(sorted(BYTE_UNITS)), space=st.sampled_from(["", " "]), upper=st.booleans())
def test_bytes_with_any_unit_scale_the_number(x: float, unit: str, space: str, upper: bool) -> None:
    typed = unit.upper() if upper else unit
    assert parse_bytes(f"{x!r}{space}{typed}") == pytest.approx(x * BYTE_UNITS[unit], rel=1e-12)


@settings(max_examples=200, deadline=None, database=None)
@given(x=POSITIVE, unit=st.sampled_from(sorted(COUNT_UNITS)))
def test_counts_with_any_unit_scale_the_number(x: float, unit: str) -> None:
    assert parse_count(f"{x!r}{unit}") == pytest.approx(x * COUNT_UNITS[unit], rel=1e-12)


@settings(max_examples=300, deadline=None, database=None)
@given(n=st.floats(min_value=1, max_value=1e14), binary=st.booleans())
def test_shown_sizes_read_back_within_their_rounding(n: float, binary: bool) -> None:
    shown = format_bytes(n, binary)
    assert parse_bytes(shown.replace(" ", "")) == pytest.approx(n, rel=5e-3)  # 3 significant digits
    assert shown.split()[1] in (("B", "KiB", "MiB", "GiB", "TiB") if binary else ("B", "kB", "MB", "GB", "TB"))
    assert parse_count(format_count(n)) == pytest.approx(n, rel=5e-3)
    assert parse_count(format_flops(n)) == pytest.approx(n, rel=5e-3)


def test_round_units_show_round() -> None:
    assert format_bytes(2e9) == "2 GB" and format_bytes(1.37e6) == "1.37 MB" and format_bytes(999_999) == "1 MB"
    assert format_bytes(1.5 * 2**30, binary=True) == "1.5 GiB" and format_count(250_000) == "250k"
    assert format_count(22_700_000) == "22.7M" and format_flops(2.5e12) == "2.5e+12"


BAD = st.one_of(
    st.sampled_from(["", "abc", "-1GB", "0", "0MB", "1e999", "nan", "inf", "2 G B", "1..5GB", "GB", "2XB", "1,5GB", "1e5e3"]),
    st.text(max_size=12).filter(lambda t: not any(c.isdigit() for c in t)),
)


@settings(max_examples=200, deadline=None, database=None)
@given(text=BAD, name=st.sampled_from(sorted(KINDS)))
def test_bad_values_are_refused_in_one_line_naming_the_flag_and_an_example(text: str, name: str) -> None:
    kind = KINDS[name]
    with pytest.raises(UserError) as e:
        parse_limits({name: text})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(kind.flag) and f"{kind.flag} {kind.example}" in msg


@settings(max_examples=100, deadline=None, database=None)
@given(x=POSITIVE)
def test_limits_keep_what_was_typed(x: float) -> None:
    (mem, flops) = parse_limits({"max_memory": f"{x!r}GiB", "max_flops": f"{x!r}e9", "max_trainable": None})
    assert mem.value == pytest.approx(x * 2**30) and mem.label.endswith("iB peak memory")
    assert flops.name == "max_flops" and flops.value == pytest.approx(x * 1e9) and math.isfinite(flops.value)
