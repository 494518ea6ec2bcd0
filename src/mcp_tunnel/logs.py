"""Structured log lines: one event per line, logfmt-style ``key=value`` text or JSON.

Kept deliberately small because the proxy writes two lines per request. Inside a running event
loop those two are not even built on the request's way: the call records its arguments and the
time, and the line is rendered at the next flush (see `Logger._arm`), in order with every other
line. The timestamp's seconds part is cached (it changes once a second, the lines come
thousands of times a second) and plain values are recognised with one regex match instead of a
per-character loop. The two per-request lines have their own methods (`request_started`,
`request_completed`) that build the text line with one f-string: no keyword dict, the constant
message pre-quoted, numbers written without a check; the bytes are the same as `log` would
write. Callers never pass bodies, query strings, ``Authorization`` or cookies; nothing here
inspects values for them.
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
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any, Final, TextIO

from mcp_tunnel import redact

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
# While an event loop runs, lines are written (one system call) FLUSH_DELAY after the first of
# them, unless a request line came in the last FLUSH_BUSY: then the flush waits FLUSH_DELAY more,
# at most FLUSH_MAX_WAITS times (~10 ms in all under steady load).
FLUSH_DELAY = 0.002
FLUSH_BUSY = 0.0005
FLUSH_MAX_WAITS = 4

# Values made only of these characters are written bare; anything else (spaces, quotes, '=',
# control or non-ASCII characters) is JSON-quoted so that a line always splits the same way.
_BARE: Final = re.compile(r"[A-Za-z0-9\-._:/@\[\]%+,]+").fullmatch
# Printable ASCII without '"' and '\\': exactly the strings json.dumps only wraps in quotes.
_QUOTE_ONLY: Final = re.compile(r"[ !#-\[\]-~]*").fullmatch


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
_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))  # the end of a stamp, by millisecond
# What `str` writes after the point of a float with at most three decimals, by thousandth.
_DECIMALS: Final = tuple("." + (f"{m:03d}".rstrip("0") or "0") for m in range(1000))


def millis(seconds: float) -> float:
    """``round(seconds * 1000, 3)``, the same float, mostly without `round`'s two decimal
    conversions (dtoa, then strtod: a request's duration is rounded once per request).

    Below 1e7 ms the product times 1000 is within 2e-6 of the exact one, so away from a tie
    (a fraction within 0.001 of one half, left to `round`) the nearest integer `k` is the
    exact product's, and `k / 1000` (a correctly rounded division) is the float nearest to
    the decimal `round` makes.
    """
    ms = seconds * 1000
    if 0.0 < ms < 1e7:
        scaled = ms * 1000.0
        k = int(scaled + 0.5)
        gap = scaled - k
        if -0.499 < gap < 0.499:
            return k / 1000.0
    return round(ms, 3)


def _float_text(value: float) -> str:
    """``str(value)``, without the shortest-repr search when `value` has at most three
    decimals (a duration from `millis`): whole part, then the decimals from a table."""
    if 0.0 < value < 1e7:
        k = int(value * 1000.0 + 0.5)
        if k / 1000.0 == value:  # exactly the float nearest to k/1000: str writes that decimal
            return f"{k // 1000}{_DECIMALS[k % 1000]}"
    return str(value)


class _Clock:
    """``2025-01-31T12:00:00.123Z`` with the part up to the seconds rebuilt once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # The milliseconds truncated (as %d would) and looked up: "%s.%03dZ" % (...) is a
        # generic formatting call in both builds (0.5-0.9 us a line); the table costs 10 KiB.
        ms = int((now - second) * 1000)
        return self._prefix + _MILLIS[ms if ms < 1000 else 999]


class Logger:
    """A leveled logger writing one line per event to a stream."""

    def __init__(self, level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self._clock = _Clock()
        self._flush_pending = False
        # Work that waits for the flush, run in order before it.
        self._pending: list[_Pending] = []
        self._last = 0.0  # when the latest request line was recorded
        self._waits = 0
        self.worker = 0  # a worker's number when the proxy runs several (`workers: N`), else 0
        self._tag = ""  # what `set_worker` appends to every line
        self.configure(level, fmt)

    def set_worker(self, number: int) -> None:
        """Tag every line with ``worker=N`` (one process of several); 0 leaves lines as they are."""
        self.worker = number
        self.configure(self.level, self.format)

    def configure(self, level: str, fmt: str) -> None:
        """Set level and format; a config reload calls this, so both apply without a restart."""
        self._run_pending()  # recorded lines keep the format they were logged under
        self.level = level
        self.format = fmt
        self.threshold = LEVELS[level]
        self.json = fmt == "json"
        self.debug_enabled = self.threshold <= LEVELS["debug"]
        self.info_enabled = self.threshold <= LEVELS["info"]
        if not self.worker:
            self._tag = ""
        else:
            self._tag = f', "worker": {self.worker}}}\n' if self.json else f" worker={self.worker}\n"

    def log(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        self._write(self._line(_time(), level, msg, fields))

    def _line(self, now: float, level: str, msg: str, fields: dict[str, Any]) -> str:
        stamp = self._clock.stamp(now)
        if self.json:
            record: dict[str, Any] = {"time": stamp, "level": level, "msg": msg}
            record.update(fields)
            return json.dumps(record, default=str) + "\n"
        line = f"time={stamp} level={level} msg={_logfmt_value(msg)}"
        if fields:
            line += " " + " ".join([f"{k}={_logfmt_value(v)}" for k, v in fields.items()])
        return line + "\n"

    # --- the two lines of every proxied request (same bytes as `log`, less work) -------------

    def request_started(self, method: str, host: str, path: str) -> None:
        """``info("request started", method=..., host=..., path=...)``."""
        if self.info_enabled:
            now = self._last = _time()
            self._record(_Started(now, method, host, path))

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
        if self.info_enabled:
            now = self._last = _time()
            self._record(_Completed(now, method, host, path, status, duration_ms, nbytes, route, error))

    def mcp_request(
        self,
        route: str,
        session: str,
        method: str,
        name: str,
        msg_id: str,
        status: int,
        outcome: str,
        duration_ms: float,
    ) -> None:
        """``info("mcp request", route=..., session=..., method=..., [name=...], [id=...], status=...,
        outcome=..., duration_ms=...)``: the MCP audit line (mcp_policy.py), rendered at the
        flush like the request lines; `name` and `msg_id` are left out when empty."""
        if self.info_enabled:
            now = self._last = _time()
            self.later(
                self._mcp_line, now, route, session, method, name, msg_id, status, outcome, duration_ms
            )

    def _mcp_line(
        self,
        now: float,
        route: str,
        session: str,
        method: str,
        name: str,
        msg_id: str,
        status: int,
        outcome: str,
        duration_ms: float,
    ) -> None:
        if self.json:
            # The bytes json.dumps writes for the same record (tested), without building it: the
            # audit line is on every MCP message. No conversion (`!r`) or format spec in the
            # f-string: mypyc then builds it with str.format, piece by piece (2 us more); str of a
            # float is its repr.
            q = encode_basestring_ascii
            named = f', "name": {q(name)}' if name else ""
            ident = f', "id": {q(msg_id)}' if msg_id else ""
            self._put(
                f'{{"time": {q(self._clock.stamp(now))}, "level": "info", "msg": "mcp request", '
                f'"route": {q(route)}, "session": {q(session)}, "method": {q(method)}{named}{ident}, '
                f'"status": {status}, "outcome": {q(outcome)}, "duration_ms": {float(duration_ms)}}}\n'
            )
            return
        if not _BARE(f"{route}{session}{method}{name}{msg_id}{outcome}"):  # one match for all
            route, session, method, outcome = _text(route), _text(session), _text(method), _text(outcome)
            name, msg_id = _text(name) if name else "", _text(msg_id) if msg_id else ""
        named = f" name={name}" if name else ""
        ident = f" id={msg_id}" if msg_id else ""
        self._put(
            f'time={self._clock.stamp(now)} level=info msg="mcp request" route={route} session={session}'
            f" method={method}{named}{ident} status={status} outcome={outcome}"
            f" duration_ms={_float_text(duration_ms)}\n"
        )

    # --- writing and flushing ------------------------------------------------------------------

    def later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` with the next flush, in order with the lines: the rendering of a
        request's lines, bookkeeping nobody waits for (its metrics). Outside a running loop, at
        once, then flushed."""
        self._record(_Call(fn, args))

    def _record(self, work: _Pending) -> None:
        if self._flush_pending or self._arm():
            self._pending.append(work)
        else:
            work.run(self)
            self.flush()

    def _write(self, line: str) -> None:
        """Any other line: written now, after the recorded ones so that the order holds."""
        if self._pending:
            self._run_pending()
        self._put(line)
        if not (self._flush_pending or self._arm()):
            self.flush()

    def _put(self, line: str) -> None:
        if self._tag:  # the last field, added here so that every kind of line gets it
            line = line[: -2 if self.json else -1] + self._tag
        if redact.active():  # values from ${VAR} and credentials never reach a log line
            line = redact.scrub(line)
        try:
            self.stream.write(line)
        except (OSError, ValueError):
            return  # a closed or full stderr must never take the proxy down

    def _arm(self) -> bool:
        """Arm the flush; False outside a running loop, where each line is flushed at once.

        Why later, and in a moment without requests: what the flush does (rendering the
        recorded lines, the deferred metrics, one write system call) then runs after the answer
        went out, not while the next request or a response waits to be read. Under steady load
        it still runs every ~10 ms (`FLUSH_MAX_WAITS`), which also bounds what waits; the proxy
        flushes on exit.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._flush_pending = True
        self._waits = 0
        loop.call_later(FLUSH_DELAY, self._tick)
        return True

    def _tick(self) -> None:
        busy = 0.0 <= _time() - self._last < FLUSH_BUSY  # a clock stepped back is not busy
        if busy and self._waits < FLUSH_MAX_WAITS:
            self._waits += 1
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self._tick)  # a timer runs in its loop
            return
        self.flush()

    def _run_pending(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            for work in pending:
                work.run(self)

    def flush(self) -> None:
        """Render what is recorded, run what waits for the flush, then write it all out."""
        self._flush_pending = False
        self._run_pending()
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


class _Pending:
    """Work recorded for the flush. The request lines have records of their own (compiled, a
    native object and a direct call at the flush, where `later`'s function and argument tuple
    cost a bound method, two tuples and a generic call)."""

    __slots__ = ()

    def run(self, log: Logger) -> None:
        raise NotImplementedError


class _Call(_Pending):
    """`Logger.later`'s function and arguments."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def run(self, log: Logger) -> None:
        self.fn(*self.args)


class _Started(_Pending):
    """The "request started" line, rendered at the flush."""

    __slots__ = ("host", "method", "now", "path")

    def __init__(self, now: float, method: str, host: str, path: str) -> None:
        self.now = now
        self.method = method
        self.host = host
        self.path = path

    def run(self, log: Logger) -> None:
        now, method, host, path = self.now, self.method, self.host, self.path
        if log.json:
            fields = {"method": method, "host": host, "path": path}
            log._put(log._line(now, "info", "request started", fields))
            return
        if not (method and host and path and _BARE(f"{method}{host}{path}")):  # one match for three
            method, host, path = _text(method), _text(host), _text(path)
        log._put(
            f'time={log._clock.stamp(now)} level=info msg="request started"'
            f" method={method} host={host} path={path}\n"
        )


class _Completed(_Pending):
    """The "request completed" line, rendered at the flush."""

    __slots__ = ("duration_ms", "error", "host", "method", "nbytes", "now", "path", "route", "status")

    def __init__(
        self,
        now: float,
        method: str,
        host: str,
        path: str,
        status: int,
        duration_ms: float,
        nbytes: int,
        route: str,
        error: str,
    ) -> None:
        self.now = now
        self.method = method
        self.host = host
        self.path = path
        self.status = status
        self.duration_ms = duration_ms
        self.nbytes = nbytes
        self.route = route
        self.error = error

    def run(self, log: Logger) -> None:
        now, error = self.now, self.error
        method, host, path, route = self.method, self.host, self.path, self.route
        if log.json:
            fields: dict[str, Any] = {
                "method": method,
                "host": host,
                "path": path,
                "status": self.status,
                "duration_ms": self.duration_ms,
                "bytes": self.nbytes,
                "route": route,
            }
            if error:
                fields["error"] = error
            log._put(log._line(now, "info", "request completed", fields))
            return
        err = f" error={_text(error)}" if error else ""
        if not (method and host and path and route and _BARE(f"{method}{host}{path}{route}")):
            method, host, path, route = _text(method), _text(host), _text(path), _text(route)
        log._put(
            f'time={log._clock.stamp(now)} level=info msg="request completed" method={method}'
            f" host={host} path={path} status={self.status} duration_ms={_float_text(self.duration_ms)}"
            f" bytes={self.nbytes} route={route}{err}\n"
        )


def buffered_stderr() -> TextIO:
    """stderr without Python's line buffering, for a logger that flushes its lines together.

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
