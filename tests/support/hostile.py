"""The harness of the hostile-peer tests (issue #17): the proxy as a subprocess in either build,
an upstream that misbehaves on cue, and the oracle every case ends with.

Every case runs against the build users run (compiled with mypyc) and against pure Python, the
same inputs, in a real `python -m mcp_tunnel proxy` process (`HostileProxy`). What it writes to
stderr is collected. The oracle after each case (`HostileProxy.finish`): the proxy still answers
a normal request on a new tunnel, it stops cleanly (exit 0), and stderr holds nothing but its
own log lines and none at level error: no `Traceback`, no `Task exception was never retrieved`,
no `Exception in callback` or other asyncio noise (asyncio logs through `logging`, whose last
resort handler writes the bare message: anything not starting with `time=` is such a line).

Timing: the configured timeouts (`LIMITS`) are far above `PROMPT`, so "answered at once" and
"closed at once" are told apart from "cut by a timeout" (a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httptools

from mcp_tunnel.client import client_ssl_context
from support.builds import assert_build, build_env
from support.pki import PKI
from support.procs import ProxyProcess, free_port
from support.proxy import write_config
from support.rawtunnel import RawTunnel
from support.upstreams import Received, _Parser

# What "at once" means: well under every timeout below, and generous for a loaded 2-core machine.
PROMPT = 2.0

LIMITS = {
    "handshake_timeout": "5s",
    "header_timeout": "2s",
    "idle_timeout": "30s",
    "upstream_connect_timeout": "5s",
    "upstream_response_timeout": "20s",
    "body_timeout": "15s",
}

HEALTHY = "ok"  # the route every proxy here has, to a well-behaved upstream


class HostileProxy:
    """`python -m mcp_tunnel proxy -config FILE` of one build, stderr collected (`start` runs it)."""

    def __init__(
        self,
        build: str,
        pki: PKI,
        directory: Path,
        routes: Mapping[str, str],
        healthy: HealthyUpstream | None = None,
        **extra: Any,
    ) -> None:
        self.build = build
        self.healthy = healthy  # the upstream of the HEALTHY route, when a test may look at it
        self.pki = pki
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        extra.setdefault("listen_addr", f"127.0.0.1:{self.port}")
        extra.setdefault("log_level", "info")
        extra.setdefault("shutdown_timeout", "2s")
        extra["limits"] = {**LIMITS, **extra.get("limits", {})}
        self.config_path = write_config(directory, pki, routes, **extra)
        self._normal = 0  # normal requests made by `answers_normally`
        self._proc: ProxyProcess | None = None

    def start(self) -> HostileProxy:
        """Start the process (once) and wait for it to listen."""
        if self._proc is None:
            self._proc = ProxyProcess(["-config", str(self.config_path)], cmd="-m", env=build_env(self.build))
            try:
                self._proc.wait_for("msg=listening", timeout=15)
            except BaseException:
                self.kill()
                raise
        return self

    @property
    def proc(self) -> ProxyProcess:
        assert self._proc is not None, "the proxy was not started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def ctx(self, *, tls12: bool = False) -> ssl.SSLContext:
        ctx = client_ssl_context(str(self.pki.ca_file))
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def host(self, sub: str = HEALTHY) -> str:
        return self.pki.host(sub)

    async def tunnel(self, sub: str = HEALTHY, *, tls12: bool = False) -> RawTunnel:
        """A new tunnel with its TLS session established (SNI: the route's host)."""
        return await RawTunnel.connect(self.port, self.ctx(tls12=tls12), self.host(sub), timeout=PROMPT * 2)

    async def opened(self) -> RawTunnel:
        """A new WebSocket, no TLS yet."""
        return await RawTunnel.open(self.port, timeout=PROMPT * 2)

    # --- the log -------------------------------------------------------------------------

    def lines(self, since: int = 0) -> list[str]:
        return list(self.proc.lines)[since:]

    def mark(self) -> int:
        """Where the log is now: `lines(since=mark)` is what came after."""
        return len(self.proc.lines)

    def log(self, since: int = 0) -> str:
        return "\n".join(self.lines(since))

    def problems(self, since: int = 0) -> list[str]:
        """Lines that are not the proxy's own log lines, and its lines at level error."""
        return [line for line in self.lines(since) if not line.startswith("time=") or " level=error " in line]

    async def wait_log(
        self, phrase: str, n: int = 1, *, since: int = 0, timeout: float = PROMPT
    ) -> list[str]:
        """The lines with `phrase` once there are `n` of them; fails with the log at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [line for line in self.lines(since) if phrase in line]
            if len(found) >= n:
                return found
            if loop.time() > deadline or self.proc.ended():
                raise AssertionError(f"{phrase!r} logged {len(found)} < {n} times:\n" + self.log(since))
            await asyncio.sleep(0.01)  # polling the collected lines, with a deadline

    async def healthy_saw(self, needle: bytes, since: int, timeout: float = PROMPT) -> bool:
        """Whether a request head with `needle` reaches the healthy upstream within `timeout`
        (`since`: its `mark()` when the case began)."""
        assert self.healthy is not None
        healthy = self.healthy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(needle in head for head in healthy.seen_since(since)):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.005)  # polling a thread's list, with a deadline
        return True

    # --- the process -----------------------------------------------------------------------

    def rss(self) -> int:
        """The proxy's resident set size in bytes (/proc/PID/status VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    async def answers_normally(self, timeout: float = PROMPT * 2) -> None:
        """A normal request on a new tunnel gets the healthy upstream's answer, and its completion
        line is in the log (so is everything the proxy wrote before it)."""
        self._normal += 1
        path = f"/healthy-{self._normal}"
        tunnel = await self.tunnel()
        try:
            tunnel.send_plain(f"GET {path} HTTP/1.1\r\nHost: {self.host()}\r\n\r\n".encode())
            got = await tunnel.responses(["GET"], timeout)
            assert [(r.status, r.body) for r in got] == [(200, f"GET {path} 0\n".encode())], tunnel.summary()
        finally:
            await tunnel.aclose()
        await self.wait_log(f"path={path} status=200", timeout=timeout)

    def begin(self) -> int:
        """A case on a shared proxy starts: checks the build, returns the mark for `check`."""
        assert_build(self.build)
        self.start()  # the first case starts it: a build that cannot start fails that case
        assert self.proc.proc.poll() is None, f"the proxy has exited:\n{self.log()}"
        return self.mark()

    async def check(self, since: int) -> None:
        """The oracle of one case on a shared proxy: `finish` without the stop."""
        try:
            await self.answers_normally()
        except BaseException as exc:
            raise AssertionError(
                f"the proxy no longer answers a normal request: {exc!r}\n{self.log(since)}"
            ) from exc
        problems = self.problems(since)
        assert not problems, f"{self.build} build wrote to stderr:\n" + "\n".join(problems)

    async def finish(self) -> None:
        """The oracle every case ends with (see the module docstring)."""
        try:
            await self.answers_normally()
        except BaseException as exc:
            raise AssertionError(
                f"the proxy no longer answers a normal request: {exc!r}\n{self.log()}"
            ) from exc
        code = await asyncio.get_running_loop().run_in_executor(None, self.proc.stop, 10.0)
        self.proc._reader.join(5)  # every line of stderr is in
        problems = self.problems()
        assert not problems, f"{self.build} build wrote to stderr:\n" + "\n".join(problems)
        assert code == 0, f"exit code {code}:\n{self.log()}"

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.__exit__()


StartProxy = Callable[..., HostileProxy]  # the `hostile` fixture: start(routes, **config)


# --- the healthy upstream -----------------------------------------------------------------------


class HealthyUpstream:
    """A well-behaved keep-alive upstream in threads of its own, so one serves a whole session
    (it outlives each test's event loop). It answers every request `200` with `X-Upstream:
    healthy` and the body `<method> <target> <body size>`, and keeps the raw head of every
    request it got (`seen`): a test can tell a refused request never reached it."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.complete: set[int] = set()  # indexes in `seen` of the requests whose body ended
        self._lock = threading.Lock()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream._serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def seen_since(self, mark: int) -> list[bytes]:
        """The heads that arrived since `mark()`, their body complete or not."""
        with self._lock:
            return self.seen[mark:]

    def completed_since(self, mark: int) -> list[bytes]:
        """The heads of the requests that arrived whole since `mark()`."""
        with self._lock:
            return [head for i, head in enumerate(self.seen) if i >= mark and i in self.complete]

    def _serve(self, sock: socket.socket) -> None:
        upstream = self

        class Callbacks:
            """Each head is kept as soon as it is in (`method target` and the header lines)."""

            def __init__(self) -> None:
                self.url = b""
                self.head: list[bytes] = []
                self.size = 0
                self.index = -1  # of the request being read, in `seen`
                self.answers: list[bytes] = []

            def on_message_begin(self) -> None:
                self.url, self.head, self.size = b"", [], 0

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.head.append(name + b": " + value)

            def on_headers_complete(self) -> None:
                with upstream._lock:
                    self.index = len(upstream.seen)
                    upstream.seen.append(b"\r\n".join([parser.get_method() + b" " + self.url, *self.head]))

            def on_body(self, body: bytes) -> None:
                self.size += len(body)

            def on_message_complete(self) -> None:
                with upstream._lock:
                    upstream.complete.add(self.index)
                body = b"%s %s %d\n" % (parser.get_method(), self.url, self.size)
                head = b"HTTP/1.1 200 OK\r\nX-Upstream: healthy\r\nContent-Length: %d\r\n\r\n" % len(body)
                self.answers.append(head + body)

        calls = Callbacks()
        parser = httptools.HttpRequestParser(calls)
        with contextlib.suppress(OSError, httptools.HttpParserError):
            while data := sock.recv(65536):
                parser.feed_data(data)
                for answer in calls.answers:
                    sock.sendall(answer)
                calls.answers.clear()
        sock.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- a hostile upstream -------------------------------------------------------------------------


class _HeadParser(_Parser):
    """Requests as they arrive: `heads` gets each one as soon as its head is read."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[Received] = []

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        assert self._cur is not None
        self.heads.append(self._cur)


class UpstreamConn:
    """One connection the proxy opened to the upstream."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.heads: list[Received] = []  # requests whose head arrived (body maybe not)
        self.requests: list[Received] = []  # complete requests
        self.ended = asyncio.Event()  # the proxy closed (or reset) it

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


Script = Callable[[Received, UpstreamConn], Awaitable[None]]


def ok_response(body: bytes, status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


async def echo(req: Received, conn: UpstreamConn) -> None:
    """A well-behaved answer: method, target and body size."""
    conn.write(ok_response(f"{req.method} {req.target} {len(req.body)}\n".encode()))


class HostileUpstream:
    """A raw asyncio server on loopback whose `script` answers each complete request as it likes.

    Requests for `/after...` always get a correct answer, `after-ok <target>`: the follow-ups
    that show whether anything of a hostile answer leaks into the next one.
    """

    def __init__(self, script: Script = echo) -> None:
        self.script = script
        self.conns: list[UpstreamConn] = []
        self.head_arrived = asyncio.Event()
        self.server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> HostileUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Received]:
        return [r for c in self.conns for r in c.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.append(task)
        conn = UpstreamConn(writer)
        self.conns.append(conn)
        parser = _HeadParser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.parser.feed_data(data)
                conn.heads += parser.heads
                if parser.heads:
                    self.head_arrived.set()
                parser.heads.clear()
                while parser.done:
                    req = parser.done.pop(0)
                    conn.requests.append(req)
                    if req.target.startswith("/after"):
                        conn.write(ok_response(b"after-ok " + req.target.encode()))
                    else:
                        await self.script(req, conn)
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError, OSError, asyncio.CancelledError):
            pass  # cancelled too: a handler asyncio must cancel makes it log an error
        finally:
            conn.ended.set()
            writer.close()

    async def close(self) -> None:
        """Stop listening, close every connection and let their handlers end (a handler the event
        loop has to cancel at its end makes asyncio log an error)."""
        if self.server is not None:
            self.server.close()
        for conn in self.conns:
            conn.writer.close()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=PROMPT)
            for task in stuck:  # a script still waiting: its handler ends on cancellation
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)


MakeUpstream = Callable[..., Awaitable[HostileUpstream]]  # the `upstreams` fixture: await make(script)


async def all_ended(conns: list[UpstreamConn], timeout: float = PROMPT) -> bool:
    """Whether the proxy has closed each of `conns` within `timeout`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            for conn in conns:
                await conn.ended.wait()
            return True
    return False


async def follow_up(tunnel: RawTunnel, host: str, path: str, methods_before: list[str]) -> None:
    """A GET for `path` on `tunnel` gets its own correct answer, as the next response after the
    `methods_before` ones: nothing of an earlier answer comes before or instead of it."""
    tunnel.send_plain(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    methods = [*methods_before, "GET"]
    got = [r for r in await tunnel.responses(methods, PROMPT) if not r.interim]
    assert len(got) >= len(methods), f"no answer to the follow-up {path}: {tunnel.summary()}"
    answers = [(r.status, r.body) for r in got]
    assert answers[len(methods_before) :] == [(200, b"after-ok " + path.encode())], (
        f"the follow-up {path} got someone else's answer, or more than one: {answers}"
    )
