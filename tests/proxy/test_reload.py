"""Config hot reload through the real proxy process: SIGHUP, file change, errors, restart-only fields."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from pathlib import Path

from mcp_tunnel.client.tunnel_client import TunnelConnection
from mcp_tunnel.config import load_config
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.policy import plan_reload
from mcp_tunnel.proxy.upstream import Connector
from support.ops import sample, start_stack
from support.pki import PKI, make_pki
from support.proxy import start_proxy, write_config
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"


def _named(name: str) -> RecordingUpstream:
    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        body = f"{name} {req.target}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return RecordingUpstream(handler)


async def _pair() -> tuple[RecordingUpstream, RecordingUpstream]:
    return await _named("A").start(), await _named("B").start()


async def test_sighup_switches_upstream_and_log_level(tmp: Path, pki: PKI) -> None:
    a, b = await _pair()
    # A long poll interval: only the signal can cause this reload.
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{a.port}"}, log_level="info", tls={"reload_interval": "1h"}
    )
    with stack.proc:
        live = await stack.client().connect(HOST)
        resp = await live.request("GET", "/1", host=HOST)
        assert await resp.read() == b"A /1\n"
        before = sample(await stack.metrics(), "mcp_tunnel_config_last_reload_success_timestamp_seconds")
        stack.rewrite({"echo": f"http://127.0.0.1:{b.port}"}, log_level="warn")
        stack.proc.proc.send_signal(signal.SIGHUP)
        line = await stack.wait_log("config reloaded")
        assert "trigger=SIGHUP" in line and "changed=routes,log_level" in line
        started = stack.count("request started")
        # The live connection was not dropped, and its next request follows the new route.
        resp = await live.request("GET", "/2", host=HOST)
        assert await resp.read() == b"B /2\n"
        assert await stack.get("echo", "/3") == (200, b"B /3\n")
        assert stack.count("request started") == started  # warn level: no request lines now
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="success") == 1
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="failure") == 0
        assert sample(metrics, "mcp_tunnel_config_last_reload_success_timestamp_seconds") > before
        await live.close()
        assert stack.proc.stop() == 0
    await a.close()
    await b.close()


async def test_file_change_adds_route_and_touch_is_not_an_attempt(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, tls={"reload_interval": "50ms"}
    )
    with stack.proc:
        assert (await stack.get("new"))[0] == 502
        stack.rewrite(
            {"echo": f"http://127.0.0.1:{upstream.port}", "new": f"http://127.0.0.1:{upstream.port}"}
        )
        line = await stack.wait_log("config reloaded")
        assert 'trigger="file change"' in line
        assert "route=new host=new.tunnel.test" in await stack.wait_log('msg="route configured" route=new')
        assert await stack.get("new", "/x") == (200, b"GET /x 0\n")
        # Same bytes again (a touch, or a ConfigMap resync): no attempt, nothing logged.
        text = stack.config_path.read_text()
        stack.rewrite_text(text)
        await stack.wait_log("config file touched, same content")
        assert stack.count("config reload") == 1
        stack.rewrite({"echo": f"http://127.0.0.1:{upstream.port}"})  # then a real change
        await stack.wait_log("config reloaded", 2)
        assert stack.count("config reload") == 2
        assert "route removed" in await stack.wait_log("route removed")
        assert (await stack.get("new"))[0] == 502
        stack.proc.stop()


async def test_invalid_config_keeps_the_running_one(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, tls={"reload_interval": "50ms"}
    )
    with stack.proc:
        good = stack.config_path.read_text()
        stack.rewrite_text(good.replace("routes:\n  echo:", "routes:\n  - echo:"))
        line = await stack.wait_log("config reload failed")
        assert "level=error" in line and "keeping the running config" in line
        assert "cannot unmarshal !!seq into map[string]string" in line and str(stack.config_path) in line
        assert await stack.get("echo", "/ok") == (200, b"GET /ok 0\n")
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="failure") == 1
        assert sample(metrics, "mcp_tunnel_config_last_reload_successful") == 0
        # A SIGHUP with the same broken file is another attempt, logged and counted again.
        stack.proc.proc.send_signal(signal.SIGHUP)
        await stack.wait_log("config reload failed", 2)
        stack.rewrite_text(good)
        await stack.wait_log("config reloaded")
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="failure") == 2
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="success") == 1
        assert sample(metrics, "mcp_tunnel_config_last_reload_successful") == 1
        assert stack.proc.stop() == 0


async def test_listen_and_admin_changes_need_a_restart(tmp: Path, pki: PKI) -> None:
    a, b = await _pair()
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{a.port}"}, tls={"reload_interval": "50ms"})
    with stack.proc:
        stack.rewrite(
            {"echo": f"http://127.0.0.1:{b.port}"}, listen_addr="127.0.0.1:1", admin_addr="127.0.0.1:2"
        )
        line = await stack.wait_log("config change to listen_addr needs a restart")
        assert "level=warn" in line and f"running=127.0.0.1:{stack.port}" in line
        assert "configured=127.0.0.1:1" in line
        await stack.wait_log("config change to admin_addr needs a restart")
        await stack.wait_log("config reloaded")
        # Still on the old sockets, with the rest of the change applied.
        assert await stack.get("echo", "/") == (200, b"B /\n")
        assert (await stack.admin("/healthz"))[0] == 200
        stack.proc.stop()
    await a.close()
    await b.close()


async def test_new_certificate_paths_and_in_flight_request(tmp: Path, pki: PKI) -> None:
    release = asyncio.Event()

    async def slow(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/slow":
            await release.wait()
        body = f"{req.target}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    upstream = await RecordingUpstream(slow).start()
    other = make_pki(tmp / "other")  # another CA: only a client trusting it accepts the new pair
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, tls={"reload_interval": "50ms"}
    )
    with stack.proc:
        live = await stack.client().connect(HOST)
        in_flight = asyncio.create_task(live.request("GET", "/slow", host=HOST))
        await asyncio.wait_for(upstream.arrived.wait(), 10)
        stack.rewrite(
            {"echo": f"http://127.0.0.1:{upstream.port}", "more": f"http://127.0.0.1:{upstream.port}"},
            tls={
                "cert_file": str(other.cert_file),
                "key_file": str(other.key_file),
                "reload_interval": "50ms",
            },
        )
        assert "changed=routes,tls" in await stack.wait_log("config reloaded")
        conn = await stack.client(ca=other.ca_file).connect(HOST)  # new handshakes: the new pair
        resp = await conn.request("GET", "/new", host=HOST)
        assert await resp.read() == b"/new\n"
        await conn.close()
        release.set()  # the request in flight across the reload completes on its old connection
        resp = await asyncio.wait_for(in_flight, 10)
        assert (resp.status, await resp.read()) == (200, b"/slow\n")
        resp = await live.request("GET", "/after", host=HOST)  # and the live session goes on
        assert await resp.read() == b"/after\n"
        await live.close()
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_reload_under_traffic(tmp: Path, pki: PKI) -> None:
    """Ten changes, valid and invalid alternately, while requests run in a loop: none fails."""
    a, b = await _pair()
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{a.port}"}, tls={"reload_interval": "20ms"}, log_level="info"
    )
    with stack.proc:
        results: list[bytes] = []
        failures: list[BaseException] = []
        done = asyncio.Event()

        async def traffic() -> None:
            conn: TunnelConnection | None = None
            n = 0
            while not done.is_set():
                n += 1
                try:
                    if conn is None or n % 5 == 0:  # mostly keep-alive, sometimes a new tunnel
                        if conn is not None:
                            await conn.close()
                        conn = await stack.client().connect(HOST)
                    resp = await conn.request("GET", f"/{n}", host=HOST)
                    body = await resp.read()
                    if resp.status != 200:
                        failures.append(AssertionError(f"HTTP {resp.status}: {body!r}"))
                    results.append(body)
                except Exception as exc:
                    failures.append(exc)
                    conn = None
            if conn is not None:
                await conn.close()

        loop_task = asyncio.create_task(traffic())
        upstreams = {"A": a, "B": b}
        current = "A"
        for i in range(10):
            seen = len(results)
            if i % 2 == 0:
                current = "B" if current == "A" else "A"
                stack.rewrite({"echo": f"http://127.0.0.1:{upstreams[current].port}"}, log_level="info")
                await stack.wait_log("config reloaded", i // 2 + 1)
                # The change takes effect: a fresh request lands on the new upstream.
                status, body = await stack.get("echo", "/check")
                assert (status, body) == (200, f"{current} /check\n".encode())
            else:
                stack.rewrite_text(f"listen_addr: 127.0.0.1:{stack.port}\nroutes: [broken {i}\n")
                await stack.wait_log("config reload failed", i // 2 + 1)
                assert await stack.get("echo", "/check") == (200, f"{current} /check\n".encode())
            deadline = time.monotonic() + 10
            while len(results) < seen + 3 and not failures:  # traffic kept flowing meanwhile
                assert time.monotonic() < deadline, "the request loop stalled"
                await asyncio.sleep(0.01)
        done.set()
        await asyncio.wait_for(loop_task, 10)
        assert failures == []
        assert any(r.startswith(b"A ") for r in results) and any(r.startswith(b"B ") for r in results)
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="success") == 5
        assert sample(metrics, "mcp_tunnel_config_reloads_total", result="failure") == 5
        assert stack.proc.stop() == 0
    await a.close()
    await b.close()


# --- the pure decision ------------------------------------------------------------------------


def test_plan_reload_decisions(tmp: Path, pki: PKI) -> None:
    base = load_config(
        str(write_config(tmp, pki, {"echo": "http://127.0.0.1:9000", "old": "http://127.0.0.1:9001"}))
    )
    same = plan_reload(base, base)
    assert same.changed == () and same.needs_restart == () and not same.new_certificates

    new = dataclasses.replace(
        load_config(
            str(
                write_config(
                    tmp,
                    pki,
                    {"echo": "http://127.0.0.1:9999", "added": "http://127.0.0.1:9002"},
                    listen_addr=":8081",
                    admin_addr="127.0.0.1:9090",
                    limits={"idle_timeout": "5s"},
                )
            )
        ),
        cert_file="/elsewhere/tls.crt",
    )
    plan = plan_reload(base, new)
    assert plan.changed == ("routes", "tls", "limits")
    assert plan.routes_added == ("added",) and plan.routes_changed == ("echo",)
    assert plan.routes_removed == ("old",)
    assert [(r.field, r.running, r.configured) for r in plan.needs_restart] == [
        ("listen_addr", "127.0.0.1:8080", ":8081"),
        ("admin_addr", "off", "127.0.0.1:9090"),
    ]
    assert plan.new_certificates
    # What is applied keeps the bound addresses, so the next reload reports them again.
    assert (plan.effective.listen_host, plan.effective.listen_port) == ("127.0.0.1", 8080)
    assert plan.effective.admin_port is None
    assert plan.effective.limits.idle_timeout == 5.0
    assert plan_reload(plan.effective, new).needs_restart == plan.needs_restart


async def test_retired_connector_closes_instead_of_pooling(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """An exchange in flight across a reload releases to the old connector: closed, not pooled."""
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    old = proxy.server.connector
    route = proxy.server.router.lookup(HOST)
    assert route is not None
    conn = old.pooled(route) or await old.connect(route)
    proxy.server.apply(proxy.server.config)  # a reload
    assert proxy.server.connector is not old and old.closed
    old.release(conn)
    assert conn.transport.is_closing()
    assert old._idle == {}
    fresh = Connector(proxy.server.config.upstream, Logger("error"))
    conn2 = fresh.pooled(route) or await fresh.connect(route)
    fresh.release(conn2)
    assert not conn2.transport.is_closing()  # a live connector pools it (the control case)
    fresh.close()
    assert conn2.transport.is_closing()
    await proxy.stop()


def test_plan_reload_workers_needs_a_restart(tmp: Path, pki: PKI) -> None:
    base = load_config(str(write_config(tmp, pki, {"echo": "http://127.0.0.1:9000"})))
    plan = plan_reload(base, dataclasses.replace(base, workers=4))
    assert [(r.field, r.running, r.configured) for r in plan.needs_restart] == [("workers", "1", "4")]
    assert plan.effective.workers == 1 and plan.changed == ()


async def test_a_reload_reaches_the_layers_through_their_contexts(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """The HTTP and forwarding layers know the proxy only by the contexts the server builds: a
    reload and the drain must reach them there (issue #22)."""
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    server = proxy.server
    fwd, http = server.forward_context, server.http_context
    limits = dataclasses.replace(server.config.limits, body_timeout=7.0)
    new = dataclasses.replace(server.config, limits=limits)
    server.apply(new)
    assert server.forward_context is fwd and server.http_context is http  # kept current, not replaced
    assert fwd.config.connector is server.connector and fwd.config.router is server.router
    assert fwd.config.limits is limits and http.limits is limits
    assert not fwd.draining and not http.draining
    server.draining = True  # what SIGTERM does first (proxy/cli.py)
    assert fwd.draining and http.draining
    await proxy.stop()


async def test_an_exchange_keeps_the_config_it_began_with(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """A reload while a policy route's body is still arriving: the exchange began under the old
    config and is sent upstream with it (here `upstream.host_header`), never with a mix."""
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://127.0.0.1:{upstream.port}"},
        mcp={"routes": {"echo": {"allow_tools": ["*"]}}},
    )
    server = proxy.server
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{}}}'
    conn = await proxy.client().connect(HOST)
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await conn.send_raw(head + body[:10])

    def begun() -> bool:  # the forwarder has taken the exchange (it waits for the whole body)
        return any(
            t.http is not None and t.http.exchanges and t.http.exchanges[0].running for t in server.tunnels
        )

    deadline = asyncio.get_running_loop().time() + 10
    while not begun():
        assert asyncio.get_running_loop().time() < deadline, "the exchange never began"
        await asyncio.sleep(0.005)  # polling a condition, with a deadline
    upstream_settings = dataclasses.replace(server.config.upstream, host_header="upstream")
    server.apply(dataclasses.replace(server.config, upstream=upstream_settings))
    await conn.send_raw(body[10:])
    resp = await conn.read_response()
    assert resp.status == 200
    assert upstream.requests[0].header("host") == HOST  # the old "original", not 127.0.0.1:port
    await conn.close()
    await proxy.stop()
