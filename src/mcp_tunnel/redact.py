"""The process-wide list of values no output may show, and `scrub`, which hides them.

Whatever obtains a credential registers it (setup's keys and tokens, the doctor's tunnel token,
config values that came from ``${VAR}`` and are not an address or path, docs/configuration.md);
log lines, error lines and the ``--debug`` traceback pass `scrub` on their way out. Each value is
replaced by its own label (``${API_TOKEN}``) or ``[REDACTED]``. Values shorter than
`MIN_LENGTH` are never registered: they cannot be credentials and replacing them would mangle
ordinary text. Stdlib only.
"""

from __future__ import annotations

REDACTED = "[REDACTED]"
MIN_LENGTH = 4

_values: dict[str, str] = {}
_order: list[str] = []  # longest first, so a value inside another is not replaced first


def register(value: str | bytes | None, label: str = REDACTED) -> None:
    """Hide `value` (and its stripped form) from everything written from now on."""
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    changed = False
    # The value, its stripped form, its repr-escaped form (a traceback shows bytes and strings
    # as repr) and each of its lines or words long enough to be a credential on its own.
    # Words only for credentials: a config value's words may be ordinary ones.
    pieces = [text, text.strip(), repr(text)[1:-1]]
    if label == REDACTED:
        pieces += [p for p in text.split() if len(p) >= 8]
    for piece in pieces:
        if len(piece) >= MIN_LENGTH and piece not in _values:
            _values[piece] = label
            changed = True
    if changed:
        _order[:] = sorted(_values, key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` with every registered value replaced by its label."""
    if not _order:
        return text
    for value in _order:
        if value in text:
            text = text.replace(value, _values[value])
    return text


def credential_problem(value: str) -> str | None:
    """Why `value` cannot be a credential (one line of printable characters without spaces),
    as words that never include the value: "a line break at character 41 of 108"."""
    for i, ch in enumerate(value):
        if ch.isspace() or not ch.isprintable():
            what = "a line break" if ch in "\r\n" else "whitespace" if ch.isspace() else "a control character"
            return f"{what} at character {i + 1} of {len(value)}"
    return None


def active() -> bool:
    return bool(_order)


def clear() -> None:
    """Forget every value (tests; a process never needs it)."""
    _values.clear()
    _order.clear()
