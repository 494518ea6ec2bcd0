"""Catching reference cycles: objects that only the cyclic garbage collector would free."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_garbage(*types: type) -> Iterator[list[str]]:
    """Yield a list that, after the block, names the objects of `types` the block left in cycles.

    Everything freed by reference counting is gone before the collection at the end; what the
    collector then finds unreachable was only held by a cycle.
    """
    left: list[str] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield left
        gc.collect()
        left += [type(o).__name__ for o in gc.garbage if isinstance(o, types)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
