"""Small drawing helpers shared by the harnesses.

Hypothesis validates every strategy object the first time it draws from it, so strategies built
inside a composite on each draw cost more than the harness's own check (measured: ~10 ms an
example for the request heads). These draw from strategies made once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from itertools import pairwise
from typing import TypeVar

from hypothesis import strategies as st

_T = TypeVar("_T")

# Any character but a surrogate. `st.text()`'s default (codec="utf-8") computes a table of the
# whole Unicode range on first use, ~7 s each process, as its cache is kept in a temporary
# directory here (fuzzing/driver.py); these two ranges say the same for ~0.5 s.
CHARACTERS = st.one_of(
    st.characters(max_codepoint=0xD7FF), st.characters(min_codepoint=0xE000, max_codepoint=0x10FFFF)
)


def text(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    return st.text(CHARACTERS, min_size=min_size, max_size=max_size)


@cache
def _below(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


@cache
def permutation(n: int) -> st.SearchStrategy[list[int]]:
    """An order for items 1..n (item 0 stays first: a request line)."""
    return st.permutations(range(1, n + 1))


def pick(draw: st.DrawFn, items: Sequence[_T]) -> _T:
    """One of `items` (shrinks towards the first)."""
    return items[draw(_below(len(items)))]


def mostly(draw: st.DrawFn, good: _T, others: Sequence[_T]) -> _T:
    """`good` about four times in five, else one of `others`; shrinks towards `good`."""
    return pick(draw, others) if chance(draw, 5) else good


def chance(draw: st.DrawFn, n: int) -> bool:
    """True about once in `n`; shrinks towards False.

    The middle value, not 0: Hypothesis draws the ends of a range (0 above all) far more often
    than the rest, which would make a one-in-ten branch a one-in-three one.
    """
    return draw(_below(n)) == n // 2


def cuts(draw: st.DrawFn, size: int, most: int) -> tuple[int, ...]:
    """Up to `most` sorted chunk boundaries inside a stream of `size` bytes."""
    return tuple(sorted({draw(_below(size + 1)) for _ in range(draw(_below(most + 1)))}))


def chunks(data: bytes, edges: tuple[int, ...]) -> list[bytes]:
    """`data` cut at `edges` (sorted), empty pieces included: a feed of b"" must be harmless."""
    bounds = [0, *edges, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]
