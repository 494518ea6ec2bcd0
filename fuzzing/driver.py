"""Runs a harness under Hypothesis for a number of examples or a span of time.

A harness is a strategy and a `check`: `check` returns when the input was handled as documented
(accepted, or refused with the documented error) and raises AssertionError, or lets any other
exception out, when it was not. The same harness serves the short seeded run in the test suite
(`examples`, fixed seed: the same inputs on every machine) and the long run of `./dev fuzz`
(`seconds`, fresh seeds batch after batch). Hypothesis's example database is off and its storage
(a Unicode table cache) goes to a temporary directory: nothing is written into the checkout.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# Examples per Hypothesis run in a timed run: the first run is short, to measure the rate; the
# next ones fill the time left (so a run ends near its deadline), up to BATCH_MAX, large enough
# that the start of each run (where Hypothesis favours small inputs) does not dominate.
BATCH_FIRST = 50
BATCH_MAX = 2000

_storage: tempfile.TemporaryDirectory[str] | None = None


def keep_storage_out_of_checkout() -> None:
    """Point Hypothesis's storage (it caches a Unicode table there) at a temporary directory."""
    global _storage
    if _storage is None:
        _storage = tempfile.TemporaryDirectory(prefix="mcp-tunnel-hypothesis-")
        set_hypothesis_home_dir(_storage.name)


@dataclass(frozen=True)
class Harness:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]


@dataclass(frozen=True)
class Result:
    name: str
    examples: int
    seconds: float
    seeds: tuple[int, ...]
    failure: BaseException | None

    def summary(self) -> str:
        """One line: what ran, how much, and how it ended (with the seed that reproduces a failure)."""
        head = f"fuzz {self.name}: {self.examples} examples in {self.seconds:.1f} s"
        if self.failure is None:
            return head + ", ok"
        first = (str(self.failure).strip().splitlines() or [type(self.failure).__name__])[0]
        return f"{head}, FAILED (seed {self.seeds[-1]}): {type(self.failure).__name__}: {first[:200]}"


def run(
    harness: Harness,
    *,
    examples: int | None = None,
    seconds: float | None = None,
    first_seed: int | None = None,
) -> Result:
    """Run until `examples` have been tried or `seconds` have passed, whichever is given.

    With `examples`, one seeded run (the suite's: reproducible). With `seconds`, runs from fresh
    seeds (or `first_seed`, `first_seed + 1`, ...) until the time is up.
    A failure is shrunk by Hypothesis and returned, not raised.
    """
    if (examples is None) == (seconds is None):
        raise ValueError("give examples or seconds")
    keep_storage_out_of_checkout()
    count = 0

    def prop(value: Any) -> None:
        nonlocal count
        count += 1
        harness.check(value)

    base = first_seed if first_seed is not None else random.SystemRandom().randrange(2**32)
    seeds: list[int] = []
    started = time.monotonic()
    deadline = started + (seconds or 0.0)
    failure: BaseException | None = None
    batch = examples if examples is not None else BATCH_FIRST
    while True:
        current = base + len(seeds)
        seeds.append(current)
        test = seed(current)(
            settings(
                max_examples=batch,
                database=None,
                deadline=None,
                derandomize=False,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )(given(harness.strategy)(prop))
        )
        try:
            test()
        except Exception as exc:  # the harness's finding, shrunk: reported, not raised
            failure = exc
            break
        now = time.monotonic()
        if examples is not None or now >= deadline:
            break
        rate = count / max(now - started, 1e-3)
        batch = max(10, min(BATCH_MAX, int(rate * (deadline - now))))
    return Result(harness.name, count, time.monotonic() - started, tuple(seeds), failure)
