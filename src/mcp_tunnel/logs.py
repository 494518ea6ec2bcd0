"""Structured log lines: one event per line, logfmt-style ``key=value`` text or JSON.

Kept deliberately small because the proxy writes two lines per request on its hot path: a
level check, one string build and one write. The timestamp's seconds part is cached (it changes
once a second, the lines come thousands of times a second) and plain values are recognised with
one regex match instead of a per-character loop. Callers never pass bodies, query strings,
``Authorization`` or cookies; nothing here inspects values for them.
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

# Values made only of these characters are written bare; anything else (spaces, quotes, '=',
# control or non-ASCII characters) is JSON-quoted so that a line always splits the same way.
_BARE = re.compile(r"[A-Za-z0-9\-._:/@\[\]%+,]+").fullmatch


def _logfmt_value(value: object) -> str:
    if type(value) is int or type(value) is float:
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if _BARE(text):
        return text
    return json.dumps(text)


class _Clock:
    """``2025-01-31T12:00:00.123Z`` with the part up to the seconds rebuilt once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


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
        try:
            self.stream.write(line + "\n")
        except (OSError, ValueError):
            return  # a closed or full stderr must never take the proxy down
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """One flush (one write system call) per event-loop iteration, not one per line.

        Every line logged while the loop handles a batch of ready sockets goes out together at
        the end of that batch; outside a running loop each line is flushed at once.
        """
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_soon(self.flush)

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
    """stderr without Python's line buffering, for a logger that flushes once per loop turn.

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
