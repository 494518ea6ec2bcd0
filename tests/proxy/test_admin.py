"""admin_addr through the real proxy process: /healthz, /readyz, /metrics, never on listen_addr."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import issue_server_cert, load_cert, load_key, pem_cert, pem_key
from mcp_tunnel.proxy.policy import readiness_problem
from support.ops import http_get, poll, sample, start_stack
from support.pki import PKI, make_pki
from support.procs import ProxyProcess, free_port
from support.proxy import write_config
from support.upstreams import Received, RecordingUpstream


async def test_health_ready_metrics_and_errors(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, log_level="info")
    with stack.proc:
        status, _, body = await stack.admin("/healthz")
        assert (status, body) == (200, "ok\n")
        status, _, body = await stack.admin("/readyz")
        assert (status, body) == (200, "ready\n")
        status, head, body = await stack.admin("/metrics")
        assert status == 200
        assert "content-type: text/plain; version=" in head.lower()
        for family in (
            "mcp_tunnel_tunnels_open",
            "mcp_tunnel_tunnels_accepted_total",
            "mcp_tunnel_handshake_failures_total",
            "mcp_tunnel_requests_total",
            "mcp_tunnel_request_duration_seconds_bucket",
            "mcp_tunnel_upstream_refusals_total",
            "mcp_tunnel_certificate_expiry_timestamp_seconds",
            "mcp_tunnel_config_reloads_total",
            "mcp_tunnel_config_last_reload_success_timestamp_seconds",
            "mcp_tunnel_sni_host_mismatches_total",
            "process_resident_memory_bytes",
        ):
            assert family in body, family
        status, _, body = await stack.admin("/healthz?x=1", method="HEAD")
        assert status == 200 and body == ""
        assert (await stack.admin("/nope"))[0] == 404
        assert (await stack.admin("/metrics", method="POST"))[0] == 405
        # The tunnel listener never serves the admin pages.
        status, _, body = await http_get("127.0.0.1", stack.port, "/healthz")
        assert status == 400 and "WebSocket" in body
        status, _, body = await http_get("127.0.0.1", stack.port, "/metrics")
        assert status == 400 and "mcp_tunnel" not in body
        assert stack.proc.stop() == 0


async def test_readyz_turns_503_first_when_draining(tmp: Path, pki: PKI) -> None:
    release = asyncio.Event()

    async def slow(req: Received, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlate\n")

    upstream = await RecordingUpstream(slow).start()
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, shutdown_timeout="10s")
    with stack.proc:
        request = asyncio.create_task(stack.get("echo", "/slow"))
        await asyncio.wait_for(upstream.arrived.wait(), 10)
        stack.proc.proc.send_signal(signal.SIGTERM)
        await stack.wait_log("shutting down")
        status, _, body = await stack.admin("/readyz")
        assert status == 503
        assert body.startswith("not ready: draining")
        assert (await stack.admin("/healthz"))[0] == 200  # alive while draining
        release.set()
        assert await request == (200, b"late\n")
        assert await asyncio.to_thread(stack.proc.proc.wait, 15) == 0
    await upstream.close()


async def test_admin_port_in_use_exits_1_with_one_line(tmp: Path, pki: PKI) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = blocker.sockets[0].getsockname()[1]
    path = write_config(
        tmp,
        pki,
        {"echo": "http://127.0.0.1:9"},
        listen_addr=f"127.0.0.1:{free_port()}",
        admin_addr=f"127.0.0.1:{busy}",
    )
    with ProxyProcess(["-config", str(path)]) as proc:
        assert await asyncio.to_thread(proc.proc.wait, 15) == 1
        line = proc.wait_for("cannot listen")
        assert "level=error" in line and "Traceback" not in "\n".join(proc.lines)
    blocker.close()


async def test_readyz_503_once_the_certificate_has_expired(tmp: Path, upstream: RecordingUpstream) -> None:
    """The proxy keeps serving its pair, but no client will accept it: not ready, with the date."""
    pki = make_pki(tmp / "pki")
    ca, ca_key = load_cert(pki.ca_file), load_key(tmp / "pki" / "ca.key")
    cert, key = issue_server_cert(
        ca, ca_key, pki.domain, duration=timedelta(seconds=1), key_type="ecdsa-p256"
    )  # type: ignore[arg-type]
    write_atomic(pki.key_file, pem_key(key), 0o600)
    write_atomic(pki.cert_file, pem_cert(cert), 0o644)
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, ready_path="/healthz")
    with stack.proc:
        _, _, body = await poll(lambda: _not_ready(stack.admin_port), what="503 from /readyz")
        expiry = cert.not_valid_after_utc
        assert body == f"not ready: certificate expired at {expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_certificate_expiry_timestamp_seconds") == expiry.timestamp()
        assert (await stack.admin("/healthz"))[0] == 200
        stack.proc.stop()


async def _not_ready(port: int) -> tuple[int, str, str] | None:
    result = await http_get("127.0.0.1", port, "/readyz")
    return result if result[0] == 503 else None


def test_readiness_rules() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = now + timedelta(days=30)
    ok = {"listening": True, "draining": False, "cert_not_after": later, "now": now}
    assert readiness_problem(**ok) is None  # type: ignore[arg-type]
    assert "draining" in (readiness_problem(**{**ok, "draining": True}) or "")  # type: ignore[arg-type]
    assert "starting" in (readiness_problem(**{**ok, "listening": False}) or "")  # type: ignore[arg-type]
    assert readiness_problem(**{**ok, "cert_not_after": None}) == "no certificate loaded"  # type: ignore[arg-type]
    assert readiness_problem(**{**ok, "cert_not_after": now}) == "certificate expired at 2026-01-01T00:00:00Z"  # type: ignore[arg-type]
    # Draining wins over everything: a load balancer must stop at once.
    both = {**ok, "draining": True, "cert_not_after": None}
    assert "draining" in (readiness_problem(**both) or "")  # type: ignore[arg-type]
