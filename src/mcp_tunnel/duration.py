"""Go-style durations (``30s``, ``1m30s``, ``500ms``, ``2160h``), as Go's ``time.ParseDuration``.

The official proxy is written in Go and its config takes ``time.Duration`` strings, so an official
config must mean the same thing here. Parsing is exact (integer nanoseconds); callers get seconds.
Error texts are Go's, so a message reads the same as the official proxy's would.
"""

from __future__ import annotations

import re

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS: dict[str, int] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # Greek small letter mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds
# One component: a number (digits, optional fraction, at least one digit) and an optional unit.
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")  # ASCII digits only, as Go


def parse_duration_ns(text: str) -> int:
    """Parse a Go duration into integer nanoseconds; raise ValueError with Go's wording."""
    quoted = '"' + text + '"'
    s = text
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    pos = 0
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        if m is None or m.end() == pos:  # pragma: no cover - the pattern always matches something
            raise ValueError(f"time: invalid duration {quoted}")
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        scale = _UNITS.get(unit)
        if scale is None:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // 10 ** len(frac)
        total += value
        if total > _MAX_NS:
            raise ValueError(f"time: invalid duration {quoted}")
        pos = m.end()
    return sign * total


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds (float), e.g. ``"1m30s"`` -> ``90.0``."""
    return parse_duration_ns(text) / SECOND


def format_duration_ns(ns: int) -> str:
    """Format nanoseconds as Go's ``Duration.String()`` does: ``1m30s``, ``500ms``, ``2160h0m0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < SECOND:
        if u < MICROSECOND:
            return f"{sign}{u}ns"
        if u < MILLISECOND:
            return sign + _fixed(u, MICROSECOND) + "\u00b5s"
        return sign + _fixed(u, MILLISECOND) + "ms"
    hours, rest = divmod(u, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _fixed(rest, SECOND) + "s"


def format_duration(seconds: float) -> str:
    """Format seconds as a Go duration string (rounded to the nanosecond)."""
    return format_duration_ns(round(seconds * SECOND))


def _fixed(value: int, unit: int) -> str:
    """``value/unit`` in decimal with trailing zeros (and a bare point) removed."""
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}." + f"{frac:0{digits}d}".rstrip("0")
