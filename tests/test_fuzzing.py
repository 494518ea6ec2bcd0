"""The fuzz harnesses of fuzzing/, each for a short seeded run: the same inputs on every machine.

`./dev fuzz [seconds]` runs them for as long as asked, from fresh seeds; here each gets a fixed
number of examples (a few seconds in all), enough that a harness which rots (a strategy that no
longer builds, an oracle that no longer holds on today's code) fails the suite. They run against
whichever build is imported: compiled by default, pure with MCP_TUNNEL_PURE=1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # fuzzing/ sits beside src/ and tests/, as websockets and h11 keep it
    sys.path.insert(0, str(ROOT))

from fuzzing import harnesses  # noqa: E402
from fuzzing.__main__ import main  # noqa: E402
from fuzzing.driver import Harness, run  # noqa: E402

# Examples per harness: ~1-2 s each in the pure build on a loaded two-core machine.
EXAMPLES = {"handshake": 600, "frames": 400, "request_rules": 600, "config_file": 250}
SEED = 20261205


@pytest.mark.parametrize("harness", harnesses(), ids=lambda h: h.name)
def test_harness_holds_for_a_seeded_run(harness: Harness) -> None:
    before = (ROOT / ".hypothesis").exists()
    result = run(harness, examples=EXAMPLES[harness.name], first_seed=SEED)
    assert result.failure is None, result.summary()
    assert result.examples >= EXAMPLES[harness.name], result.summary()
    assert before or not (ROOT / ".hypothesis").exists(), "Hypothesis wrote into the checkout"


def test_every_harness_has_a_budget_here() -> None:
    assert sorted(EXAMPLES) == sorted(h.name for h in harnesses())


def test_a_failing_check_is_reported_shrunk_not_raised() -> None:
    def check(value: int) -> None:
        assert value < 1000, value

    result = run(Harness("planted", st.integers(0, 10**6), check), examples=200, first_seed=SEED)
    assert isinstance(result.failure, AssertionError)
    assert "1000" in str(result.failure)  # shrunk to the smallest failing value
    assert result.summary().startswith(f"fuzz planted: {result.examples} examples in ")
    assert f"FAILED (seed {SEED}): AssertionError: 1000" in result.summary()


def test_a_timed_run_stops_near_its_deadline() -> None:
    result = run(Harness("timed", st.integers(), lambda value: None), seconds=0.5, first_seed=SEED)
    assert result.failure is None and result.examples > 0
    assert 0.5 <= result.seconds < 5, result.summary()
    assert result.summary().endswith(", ok")


def test_the_command_ends_with_one_summary_line_per_harness(capsys: pytest.CaptureFixture[str]) -> None:
    """What `./dev fuzz 0.2` prints (it runs `python -m fuzzing` after the set-up)."""
    assert main(["0.2", "--seed", str(SEED)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [h.name for h in harnesses()]
    assert len(lines) == 1 + len(names), lines
    for line, name in zip(lines[1:], names, strict=True):
        head, _, tail = line.partition(" examples in ")
        assert head.startswith(f"fuzz {name}: ") and int(head.split()[-1]) > 0, line
        assert tail.endswith(" s, ok"), line


def test_the_command_refuses_an_unknown_harness(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["1", "nope"])
    assert exit_info.value.code == 2
    assert "unknown harness 'nope'" in capsys.readouterr().err
