"""Structured log lines: one event per line, logfmt-style ``key=value`` text or JSON.

Kept deliberately small because the proxy writes two lines per request on its hot path: a
level check, one string build and one write. The timestamp's seconds part is cached (it changes
once a second, the lines come thousands of times a second) and plain values are recognised with
one regex match instead of a per-character loop. The two per-request lines have their own
methods (`request_started`, `request_completed`) that build the text line with one f-string:
no keyword dict, the constant message pre-quoted, numbers written without a check; the bytes
are the same as `log` would write. Callers never pass bodies, query strings, ``Authorization``
or cookies; nothing here inspects values for them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import re
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
FLUSH_DELAY = 0.01  # seconds a line may wait in the buffer while the event loop runs

# Values made only of these characters are written bare; anything else (spaces, quotes, '=',
# control or non-ASCII characters) is JSON-quoted so that a line always splits the same way.
_BARE = re.compile(r"[A-Za-z0-9\-._:/@\[\]%+,]+").fullmatch
# Printable ASCII without '"' and '\\': exactly the strings json.dumps only wraps in quotes.
_QUOTE_ONLY = re.compile(r"[ !#-\[\]-~]*").fullmatch


def _logfmt_value(value: object) -> str:
    if type(value) is int or type(value) is float:
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if _BARE(text):
        return text
    return _quoted(text)


def _text(text: str) -> str:
    return text if _BARE(text) else _quoted(text)


def _quoted(text: str) -> str:
    """`text` as a JSON string (what a value that is not bare becomes)."""
    if _QUOTE_ONLY(text):
        return f'"{text}"'
    return json.dumps(text)


_time = time.time


class _Clock:
    """``2025-01-31T12:00:00.123Z`` with the part up to the seconds rebuilt once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self) -> str:
        now = _time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # %d truncates as int() does, at half the cost of f"{int(...):03d}"
        return "%s.%03dZ" % (self._prefix, (now - second) * 1000)  # noqa: UP031


class Logger:
    """A leveled logger writing one line per event to a stream."""

    def __init__(self, level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self._clock = _Clock()
        self._flush_pending = False
        self.configure(level, fmt)

    def configure(self, level: str, fmt: str) -> None:
        """Set level and format; a config reload calls this, so both apply without a restart."""
        self.level = level
        self.format = fmt
        self.threshold = LEVELS[level]
        self.json = fmt == "json"
        self.debug_enabled = self.threshold <= LEVELS["debug"]
        self.info_enabled = self.threshold <= LEVELS["info"]

    def log(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        stamp = self._clock.stamp()
        if self.json:
            record: dict[str, Any] = {"time": stamp, "level": level, "msg": msg}
            record.update(fields)
            line = json.dumps(record, default=str)
        else:
            line = f"time={stamp} level={level} msg={_logfmt_value(msg)}"
            if fields:
                line += " " + " ".join([f"{k}={_logfmt_value(v)}" for k, v in fields.items()])
        self._write(line + "\n")

    # --- the two lines of every proxied request (same bytes as `log`, less work) -------------

    def request_started(self, method: str, host: str, path: str) -> None:
        """``info("request started", method=..., host=..., path=...)``."""
        if not self.info_enabled:
            return
        if self.json:
            self.log("info", "request started", {"method": method, "host": host, "path": path})
            return
        if not (method and host and path and _BARE(f"{method}{host}{path}")):  # one match for three
            method, host, path = _text(method), _text(host), _text(path)
        self._write(
            f'time={self._clock.stamp()} level=info msg="request started"'
            f" method={method} host={host} path={path}\n"
        )

    def request_completed(
        self,
        method: str,
        host: str,
        path: str,
        status: int,
        duration_ms: float,
        nbytes: int,
        route: str,
        error: str = "",
    ) -> None:
        """``info("request completed", ...)`` with method, host, path, status, duration_ms, bytes,
        route and, when not empty, error, in that order.

        `status`, `duration_ms` and `nbytes` are numbers, written as `str` writes them.
        """
        if not self.info_enabled:
            return
        if self.json:
            fields: dict[str, Any] = {
                "method": method,
                "host": host,
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "bytes": nbytes,
                "route": route,
            }
            if error:
                fields["error"] = error
            self.log("info", "request completed", fields)
            return
        err = f" error={_text(error)}" if error else ""
        if not (method and host and path and route and _BARE(f"{method}{host}{path}{route}")):
            method, host, path, route = _text(method), _text(host), _text(path), _text(route)
        self._write(
            f'time={self._clock.stamp()} level=info msg="request completed" method={method}'
            f" host={host} path={path} status={status} duration_ms={duration_ms} bytes={nbytes}"
            f" route={route}{err}\n"
        )

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line)
        except (OSError, ValueError):
            return  # a closed or full stderr must never take the proxy down
        if not self._flush_pending:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """One flush (one write system call) per `FLUSH_DELAY`, not one per line.

        Lines written while the loop runs reach the stream within 10 ms, together: under load
        that is one write for hundreds of lines, and at a low request rate one write instead of
        two for a request's pair of lines, off the request's way. A full buffer (64 KiB) is
        written at once; the proxy flushes on exit. Outside a running loop each line is flushed
        at once.
        """
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def debug(self, msg: str, **fields: Any) -> None:
        if self.debug_enabled:
            self.log("debug", msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        if self.info_enabled:
            self.log("info", msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.log("warn", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, fields)


def buffered_stderr() -> TextIO:
    """stderr without Python's line buffering, for a logger that flushes every `FLUSH_DELAY`.

    Since Python 3.9 `sys.stderr` flushes at every newline, which would cost the proxy one
    write system call per log line; this wrapper shares file descriptor 2 and is flushed by the
    Logger (and at exit).
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr (tests, embedding)
        return sys.stderr
    raw = io.FileIO(fd, "w", closefd=False)
    stream = io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16), encoding="utf-8", errors="backslashreplace")
    atexit.register(_quiet_flush, stream)
    return stream


def _quiet_flush(stream: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
