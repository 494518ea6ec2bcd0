"""The connect seam pinned by what it dials (issue #22): only vetted addresses, ever.

`Connector` takes the resolver and the dial as parameters. `RecordingDial` opens nothing: it
records every address it is asked for, so "the proxy dialled a refused address" is observable
without any traffic (a refused address here may be a public one). The pool's age limit is judged
with an injected clock, so no test waits for it.
"""

from __future__ import annotations

import asyncio
import io
import json
import ssl
from collections.abc import Iterable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from mcp_tunnel.config import UpstreamSettings, UpstreamTLS
from mcp_tunnel.errors import UpstreamRefused, UpstreamTimeout
from mcp_tunnel.ippolicy import IPPolicy
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.upstream import (
    POOL_IDLE_SECONDS,
    POOL_MAX_IDLE_PER_UPSTREAM,
    Connector,
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamDNSError,
    UpstreamProtocol,
    UpstreamTLSError,
    loop_dial,
)
from mcp_tunnel.routing import Route
from support.ops import parse_metrics, sample
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import LoopbackRecordingDial, RecordingUpstream, ScriptedResolver

# 127.0.0.1 and 127.0.0.3 are allowed; 127.0.0.2 (loopback, but not listed) and 8.8.8.8 are not.
POLICY = IPPolicy((IPv4Network("127.0.0.1/32"), IPv4Network("127.0.0.3/32")))
REFUSED_PUBLIC = "8.8.8.8"
ROUTE = Route("echo", "http", "svc.internal", 8080)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        pass


class RecordingDial:
    """A `Dial` that opens nothing: records each call; addresses in `down` refuse the connection."""

    def __init__(self, down: Iterable[str] = ()) -> None:
        self.down = set(down)
        self.calls: list[tuple[str, int, ssl.SSLContext | None, str | None]] = []

    @property
    def dialled(self) -> list[str]:
        return [address for address, *_ in self.calls]

    async def __call__(
        self, address: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
    ) -> tuple[asyncio.Transport, UpstreamProtocol]:
        self.calls.append((address, port, ssl_context, server_hostname))
        if address in self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        transport, protocol = FakeTransport(), UpstreamProtocol()
        protocol.connection_made(transport)
        return transport, protocol


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_connector(
    answers: dict[str, list[list[str]] | Exception],
    dial: RecordingDial,
    *,
    clock: Clock | None = None,
    settings: UpstreamSettings | None = None,
) -> tuple[Connector, ScriptedResolver, io.StringIO]:
    resolver = ScriptedResolver(answers)
    logs = io.StringIO()
    connector = Connector(
        settings or UpstreamSettings(policy=POLICY),
        Logger("debug", stream=logs),
        resolver=resolver,
        dial=dial,
        clock=clock or Clock(),
    )
    return connector, resolver, logs


# --- which address is dialled -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "allowed"),
    [
        (["127.0.0.1", REFUSED_PUBLIC], "127.0.0.1"),
        ([REFUSED_PUBLIC, "127.0.0.1"], "127.0.0.1"),
        (["127.0.0.2", "127.0.0.3"], "127.0.0.3"),
        (["127.0.0.3", "127.0.0.2"], "127.0.0.3"),
    ],
)
async def test_mixed_answer_dials_only_the_allowed_address(answer: list[str], allowed: str) -> None:
    dial = RecordingDial()
    connector, _, logs = make_connector({"svc.internal": [answer]}, dial)
    conn = await connector.connect(ROUTE)
    assert dial.dialled == [allowed]
    assert conn.address == allowed
    assert dial.calls[0][1] == 8080
    assert "some upstream addresses refused by IP policy" in logs.getvalue()


async def test_allowed_address_down_never_falls_back_to_a_refused_one() -> None:
    dial = RecordingDial(down={"127.0.0.1"})
    connector, _, _ = make_connector({"svc.internal": [[REFUSED_PUBLIC, "127.0.0.1", "127.0.0.2"]]}, dial)
    with pytest.raises(UpstreamConnectError):
        await connector.connect(ROUTE)
    assert dial.dialled == ["127.0.0.1"]


