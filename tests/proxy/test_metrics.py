"""Metrics: the bounded label policy (pure) and every family through the real proxy process."""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mcp_tunnel.certs.reload import _REASONS as TLS_REASONS
from mcp_tunnel.errors import (
    BadRequest,
    NoRoute,
    TunnelClientError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from mcp_tunnel.metrics import (
    HANDSHAKE_REASONS,
    LATENCY,
    LATENCY_BUCKETS,
    LATENCY_HELP,
    REQUESTS,
    REQUESTS_HELP,
    Metrics,
    _bucket,
    handshake_reason_label,
    refusal_reason,
    status_class,
)
from mcp_tunnel.proxy.upstream import UpstreamConnectError, UpstreamDNSError, UpstreamTLSError
from support.ops import parse_metrics, sample, start_stack
from support.pki import PKI, make_pki
from support.procs import free_port
from support.upstreams import RecordingUpstream

# --- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("unknown ca (unknown certificate authority)", "unknown_ca"),
        ("bad certificate", "bad_certificate"),
        ("certificate expired", "certificate_expired"),
        ("certificate verify failed (certificate has expired)", "certificate_other"),
        ("certificate unknown", "certificate_other"),
        ("unsupported certificate", "certificate_other"),
        ("protocol version (unsupported protocol)", "protocol_version"),
        ("no shared cipher", "no_shared_cipher"),
        ("no application protocol", "no_application_protocol"),
        ("unexpected eof (peer closed during the handshake)", "unexpected_eof"),
        ("http request (plain HTTP sent to the TLS port)", "http_request"),
        ("wrong version number", "wrong_version_number"),
        ("timeout", "timeout"),
        ("Unknown CA", "unknown_ca"),
        ("sslv3 alert illegal parameter", "other"),
        ("a peer-chosen text with 10.0.0.1 in it", "other"),
        ("", "other"),
    ],
)
def test_handshake_reason_labels(reason: str, label: str) -> None:
    assert handshake_reason_label(reason) == label


def test_every_tls_reason_maps_into_the_fixed_set() -> None:
    labels = {handshake_reason_label(text) for text in TLS_REASONS.values()}
    assert labels <= set(HANDSHAKE_REASONS)
    assert "unknown_ca" in labels and "bad_certificate" in labels


def test_refusal_reasons() -> None:
    assert refusal_reason(UpstreamRefused("x")) == "ip_policy"
    assert refusal_reason(UpstreamDNSError("x")) == "dns"
    assert refusal_reason(UpstreamConnectError("x")) == "connect"
    assert refusal_reason(UpstreamTLSError("x")) == "tls"
    assert refusal_reason(UpstreamTimeout("x")) == "timeout"
    assert refusal_reason(UpstreamProtocolError("x")) == "protocol"
    assert refusal_reason(UpstreamUnreachable("x")) == "connect"
    assert refusal_reason(NoRoute("x")) is None
    assert refusal_reason(BadRequest("x")) is None


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 499, 504, 0, 600)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "other",
        "other",
    ]


def test_route_children_cached_and_removed_routes_dropped() -> None:
    m = Metrics(process=False)
    m.routes_configured(["echo", "docs"])
    m.request_finished("echo", 200, 0.004)
    m.request_finished("echo", 204, 0.02)
    m.request_finished("-", 502, 0.001)
    m.request_finished("echo", 0, 0.001)
    assert m.route("echo") is m.route("echo")
    s = parse_metrics(m.render().decode())
    assert sample(s, "mcp_tunnel_requests_total", route="echo", status_class="2xx") == 2
    assert sample(s, "mcp_tunnel_requests_total", route="echo", status_class="other") == 1
    assert sample(s, "mcp_tunnel_requests_total", route="-", status_class="5xx") == 1
    assert sample(s, "mcp_tunnel_request_duration_seconds_bucket", route="echo", le="0.005") == 2
    assert sample(s, "mcp_tunnel_request_duration_seconds_count", route="echo") == 3
    assert ("mcp_tunnel_requests_total", frozenset({("route", "docs"), ("status_class", "5xx")})) in s
    m.routes_configured(["echo"])  # docs removed by a reload: its series go
    s = parse_metrics(m.render().decode())
    assert not any(dict(labels).get("route") == "docs" for _, labels in s)
    assert sample(s, "mcp_tunnel_requests_total", route="echo", status_class="2xx") == 2


