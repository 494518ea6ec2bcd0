"""The six measurements of issue 6, each against one target at a time.

Every load is bounded twice: by a count (requests, bytes, events, connections) and by a time
cap after which workers stop starting new work; an outer hard timeout turns a stuck target
into an error instead of a hang. CPU is the target process's utime+stime over the measured
interval. A CPU-bound load runs until the target has used `cpu_goal` seconds of CPU (2 s by
default: the 10 ms tick is then 0.5% of it), its count is reached, or its time cap passes,
whichever comes first.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from bench.clients import BenchError, Conn, Target, request_bytes
from bench.procstat import cpu_seconds, rss_bytes
from bench.servers import HOST
from bench.upstream import DOWNLOAD_SIZE, SMALL_BODY

MIB = 1024 * 1024
GRACE = 30.0  # beyond a phase's time cap before it counts as stuck

Result = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    cpu_goal: float = 2.0  # seconds of target CPU that end a CPU-bound load
    small_requests: int = 100_000
    small_conns: int = 64
    download_mib: int = 1024
    download_conns: int = 2
    sse_events: int = 200
    sse_interval_ms: float = 10.0
    latency_rps: float = 100.0
    latency_seconds: float = 10.0
    latency_conns: int = 8
    new_conns: int = 5_000
    new_conn_workers: int = 4
    idle_tunnels: int = 2_000
    idle_warm: int = 16
    idle_settle: float = 1.0
    cap_seconds: float = 60.0  # per load phase: stop starting new work after this

    @classmethod
    def quick(cls, rounds: int) -> Settings:
        """Tiny counts: every code path in a few seconds (the smoke test); timings mean nothing."""
        return cls(
            rounds=rounds,
            cpu_goal=60.0,
            small_requests=100,
            small_conns=8,
            download_mib=8,
            sse_events=10,
            sse_interval_ms=5.0,
            latency_seconds=0.3,
            latency_conns=2,
            new_conns=10,
            new_conn_workers=2,
            idle_tunnels=20,
            idle_warm=2,
            idle_settle=0.1,
            cap_seconds=10.0,
        )


class CPUWindow:
    """CPU seconds of some processes and wall time between construction and `stop()`."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.cpu0 = [cpu_seconds(p) for p in pids]
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, list[float]]:
        wall = time.perf_counter() - self.t0
        return wall, [cpu_seconds(p) - c for p, c in zip(self.pids, self.cpu0, strict=True)]