async def test_connect_failure_falls_over_to_the_next_allowed_address_in_resolver_order() -> None:
    dial = RecordingDial(down={"127.0.0.3"})
    answer = ["127.0.0.3", REFUSED_PUBLIC, "127.0.0.1", "127.0.0.2"]
    connector, _, logs = make_connector({"svc.internal": [answer]}, dial)
    conn = await connector.connect(ROUTE)
    assert dial.dialled == ["127.0.0.3", "127.0.0.1"]
    assert conn.address == "127.0.0.1"
    assert "dial tcp 127.0.0.3:8080: connect: connection refused" in logs.getvalue()


async def test_refused_only_answer_dials_nothing() -> None:
    dial = RecordingDial()
    connector, _, logs = make_connector({"svc.internal": [[REFUSED_PUBLIC, "127.0.0.2"]]}, dial)
    with pytest.raises(UpstreamRefused) as refused:
        await connector.connect(ROUTE)
    assert refused.value.addresses == (REFUSED_PUBLIC, "127.0.0.2")
    assert dial.dialled == []
    assert f"IP validation failed: {REFUSED_PUBLIC} is not a private address" in logs.getvalue()


async def test_dns_failure_dials_nothing() -> None:
    dial = RecordingDial()
    connector, _, _ = make_connector({}, dial)
    with pytest.raises(UpstreamDNSError):
        await connector.connect(ROUTE)
    assert dial.dialled == []


@pytest.mark.timeout(10)  # a timeout mutated away hangs: fail fast, as a failure (./dev mutants)
async def test_dns_timeout_dials_nothing() -> None:
    class Silent:
        async def resolve(self, host: str, port: int) -> list[str]:
            await asyncio.Event().wait()  # a DNS server that never answers
            raise AssertionError("unreachable")

    dial = RecordingDial()
    connector = Connector(
        UpstreamSettings(policy=POLICY),
        Logger("info", stream=io.StringIO()),
        resolver=Silent(),
        dial=dial,
        dns_timeout=0.01,
    )
    with pytest.raises(UpstreamDNSError):
        await connector.connect(ROUTE)
    assert dial.dialled == []


async def test_each_new_connection_is_vetted_on_its_own_answer() -> None:
    """Rebinding: allowed, then refused, then another allowed address; the refused is never dialled."""
    dial = RecordingDial()
    answers: dict[str, list[list[str]] | Exception] = {
        "svc.internal": [["127.0.0.1"], [REFUSED_PUBLIC], ["127.0.0.3"]]
    }
    connector, resolver, logs = make_connector(answers, dial)
    first = await connector.connect(ROUTE)
    assert first.address == "127.0.0.1"
    with pytest.raises(UpstreamRefused):
        await connector.connect(ROUTE)
    assert f"IP validation failed: {REFUSED_PUBLIC} is not a private address" in logs.getvalue()
    third = await connector.connect(ROUTE)
    assert third.address == "127.0.0.3"  # its own answer, not the first one remembered
    assert dial.dialled == ["127.0.0.1", "127.0.0.3"]
    assert resolver.calls == ["svc.internal"] * 3


async def test_dial_gets_the_tls_context_and_the_route_host_for_https_only() -> None:
    dial = RecordingDial()
    settings = UpstreamSettings(policy=POLICY, tls=UpstreamTLS(include_system_cas=True))
    answers: dict[str, list[list[str]] | Exception] = {"svc.internal": [["127.0.0.1"]]}
    connector, _, _ = make_connector(answers, dial, settings=settings)
    await connector.connect(Route("s", "https", "svc.internal", 8443))
    await connector.connect(ROUTE)
    assert dial.calls == [
        ("127.0.0.1", 8443, connector.ssl_context, "svc.internal"),
        ("127.0.0.1", 8080, None, None),
    ]
    assert connector.ssl_context is not None


