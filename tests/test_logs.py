"""The Logger's per-request fast lines write exactly what the generic `log` writes."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import struct
from collections.abc import Callable

import pytest

from mcp_tunnel import logs
from mcp_tunnel.logs import Logger

# Bare, quoted-only, escaped, empty, non-ASCII, control and logfmt-breaking values.
VALUES = ["GET", "-", "up.bench.test", "/mcp", "a b", 'x"y', "a\\b", "", "a\nb", "é", "a=b", "[::1]", "\x7f"]


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_time", lambda: 1764151380.25)


def _pair(fmt: str) -> tuple[Logger, io.StringIO, Logger, io.StringIO]:
    generic, fast = io.StringIO(), io.StringIO()
    return Logger("info", fmt, stream=generic), generic, Logger("info", fmt, stream=fast), fast


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("value", VALUES)
def test_fast_lines_are_byte_identical(fmt: str, value: str) -> None:
    generic, generic_out, fast, fast_out = _pair(fmt)
    for method, host, path in ((value, "h", "/p"), ("GET", value, "/p"), ("GET", "h", value), (value,) * 3):
        generic.info("request started", method=method, host=host, path=path)
        fast.request_started(method, host, path)
        for route, error in (("echo", ""), (value, ""), ("-", value), ("echo", "upstream response timeout")):
            fields = {"method": method, "host": host, "path": path, "status": 504, "duration_ms": 0.125}
            fields |= {"bytes": 38, "route": route}
            if error:
                fields["error"] = error
            generic.log("info", "request completed", fields)
            fast.request_completed(method, host, path, 504, 0.125, 38, route, error)
    assert fast_out.getvalue() == generic_out.getvalue()
    if fmt == "json":
        assert all(json.loads(line)["time"] for line in fast_out.getvalue().splitlines())


def test_fast_lines_text_shape() -> None:
    out = io.StringIO()
    log = Logger("info", "text", stream=out)
    log.request_started("POST", "echo.tunnel.test", "/mcp")
    log.request_completed("POST", "echo.tunnel.test", "/mcp", 200, 1.5, 3, "echo")
    log.request_completed("-", "-", "-", 400, 0.25, 50, "-", "more than one Host header")
    assert out.getvalue().splitlines() == [
        'time=2025-11-26T10:03:00.250Z level=info msg="request started" method=POST host=echo.tunnel.test'
        " path=/mcp",
        'time=2025-11-26T10:03:00.250Z level=info msg="request completed" method=POST host=echo.tunnel.test'
        " path=/mcp status=200 duration_ms=1.5 bytes=3 route=echo",
        'time=2025-11-26T10:03:00.250Z level=info msg="request completed" method=- host=- path=- status=400'
        ' duration_ms=0.25 bytes=50 route=- error="more than one Host header"',
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_fast_lines_honour_the_level(fmt: str) -> None:
    out = io.StringIO()
    log = Logger("warn", fmt, stream=out)
    log.request_started("GET", "h", "/")
    log.request_completed("GET", "h", "/", 200, 1.0, 0, "r")
    assert out.getvalue() == ""
    log.configure("info", fmt)
    log.request_started("GET", "h", "/")
    assert out.getvalue().count("\n") == 1


def test_quoting_is_json_for_every_character() -> None:
    for code in [*range(0x100), 0x2028, 0x1F600]:
        text = f"a {chr(code)} b"
        assert logs._quoted(text) == json.dumps(text), code


def test_stamp_milliseconds_truncate() -> None:
    clock = logs._Clock()
    for now in (1764151380.0, 1764151380.0009999, 1764151380.999, 1764151380.9999998, 1764151381.5):
        stamp = clock.stamp(now)
        assert stamp.endswith(f".{int((now - int(now)) * 1000):03d}Z"), (now, stamp)
        assert len(stamp) == len("2025-01-01T00:00:00.000Z")


class _CountingStream(io.StringIO):
    """Counts flushes: each is one write system call on the real, block-buffered stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


async def _until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(logs.FLUSH_DELAY / 2)


async def test_request_lines_in_a_running_loop_are_written_together_later() -> None:
    stream = _CountingStream()
    log = Logger("info", "text", stream=stream)
    for i in range(200):
        log.request_started("GET", "h", f"/{i}")
    assert stream.getvalue() == ""  # recorded: not even built on the request's way
    await _until(lambda: stream.flushes > 0, "no flush")
    assert stream.flushes == 1  # one write for the whole batch
    assert stream.getvalue().splitlines()[-1].endswith("path=/199")
    log.info("later")
    await _until(lambda: stream.flushes > 1, "no second flush")
    assert stream.getvalue().count("\n") == 201


async def test_a_line_written_now_follows_the_recorded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    log = Logger("info", "text", stream=out)
    log.request_started("GET", "h", "/a")
    monkeypatch.setattr(logs, "_time", lambda: 1764151381.5)  # the flush comes later than the line
    log.warn("upstream slow")
    lines = out.getvalue().splitlines()
    assert [line.split(" msg=")[1] for line in lines] == [
        '"request started" method=GET host=h path=/a',
        '"upstream slow"',
    ]
    assert lines[0].startswith("time=2025-11-26T10:03:00.250Z")  # when it was logged
    assert lines[1].startswith("time=2025-11-26T10:03:01.500Z")