class Budget:
    """When a CPU-bound load stops starting work: count spent, time cap passed, or CPU goal used."""

    def __init__(self, pid: int, count: int, s: Settings) -> None:
        self.pid = pid
        self.left = count
        self.goal = s.cpu_goal
        self.cap = s.cap_seconds
        self.stopped = False

    def take(self) -> bool:
        if self.stopped or self.left <= 0:
            return False
        self.left -= 1
        return True

    async def run(self, workers: list[Awaitable[int]]) -> list[int]:
        """Run the workers under the budget (a watcher reads /proc every 50 ms), hard-capped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cap
        cpu0 = cpu_seconds(self.pid)

        async def watch() -> None:
            while not self.stopped:
                await asyncio.sleep(0.05)
                if loop.time() >= deadline or cpu_seconds(self.pid) - cpu0 >= self.goal:
                    self.stopped = True

        watcher = loop.create_task(watch())
        try:
            async with asyncio.timeout(self.cap + GRACE):
                return await asyncio.gather(*workers)
        finally:
            self.stopped = True
            watcher.cancel()


async def open_conns(
    target: Target,
    n: int,
    *,
    concurrency: int = 32,
    deadline: float | None = None,
    into: list[Conn] | None = None,
) -> list[Conn]:
    """`n` connections (fewer if `deadline`, a loop time, passes first), at most `concurrency`
    handshakes in flight so none comes near the server's handshake timeout. Each is appended
    to `into` as it opens, so a caller can release them even when a later one fails."""
    loop = asyncio.get_running_loop()
    conns: list[Conn] = [] if into is None else into
    left = n

    async def opener() -> None:
        nonlocal left
        while left > 0 and (deadline is None or loop.time() < deadline):
            left -= 1
            conns.append(await target.connect())

    await asyncio.gather(*(opener() for _ in range(min(concurrency, n))))
    return conns


async def close_all(conns: list[Conn]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


def _cpu_fields(target: Target, wall: float, cpu: list[float]) -> Result:
    out: Result = {"wall_s": wall, "cpu_s": cpu[0]}
    if len(cpu) > 1:
        out["upstream_cpu_s"] = cpu[1]
    return out


def _pids(target: Target, upstream_pid: int) -> tuple[int, ...]:
    return (target.pid,) if target.pid == upstream_pid else (target.pid, upstream_pid)


async def small_requests(target: Target, s: Settings, upstream_pid: int) -> Result:
    """(1) CPU per 1 KiB JSON POST with a 1 KiB reply, closed loop over keep-alive connections."""
    raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
    conns = await open_conns(target, s.small_conns)
    await asyncio.gather(*(c.exchange(raw) for c in conns))  # upstream connections made beforehand
    budget = Budget(target.pid, s.small_requests, s)

    async def worker(conn: Conn) -> int:
        done = 0
        while budget.take():
            await conn.exchange(raw)
            done += 1
        return done

    window = CPUWindow(*_pids(target, upstream_pid))
    counts = await budget.run([worker(c) for c in conns])
    wall, cpu = window.stop()
    await close_all(conns)
    n = sum(counts)
    return {
        "requests": n,
        "connections": len(conns),
        **_cpu_fields(target, wall, cpu),
        "requests_per_s": n / wall,
        "value": cpu[0] / n * 1e6,
        "unit": "us/request",
    }


async def download(target: Target, s: Settings, upstream_pid: int) -> Result:
    """(2) CPU per MiB of response body, 4 MiB downloads on a few keep-alive connections."""
    raw = request_bytes("GET", "/download", HOST)
    conns = await open_conns(target, s.download_conns)
    await asyncio.gather(*(c.exchange(raw) for c in conns))
    budget = Budget(target.pid, max(1, s.download_mib * MIB // DOWNLOAD_SIZE), s)

    async def worker(conn: Conn) -> int:
        got = 0
        while budget.take():
            size = await conn.exchange(raw)
            if size != DOWNLOAD_SIZE:
                raise BenchError(f"{target.name}: download of {size} bytes, expected {DOWNLOAD_SIZE}")
            got += size
        return got

    window = CPUWindow(*_pids(target, upstream_pid))
    sizes = await budget.run([worker(c) for c in conns])
    wall, cpu = window.stop()
    await close_all(conns)
    total = sum(sizes)
    return {
        "bytes": total,
        **_cpu_fields(target, wall, cpu),
        "mib_per_s": total / MIB / wall,
        "value": cpu[0] * 1e3 / (total / MIB),
        "unit": "ms/MiB",
    }


async def sse(target: Target, s: Settings, upstream_pid: int) -> Result:
    """(3) Delay of each SSE event: arrival minus the upstream's perf_counter stamp in it.

    Arrival is when the bytes holding the event's end came out of the client's socket (the
    figure); `e2e_*` is when the client had decrypted and parsed them (its own work included).
    """
    raw = request_bytes("GET", f"/sse?n={s.sse_events}&ms={s.sse_interval_ms:g}", HOST)
    conn = await target.connect()
    delays: list[float] = []
    e2e: list[float] = []
    buf = bytearray()

    def sink(piece: bytes, arrived: float) -> None:
        now = time.perf_counter()
        buf.extend(piece)
        while (end := buf.find(b"\n\n")) >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            if line.startswith(b"data: "):
                stamp = float(line[6:])
                delays.append(arrived - stamp)
                e2e.append(now - stamp)

    async with asyncio.timeout(s.sse_events * s.sse_interval_ms / 1000 + GRACE):
        await conn.exchange(raw, sink)
    await conn.close()
    if len(delays) != s.sse_events:
        raise BenchError(f"{target.name}: {len(delays)} SSE events arrived, expected {s.sse_events}")
    ms = sorted(d * 1e3 for d in delays)
    return {
        "events": len(ms),
        "delay_ms_p10": ms[len(ms) // 10],
        "delay_ms_p90": ms[len(ms) * 9 // 10],
        "value": statistics.median(ms),
        "e2e_ms": statistics.median(d * 1e3 for d in e2e),
        "unit": "ms (median delay)",
    }


async def latency(target: Target, s: Settings, upstream_pid: int) -> Result:
    """(4) Latency of small requests sent open-loop at a fixed rate.

    Each request is timed on the wire: from just before its bytes went into the client's socket
    to when the bytes completing its response came out (the figure); `e2e_*` times it from
    before the client's own TLS and framing to the end of its parsing. The event loop's timer
    slack (epoll has millisecond granularity) delays when a request leaves, not how long it
    takes. A request finding every pooled connection busy is counted, not sent.
    """
    loop = asyncio.get_running_loop()
    raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
    conns = await open_conns(target, s.latency_conns)
    await asyncio.gather(*(c.exchange(raw) for c in conns))
    free = deque(conns)
    samples: list[float] = []
    e2e: list[float] = []
    busy = 0
    count = max(1, int(s.latency_rps * min(s.latency_seconds, s.cap_seconds)))
    interval = 1.0 / s.latency_rps
    inflight: set[asyncio.Task[None]] = set()

    async def one(conn: Conn) -> None:
        t0 = time.perf_counter()
        await conn.exchange(raw)
        e2e.append(time.perf_counter() - t0)
        samples.append(conn.arrived_at - conn.sent_at)
        free.append(conn)

    window = CPUWindow(*_pids(target, upstream_pid))
    async with asyncio.timeout(count * interval + GRACE):
        start = loop.time() + interval
        for i in range(count):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not free:
                busy += 1
                continue
            task = loop.create_task(one(free.popleft()))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight)
    wall, cpu = window.stop()
    await close_all(conns)
    ms = sorted(x * 1e3 for x in samples)
    e2e_ms = sorted(x * 1e3 for x in e2e)
    return {
        "requests": len(ms),
        "skipped_all_busy": busy,
        "rate_per_s": s.latency_rps,
        **_cpu_fields(target, wall, cpu),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "e2e_p50_ms": percentile(e2e_ms, 50),
        "e2e_p99_ms": percentile(e2e_ms, 99),
        "value": percentile(ms, 50),
        "unit": "ms (p50)",
    }


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile (`bench.ab` reports the same)."""
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