def test_request_families_read_as_prometheus_counter_and_histogram_would() -> None:
    """The per-request families are plain numbers: scraped, they are sample for sample what a
    prometheus `Counter` and `Histogram` with the same observations expose, `_created` series
    included (their values aside: each is the moment its series was made)."""
    m = Metrics(process=False)
    m.routes_configured(["echo", "docs"])
    reference = CollectorRegistry()
    requests = Counter(REQUESTS, REQUESTS_HELP, ["route", "status_class"], registry=reference)
    latency = Histogram(LATENCY, LATENCY_HELP, ["route"], buckets=LATENCY_BUCKETS, registry=reference)
    for route in ("-", "echo", "docs"):  # the series made up front: 2xx..5xx, and the histogram
        for cls in ("2xx", "3xx", "4xx", "5xx"):
            requests.labels(route, cls)
        latency.labels(route)
    # Every bucket bound exactly, just over it, 0, and past the last bound; every status class.
    seconds = [*LATENCY_BUCKETS, *(b * 1.01 for b in LATENCY_BUCKETS), 0.0, 1000.0]
    statuses = [101, 200, 204, 301, 404, 502, 600, 99]
    for i, value in enumerate(seconds):
        route, status = ("echo", "docs", "-")[i % 3], statuses[i % len(statuses)]
        m.request_finished(route, status, value)
        cls = f"{status // 100}xx" if 1 <= status // 100 <= 5 else "other"
        requests.labels(route, cls).inc()
        latency.labels(route).observe(value)

    def lines(text: str, name: str) -> list[str]:
        return sorted(
            line.rsplit(" ", 1)[0] if "_created" in line else line
            for line in text.splitlines()
            if line.startswith((name, f"# HELP {name}", f"# TYPE {name}"))
        )

    ours, theirs = m.render().decode(), generate_latest(reference).decode()
    for name in (REQUESTS, LATENCY):
        assert lines(ours, name) == lines(theirs, name)
    # per route: the buckets and +Inf, _count, _sum, _created; HELP and TYPE, and again for _created
    assert len(lines(ours, LATENCY)) == 3 * (len(LATENCY_BUCKETS) + 4) + 4
    m.routes_configured(["echo"])  # docs removed by a reload: its series go, in both families
    assert not any('route="docs"' in line for line in m.render().decode().splitlines())


def test_mcp_counts_read_as_a_prometheus_counter_would() -> None:
    """`mcp_tunnel_mcp_requests` is counted in plain numbers: scraped, it is what a prometheus
    `Counter` with the same increments exposes (its ``_created`` series aside), and a route
    removed by a reload takes its series with it."""
    m = Metrics(process=False)
    m.routes_configured(["wiki", "tickets"])
    reference = CollectorRegistry()
    counter = Counter(
        m.mcp_requests.name, m.mcp_requests.documentation, m.mcp_requests.labels, registry=reference
    )
    incs = [("wiki", "tools/call", "ok")] * 3 + [
        ("wiki", "tools/call", "denied"),
        ("tickets", "ping", "-32601"),
    ]
    for labels in incs:
        m.mcp_request(*labels)
        counter.labels(*labels).inc()
    ours = [line for line in m.render().decode().splitlines() if "mcp_tunnel_mcp_requests" in line]
    theirs = [line for line in generate_latest(reference).decode().splitlines() if "_created" not in line]
    assert ours == theirs and len(ours) == 5
    assert m.mcp_requests.value("wiki", "tools/call", "ok") == 3
    m.routes_configured(["wiki"])
    s = parse_metrics(m.render().decode())
    assert not any(dict(labels).get("route") == "tickets" for _, labels in s)
    assert (
        sample(s, "mcp_tunnel_mcp_requests_total", route="wiki", method="tools/call", outcome="denied") == 1
    )


# --- end to end ----------------------------------------------------------------------------------


