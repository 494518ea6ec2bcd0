"""Config hot reload (SPEC §6): on SIGHUP and when the config file changes.

Validate, then swap: the file is loaded with the same `load_config` as at start; only a config
that loads completely (and whose certificate pair loads, when the paths changed) is applied, in
one synchronous call (`ProxyServer.apply`, given as `ReloadTarget.apply`: this module knows the
running proxy only through a `ReloadTarget`). Anything else leaves the running config untouched and is
logged as one line. Every attempt is one `config reloaded` or `config reload failed` line (a
success adds a line per route added, changed or removed, and the config's warnings) and one
`mcp_tunnel_config_reloads_total` increment. What changes and what needs a restart is decided
by `policy.plan_reload`.

Why poll the file: a ConfigMap mount changes by swapping a `..data` symlink, which inotify on the
file name does not report; `os.stat` follows symlinks, so the stamp of the *target* changes on
either kind of update (the same reasoning as `certs.reload`). A stamp that changes with the same
bytes (a `touch`, a rewrite of identical content) is not an attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable

from mcp_tunnel.certs.reload import CertificateWatcher
from mcp_tunnel.config import Config, load_config
from mcp_tunnel.logs import Logger
from mcp_tunnel.metrics import Metrics
from mcp_tunnel.proxy.policy import plan_reload

_Stamp = tuple[int, int, int, int] | tuple[str, int]


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        return ("error", exc.errno or 0)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


class ReloadTarget:
    """What a reload needs of the running proxy, and nothing more."""

    __slots__ = ("apply", "current", "load_pair", "log", "metrics")

    def __init__(
        self,
        *,
        log: Logger,
        metrics: Metrics,
        current: Callable[[], Config],
        apply: Callable[[Config, CertificateWatcher | None], None],
        load_pair: Callable[[str, str], CertificateWatcher],
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.current = current  # the config in force
        self.apply = apply  # one synchronous swap; a new certificate watcher when the paths changed
        self.load_pair = load_pair  # a watcher for a certificate pair, loaded (CertificateError)


class ConfigReloader:
    """Watches one config file and applies valid changes to a running proxy."""

    def __init__(self, target: ReloadTarget, path: str, *, tunnel_domain: str | None = None) -> None:
        self.target = target
        self.path = path
        self.tunnel_domain = tunnel_domain  # the -tunnel-domain flag keeps winning over the file
        self._seen = _stamp(path)
        self._digest = _digest(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.target.current().cert_reload_interval)
            self.poll()

    def poll(self) -> bool | None:
        """Reload if the file changed: the result of the attempt, or None when there was none."""
        stamp = _stamp(self.path)
        if stamp == self._seen:
            return None
        self._seen = stamp  # taken before reading: a write after this is seen next poll
        digest = _digest(self.path)
        if digest is not None and digest == self._digest:
            self.target.log.debug("config file touched, same content: nothing to reload", path=self.path)
            return None
        return self.reload("file change")

    def reload(self, trigger: str) -> bool:
        """One reload attempt; True if the new config now applies to new requests."""
        target, log = self.target, self.target.log
        self._seen = _stamp(self.path)
        self._digest = _digest(self.path)
        try:
            new = load_config(self.path, tunnel_domain=self.tunnel_domain)
            plan = plan_reload(target.current(), new)
            watcher = None
            if plan.new_certificates:  # loaded before anything is swapped
                watcher = target.load_pair(plan.effective.cert_file, plan.effective.key_file)
        except Exception as exc:  # any failure keeps the running config; the proxy stays up
            target.metrics.config_loaded(False, time.time())
            error = " ".join(str(exc).split()) or type(exc).__name__
            log.error("config reload failed, keeping the running config", trigger=trigger, error=error)
            return False
        for item in plan.needs_restart:
            log.warn(
                f"config change to {item.field} needs a restart; keeping {item.running}",
                field=item.field,
                running=item.running,
                configured=item.configured,
            )
        config = plan.effective
        target.apply(config, watcher)
        target.metrics.config_loaded(True, time.time())
        log.info(
            "config reloaded",
            trigger=trigger,
            changed=",".join(plan.changed) or "nothing",
            routes=len(config.routes),
        )
        router = config.router
        for key in (*plan.routes_added, *plan.routes_changed):
            route = config.routes[key]
            log.info("route configured", route=key, host=router.public_host(route), upstream=route.upstream)
        for key in plan.routes_removed:
            log.info("route removed", route=key)
        for warning in config.warnings:
            log.warn(warning)
        # Last, so the lines about this reload follow the level in force when it was asked for.
        if config.log_level != log.level or config.log_format != log.format:
            log.configure(config.log_level, config.log_format)
        return True
