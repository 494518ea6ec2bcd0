"""`workers: N` (issue #24): a supervisor process and N worker processes on one tunnel listener.

One Python process runs on one core; nginx and Go proxies use them all. With N > 1 the proxy
process becomes a supervisor that binds the listener once and starts N workers, each a full
proxy (`run.serve`: a `ProxyServer` with the whole data path, its own certificate watcher and
config reloader), serving that same socket. With N == 1 none of this exists: the proxy runs as
it always did.

Why one socket bound by the supervisor and inherited, not SO_REUSEPORT per worker: with
SO_REUSEPORT each worker has its own accept queue, and the connections waiting in a worker's
queue are reset when that worker dies or drains; with one shared queue the surviving workers
take them. The port is bound once (a bind error is one line and exit 1, before any worker),
no other process of the same user can join the group and take a share of the connections,
and `listen_addr: ...:0` means one port. The cost is that accept is shared: every idle
worker's event loop wakes for a new connection and one wins, which at a handful of workers
is a few wasted wakeups per connection (tunnels are long-lived), and a busy worker simply
accepts less often, which balances the load by itself.

The supervisor does no data path work. It serves `admin_addr`: /healthz; /readyz, ready only
when every worker says it is; /metrics, the sum over workers (`metrics_sum`), each worker's
exposition scraped over a private channel (a unix socket per worker, in a 0700 directory of
the supervisor's). Signals reach every worker: SIGHUP is forwarded (each worker reloads the
config; each also polls the file and the certificate pair itself, as a single proxy does);
SIGTERM/SIGINT become a SIGTERM to each worker, which drains as a single proxy does, and a
second one exits at once. A worker that exits on its own is logged (one line: the worker's
number and exit status) and restarted, after a delay that doubles while it keeps dying
young (`restart_delay`). A worker dies with the supervisor (PR_SET_PDEATHSIG: SIGTERM, so a
killed supervisor's workers still drain).

Workers tag each of their log lines ``worker=N``; they write stderr whole lines at a time,
at most PIPE_BUF bytes per write (`_WholeLines`), so lines from several workers on one pipe
never interleave mid-line.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import io
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from mcp_tunnel.config import Config, load_config
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.admin import AdminServer
from mcp_tunnel.proxy.metrics_sum import render_sum
from mcp_tunnel.proxy.run import SCRAPE_TIMEOUT, WorkerSide, exit_now, load_tls, loop_factory, serve

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


RESTART_FIRST = 0.25  # seconds before restarting a worker that died
RESTART_MAX = 30.0
STABLE_SECONDS = 30.0  # a worker that ran this long before dying starts the backoff over
STOP_MARGIN = 5.0  # beyond shutdown_timeout before a draining worker is killed
PR_SET_PDEATHSIG = 1
# How a drained worker ends: 0, or SIGTERM when a group-wide SIGTERM and the forwarded one both
# arrived and the second came after its loop had closed (the drain was over).
CLEAN_EXITS = (0, -signal.SIGTERM)

# --- pure parts ----------------------------------------------------------------------------------


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker that died after `quick_deaths` earlier
    deaths in a row, each before `STABLE_SECONDS` of life: 0.25 s, 0.5 s, 1 s, ... up to 30 s,
    so a worker that cannot start does not spin the machine."""
    return min(RESTART_MAX, RESTART_FIRST * (1 << min(quick_deaths, 16)))


def exit_status(returncode: int) -> str:
    """``exit 3`` or ``signal SIGKILL``: how a worker ended, as `Popen.returncode` tells it."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def combined_readiness(draining: bool, answers: Sequence[str | None]) -> str | None:
    """Why /readyz is 503 (None: ready): the supervisor is draining, or a worker is not ready
    (its own reason) or did not answer. `answers[i]` is worker i+1's reason, "" when ready."""
    if draining:
        return "draining: shutting down, not accepting new tunnel connections"
    for number, answer in enumerate(answers, 1):
        if answer is None:
            return f"worker {number}: not running or not answering"
        if answer:
            return f"worker {number}: {answer}"
    return None


# --- the worker side -------------------------------------------------------------------------------


class _WholeLines(io.BufferedIOBase):
    """A file descriptor written whole lines at a time, at most PIPE_BUF bytes per write.

    Several workers share the supervisor's stderr; on a pipe a write of up to PIPE_BUF bytes is
    atomic, a longer one may be interleaved with another process's. The logger writes whole
    lines and flushes them together (`Logger.flush`); here they go out cut at line ends.
    """

    def __init__(self, fd: int, write: Callable[[int, memoryview], int] = os.write) -> None:
        super().__init__()
        self.fd = fd
        self._write = write
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, buffer: ReadableBuffer, /) -> int:
        data = memoryview(buffer)
        self.pending += data
        return data.nbytes

    def flush(self) -> None:
        data, self.pending = bytes(self.pending), bytearray()
        start, size = 0, len(data)
        with contextlib.suppress(OSError):  # a closed or full stderr must not take a worker down
            while start < size:
                end = start + select.PIPE_BUF
                if end < size:
                    cut = data.rfind(b"\n", start, end)
                    if cut < start:  # one line longer than PIPE_BUF: alone, in one write
                        cut = data.find(b"\n", end)
                        cut = size - 1 if cut < 0 else cut
                    end = cut + 1
                view = memoryview(data)[start:end]
                while view:
                    view = view[self._write(self.fd, view) :]
                start = end