def test_the_default_dial_is_the_loops_create_connection() -> None:
    assert Connector(UpstreamSettings(), Logger("info", stream=io.StringIO())).dial is loop_dial


# --- the pool -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idle", "reused"),
    [
        (0.0, True),
        (POOL_IDLE_SECONDS - 0.001, True),
        (POOL_IDLE_SECONDS, False),
        (POOL_IDLE_SECONDS + 0.001, False),
        (POOL_IDLE_SECONDS * 10, False),
    ],
)
async def test_pool_reuses_only_below_the_idle_limit(idle: float, reused: bool) -> None:
    clock = Clock()
    dial = RecordingDial()
    connector, _, _ = make_connector({"svc.internal": [["127.0.0.1"]]}, dial, clock=clock)
    conn = await connector.connect(ROUTE)
    connector.release(conn)
    clock.now += idle
    got = connector.pooled(ROUTE)
    if reused:
        assert got is conn and conn.reused
        assert not conn.transport.is_closing()
    else:
        assert got is None
        assert conn.transport.is_closing()  # closed, not left in the pool
        assert connector.pooled(ROUTE) is None
        await connector.connect(ROUTE)  # a new connection: resolved, vetted and dialled again
        assert dial.dialled == ["127.0.0.1", "127.0.0.1"]


async def test_pool_age_counts_from_the_last_release() -> None:
    clock = Clock()
    connector, _, _ = make_connector({"svc.internal": [["127.0.0.1"]]}, RecordingDial(), clock=clock)
    conn = await connector.connect(ROUTE)
    connector.release(conn)
    clock.now += POOL_IDLE_SECONDS - 1
    assert connector.pooled(ROUTE) is conn
    clock.now += 3  # in use for a while, then idle again
    connector.release(conn)
    clock.now += POOL_IDLE_SECONDS - 1
    assert connector.pooled(ROUTE) is conn
    connector.release(conn)
    clock.now += POOL_IDLE_SECONDS
    assert connector.pooled(ROUTE) is None


async def test_pool_never_hands_out_a_connection_of_another_route() -> None:
    answers: dict[str, list[list[str]] | Exception] = {
        "svc.internal": [["127.0.0.1"]],
        "other.internal": [["127.0.0.3"]],
    }
    dial = RecordingDial()
    connector, _, _ = make_connector(answers, dial)
    same_host_other_port = Route("port", "http", "svc.internal", 9090)
    other_host = Route("other", "http", "other.internal", 8080)
    other_scheme = Route("tls", "https", "svc.internal", 8080)
    conn = await connector.connect(ROUTE)
    connector.release(conn)
    for route in (same_host_other_port, other_host, other_scheme):
        assert connector.pooled(route) is None, route
    assert not conn.transport.is_closing()
    assert connector.pooled(ROUTE) is conn
    other = await connector.connect(other_host)
    connector.release(other)
    assert connector.pooled(ROUTE) is None
    assert connector.pooled(other_host) is other
    assert dial.dialled == ["127.0.0.1", "127.0.0.3"]


# --- through the proxy ---------------------------------------------------------------------------


async def _get(proxy: RunningProxy) -> tuple[int, bytes]:
    conn = await proxy.client().connect("echo.tunnel.test")
    resp = await conn.request("GET", "/", host="echo.tunnel.test")
    body = await resp.read()
    await conn.close()
    return resp.status, body


@pytest.mark.parametrize("answer", [[REFUSED_PUBLIC, "127.0.0.1"], ["127.0.0.1", REFUSED_PUBLIC]])
async def test_proxy_dials_only_the_allowed_address(
    tmp: Path, pki: PKI, upstream: RecordingUpstream, answer: list[str]
) -> None:
    dial = LoopbackRecordingDial()
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://mix.internal:{upstream.port}"},
        resolver=ScriptedResolver({"mix.internal": [answer]}),
        dial=dial,
        upstream={"allowed_ips": ["127.0.0.1/32"]},
    )
    try:
        assert (await _get(proxy))[0] == 200
        assert dial.dialled == ["127.0.0.1"]
        assert len(upstream.requests) == 1
    finally:
        await proxy.stop()


