"""The proxy's Prometheus metrics (SPEC §6): the families, and the pure label policy.

Why a private `CollectorRegistry`: several proxies can live in one process (tests, the demo),
and nothing else in the process gets to add series to what operators scrape.

Why labels are mapped here: a label value taken from the wire (a TLS error text, a Host, a
path) would let any peer create unbounded series. Every label value is either a configured
route key, `-` (no route) or one of a fixed set of words below; anything unexpected becomes
`other`.

Why the two per-request families are plain numbers (`RequestFamilies`): every answered request
counts one status class and one latency observation; as cached prometheus children (their
checks, a lock per value, the bucket search in Python) that cost 2.2-2.6 us a request, as plain
numbers about 0.5 (0.15 since this module is compiled, `native.MODULES`), turned into the same
samples only when scraped. The other families count
rare events and stay prometheus_client's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from mcp_tunnel.errors import (
    ProxyError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)

NO_ROUTE = "-"

# --- pure label policy ------------------------------------------------------------------------

HANDSHAKE_REASONS = (
    "unknown_ca",
    "bad_certificate",
    "certificate_expired",
    "certificate_other",
    "protocol_version",
    "no_shared_cipher",
    "no_application_protocol",
    "handshake_failure",
    "unexpected_eof",
    "http_request",
    "wrong_version_number",
    "timeout",
    "not_websocket",
    "raw_tls",
    "websocket",
    "other",
)

# Prefixes of `certs.reload.tls_alert_reason` texts (the words the official troubleshooting
# greps for), first match wins.
_HANDSHAKE_PREFIXES = (
    ("unknown ca", "unknown_ca"),
    ("bad certificate", "bad_certificate"),
    ("certificate expired", "certificate_expired"),
    ("certificate", "certificate_other"),
    ("unsupported certificate", "certificate_other"),
    ("protocol version", "protocol_version"),
    ("unsupported protocol", "protocol_version"),
    ("no shared cipher", "no_shared_cipher"),
    ("no ciphers", "no_shared_cipher"),
    ("no application protocol", "no_application_protocol"),
    ("handshake failure", "handshake_failure"),
    ("unexpected eof", "unexpected_eof"),
    ("http request", "http_request"),
    ("wrong version number", "wrong_version_number"),
    ("timeout", "timeout"),
    ("timed out", "timeout"),
)


def handshake_reason_label(reason: str) -> str:
    """A TLS failure text (``unknown ca (unknown certificate authority)``) as a bounded label."""
    text = reason.strip().lower()
    if text in HANDSHAKE_REASONS:
        return text
    for prefix, label in _HANDSHAKE_PREFIXES:
        if text.startswith(prefix):
            return label
    return "other"


REFUSAL_REASONS = ("ip_policy", "dns", "connect", "tls", "timeout", "protocol")


def refusal_reason(err: ProxyError) -> str | None:
    """Why an upstream exchange failed, as a label; None when the upstream was not involved.

    `UpstreamUnreachable` subclasses say which step failed in a `refusal` class attribute
    (errors.py defines them); a bare one is a connect failure.
    """
    if isinstance(err, UpstreamRefused):
        return "ip_policy"
    if isinstance(err, UpstreamTimeout):
        return "timeout"
    if isinstance(err, UpstreamProtocolError):
        return "protocol"
    if isinstance(err, UpstreamUnreachable):
        kind = getattr(err, "refusal", "connect")
        return kind if kind in REFUSAL_REASONS else "connect"
    return None


STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """``200`` -> ``2xx``; anything outside 100..599 (0: no status sent) -> ``other``."""
    index = status // 100
    return STATUS_CLASSES[index] if 1 <= index <= 5 else "other"


TUNNEL_REFUSALS = ("capacity", "draining")

# Request durations: MCP calls are mostly fast JSON-RPC, but tool calls and SSE streams run long.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


# --- the families -------------------------------------------------------------------------------


class PlainCounts:
    """A labelled counter family kept as plain numbers, made into samples only when scraped.

    For `mcp_tunnel_mcp_requests`, counted once per audited MCP message: a dict update costs
    about 0.15 us where a cached prometheus child's `inc` (its checks, its lock) costs 0.7 us.
    Exposed as a `Counter` is (``<name>_total`` per label set, the same HELP and TYPE), without
    the ``_created`` series. Not for use from several threads.
    """

    def __init__(self, name: str, documentation: str, labels: list[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.counts: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, key: tuple[str, ...]) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0.0) + 1.0

    def value(self, *labels: str) -> float:
        return self.counts.get(labels, 0.0)

    def remove(self, *labels: str) -> None:
        self.counts.pop(labels, None)

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in list(self.counts.items()):
            family.add_metric(list(key), value)
        return [family]


# Series created up front, so dashboards and alerts see zeros instead of nothing.
_EAGER_CLASSES = (2, 3, 4, 5)

REQUESTS = "mcp_tunnel_requests"
REQUESTS_HELP = "Inner requests answered, by route key ('-' = no route) and status class."
LATENCY = "mcp_tunnel_request_duration_seconds"
LATENCY_HELP = "Time from the request's first byte to the end of its response, by route."
_LE = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]  # as prometheus_client writes `le`


def _bucket(seconds: float) -> int:
    """``bisect_left(LATENCY_BUCKETS, seconds)``, the first bound >= seconds (NaN: 0, as there):
    compiled, a loop over the few bounds a request passes costs less than the call."""
    index = 0
    for bound in LATENCY_BUCKETS:
        if not bound < seconds:
            return index
        index += 1
    return index


class RouteRequests:
    """One route's answered requests: a count per status class (None: no series yet), and the
    latency histogram's buckets (each its own count, made cumulative when scraped) and sum."""

    __slots__ = ("buckets", "by_class", "class_created", "created", "sum")

    def __init__(self) -> None:
        now = time.time()
        self.by_class: list[float | None] = [None] * len(STATUS_CLASSES)
        self.class_created = [now] * len(STATUS_CLASSES)
        for index in _EAGER_CLASSES:
            self.by_class[index] = 0.0
        self.buckets = [0.0] * len(_LE)
        self.sum = 0.0
        self.created = now

    def record(self, status: int, seconds: float) -> None:
        index = status // 100
        if not 1 <= index <= 5:
            index = 0
        count = self.by_class[index]
        if count is None:
            self.class_created[index] = time.time()
            count = 0.0
        self.by_class[index] = count + 1.0
        self.buckets[_bucket(seconds)] += 1.0
        self.sum += seconds


