"""Summing workers' expositions: counters, quantity gauges and histogram buckets add; states take the min."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily

from mcp_tunnel.metrics import Metrics
from mcp_tunnel.proxy.metrics_sum import render_sum, sum_families, takes_min
from support.ops import parse_metrics, sample


def _worker(
    requests: list[float], *, expiry: datetime, reload_ok: bool, tunnels: int, loaded_at: float = 1000.0
) -> str:
    m = Metrics(process=False)
    for seconds in requests:
        m.request_finished("echo", 200, seconds)
    m.request_finished("echo", 503, 0.5)
    for _ in range(tunnels):
        m.tunnel_opened()
    m.certificate_loaded(expiry)
    m.config_loaded(True, loaded_at)
    if not reload_ok:
        m.config_loaded(False, loaded_at + 1)
    return m.render().decode()


def test_sum_of_two_workers() -> None:
    early, late = datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)
    a = _worker([0.002, 0.002, 0.2], expiry=late, reload_ok=True, tunnels=2)
    b = _worker([0.002, 7.0], expiry=early, reload_ok=False, tunnels=5, loaded_at=500.0)
    merged = parse_metrics(render_sum([a, b]).decode())
    assert sample(merged, "mcp_tunnel_requests_total", route="echo", status_class="2xx") == 5
    assert sample(merged, "mcp_tunnel_requests_total", route="echo", status_class="5xx") == 2
    assert sample(merged, "mcp_tunnel_tunnels_open") == 7
    assert sample(merged, "mcp_tunnel_tunnels_accepted_total") == 7
    # Histograms bucket by bucket (cumulative buckets stay cumulative), count and sum too.
    assert sample(merged, "mcp_tunnel_request_duration_seconds_bucket", route="echo", le="0.0025") == 3
    assert sample(merged, "mcp_tunnel_request_duration_seconds_bucket", route="echo", le="0.25") == 4
    assert sample(merged, "mcp_tunnel_request_duration_seconds_bucket", route="echo", le="1.0") == 6
    assert sample(merged, "mcp_tunnel_request_duration_seconds_bucket", route="echo", le="+Inf") == 7
    assert sample(merged, "mcp_tunnel_request_duration_seconds_count", route="echo") == 7
    assert abs(sample(merged, "mcp_tunnel_request_duration_seconds_sum", route="echo") - 8.206) < 1e-9
    # States: the earliest expiry, "last reload successful" only if it was everywhere.
    assert sample(merged, "mcp_tunnel_certificate_expiry_timestamp_seconds") == early.timestamp()
    assert sample(merged, "mcp_tunnel_config_last_reload_successful") == 0
    assert sample(merged, "mcp_tunnel_config_last_reload_success_timestamp_seconds") == 500.0
    assert sample(merged, "mcp_tunnel_config_reloads_total", result="success") == 2
    assert sample(merged, "mcp_tunnel_config_reloads_total", result="failure") == 1


def test_one_exposition_round_trips_unchanged() -> None:
    m = Metrics()
    m.request_finished("echo", 200, 0.01)
    m.handshake_failed("unknown_ca")
    text = m.render()
    assert render_sum([text.decode()]) == text


def test_families_keep_type_and_help_and_extra_is_appended() -> None:
    a = _worker([0.1], expiry=datetime(2030, 1, 1, tzinfo=UTC), reload_ok=True, tunnels=0)
    families = {f.name: f for f in sum_families([a, a])}
    assert families["mcp_tunnel_requests"].type == "counter"
    assert families["mcp_tunnel_request_duration_seconds"].type == "histogram"
    assert families["mcp_tunnel_tunnels_open"].documentation.startswith("Tunnel (WebSocket)")
    out = render_sum([a], [GaugeMetricFamily("mcp_tunnel_workers", "Workers summed.", value=3)]).decode()
    assert out.rstrip().endswith("mcp_tunnel_workers 3.0")


def test_which_samples_take_the_min() -> None:
    assert takes_min("mcp_tunnel_requests_created")
    assert takes_min("process_start_time_seconds")
    assert takes_min("mcp_tunnel_certificate_expiry_timestamp_seconds")
    assert not takes_min("mcp_tunnel_requests_total")
    assert not takes_min("process_resident_memory_bytes")
    assert not takes_min("mcp_tunnel_request_duration_seconds_bucket")


def test_no_worker_answered() -> None:
    assert render_sum([]) == b""
