"""`workers: N` through real processes: a supervisor and its workers on one loopback listener.

Which worker served a request is read from its "request completed" line (`worker=N`, each
request with a path of its own), so every test can tell that each worker took part.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import issue_server_cert, load_cert, load_key, pem_cert, pem_key
from mcp_tunnel.client.tunnel_client import TunnelConnection
from mcp_tunnel.proxy.workers import (
    RESTART_MAX,
    _WholeLines,
    combined_readiness,
    exit_status,
    restart_delay,
)
from support.builds import SRC
from support.ops import Stack, poll, sample, start_stack
from support.pki import PKI, make_pki
from support.procs import ProxyProcess
from support.proxy import write_config
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"
WORKER = re.compile(r" worker=(\d+)")
TRIES = 200  # requests before giving up on seeing every worker (each takes a connection)


def _named(name: str) -> RecordingUpstream:
    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        body = f"{name} {req.target}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return RecordingUpstream(handler)


async def worker_of(stack: Stack, path: str) -> int:
    """The worker that served the request for `path` (its "request completed" line)."""
    line = await stack.wait_log(f'msg="request completed" method=GET host={HOST} path={path} ')
    match = WORKER.search(line)
    assert match, line
    return int(match.group(1))


class Tagged:
    """Requests with unique paths, each on a fresh tunnel connection, a few at a time."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.stack = stack
        self.prefix = prefix
        self.sent = 0

    async def one(self) -> tuple[int, bytes, int, TunnelConnection]:
        """(status, body, worker, the open connection): the caller closes the connection."""
        self.sent += 1
        path = f"/{self.prefix}{self.sent}"
        conn = await self.stack.client().connect(HOST)
        resp = await conn.request("GET", path, host=HOST)
        body = await resp.read()
        return resp.status, body, await worker_of(self.stack, path), conn

    async def until_every_worker(self, workers: int, expect: bytes | None = None) -> dict[int, int]:
        """Requests until each worker has served one; requests per worker. Every answer is
        200, and its body starts with `expect` when given."""
        seen: dict[int, int] = {}
        while len(seen) < workers:
            assert self.sent < TRIES, f"only workers {sorted(seen)} served {self.sent} connections"
            results = await asyncio.gather(*(self.one() for _ in range(4)))
            for status, body, worker, conn in results:
                await conn.close()
                assert status == 200, body
                if expect is not None:
                    assert body.startswith(expect), (worker, body)
                seen[worker] = seen.get(worker, 0) + 1
        return seen


def _stack(tmp: Path, pki: PKI, port: int, **extra: object) -> Stack:
    extra.setdefault("workers", 2)
    extra.setdefault("log_level", "info")
    return start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{port}"}, **extra)