async def new_connection(target: Target, s: Settings, upstream_pid: int) -> Result:
    """(5) CPU for a new connection (tunnel: WebSocket + inner TLS handshake) plus one request."""
    raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
    warm = await target.connect()  # one-time costs (upstream connection, lazy imports) go first
    await warm.exchange(raw)
    await warm.close()
    budget = Budget(target.pid, s.new_conns, s)

    async def worker() -> int:
        done = 0
        while budget.take():
            conn = await target.connect()
            await conn.exchange(raw)
            await conn.close()
            done += 1
        return done

    window = CPUWindow(*_pids(target, upstream_pid))
    counts = await budget.run([worker() for _ in range(s.new_conn_workers)])
    await asyncio.sleep(0.2)  # the server finishes its side of the last closes
    wall, cpu = window.stop()
    n = sum(counts)
    return {
        "connections": n,
        **_cpu_fields(target, wall, cpu),
        "value": cpu[0] * 1e3 / n,
        "unit": "ms/connection",
    }


async def idle(target: Target, s: Settings) -> Result:
    """(6) RSS per idle connection: a fresh server, warmed, then N more connections held at once.

    The target's processes are started for this figure alone: memory freed by earlier phases
    would otherwise be reused and hide the cost. After the second RSS reading, a request on a
    sample of the held connections shows they are all still alive.
    """
    raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
    warm: list[Conn] = []
    held: list[Conn] = []
    try:
        return await _hold(target, s, raw, warm, held)
    finally:
        for conn in warm + held:
            conn.abort()
        await asyncio.sleep(0.1)  # the aborted sockets are closed by the loop, freeing descriptors


async def _hold(target: Target, s: Settings, raw: bytes, warm: list[Conn], held: list[Conn]) -> Result:
    await open_conns(target, s.idle_warm, into=warm)
    await asyncio.gather(*(c.exchange(raw) for c in warm))
    await asyncio.sleep(s.idle_settle)
    rss0 = rss_bytes(target.pid)
    t0 = time.perf_counter()
    cap = max(s.cap_seconds, s.idle_tunnels / 50)  # opening 10,000 takes a while on 2 cores
    async with asyncio.timeout(cap + GRACE):
        deadline = asyncio.get_running_loop().time() + cap
        await open_conns(target, s.idle_tunnels, concurrency=64, deadline=deadline, into=held)
    opened_s = time.perf_counter() - t0
    await asyncio.sleep(s.idle_settle)
    rss1 = rss_bytes(target.pid)
    reported = await target.open_connections()
    step = max(1, len(held) // 100)
    sample = held[::step]
    async with asyncio.timeout(GRACE):
        await asyncio.gather(*(c.exchange(raw) for c in sample))
    return {
        "held": len(held),
        "open_s": opened_s,
        "rss_before": rss0,
        "rss_after": rss1,
        "checked_alive": len(sample),
        "server_reports_open": reported,
        "value": (rss1 - rss0) / len(held) / 1024,
        "unit": "KiB/connection",
    }