async def test_proxy_refused_only_answer_is_a_502_ip_policy_and_dials_nothing(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    dial = LoopbackRecordingDial()
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://bad.internal:{upstream.port}"},
        resolver=ScriptedResolver({"bad.internal": [[REFUSED_PUBLIC, "127.0.0.2"]]}),
        dial=dial,
        upstream={"allowed_ips": ["127.0.0.1/32"]},
    )
    try:
        status, body = await _get(proxy)
        assert (status, body) == (502, b"Upstream address not allowed\n")
        assert dial.dialled == []
        assert upstream.connections == 0
        assert proxy.log_has(f"IP validation failed: {REFUSED_PUBLIC} is not a private address")
        metrics = parse_metrics(proxy.server.metrics.render().decode())
        assert sample(metrics, "mcp_tunnel_upstream_refusals_total", route="echo", reason="ip_policy") == 1
    finally:
        await proxy.stop()


async def test_proxy_dns_failure_dials_nothing(tmp: Path, pki: PKI) -> None:
    dial = LoopbackRecordingDial()
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": "http://gone.internal:80"},
        resolver=ScriptedResolver({}),
        dial=dial,
        upstream={"allowed_ips": ["0.0.0.0/0"]},
    )
    try:
        assert (await _get(proxy))[0] == 502
        assert dial.dialled == []
        metrics = parse_metrics(proxy.server.metrics.render().decode())
        assert sample(metrics, "mcp_tunnel_upstream_refusals_total", route="echo", reason="dns") == 1
    finally:
        await proxy.stop()


# --- what the seam says: the log lines and the errors, field by field -----------------------------

UPSTREAM = "http://svc.internal:8080"


