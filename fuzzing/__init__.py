"""Fuzz harnesses for the code that reads what others send: peers' bytes and operators' files.

Kept out of `src/` (not installed) and out of `tests/` (the suite runs them briefly through
tests/test_fuzzing.py; `./dev fuzz [seconds]` runs them long). README.md says what each covers.
"""

from __future__ import annotations

from fuzzing.driver import Harness


def harnesses() -> list[Harness]:
    """Every harness, in the order the stream meets them: upgrade, frames, requests; then config."""
    from fuzzing import config_file, frames, handshake, request_rules

    return [handshake.HARNESS, frames.HARNESS, request_rules.HARNESS, config_file.HARNESS]