def worker_stderr() -> TextIO:
    """stderr for a worker's logger: buffered, flushed by the logger, whole lines per write."""
    raw = _WholeLines(2)
    stream = io.TextIOWrapper(
        cast(io.BufferedWriter, raw), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    atexit.register(_quiet_flush, stream)
    return stream


def _quiet_flush(stream: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def _die_with_parent(parent: int) -> None:
    """SIGTERM (a drain) to this worker when the supervisor goes, even killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:  # it went before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-proxy worker", description="one worker of mcp-proxy (internal)")
    p.add_argument("--config", required=True)
    p.add_argument("--tunnel-domain", default=None)
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--parent", type=int, required=True)
    return p


def worker_main(argv: list[str]) -> int:
    """One worker: the proxy of `run.serve` on the inherited socket, reporting to the supervisor."""
    # Until `serve` installs its handlers: Ctrl-C reaches the supervisor, which drains us; a
    # SIGHUP forwarded while we start must not kill us (the config is read just below anyway).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = _worker_parser().parse_args(argv)
    _die_with_parent(args.parent)
    config = load_config(args.config, tunnel_domain=args.tunnel_domain)
    log = Logger(config.log_level, config.log_format, stream=worker_stderr())
    log.set_worker(args.worker)
    watcher = load_tls(config, log)
    side = WorkerSide(args.worker, socket.socket(fileno=args.fd), args.control)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(config, log, watcher, tunnel_domain=args.tunnel_domain, worker=side))
    finally:
        # Drained: a SIGTERM sent to the whole process group and forwarded by the supervisor
        # too must not turn a clean exit into death by signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.flush()


# --- the supervisor ----------------------------------------------------------------------------------


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the file does (stat follows a ConfigMap's symlink swap), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def bind_listener(config: Config) -> socket.socket:
    """The tunnel listener, bound and listening once for every worker (raises OSError)."""
    host, port = config.listen_host, config.listen_port
    if not host:  # ":8080": every interface, IPv6 too where the host has it
        if socket.has_dualstack_ipv6():
            with contextlib.suppress(OSError):
                return socket.create_server(
                    ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024
                )
        return socket.create_server(("0.0.0.0", port), backlog=1024)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    return socket.create_server(addr[:2], family=family, backlog=1024)


@dataclass
class _Slot:
    number: int
    control: str
    proc: asyncio.subprocess.Process | None = None
    exit_code: int | None = None


class Supervisor:
    """Starts, watches and signals the workers; serves admin_addr for all of them."""

    def __init__(
        self, config: Config, log: Logger, sock: socket.socket, *, tunnel_domain: str | None
    ) -> None:
        self.config = config
        self.log = log
        self.sock = sock
        self.tunnel_domain = tunnel_domain
        self.dir = tempfile.mkdtemp(prefix="mcp-proxy-")  # 0700: only we reach the workers' channels
        self.slots = [_Slot(n, os.path.join(self.dir, f"w{n}.sock")) for n in range(1, config.workers + 1)]
        self.draining = False
        self.restarts = 0
        self._stop = asyncio.Event()
        self._admin: AdminServer | None = None
        self._own = CollectorRegistry()  # the supervisor's process_*: added to the workers'
        ProcessCollector(registry=self._own)

    # --- workers ---------------------------------------------------------------------------

    def _argv(self, slot: _Slot) -> list[str]:
        argv = [sys.executable, "-m", "mcp_tunnel.proxy.workers", "--config", self.config.path]
        argv += ["--worker", str(slot.number), "--fd", str(self.sock.fileno()), "--control", slot.control]
        argv += ["--parent", str(os.getpid())]
        if self.tunnel_domain:
            argv += ["--tunnel-domain", self.tunnel_domain]
        return argv

    async def _keep(self, slot: _Slot) -> None:
        """Run one worker, restarting it whenever it exits until the supervisor drains."""
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        while not self.draining:
            started = loop.time()
            try:
                proc = slot.proc = await asyncio.create_subprocess_exec(
                    *self._argv(slot), pass_fds=(self.sock.fileno(),), stdin=asyncio.subprocess.DEVNULL
                )
            except OSError as exc:  # no process could be made (EAGAIN, ENOMEM): try again later
                pid, status = 0, f"not started: {exc.strerror or exc}"
            else:
                if self.draining:  # the signal came while it was starting
                    proc.send_signal(signal.SIGTERM)
                self.log.info("worker started", worker=slot.number, pid=proc.pid)
                code = slot.exit_code = await proc.wait()
                slot.proc = None
                if self.draining:
                    return
                pid, status = proc.pid, exit_status(code)
            lived = loop.time() - started
            quick_deaths = quick_deaths + 1 if lived < STABLE_SECONDS else 0
            delay = restart_delay(quick_deaths - 1 if quick_deaths else 0)
            self.restarts += 1
            self.log.error(
                "worker exited, restarting",
                worker=slot.number,
                pid=pid,
                status=status,
                restart_in=f"{delay:g}s",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
        # The drain began while no process ran in this slot (waiting to restart one that died,
        # or one that could not be made): nothing was in flight here, so nothing was lost. Its
        # earlier death was logged and counted when it happened.
        slot.exit_code = 0

    def _signal_all(self, signum: signal.Signals) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signum)

    # --- the private channel -----------------------------------------------------------------

    async def _ask(self, slot: _Slot, what: bytes) -> bytes | None:
        """One question to a worker over its unix socket; None if it does not answer in time."""
        if slot.proc is None:
            return None
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(slot.control)
                writer.write(what + b"\n")
                data = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return None
        return data

    async def metrics(self) -> bytes:
        answers = await asyncio.gather(*(self._ask(s, b"metrics") for s in self.slots))
        texts = [a.decode() for a in answers if a]
        answered = len(texts)
        texts.append(generate_latest(self._own).decode())
        own = [
            GaugeMetricFamily(
                "mcp_tunnel_workers",
                "Worker processes whose metrics this scrape sums (of the configured workers: N).",
                value=answered,
            ),
            CounterMetricFamily(
                "mcp_tunnel_worker_restarts",
                "Worker processes restarted by the supervisor after they exited.",
                value=self.restarts,
            ),
        ]
        return render_sum(texts, own)

    async def readiness(self) -> str | None:
        answers = await asyncio.gather(*(self._ask(s, b"readyz") for s in self.slots))
        return combined_readiness(self.draining, [None if a is None else a.decode() for a in answers])

    # --- lifecycle ------------------------------------------------------------------------------

    async def _watch_config(self) -> None:
        """The file poll of `reload.ConfigReloader`, for the supervisor's own log settings."""
        seen = _stamp(self.config.path)
        while True:
            await asyncio.sleep(self.config.cert_reload_interval)
            stamp = _stamp(self.config.path)
            if stamp != seen:
                seen = stamp
                self._reload_own()

    def _reload_own(self) -> None:
        """The supervisor's own lines follow log_level/log_format; the workers report the reload."""
        try:
            config = load_config(self.config.path, tunnel_domain=self.tunnel_domain)
        except Exception:  # each worker logs why; the supervisor keeps what it has
            return
        if (config.log_level, config.log_format) != (self.log.level, self.log.format):
            self.log.configure(config.log_level, config.log_format)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signame: str) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                self.log.warn("second signal, exiting now", signal=signame)
                self.log.flush()
                self._signal_all(signal.SIGTERM)  # a worker's second signal: it exits at once
                exit_now(1)
            self.draining = True
            timeout = f"{self.config.shutdown_timeout:g}s"
            self.log.info("shutting down", signal=signame, timeout=timeout, workers=len(self.slots))
            self._signal_all(signal.SIGTERM)
            self._stop.set()

        def on_hangup() -> None:
            if self.draining:
                self.log.info("SIGHUP ignored: shutting down")
                return
            self._signal_all(signal.SIGHUP)
            self._reload_own()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        cfg = self.config
        if cfg.admin_port is not None:
            try:
                self._admin = AdminServer(readiness=self.readiness, metrics=self.metrics)
                await self._admin.start(cfg.admin_host or None, cfg.admin_port)
            except OSError as exc:
                self.log.error("cannot listen", error=str(exc))
                return 1
            self.log.info("admin listening", addr=self._admin.address)
        host, port = self.sock.getsockname()[:2]
        self.log.info("listening", addr=f"{host}:{port}", workers=len(self.slots))
        keepers = [loop.create_task(self._keep(slot)) for slot in self.slots]
        watch = loop.create_task(self._watch_config())
        await self._stop.wait()
        watch.cancel()
        try:
            async with asyncio.timeout(cfg.shutdown_timeout + STOP_MARGIN):
                await asyncio.gather(*keepers)
        except TimeoutError:
            self.log.warn("workers still running after the shutdown timeout, killing them")
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*keepers)
        if self._admin is not None:
            await self._admin.stop()
        self.sock.close()
        failed = [s.number for s in self.slots if s.exit_code not in CLEAN_EXITS]
        self.log.info("stopped", workers=len(self.slots), failed=",".join(map(str, failed)) or "none")
        return 1 if failed else 0

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def supervise(config: Config, log: Logger, *, tunnel_domain: str | None = None) -> int:
    """`mcp-proxy` with `workers: N > 1`: bind, start the workers, supervise until drained."""
    try:
        sock = bind_listener(config)
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        return 1
    supervisor = Supervisor(config, log, sock, tunnel_domain=tunnel_domain)
    try:
        return asyncio.run(supervisor.run())
    finally:
        supervisor.cleanup()
        sock.close()
        log.flush()


def main() -> int:
    from mcp_tunnel.cli_common import run_guarded

    return run_guarded(worker_main, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