async def test_families_through_the_proxy(tmp: Path, pki: PKI) -> None:
    upstream = await RecordingUpstream().start(host="127.0.0.2")
    closed_port = free_port()
    stack = start_stack(
        tmp,
        pki,
        {
            "echo": f"http://127.0.0.2:{upstream.port}",
            "refused": f"http://localhost:{upstream.port}",  # resolves to 127.0.0.1: not allowed
            "down": f"http://127.0.0.2:{closed_port}",
        },
        upstream={"allowed_ips": ["127.0.0.2/32"]},
    )
    with stack.proc:
        before = await stack.metrics()
        assert sample(before, "mcp_tunnel_requests_total", route="echo", status_class="2xx") == 0
        for path in ("/a?token=1", "/b/c/d", "/e"):
            assert (await stack.get("echo", path))[0] == 200
        assert await stack.get("refused") == (502, b"Upstream address not allowed\n")
        await stack.wait_log("IP validation failed: 127.0.0.1 is not a private address")
        assert (await stack.get("down"))[0] == 502
        assert await stack.get("nope", "/secret/path") == (502, b"No route configured for host\n")
        # SNI (a name the certificate covers) that differs from the Host routed on.
        conn = await stack.client(server_hostname="other.tunnel.test").connect("echo.tunnel.test")
        resp = await conn.request("GET", "/sni", host="echo.tunnel.test")
        assert resp.status == 200
        await resp.read()
        # A client that does not trust the proxy's CA: a TLS handshake failure.
        stranger = make_pki(tmp / "stranger")
        with pytest.raises(TunnelClientError):
            await stack.client(ca=stranger.ca_file).connect("echo.tunnel.test")
        await stack.wait_log("tls handshake failed: unknown ca")

        m = await stack.metrics()
        assert sample(m, "mcp_tunnel_tunnels_open") == 1  # `conn` is still open
        assert sample(m, "mcp_tunnel_tunnels_accepted_total") == 8
        assert sample(m, "mcp_tunnel_requests_total", route="echo", status_class="2xx") == 4
        assert sample(m, "mcp_tunnel_request_duration_seconds_count", route="echo") == 4
        assert sample(m, "mcp_tunnel_requests_total", route="refused", status_class="5xx") == 1
        assert sample(m, "mcp_tunnel_requests_total", route="down", status_class="5xx") == 1
        assert sample(m, "mcp_tunnel_requests_total", route="-", status_class="5xx") == 1
        assert sample(m, "mcp_tunnel_upstream_refusals_total", route="refused", reason="ip_policy") == 1
        assert sample(m, "mcp_tunnel_upstream_refusals_total", route="down", reason="connect") == 1
        assert sample(m, "mcp_tunnel_handshake_failures_total", reason="unknown_ca") == 1
        assert sample(m, "mcp_tunnel_sni_host_mismatches_total") == 1
        assert sample(m, "mcp_tunnel_config_last_reload_successful") == 1
        assert sample(m, "mcp_tunnel_certificate_expiry_timestamp_seconds") > 0
        # Bounded labels: configured keys and '-' only; no host, no path ever becomes a label.
        routes = {dict(labels)["route"] for (_, labels) in m if "route" in dict(labels)}
        assert routes == {"echo", "refused", "down", "-"}
        text = (await stack.admin("/metrics"))[2]
        for leaked in ("nope", "tunnel.test", "/secret", "token", "127.0.0"):
            assert leaked not in text, leaked
        await conn.close()
        stack.proc.stop()
    await upstream.close()


def test_a_duration_lands_in_the_bucket_bisect_finds() -> None:
    """`_bucket` is `bisect_left(LATENCY_BUCKETS, seconds)`: bounds, their neighbours, edges."""
    rng = random.Random(24)
    values = [
        *LATENCY_BUCKETS,
        *(b * (1 + 1e-9) for b in LATENCY_BUCKETS),
        *(b * (1 - 1e-9) for b in LATENCY_BUCKETS),
    ]
    values += [0.0, -0.0, -1.0, 1e9, math.inf, -math.inf, math.nan]
    values += [rng.random() * 10 ** rng.randint(-5, 3) for _ in range(20000)]
    for seconds in values:
        assert _bucket(seconds) == bisect_left(LATENCY_BUCKETS, seconds), seconds
