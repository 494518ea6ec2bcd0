"""Upstream name lookups on daemon threads of our own, one per name in flight (issue #17).

`getaddrinfo` blocks, and the event loop's default executor is a small pool shared by every
name: a name whose DNS server never answers used to fill it, so lookups of names that resolve
fine queued behind it, and its workers are joined at exit, so a stuck lookup held up shutdown.
Here each (host, port) being looked up has one daemon thread; concurrent lookups of it wait on
that one answer, so a stuck name holds one thread and delays no other name. Nothing is cached
past the lookup in flight: each new upstream connection resolves again, and the IP policy judges
what it gets (DNS rebinding). Timeouts are the caller's (`Connector` applies `dns_timeout`): a
waiter that gives up leaves the thread to finish, or not, on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

MAX_LOOKUP_THREADS = 64  # names come from configured routes; this only guards against surprises

# host, port -> IPv4 addresses in preference order; blocks; raises OSError on failure.
Lookup = Callable[[str, int], list[str]]


class LookupsBusy(OSError):
    """Every lookup thread is taken (by names that do not answer): fail now rather than queue."""


def system_lookup(host: str, port: int) -> list[str]:
    """getaddrinfo, IPv4 only (SPEC §5: AAAA answers are ignored), duplicates dropped."""
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def ipv4_literal(host: str) -> bool:
    """A dotted quad in the one spelling getaddrinfo gives back unchanged: no lookup needed.

    Odd spellings (`127.1`, `0x7f.1`, `010.0.0.1`) are not this; they go through the lookup and
    are judged by the address it returns.
    """
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host)) == host
    except (OSError, ValueError):
        return False


class ThreadedResolver:
    """The `Resolver` the proxy uses: concurrent lookups of one name share one daemon thread.

    Each waiter's answer is posted to its own loop with `call_soon_threadsafe`; a loop closed
    meanwhile (the process is exiting) is skipped. At most `max_threads` lookups run at once;
    past that a new name fails at once (`LookupsBusy`) instead of waiting for a free thread.
    """

    def __init__(self, lookup: Lookup = system_lookup, *, max_threads: int = MAX_LOOKUP_THREADS) -> None:
        self.lookup = lookup
        self.max_threads = max_threads
        self._lock = threading.Lock()  # the table is touched by the loop and by lookup threads
        self._inflight: dict[tuple[str, int], list[asyncio.Future[list[str]]]] = {}

    @property
    def threads(self) -> int:
        """Lookup threads running now (one per name in flight, stuck ones included)."""
        with self._lock:
            return len(self._inflight)

    def waiting(self, host: str, port: int) -> int:
        """Callers waiting now on the lookup of (host, port) in flight."""
        with self._lock:
            return len(self._inflight.get((host, port), ()))

    async def resolve(self, host: str, port: int) -> list[str]:
        """IPv4 addresses for host; raises OSError. Cancel it (a timeout) to stop waiting."""
        if ipv4_literal(host):
            return [host]
        key = (host, port)
        waiter: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        with self._lock:
            waiters = self._inflight.get(key)
            if waiters is None:
                if len(self._inflight) >= self.max_threads:
                    raise LookupsBusy(f"{self.max_threads} DNS lookups already in flight, none answering")
                waiters = self._inflight[key] = []
                self._start(key)  # under the lock: a thread that ends at once waits for it
            waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter.cancelled():  # gave up (timeout): do not keep it until the name answers
                with self._lock:
                    # Once the thread has taken the list it walks it unlocked: leave it alone.
                    if self._inflight.get(key) is waiters:
                        waiters.remove(waiter)

    def _start(self, key: tuple[str, int]) -> None:
        thread = threading.Thread(target=self._run, args=(key,), name=f"dns {key[0]}:{key[1]}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # cannot start new thread
            del self._inflight[key]
            raise LookupsBusy(f"cannot start a DNS lookup thread: {exc}") from None

    def _run(self, key: tuple[str, int]) -> None:
        addresses: list[str] = []
        error: Exception | None = OSError("DNS lookup thread stopped")  # unless the lookup ends
        try:
            addresses = self.lookup(*key)
            error = None
        except Exception as exc:  # handed to the waiters, whatever it is
            error = exc
        finally:
            with self._lock:
                waiters = self._inflight.pop(key, [])
            for waiter in waiters:
                # A loop closed meanwhile (the process is exiting) raises: nobody waits there.
                with contextlib.suppress(RuntimeError):
                    waiter.get_loop().call_soon_threadsafe(_settle, waiter, addresses, error)


def _settle(waiter: asyncio.Future[list[str]], addresses: list[str], error: Exception | None) -> None:
    if waiter.done():  # cancelled between the post and now
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(list(addresses))