class RequestFamilies:
    """`mcp_tunnel_requests` (a Counter) and `mcp_tunnel_request_duration_seconds` (a
    Histogram), exposed sample for sample as prometheus_client's own would be (``_created``
    included), from plain numbers kept per route. Not for use from several threads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.routes: dict[str, RouteRequests] = {}
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [
            CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=["route", "status_class"]),
            HistogramMetricFamily(LATENCY, LATENCY_HELP, labels=["route"]),
        ]

    def collect(self) -> list[Metric]:
        counts = CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=["route", "status_class"])
        latency = Metric(LATENCY, LATENCY_HELP, "histogram")
        for route, rr in list(self.routes.items()):
            for index, value in enumerate(rr.by_class):
                if value is not None:
                    counts.add_metric([route, STATUS_CLASSES[index]], value, created=rr.class_created[index])
            total = 0.0
            for le, n in zip(_LE, rr.buckets, strict=True):
                total += n
                latency.add_sample(LATENCY + "_bucket", {"route": route, "le": le}, total)
            latency.add_sample(LATENCY + "_count", {"route": route}, total)
            latency.add_sample(LATENCY + "_sum", {"route": route}, rr.sum)
            latency.add_sample(LATENCY + "_created", {"route": route}, rr.created)
        return [counts, latency]


class RouteMetrics:
    """One route label's series: its answered requests (`RouteRequests`) and the cached
    children of its upstream refusals.

    2xx..5xx and the upstream refusal reasons exist from the start; `1xx` and `other` (which a
    final status should never be) only once seen. The `-` route never reaches an upstream.
    """

    __slots__ = ("refusals", "requests", "route")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.route = route
        self.requests = metrics.request_families.routes[route] = RouteRequests()
        family = metrics.upstream_refusals
        self.refusals = {r: family.labels(route, r) for r in REFUSAL_REASONS} if route != NO_ROUTE else {}


class Metrics:
    """Every family the proxy exposes, with small methods the proxy calls at its hook points."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.tunnels_open = Gauge(
            "mcp_tunnel_tunnels_open", "Tunnel (WebSocket) connections admitted and still open.", registry=r
        )
        self.tunnels_accepted = Counter(
            "mcp_tunnel_tunnels_accepted", "Tunnel connections admitted (WebSocket upgrade done).", registry=r
        )
        self.tunnels_refused = Counter(
            "mcp_tunnel_tunnels_refused",
            "Tunnel connections refused with 503, by reason (capacity, draining).",
            ["reason"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "mcp_tunnel_handshake_failures",
            "Tunnel connections that failed before serving: WebSocket upgrade or inner TLS, by reason.",
            ["reason"],
            registry=r,
        )
        self.request_families = RequestFamilies(r)  # mcp_tunnel_requests, ..._request_duration_seconds
        self.upstream_refusals = Counter(
            "mcp_tunnel_upstream_refusals",
            "Upstream exchanges refused or failed, by route and reason "
            "(ip_policy, dns, connect, tls, timeout, protocol).",
            ["route", "reason"],
            registry=r,
        )
        self.upstream_unsolicited_total = Counter(
            "mcp_tunnel_upstream_unsolicited",
            "Upstream connections closed because the upstream sent bytes outside the response "
            "owed (a second response, a body after HEAD/204/304, bytes while idle), by route.",
            ["route"],
            registry=r,
        )
        self.sni_mismatches = Counter(
            "mcp_tunnel_sni_host_mismatches",
            "Inner requests whose Host differs from the TLS SNI of their connection.",
            registry=r,
        )
        self.cert_expiry = Gauge(
            "mcp_tunnel_certificate_expiry_timestamp_seconds",
            "notAfter of the serving inner-TLS certificate, as a Unix timestamp.",
            registry=r,
        )
        self.config_reloads = Counter(
            "mcp_tunnel_config_reloads",
            "Config reload attempts (SIGHUP or file change), by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.config_last_success = Gauge(
            "mcp_tunnel_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (start or last successful reload), Unix time.",
            registry=r,
        )
        self.config_last_ok = Gauge(
            "mcp_tunnel_config_last_reload_successful",
            "1 if the last config load or reload attempt succeeded, else 0.",
            registry=r,
        )
        self.mcp_requests = PlainCounts(
            "mcp_tunnel_mcp_requests",
            "MCP JSON-RPC requests and notifications seen with mcp.audit on, by route, method "
            "(known MCP methods, else other) and outcome (ok, denied, refused, a JSON-RPC error "
            "code of the spec, error, http_4xx, ...).",
            ["route", "method", "outcome"],
            r,
        )
        self._routes: dict[str, RouteMetrics] = {}
        self._handshake = {reason: self.handshake_failures.labels(reason) for reason in HANDSHAKE_REASONS}
        self._refused = {reason: self.tunnels_refused.labels(reason) for reason in TUNNEL_REFUSALS}
        self._reload_ok = self.config_reloads.labels("success")
        self._reload_failed = self.config_reloads.labels("failure")
        self.route(NO_ROUTE)

    # --- per route ----------------------------------------------------------------------------

    def route(self, key: str) -> RouteMetrics:
        """The cached children for a route key (created on first use)."""
        cached = self._routes.get(key)
        if cached is None:
            cached = self._routes[key] = RouteMetrics(self, key)
        return cached

    def routes_configured(self, keys: Iterable[str]) -> None:
        """Create series for the configured routes (zeros show up at once); drop removed ones.

        Dropping keeps the label set bounded by the current config across many reloads.
        """
        wanted = {*keys, NO_ROUTE}
        for key in list(self._routes):
            if key not in wanted:
                del self._routes[key]
                del self.request_families.routes[key]
                for reason in REFUSAL_REASONS:
                    self.upstream_refusals.remove(key, reason)
                self.upstream_unsolicited_total.remove(key)
                for labels in [k for k in self.mcp_requests.counts if k[0] == key]:
                    self.mcp_requests.remove(*labels)
        for key in wanted:
            self.route(key)

    # --- hot path -----------------------------------------------------------------------------

    def request_finished(self, route: str, status: int, seconds: float) -> None:
        (self._routes.get(route) or self.route(route)).requests.record(status, seconds)

    def mcp_request(self, route: str, method: str, outcome: str) -> None:
        """One audited MCP message; `method` and `outcome` already bounded (mcp_policy labels)."""
        counts = self.mcp_requests.counts
        key = (route, method, outcome)
        counts[key] = counts.get(key, 0.0) + 1.0

    def sni_mismatch(self) -> None:
        self.sni_mismatches.inc()

    # --- connection events ----------------------------------------------------------------------

    def tunnel_opened(self) -> None:
        self.tunnels_accepted.inc()
        self.tunnels_open.inc()

    def tunnel_closed(self) -> None:
        self.tunnels_open.dec()

    def tunnel_refused(self, reason: str) -> None:
        self._refused[reason if reason in self._refused else "capacity"].inc()

    def handshake_failed(self, label: str) -> None:
        self._handshake.get(label, self._handshake["other"]).inc()

    def upstream_unsolicited(self, route: str) -> None:
        self.upstream_unsolicited_total.labels(route).inc()

    def upstream_failed(self, route: str, reason: str) -> None:
        rm = self._routes.get(route) or self.route(route)
        child = rm.refusals.get(reason)
        if child is None:
            child = rm.refusals[reason] = self.upstream_refusals.labels(route, reason)
        child.inc()

    # --- state --------------------------------------------------------------------------------

    def certificate_loaded(self, not_after: datetime | None) -> None:
        if not_after is not None:
            self.cert_expiry.set(not_after.timestamp())

    def config_loaded(self, ok: bool, when: float, *, reload: bool = True) -> None:
        """One config load: at start (`reload=False`, not counted as a reload) or a reload attempt."""
        if reload:
            (self._reload_ok if ok else self._reload_failed).inc()
        self.config_last_ok.set(1 if ok else 0)
        if ok:
            self.config_last_success.set(when)

    def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        return generate_latest(self.registry)
