"""Go-style durations: the same strings mean the same time as in the official (Go) proxy."""

from __future__ import annotations

import pytest

from mcp_tunnel.duration import format_duration, format_duration_ns, parse_duration, parse_duration_ns


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        ("2160h", 7_776_000.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1h2m3s", 3723.0),
        ("1h1h", 7200.0),
        ("2us", 2e-6),
        ("2\u00b5s", 2e-6),
        ("2\u03bcs", 2e-6),
        ("100ns", 1e-7),
        ("+5s", 5.0),
        ("-1m", -60.0),
        ("1.000000001s", 1.000000001),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


def test_parse_is_exact_in_nanoseconds() -> None:
    assert parse_duration_ns("1.000000001s") == 1_000_000_001
    assert parse_duration_ns("0.1s") == 100_000_000
    assert parse_duration_ns("2160h") == 2160 * 3600 * 10**9
    assert parse_duration_ns("1.5ns") == 1  # Go truncates below the nanosecond


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("30", 'time: missing unit in duration "30"'),
        ("1.5", 'time: missing unit in duration "1.5"'),
        ("s", 'time: invalid duration "s"'),
        (".s", 'time: invalid duration ".s"'),
        ("-", 'time: invalid duration "-"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        ("1S", 'time: unknown unit "S" in duration "1S"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1s5", 'time: missing unit in duration "1s5"'),
        ("3000000h", 'time: invalid duration "3000000h"'),  # beyond int64 nanoseconds
        ("\u0661s", 'time: invalid duration "\u0661s"'),  # Go takes ASCII digits only
        ("1\u0661s", 'time: unknown unit "\u0661s" in duration "1\u0661s"'),
    ],
)
def test_parse_errors_use_go_wording(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5\u00b5s"),
        (500_000_000, "500ms"),
        (1_500_000, "1.5ms"),
        (30 * 10**9, "30s"),
        (90 * 10**9, "1m30s"),
        (3600 * 10**9, "1h0m0s"),
        (2160 * 3600 * 10**9, "2160h0m0s"),
        (1_000_000_001, "1.000000001s"),
        (3723 * 10**9 + 500_000_000, "1h2m3.5s"),
        (-60 * 10**9, "-1m0s"),
    ],
)
def test_format_like_go(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.5, 2.0, 30.0, 90.0, 3600.0, 7_776_000.0, 1.25])
def test_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
