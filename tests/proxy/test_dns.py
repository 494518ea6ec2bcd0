"""DNS on threads of our own (issue #17): a name that never answers delays no other name.

The lookup function is the seam: `Lookups` answers some names at once and holds the others on a
`threading.Event` until the test releases them, as a DNS server that never answers would.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcp_tunnel.client import TunnelConnection
from mcp_tunnel.config import UpstreamSettings
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.dns import LookupsBusy, ThreadedResolver
from mcp_tunnel.proxy.upstream import Connector, SystemResolver, UpstreamDNSError
from mcp_tunnel.routing import Route
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import RecordingUpstream

STUCK = "stuck.internal"


class Lookups:
    """A blocking lookup function: names in `stuck` wait for `release`; the rest answer at once."""

    def __init__(self, answers: dict[str, list[str]], stuck: set[str] | None = None) -> None:
        self.answers = answers
        self.stuck = stuck or set()
        self.release = threading.Event()
        self.entered = threading.Event()  # a stuck name's lookup has started
        self.calls: list[str] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.calls.append(host)
            self.threads.append(threading.current_thread())
        if host in self.stuck:
            self.entered.set()
            self.release.wait()
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


@pytest.fixture
def lookups() -> Iterator[Lookups]:
    lk = Lookups({"fast.internal": ["127.0.0.1"], STUCK: ["127.0.0.9"]}, stuck={STUCK})
    yield lk
    lk.release.set()  # never leave a thread behind, whatever the test did


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `cond` with a deadline (for what happens on another thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def stuck_thread(lookups: Lookups) -> threading.Thread:
    return next(t for t, h in zip(lookups.threads, lookups.calls, strict=True) if h == STUCK)


# --- the resolver ------------------------------------------------------------------------


async def test_concurrent_lookups_of_one_name_share_one_call(lookups: Lookups) -> None:
    resolver = ThreadedResolver(lookups)
    first = asyncio.create_task(resolver.resolve(STUCK, 80))
    second = asyncio.create_task(resolver.resolve(STUCK, 80))
    await until(lambda: resolver.waiting(STUCK, 80) == 2)
    assert lookups.entered.is_set() and resolver.threads == 1
    lookups.release.set()
    assert await first == await second == ["127.0.0.9"]
    assert lookups.calls == [STUCK]
    # Nothing is cached past the lookup in flight: the next caller looks the name up again.
    assert await resolver.resolve(STUCK, 80) == ["127.0.0.9"]
    assert lookups.calls == [STUCK, STUCK]


async def test_stuck_name_does_not_delay_another(lookups: Lookups) -> None:
    resolver = ThreadedResolver(lookups)
    stuck = asyncio.create_task(resolver.resolve(STUCK, 80))
    await until(lookups.entered.is_set)
    async with asyncio.timeout(2.0):
        assert await resolver.resolve("fast.internal", 80) == ["127.0.0.1"]
    assert not stuck.done()
    lookups.release.set()
    assert await stuck == ["127.0.0.9"]


async def test_timeout_leaves_the_thread_and_later_callers_join_it(lookups: Lookups) -> None:
    resolver = ThreadedResolver(lookups)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await resolver.resolve(STUCK, 80)
        assert resolver.waiting(STUCK, 80) == 0  # a waiter that gave up is not kept
    assert lookups.calls == [STUCK] and resolver.threads == 1
    thread = stuck_thread(lookups)
    assert thread.daemon and thread is not threading.main_thread()
    lookups.release.set()
    await until(lambda: resolver.threads == 0 and not thread.is_alive())


async def test_connector_answers_502_dns_at_dns_timeout(lookups: Lookups) -> None:
    stream = io.StringIO()
    connector = Connector(
        UpstreamSettings(),
        Logger("info", stream=stream),
        resolver=ThreadedResolver(lookups),
        connect_timeout=30.0,
        dns_timeout=0.05,
    )
    with pytest.raises(UpstreamDNSError) as info:
        async with asyncio.timeout(5.0):
            await connector.connect(Route("slow", "http", STUCK, 80))
    assert (info.value.status, info.value.refusal) == (502, "dns")
    line = stream.getvalue()
    assert "upstream resolution timed out" in line, line
    assert "route=slow" in line and f"upstream=http://{STUCK}:80" in line and "timeout=0.05s" in line


async def test_lookup_errors_reach_the_caller(lookups: Lookups) -> None:
    resolver = ThreadedResolver(lookups)
    with pytest.raises(socket.gaierror):
        await resolver.resolve("gone.internal", 80)
    assert resolver.threads == 0


async def test_past_the_thread_cap_a_new_name_fails_at_once(lookups: Lookups) -> None:
    lookups.stuck.add("other.internal")
    lookups.answers["other.internal"] = ["127.0.0.8"]
    resolver = ThreadedResolver(lookups, max_threads=2)
    held = [asyncio.create_task(resolver.resolve(h, 80)) for h in (STUCK, "other.internal")]
    await until(lambda: resolver.threads == 2)
    with pytest.raises(LookupsBusy):
        await resolver.resolve("fast.internal", 80)
    joined = asyncio.create_task(resolver.resolve(STUCK, 80))  # a name in flight still joins it
    await until(lambda: resolver.waiting(STUCK, 80) == 2)
    lookups.release.set()
    assert await asyncio.gather(*held, joined) == [["127.0.0.9"], ["127.0.0.8"], ["127.0.0.9"]]
    assert await resolver.resolve("fast.internal", 80) == ["127.0.0.1"]


async def test_canonical_ipv4_literals_need_no_lookup(lookups: Lookups) -> None:
    resolver = ThreadedResolver(lookups)
    assert await resolver.resolve("10.1.2.3", 80) == ["10.1.2.3"]
    assert lookups.calls == []
    # An odd spelling is looked up, and judged by what the lookup returns.
    assert await SystemResolver().resolve("127.1", 80) == ["127.0.0.1"]
    with pytest.raises(socket.gaierror):
        await resolver.resolve("010.0.0.1", 80)
    assert lookups.calls == ["010.0.0.1"]


def test_an_answer_for_a_closed_loop_is_dropped(lookups: Lookups, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process is exiting: the loop is closed while a caller still waits on a stuck name."""
    thread_errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    resolver = ThreadedResolver(lookups)
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, _context: None)  # the task left pending, by design
    task = loop.create_task(resolver.resolve(STUCK, 80))
    loop.run_until_complete(until(lambda: resolver.waiting(STUCK, 80) == 1))
    loop.close()
    thread = stuck_thread(lookups)
    lookups.release.set()
    thread.join(5.0)
    assert not thread.is_alive()
    assert thread_errors == [] and resolver.threads == 0
    assert not task.done()