async def test_two_workers_share_the_listener_and_metrics_add_up(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    stack = _stack(tmp, pki, upstream.port)
    with stack.proc:
        await stack.wait_log('msg="worker started" worker=2 ')
        assert stack.count("worker started") == 2
        served = await Tagged(stack, "c").until_every_worker(2)
        n = sum(served.values())
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_workers") == 2
        assert sample(metrics, "mcp_tunnel_requests_total", route="echo", status_class="2xx") == n
        assert sample(metrics, "mcp_tunnel_request_duration_seconds_count", route="echo") == n
        assert sample(metrics, "mcp_tunnel_request_duration_seconds_bucket", route="echo", le="+Inf") == n
        assert sample(metrics, "mcp_tunnel_tunnels_accepted_total") == n
        assert sample(metrics, "mcp_tunnel_worker_restarts_total") == 0
        # /readyz answers for every worker; the supervisor's own lines carry no worker field.
        assert (await stack.admin("/readyz"))[0] == 200
        assert " worker=" not in (await stack.wait_log("msg=listening addr="))
        assert stack.proc.stop() == 0
        assert "failed=none" in stack.proc.wait_for("msg=stopped workers=2")


async def test_one_worker_is_the_plain_proxy(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = _stack(tmp, pki, upstream.port, workers=1)
    with stack.proc:
        assert await stack.get("echo", "/one") == (200, b"GET /one 0\n")
        await stack.wait_log("path=/one ")
        assert stack.count("worker") == 0  # no supervisor, no worker field
        assert stack.proc.stop() == 0


async def test_sighup_reload_reaches_every_worker(tmp: Path, pki: PKI) -> None:
    a, b = await _named("A").start(), await _named("B").start()
    # A long poll interval: only the signal can cause this reload.
    stack = _stack(tmp, pki, a.port, tls={"reload_interval": "1h"})
    with stack.proc:
        tagged = Tagged(stack, "r")
        await tagged.until_every_worker(2, expect=b"A ")
        stack.rewrite({"echo": f"http://127.0.0.1:{b.port}"})
        stack.proc.proc.send_signal(signal.SIGHUP)
        for worker in (1, 2):
            await stack.wait_log(f"trigger=SIGHUP changed=routes routes=1 worker={worker}")
        await tagged.until_every_worker(2, expect=b"B ")
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="success") == 2
        assert sample(metrics, "mcp_tunnel_config_last_reload_successful") == 1
        assert stack.proc.stop() == 0
    await a.close()
    await b.close()


async def test_certificate_reload_reaches_every_worker(tmp: Path, upstream: RecordingUpstream) -> None:
    pki = make_pki(tmp / "pki")
    stack = _stack(tmp, pki, upstream.port, tls={"reload_interval": "50ms"})
    with stack.proc:
        ca, ca_key = load_cert(pki.ca_file), load_key(tmp / "pki" / "ca.key")
        cert, key = issue_server_cert(
            ca, ca_key, pki.domain, duration=timedelta(days=1), key_type="ecdsa-p256"
        )  # type: ignore[arg-type]
        write_atomic(pki.key_file, pem_key(key), 0o600)
        write_atomic(pki.cert_file, pem_cert(cert), 0o644)
        serial = format(cert.serial_number, "x")
        for worker in (1, 2):
            await stack.wait_log(f'msg="certificate reloaded" serial={serial}', n=worker)
        reloaded = {WORKER.search(line) for line in stack.proc.lines if "certificate reloaded" in line}
        assert {m.group(1) for m in reloaded if m} == {"1", "2"}
        tagged = Tagged(stack, "t")
        seen: set[int] = set()
        while seen != {1, 2}:
            assert tagged.sent < TRIES, f"only workers {seen} served"
            status, _, worker, conn = await tagged.one()
            der = conn.peer_certificate_der()
            await conn.close()
            assert status == 200 and der is not None
            assert x509.load_der_x509_certificate(der).serial_number == cert.serial_number, worker
            seen.add(worker)
        metrics = await stack.metrics()
        expiry = sample(metrics, "mcp_tunnel_certificate_expiry_timestamp_seconds")
        assert expiry == cert.not_valid_after_utc.timestamp()  # min over workers, not a sum
        assert stack.proc.stop() == 0


class Held:
    """An upstream whose /slow answers wait for the test: those requests stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow = 0
        self.upstream = RecordingUpstream(self.handle)

    async def handle(self, req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target.startswith("/slow"):
            self.slow += 1
            await self.release.wait()
        body = f"done {req.target}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


async def test_sigterm_drains_every_worker(tmp: Path, pki: PKI) -> None:
    held = Held()
    await held.upstream.start()
    stack = _stack(tmp, pki, held.upstream.port, shutdown_timeout="20s")
    with stack.proc:
        # One open connection on each worker.
        tagged = Tagged(stack, "warm")
        conns: dict[int, TunnelConnection] = {}
        while len(conns) < 2:
            assert tagged.sent < TRIES
            status, _, worker, conn = await tagged.one()
            assert status == 200
            if worker in conns:
                await conn.close()
            else:
                conns[worker] = conn
        in_flight = [
            asyncio.create_task(conn.request("GET", f"/slow{w}", host=HOST)) for w, conn in conns.items()
        ]
        await poll(lambda: held.slow == 2, what="both slow requests at the upstream")

        stack.proc.proc.send_signal(signal.SIGTERM)
        for worker in (1, 2):
            await stack.wait_log(
                f'msg="waiting for requests in flight" tunnels=1 timeout=20s worker={worker}'
            )
        assert (await stack.admin("/readyz"))[0] == 503
        assert stack.proc.proc.poll() is None  # still running: requests are in flight

        held.release.set()
        for task, worker in zip(in_flight, conns, strict=True):
            resp = await asyncio.wait_for(task, 10)
            assert resp.status == 200
            assert await resp.read() == f"done /slow{worker}\n".encode()
        assert await asyncio.to_thread(stack.proc.proc.wait, 15) == 0
        await stack.wait_log("msg=stopped workers=2 failed=none")
        assert stack.count("cutting requests in flight") == 0
    await held.upstream.close()


async def test_killed_worker_is_restarted_and_logged(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    stack = _stack(tmp, pki, upstream.port)
    with stack.proc:
        line = await stack.wait_log('msg="worker started" worker=2 ')
        pid = int(line.rsplit("pid=", 1)[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        died = await stack.wait_log('msg="worker exited, restarting" worker=2 ')
        assert f"pid={pid} " in died and 'status="signal SIGKILL"' in died and "restart_in=0.25s" in died
        again = await stack.wait_log('msg="worker started" worker=2 ', n=2)
        assert f"pid={pid}" not in again

        async def ready() -> bool:
            return (await stack.admin("/readyz"))[0] == 200

        await poll(ready, what="readiness after the restart")
        await Tagged(stack, "k").until_every_worker(2)  # the new worker 2 serves as well
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_worker_restarts_total") == 1
        assert sample(metrics, "mcp_tunnel_workers") == 2
        assert stack.proc.stop() == 0


async def test_supervisor_follows_the_log_level(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = _stack(tmp, pki, upstream.port, tls={"reload_interval": "1h"})
    with stack.proc:
        line = await stack.wait_log('msg="worker started" worker=1 ')
        pid = int(line.rsplit("pid=", 1)[1].split()[0])
        stack.rewrite({"echo": f"http://127.0.0.1:{upstream.port}"}, log_level="error")
        stack.proc.proc.send_signal(signal.SIGHUP)  # the supervisor applies it before it returns

        async def reloaded() -> bool:
            metrics = await stack.metrics()
            return sample(metrics, "mcp_tunnel_config_reloads_total", result="success") == 2

        await poll(reloaded, what="both workers reloaded")
        os.kill(pid, signal.SIGKILL)
        await stack.wait_log('msg="worker exited, restarting" worker=1 ')  # error: still logged

        async def ready() -> bool:
            return (await stack.admin("/readyz"))[0] == 200

        await poll(ready, what="the restarted worker")
        assert stack.count('msg="worker started" worker=1 ') == 1  # info: no longer logged
        assert stack.proc.stop() == 0


async def test_second_signal_exits_at_once(tmp: Path, pki: PKI) -> None:
    held = Held()
    await held.upstream.start()
    stack = _stack(tmp, pki, held.upstream.port, shutdown_timeout="60s")
    with stack.proc:
        conn = await stack.client().connect(HOST)
        in_flight = asyncio.create_task(conn.request("GET", "/slow", host=HOST))
        await poll(lambda: held.slow == 1, what="the slow request at the upstream")
        stack.proc.proc.send_signal(signal.SIGTERM)
        await stack.wait_log("waiting for requests in flight")
        loop = asyncio.get_running_loop()
        start = loop.time()
        stack.proc.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(stack.proc.proc.wait, 10)
        assert loop.time() - start < 3.0, "the second signal waited for the drain"
        assert code == 1
        await stack.wait_log("second signal, exiting now")
        in_flight.cancel()
    held.release.set()
    await held.upstream.close()


def test_listener_in_use_is_one_line_and_exit_1(tmp: Path, pki: PKI) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(
            tmp, pki, {"echo": "http://127.0.0.1:9"}, listen_addr=f"127.0.0.1:{port}", workers=2
        )
        with ProxyProcess(["-config", str(path)]) as proc:
            assert proc.proc.wait(30) == 1
            line = proc.wait_for("cannot listen")
        assert "Address already in use" in line
        assert not any("worker started" in x for x in proc.lines)


@pytest.mark.parametrize(
    ("value", "why"), [("0", "out of range"), ("-1", "out of range"), ('"x"', "not a number")]
)
def test_bad_workers_value_exits_2_with_one_line(tmp: Path, pki: PKI, value: str, why: str) -> None:
    path = write_config(tmp, pki, {"echo": "http://127.0.0.1:9"})
    path.write_text(path.read_text() + f"workers: {value}\n")
    lines = path.read_text().splitlines()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mcp-tunnel"), "proxy", "-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {path}:{len(lines)}: workers: {why}"), out.stderr
    assert f"found {value}" in out.stderr or f'found "{value}"' in out.stderr
    assert "expected a whole number from 1 to 256, or auto" in out.stderr


# --- the pure parts --------------------------------------------------------------------------------


def test_restart_delay_doubles_up_to_the_cap() -> None:
    assert [restart_delay(n) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(100) == RESTART_MAX


def test_exit_status_words() -> None:
    assert exit_status(0) == "exit 0"
    assert exit_status(3) == "exit 3"
    assert exit_status(-signal.SIGKILL) == "signal SIGKILL"


def test_combined_readiness() -> None:
    assert combined_readiness(False, ["", ""]) is None
    assert combined_readiness(False, ["", None]) == "worker 2: not running or not answering"
    assert combined_readiness(False, ["certificate expired at X", ""]) == "worker 1: certificate expired at X"
    assert combined_readiness(True, ["", ""]) is not None and "draining" in str(combined_readiness(True, []))


def test_whole_lines_never_cut_a_line_and_stay_under_pipe_buf() -> None:
    r, w = os.pipe()
    try:
        out = _WholeLines(w)
        lines = [f"line {i} " + "x" * (i * 37 % 300) + "\n" for i in range(200)]
        for line in lines:
            out.write(line.encode())
        out.write(b"y" * (select.PIPE_BUF + 10) + b"\n")  # one line longer than PIPE_BUF: alone
        out.flush()
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 1 << 20):
            data += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert data == "".join(lines).encode() + b"y" * (select.PIPE_BUF + 10) + b"\n"


def test_whole_lines_chunks() -> None:
    writes: list[bytes] = []

    def record(fd: int, data: memoryview) -> int:
        writes.append(bytes(data))
        return len(data)

    out = _WholeLines(99, record)
    for i in range(500):
        out.write(f"{i:05d} {'z' * 90}\n".encode())
    out.write(b"L" * 9000 + b"\n")
    out.flush()
    assert len(writes) > 1
    assert all(chunk.endswith(b"\n") for chunk in writes)
    assert all(len(chunk) <= select.PIPE_BUF for chunk in writes[:-1])
    assert writes[-1] == b"L" * 9000 + b"\n"


async def test_a_drain_while_a_worker_waits_to_restart_is_clean(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """A worker that died is logged when it dies; a drain that begins while it waits to be
    restarted loses nothing in it, so the supervisor still exits 0."""
    stack = _stack(tmp, pki, upstream.port)
    with stack.proc:
        for n in (1, 2, 3):  # quick deaths: the restart waits 0.25, 0.5, then 1 s
            line = await stack.wait_log('msg="worker started" worker=2 ', n=n)
            os.kill(int(line.rsplit("pid=", 1)[1].split()[0]), signal.SIGKILL)
            died = await stack.wait_log('msg="worker exited, restarting" worker=2 ', n=n)
        assert "restart_in=1s" in died
        stack.proc.proc.send_signal(signal.SIGTERM)  # within that second
        assert await asyncio.to_thread(stack.proc.proc.wait, 20) == 0
        assert stack.count('msg="worker started" worker=2 ') == 3  # not restarted during the drain
        line = await stack.wait_log("msg=stopped workers=2")
        assert "failed=none" in line
