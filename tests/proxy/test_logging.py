"""Log lines through the real proxy process: formats, level, one pair per request, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from mcp_tunnel import logs
from mcp_tunnel.logs import Logger
from support.ops import Stack, start_stack
from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"
SECRETS = (
    "SECRET-AUTH-7f3a",
    "SECRET-COOKIE-91c2",
    "SECRET-QUERY-55d0",
    "SECRET-BODY-0b1e",
    "SECRET-SETCOOKIE-aa",
)


async def _answer_with_cookie(req: Received, writer: asyncio.StreamWriter) -> None:
    body = b"ok\n"
    writer.write(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=SECRET-SETCOOKIE-aa\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def _secret_requests(stack: Stack) -> int:
    """Requests carrying every kind of secret, answered every way; how many were sent."""
    secret_headers = [
        ("Authorization", "Bearer SECRET-AUTH-7f3a"),
        ("Cookie", "sid=SECRET-COOKIE-91c2; theme=dark"),
    ]
    conn = await stack.client().connect(HOST)
    resp = await conn.request("GET", "/mcp?token=SECRET-QUERY-55d0&x=1", host=HOST, headers=secret_headers)
    assert (resp.status, await resp.read()) == (200, b"ok\n")
    resp = await conn.request("POST", "/mcp?token=SECRET-QUERY-55d0", host=HOST, headers=secret_headers,
                              body=b'{"token": "SECRET-BODY-0b1e"}')  # fmt: skip
    assert resp.status == 200
    await resp.read()
    resp = await conn.request(
        "GET", "/?token=SECRET-QUERY-55d0", host="nope.tunnel.test", headers=secret_headers
    )
    assert resp.status == 502
    await resp.read()
    # Refused before it is understood (two Hosts): still no secret in the lines about it.
    await conn.send_raw(
        f"GET /?token=SECRET-QUERY-55d0 HTTP/1.1\r\nHost: {HOST}\r\nHost: x\r\n"
        "Authorization: Bearer SECRET-AUTH-7f3a\r\nCookie: sid=SECRET-COOKIE-91c2\r\n\r\n".encode()
    )
    resp = await conn.read_response()
    assert resp.status == 400
    await resp.read()
    await conn.close()
    return 4


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_secret_in_any_line_at_debug(fmt: str, tmp: Path, pki: PKI) -> None:
    upstream = await RecordingUpstream(_answer_with_cookie).start()
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, log_level="debug", log_format=fmt
    )
    with stack.proc:
        sent = await _secret_requests(stack)
        await stack.wait_log("request completed", sent)
        assert stack.proc.stop() == 0
    lines = stack.proc.lines
    assert any("tls handshake completed" in line for line in lines)  # debug really is on
    for line in lines:
        for secret in SECRETS:
            assert secret not in line, line
    assert upstream.requests[0].header("authorization") == "Bearer SECRET-AUTH-7f3a"  # yet forwarded
    started = [line for line in lines if "request started" in line]
    completed = [line for line in lines if "request completed" in line]
    assert len(started) == len(completed) == sent
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert all({"time", "level", "msg"} <= set(r) for r in records)
        by_msg = [r for r in records if r["msg"] == "request completed"]
        assert [r["status"] for r in by_msg] == [200, 200, 502, 400]
        assert by_msg[0]["path"] == "/mcp" and by_msg[0]["route"] == "echo"
        assert isinstance(by_msg[0]["duration_ms"], float) and by_msg[0]["bytes"] == 3
        assert by_msg[3]["method"] == "-" and by_msg[3]["error"]
        assert any(r["msg"] == "route configured" and r["route"] == "echo" for r in records)
        assert any(r["msg"] == "no route for host" and r["host"] == "nope.tunnel.test" for r in records)
    else:
        assert 'msg="request started" method=GET host=echo.tunnel.test path=/mcp' in started[0]
        assert "status=200" in completed[0] and "duration_ms=" in completed[0] and "bytes=3" in completed[0]
        assert any('msg="no route for host" host=nope.tunnel.test' in line for line in lines)
    await upstream.close()


async def test_level_honoured(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, log_level="warn")
    with stack.proc:
        assert (await stack.get("echo"))[0] == 200
        assert (await stack.get("nope"))[0] == 502
        await stack.wait_log("no route for host")
        assert stack.proc.stop() == 0
    levels = {line.split(" level=", 1)[1].split(" ", 1)[0] for line in stack.proc.lines}
    assert levels <= {"warn", "error"}, stack.log()
    assert stack.count("request started") == 0 and stack.count("route configured") == 0


async def test_fixed_phrases(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    """The phrases the official troubleshooting greps for, exactly so."""
    stack = start_stack(
        tmp,
        pki,
        {"lan": f"http://localhost:{upstream.port}"},  # a name: checked at connect, not at load
        upstream={"allowed_ips": ["10.0.0.0/8"]},
        log_level="info",
    )
    with stack.proc:
        line = await stack.wait_log("route configured")
        assert f"route=lan host=lan.tunnel.test upstream=http://localhost:{upstream.port}" in line
        assert (await stack.get("lan"))[0] == 502
        line = await stack.wait_log("IP validation failed: 127.0.0.1 is not a private address")
        assert "route=lan" in line
        assert (await stack.get("other"))[0] == 502
        await stack.wait_log("no route for host")
        stack.proc.stop()


async def test_stop_writes_what_waits_for_the_flush(
    tmp: Path, pki: PKI, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request lines are rendered at the log's flush; stopping the server must not lose them."""
    monkeypatch.setattr(logs, "FLUSH_DELAY", 3600.0)  # no flush but the one `stop` does
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/a", host=pki.host("echo"))
    await resp.read()
    await conn.close()
    await proxy.stop()
    text = proxy.logs.getvalue()  # read directly: `log_lines` would flush first
    assert 'msg="request completed" method=GET host=echo.tunnel.test path=/a status=200' in text


# --- the Logger itself ------------------------------------------------------------------------


def test_text_quoting_and_json() -> None:
    out = io.StringIO()
    log = Logger("debug", "text", stream=out)
    log.info("request started", method="GET", path="/a b", host='x"y', n=3, f=1.5, empty="", ctl="a\nb")
    line = out.getvalue()
    assert line.count("\n") == 1
    assert 'msg="request started" method=GET path="/a b" host="x\\"y" n=3 f=1.5 empty="" ctl="a\\nb"' in line
    out = io.StringIO()
    log = Logger("info", "json", stream=out)
    log.debug("hidden")
    log.warn("tls handshake failed: unknown ca", peer="1.2.3.4:5")
    (record,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert record["level"] == "warn" and record["msg"] == "tls handshake failed: unknown ca"
    assert record["time"].endswith("Z") and len(record["time"]) == len("2025-01-01T00:00:00.000Z")
    log.configure("error", "text")
    log.warn("dropped")
    assert "dropped" not in out.getvalue()