# --- through the proxy -------------------------------------------------------------------


async def _get(proxy: RunningProxy, host: str) -> int:
    conn = await proxy.client().connect(host)
    resp = await conn.request("GET", "/", host=host)
    await resp.read()
    await conn.close()
    return resp.status


async def test_stuck_name_delays_no_other_route_and_no_drain(
    tmp: Path, pki: PKI, upstream: RecordingUpstream, lookups: Lookups
) -> None:
    resolver = ThreadedResolver(lookups)
    proxy = await start_proxy(
        tmp,
        pki,
        {"slow": f"http://{STUCK}:80", "echo": f"http://fast.internal:{upstream.port}"},
        resolver=resolver,
        limits={"dns_timeout": "300ms"},
    )
    loop = asyncio.get_running_loop()
    # Tunnels to echo are open first, so what is timed below is the request, not the handshake.
    echo = [await proxy.client().connect("echo.tunnel.test") for _ in range(3)]
    slow = [asyncio.create_task(_get(proxy, "slow.tunnel.test")) for _ in range(5)]
    await until(lambda: resolver.waiting(STUCK, 80) == 5)
    started = loop.time()

    async def echo_request(conn: TunnelConnection) -> int:
        resp = await conn.request("GET", "/", host="echo.tunnel.test")
        await resp.read()
        return resp.status

    assert await asyncio.gather(*(echo_request(c) for c in echo)) == [200, 200, 200]
    elapsed = loop.time() - started
    assert not any(t.done() for t in slow), "echo waited for the stuck name"
    assert elapsed < 0.3, elapsed
    assert len(upstream.requests) == 3
    for conn in echo:
        await conn.close()

    assert await asyncio.gather(*slow) == [502] * 5
    assert lookups.calls.count(STUCK) == 1  # five requests, one lookup thread
    lines = [line for line in proxy.log_lines() if "upstream resolution timed out" in line]
    assert len(lines) == 5
    assert "route=slow" in lines[0] and "timeout=0.3s" in lines[0], lines[0]

    # A drain with a request waiting on the stuck name: answered at its dns_timeout, and the
    # stop does not wait for the lookup thread, which is still stuck when it returns.
    late = asyncio.create_task(_get(proxy, "slow.tunnel.test"))
    await until(lambda: resolver.waiting(STUCK, 80) == 1)
    async with asyncio.timeout(3.0):
        await proxy.server.stop(5.0)
    assert await late == 502
    thread = stuck_thread(lookups)
    assert thread.is_alive() and thread.daemon and not lookups.release.is_set()
    lookups.release.set()
    await until(lambda: not thread.is_alive())
    assert resolver.threads == 0