async def test_steady_logging_is_still_flushed() -> None:
    """A flush waits for a moment without request lines, but not for ever: FLUSH_MAX_WAITS times."""
    stream = _CountingStream()
    log = Logger("info", "text", stream=stream)
    loop = asyncio.get_running_loop()
    flushed = loop.create_future()
    deadline = loop.time() + 5

    def busy() -> None:  # a request line at every loop turn, as under load
        if stream.flushes:
            flushed.set_result(None)
        elif loop.time() > deadline:
            flushed.set_exception(AssertionError("never flushed while lines kept coming"))
        else:
            log.request_started("GET", "h", "/")
            loop.call_soon(busy)

    busy()
    await flushed
    assert log._waits == logs.FLUSH_MAX_WAITS  # it did wait each time, then flushed anyway


async def test_later_runs_with_the_flush_in_order() -> None:
    out = io.StringIO()
    log = Logger("info", "text", stream=out)
    seen: list[int] = []
    log.request_started("GET", "h", "/")
    log.later(lambda: seen.append(out.getvalue().count("\n")))
    assert seen == []
    await _until(lambda: bool(seen), "never ran")
    assert seen == [1]  # after the line recorded before it


def test_later_outside_a_loop_runs_at_once() -> None:
    log = Logger("info", "text", stream=io.StringIO())
    seen: list[str] = []
    log.later(seen.append, "now")
    assert seen == ["now"]


def test_outside_a_loop_each_line_is_flushed_at_once() -> None:
    stream = _CountingStream()
    log = Logger("info", "text", stream=stream)
    log.info("one")
    log.info("two")
    assert stream.flushes == 2


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("value", VALUES)
def test_the_mcp_audit_line_is_byte_identical(fmt: str, value: str) -> None:
    generic, generic_out, fast, fast_out = _pair(fmt)
    for name, msg_id, duration in (("search", "42", 1.5), (value, value, 0.125), ("", "", 1234.0)):
        fields: dict[str, object] = {"route": value or "wiki", "session": "4f1c9a7e", "method": "tools/call"}
        if name:
            fields["name"] = name
        if msg_id:
            fields["id"] = msg_id
        fields |= {"status": 200, "outcome": value or "ok", "duration_ms": duration}
        generic.info("mcp request", **fields)
        fast.mcp_request(
            value or "wiki", "4f1c9a7e", "tools/call", name, msg_id, 200, value or "ok", duration
        )
    fast.flush()
    assert fast_out.getvalue() == generic_out.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_worker_tags_every_kind_of_line(fmt: str) -> None:
    """`workers: N`: each line of a worker ends with its number; worker 0 (one process) adds nothing."""
    out = io.StringIO()
    log = Logger("info", fmt, stream=out)
    log.info("plain", a=1)
    log.set_worker(3)
    log.info("tagged", a=1)
    log.request_started("GET", "h", "/p")
    log.request_completed("GET", "h", "/p", 200, 1.5, 3, "r", "an error")
    log.mcp_request("r", "s", "tools/call", "t", "1", 200, "ok", 2.0)
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert "worker" not in records[0]
        assert [r["worker"] for r in records[1:]] == [3, 3, 3, 3]
        assert [list(r)[-1] for r in records[1:]] == ["worker"] * 4
    else:
        assert " worker=" not in lines[0]
        assert all(line.endswith(" worker=3") for line in lines[1:])
    log.set_worker(0)
    log.info("plain again")
    log.flush()
    assert "worker" not in out.getvalue().splitlines()[-1]


def _durations() -> list[float]:
    """Durations in seconds as a request's come (sub-ms to minutes), exact halves of a
    thousandth of a millisecond and their neighbours (where `round` decides the tie), edges."""
    rng = random.Random(24)
    scales = (1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 100.0, 1e4)
    found = [rng.random() * scale for scale in scales for _ in range(5000)]
    for k in range(0, 40000, 7):
        for off in (0.0, 1e-12, -1e-12, 4e-10, -4e-10):
            found += [(k + 0.5) / 1e6 + off, k / 1e6 + off]
    return [*found, 0.0, -0.0, 1e4, 9999.9999995, 1e-12, 5e-7, 0.0000625, -1.0, math.inf]


def test_millis_is_round_to_three_decimals_bit_for_bit() -> None:
    for seconds in _durations():
        expected = round(seconds * 1000, 3)
        assert struct.pack("d", logs.millis(seconds)) == struct.pack("d", expected), seconds
    assert math.isnan(logs.millis(math.nan))


def test_a_duration_is_written_as_str_writes_it() -> None:
    values = [round(s * 1000, 3) for s in _durations()]
    values += [0.0, -0.0, 1e7, 12345678.5, 1e-4, 5e-5, -1.5, 0.1 + 0.2, math.inf, -math.inf, math.nan]
    for value in values:
        assert logs._float_text(value) == str(value)
    log = Logger("info", "text", stream=io.StringIO())
    out = log.stream
    log.request_completed("GET", "h", "/", 200, 0.05, 0, "r")
    log.mcp_request("r", "s", "tools/call", "", "", 200, "ok", 1234.5)
    assert isinstance(out, io.StringIO)
    lines = out.getvalue().splitlines()
    assert " duration_ms=0.05 " in lines[0]
    assert lines[1].endswith(" duration_ms=1234.5")
