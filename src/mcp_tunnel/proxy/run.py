"""One proxy process: serve until a signal, then drain; alone, or as one worker of `workers: N`.

`proxy/cli.py` (the command line) and `proxy/workers.py` (the supervisor and its workers) both
run a proxy through here, so neither imports the other's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from mcp_tunnel.certs.reload import CertificateWatcher
from mcp_tunnel.config import Config
from mcp_tunnel.errors import CertificateError, ConfigError
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.reload import ConfigReloader, ReloadTarget
from mcp_tunnel.proxy.server import ProxyServer, load_certificates, load_certificates_from

SCRAPE_TIMEOUT = 2.0  # per worker, for /metrics and /readyz
GC_YOUNG_THRESHOLD = 7000  # CPython's default is 700


def load_tls(config: Config, log: Logger) -> CertificateWatcher:
    """The inner-TLS pair; a pair that cannot serve is a configuration error (exit 2)."""
    try:
        return load_certificates(config, log)
    except CertificateError as exc:
        raise ConfigError(str(exc), file=config.path, field="tls") from None


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it cuts the event loop's own cost per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(
    config: Config,
    log: Logger,
    watcher: CertificateWatcher,
    *,
    tunnel_domain: str | None = None,
    worker: WorkerSide | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain within shutdown_timeout; a second signal exits at once.

    SIGHUP reloads the config (so does a change of the file, polled by `ConfigReloader`).
    A `worker` (one of `workers: N`) serves the supervisor's socket, leaves admin_addr to the
    supervisor and answers it on its private channel; its supervisor turns SIGINT into SIGTERM.
    """
    # The young generation's collection runs every 700 net allocations of tracked objects: with
    # 64 requests in flight that is every few requests, and each pass walks what is in flight
    # although no request leaves a cycle (docs/performance.md). Ten times fewer passes.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    server = ProxyServer(config, log, watcher=watcher)
    target = ReloadTarget(
        log=log,
        metrics=server.metrics,
        current=lambda: server.config,
        apply=lambda new, pair: server.apply(new, watcher=pair),
        load_pair=lambda cert, key: load_certificates_from(cert, key, log),
    )
    reloader = ConfigReloader(target, config.path, tunnel_domain=tunnel_domain)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warn("second signal, exiting now", signal=signame)
            log.flush()
            exit_now(1)
        server.draining = True  # readiness off at once, before anything else happens
        log.info("shutting down", signal=signame, timeout=f"{server.config.shutdown_timeout:g}s")
        stop.set()

    def on_hangup() -> None:
        if server.draining:
            log.info("SIGHUP ignored: shutting down")
            return
        reloader.reload("SIGHUP")

    for sig in (signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        # after the handlers: a signal right after "listening" must drain
        if worker is None:
            await server.start()
        else:
            await server.start(worker.sock, admin=False)
            await worker.start(server)
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        await server.stop(0)
        return 1
    reloader.start()
    await stop.wait()
    reloader.stop()
    await server.stop(server.config.shutdown_timeout)
    if worker is not None:
        worker.stop()
    log.info("stopped")
    return 0


def exit_now(code: int) -> NoReturn:
    """Leave the process at once: no task cancellation, no waiting for executor threads.

    `SystemExit` raised from a signal handler unwinds through `asyncio.run`, which then cancels
    every task and joins the default executor; a resolver thread stuck in `getaddrinfo` would
    hold the exit for as long as it takes. An operator's second Ctrl-C means now.
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        sys.stdout.flush()
    os._exit(code)


@dataclass
class WorkerSide:
    """What makes a proxy process a worker: the inherited listener and the private channel on
    which the supervisor asks for its metrics and readiness."""

    number: int
    sock: socket.socket
    control: str  # unix socket path, in the supervisor's 0700 directory
    _server: asyncio.AbstractServer | None = field(default=None, repr=False)

    async def start(self, proxy: ProxyServer) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(SCRAPE_TIMEOUT):
                    what = (await reader.readline()).strip()
            except (TimeoutError, OSError, ValueError):
                writer.close()
                return
            if what == b"metrics":
                proxy.log.flush()  # counts the requests whose metrics wait for the log's flush
                body = proxy.metrics.render()
            elif what == b"readyz":
                body = (proxy.readiness() or "").encode()
            else:
                body = b""
            with contextlib.suppress(OSError):
                writer.write(body)
                await writer.drain()
            writer.close()

        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)  # a previous incarnation's socket
        self._server = await asyncio.start_unix_server(answer, path=self.control)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