class PortResolver:
    """Answers every name with `answer` (or raises it) and records the (host, port) it was asked."""

    def __init__(self, answer: list[str] | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


class HangingDial(RecordingDial):
    """Addresses in `hang` never answer: the connector's connect timeout must end the attempt."""

    def __init__(self, hang: Iterable[str] = (), tls_error: Iterable[str] = ()) -> None:
        super().__init__()
        self.hang = set(hang)
        self.tls_error = set(tls_error)

    async def __call__(
        self, address: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
    ) -> tuple[asyncio.Transport, UpstreamProtocol]:
        if address in self.hang:
            self.calls.append((address, port, ssl_context, server_hostname))
            await asyncio.Event().wait()
        if address in self.tls_error:
            self.calls.append((address, port, ssl_context, server_hostname))
            raise ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        return await super().__call__(address, port, ssl_context, server_hostname)


def json_connector(
    resolver: Any,
    dial: RecordingDial,
    *,
    settings: UpstreamSettings | None = None,
    **kwargs: Any,
) -> tuple[Connector, io.StringIO]:
    logs = io.StringIO()
    connector = Connector(
        settings or UpstreamSettings(policy=POLICY),
        Logger("debug", "json", stream=logs),
        resolver=resolver,
        dial=dial,
        **kwargs,
    )
    return connector, logs


def lines(logs: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines without their time stamp."""
    out = []
    for line in logs.getvalue().splitlines():
        record = json.loads(line)
        record.pop("time")
        out.append(record)
    return out


async def test_the_resolver_is_asked_for_the_route_host_and_port() -> None:
    resolver = PortResolver(["127.0.0.1"])
    connector, logs = json_connector(resolver, RecordingDial())
    await connector.connect(ROUTE)
    assert resolver.calls == [("svc.internal", 8080)]
    assert lines(logs) == []  # an all-allowed answer is not worth a line


@pytest.mark.timeout(10)  # a timeout mutated away hangs: fail fast, as a failure (./dev mutants)
async def test_dns_timeout_line_and_error() -> None:
    class Silent:
        async def resolve(self, host: str, port: int) -> list[str]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    connector, logs = json_connector(Silent(), RecordingDial(), dns_timeout=0.01)
    with pytest.raises(UpstreamDNSError) as failed:
        await connector.connect(ROUTE)
    assert str(failed.value) == "resolving svc.internal timed out"
    assert (failed.value.status, failed.value.refusal) == (502, "dns")
    assert lines(logs) == [
        {
            "level": "warn",
            "msg": "upstream resolution timed out",
            "route": "echo",
            "upstream": UPSTREAM,
            "timeout": "0.01s",
        }
    ]


async def test_dns_failure_line_and_error() -> None:
    error = OSError(-2, "Name or service not known")
    connector, logs = json_connector(PortResolver(error), RecordingDial())
    with pytest.raises(UpstreamDNSError) as failed:
        await connector.connect(ROUTE)
    assert str(failed.value) == f"cannot resolve svc.internal: {error}"
    assert lines(logs) == [
        {
            "level": "warn",
            "msg": "upstream resolution failed",
            "route": "echo",
            "upstream": UPSTREAM,
            "error": str(error),
        }
    ]


@pytest.mark.parametrize(
    ("answer", "shown", "resolved"),
    [
        ([REFUSED_PUBLIC, "127.0.0.2"], REFUSED_PUBLIC, f"{REFUSED_PUBLIC},127.0.0.2"),
        ([], "none", "none"),  # an empty answer is refused too, and says so
    ],
)
async def test_refused_only_line_and_error(answer: list[str], shown: str, resolved: str) -> None:
    dial = RecordingDial()
    connector, logs = json_connector(PortResolver(answer), dial)
    with pytest.raises(UpstreamRefused) as refused:
        await connector.connect(ROUTE)
    assert str(refused.value) == "svc.internal resolved only to refused addresses"
    assert refused.value.addresses == tuple(answer)
    assert dial.dialled == []
    assert lines(logs) == [
        {
            "level": "warn",
            "msg": f"IP validation failed: {shown} is not a private address",
            "route": "echo",
            "upstream": UPSTREAM,
            "resolved": resolved,
        }
    ]


async def test_partly_refused_answer_is_a_debug_line_naming_the_refused() -> None:
    answer = [REFUSED_PUBLIC, "127.0.0.1", "127.0.0.2"]
    connector, logs = json_connector(PortResolver(answer), RecordingDial())
    assert (await connector.connect(ROUTE)).address == "127.0.0.1"
    assert lines(logs) == [
        {
            "level": "debug",
            "msg": "some upstream addresses refused by IP policy",
            "route": "echo",
            "refused": f"{REFUSED_PUBLIC},127.0.0.2",
        }
    ]


async def test_https_route_without_trust_anchors_dials_nothing() -> None:
    dial = RecordingDial()
    connector, _ = json_connector(PortResolver(["127.0.0.1"]), dial)
    with pytest.raises(UpstreamTLSError) as failed:
        await connector.connect(Route("s", "https", "svc.internal", 8443))
    assert str(failed.value) == "https upstream without upstream.tls trust anchors"
    assert dial.dialled == []


@pytest.mark.timeout(10)  # a timeout mutated away hangs: fail fast, as a failure (./dev mutants)
async def test_a_dial_that_times_out_falls_over_to_the_next_allowed_address() -> None:
    dial = HangingDial(hang={"127.0.0.1"})
    connector, _ = json_connector(PortResolver(["127.0.0.1", "127.0.0.3"]), dial, connect_timeout=0.01)
    conn = await connector.connect(ROUTE)
    assert conn.address == "127.0.0.3"
    assert dial.dialled == ["127.0.0.1", "127.0.0.3"]


@pytest.mark.timeout(10)  # a timeout mutated away hangs: fail fast, as a failure (./dev mutants)
async def test_every_dial_timing_out_is_a_504_timeout() -> None:
    dial = HangingDial(hang={"127.0.0.1", "127.0.0.3"})
    connector, _ = json_connector(PortResolver(["127.0.0.1", "127.0.0.3"]), dial, connect_timeout=0.01)
    with pytest.raises(UpstreamTimeout) as failed:
        await connector.connect(ROUTE)
    assert str(failed.value) == f"connect to {UPSTREAM} timed out"
    assert failed.value.status == 504
    assert dial.dialled == ["127.0.0.1", "127.0.0.3"]


async def test_a_tls_failure_stops_at_once_with_its_line() -> None:
    dial = HangingDial(tls_error={"127.0.0.1"})
    settings = UpstreamSettings(policy=POLICY, tls=UpstreamTLS(include_system_cas=True))
    connector, logs = json_connector(PortResolver(["127.0.0.1", "127.0.0.3"]), dial, settings=settings)
    route = Route("s", "https", "svc.internal", 8443)
    with pytest.raises(UpstreamTLSError) as failed:
        await connector.connect(route)
    reason = str(ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    assert str(failed.value) == f"upstream TLS failed: {reason}"
    assert dial.dialled == ["127.0.0.1"]  # a certificate problem is not fixed by another address
    assert lines(logs) == [
        {
            "level": "warn",
            "msg": "upstream tls failed",
            "route": "s",
            "upstream": "https://svc.internal:8443",
            "error": reason,
        }
    ]


async def test_every_dial_refused_names_the_last_error_and_logs_each() -> None:
    dial = RecordingDial(down={"127.0.0.1", "127.0.0.3"})
    connector, logs = json_connector(PortResolver(["127.0.0.1", "127.0.0.3"]), dial)
    with pytest.raises(UpstreamConnectError) as failed:
        await connector.connect(ROUTE)
    assert str(failed.value) == f"cannot connect to {UPSTREAM}: [Errno 111] Connection refused"
    assert (failed.value.status, failed.value.refusal) == (502, "connect")
    assert lines(logs) == [
        {
            "level": "warn",
            "msg": f"dial tcp {address}:8080: connect: connection refused",
            "route": "echo",
            "upstream": UPSTREAM,
        }
        for address in ("127.0.0.1", "127.0.0.3")
    ]


async def test_unsolicited_bytes_are_reported_with_the_route_and_upstream() -> None:
    seen: list[tuple[str, str]] = []
    connector, _ = json_connector(
        PortResolver(["127.0.0.1"]), RecordingDial(), on_unsolicited=lambda *a: seen.append(a)
    )
    conn = await connector.connect(ROUTE)
    conn.protocol.data_received(b"HTTP/1.1 200 OK\r\n")  # nothing was asked: no sink attached
    assert seen == [("echo", UPSTREAM)]
    assert conn.protocol.lost and conn.transport.is_closing()


# --- the pool's bound ------------------------------------------------------------------------------


def _idle_conn(*, usable: bool = True) -> UpstreamConnection:
    transport, protocol = FakeTransport(), UpstreamProtocol()
    protocol.connection_made(transport)
    transport.closed = not usable
    return UpstreamConnection(ROUTE, "127.0.0.1", transport, protocol)


def test_pool_keeps_at_most_its_bound_per_upstream() -> None:
    connector, _ = json_connector(PortResolver(["127.0.0.1"]), RecordingDial())
    kept = [_idle_conn() for _ in range(POOL_MAX_IDLE_PER_UPSTREAM)]
    for conn in kept:
        connector.release(conn)
    extra = _idle_conn()
    connector.release(extra)
    assert extra.transport.is_closing()  # one past the bound: closed, not pooled
    assert not any(conn.transport.is_closing() for conn in kept)
    assert [connector.pooled(ROUTE) for _ in kept] == kept[::-1]  # newest first
    assert connector.pooled(ROUTE) is None


def test_a_dead_connection_is_never_pooled_and_takes_no_place() -> None:
    connector, _ = json_connector(PortResolver(["127.0.0.1"]), RecordingDial())
    for _ in range(POOL_MAX_IDLE_PER_UPSTREAM):
        connector.release(_idle_conn(usable=False))
    good = _idle_conn()
    connector.release(good)
    assert connector.pooled(ROUTE) is good
