"""The table of medians over rounds, with ratios, and the targets of issue 6."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

TARGETS = ("direct", "nginx", "nginx-tls", "mcp-tunnel")
REFERENCE = "nginx-tls"
OURS = "mcp-tunnel"


@dataclass(frozen=True)
class Row:
    phase: str
    key: str
    label: str
    unit: str
    added: bool  # a latency: proxies are shown as the amount added over direct
    goal: float | None  # issue 6's target for mcp-tunnel, in `unit` (added amount for latencies)
    goal_text: str


ROWS = (
    Row("small", "value", "CPU per small request, 64 keep-alive conns", "us", False, 100, "<= 100 us"),
    Row("download", "value", "CPU per MiB of body (4 MiB downloads)", "ms", False, 1.5, "<= 1.5 ms"),
    Row("sse", "value", "SSE event delay, median", "ms", True, 0.3, "<= +0.3 ms"),
    Row("latency", "p50_ms", "latency at 100 req/s, p50", "ms", True, 0.5, "<= +0.5 ms"),
    Row("latency", "p99_ms", "latency at 100 req/s, p99", "ms", True, 1.0, "<= +1.0 ms"),
    Row("new", "value", "CPU for a new connection + 1 request", "ms", False, 1.0, "<= 1.0 ms"),
    Row("idle", "value", "RSS per idle connection", "KiB", False, 20, "<= 20 KiB"),
    # The same delays with the client's own TLS, framing and parsing included (no target).
    Row("sse", "e2e_ms", "SSE event delay, median, client work included", "ms", True, None, "-"),
    Row("latency", "e2e_p50_ms", "latency at 100 req/s, p50, client work included", "ms", True, None, "-"),
    Row("latency", "e2e_p99_ms", "latency at 100 req/s, p99, client work included", "ms", True, None, "-"),
)


def round_values(row: Row, rnd: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One round's figure per target: the raw value, or for latencies the amount over direct."""
    out: dict[str, float] = {}
    direct = rnd.get("direct", {}).get(row.phase, {})
    for target in TARGETS:
        result = rnd.get(target, {}).get(row.phase, {})
        if row.key not in result:
            continue
        value = float(result[row.key])
        if row.added and target != "direct":
            if row.key not in direct:
                continue
            value -= float(direct[row.key])
        out[target] = value
    return out


def per_round(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """{row id: {target: [value of each round]}}; row id is phase or phase.key."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in ROWS:
        per_target: dict[str, list[float]] = {}
        for rnd in rounds:
            for target, value in round_values(row, rnd).items():
                per_target.setdefault(target, []).append(value)
        out[row_id(row)] = per_target
    return out


def medians(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {rid: {t: statistics.median(v) for t, v in per.items()} for rid, per in values.items()}


def row_id(row: Row) -> str:
    return row.phase if row.key == "value" else f"{row.phase}.{row.key.removesuffix('_ms')}"


def _fmt(value: float | None, added: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"+{text}" if added and value >= 0 else text


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.2f}x"


def table(values_by_round: dict[str, dict[str, list[float]]]) -> str:
    """Markdown, so the same text goes to the terminal and into docs/performance.md."""
    med = medians(values_by_round)
    head = (
        "| figure | unit | direct | nginx | nginx TLS | mcp-tunnel | mcp-tunnel min..max "
        "| mcp-tunnel / nginx TLS | mcp-tunnel / direct | target | met |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in ROWS:
        values = med.get(row_id(row), {})
        spread = values_by_round.get(row_id(row), {}).get(OURS)
        span = "-" if not spread else f"{_fmt(min(spread), row.added)}..{_fmt(max(spread), row.added)}"
        ours = values.get(OURS)
        direct = values.get("direct")
        cells = [_fmt(values.get(t), row.added and t != "direct") for t in TARGETS]
        if row.added:
            # over direct: total latency through mcp-tunnel / total direct latency
            vs_direct = _ratio(None if ours is None or direct is None else ours + direct, direct)
        else:
            vs_direct = _ratio(ours, direct)
        met = "-" if ours is None or row.goal is None else ("yes" if ours <= row.goal else "no")
        vs_reference = _ratio(ours, values.get(REFERENCE))
        lines.append(
            f"| {row.label} | {row.unit} | {' | '.join(cells)} | {span} | {vs_reference} "
            f"| {vs_direct} | {row.goal_text} | {met} |"
        )
    return "\n".join(lines)


NOTES = """\
Medians over rounds. Latency rows: direct is absolute, the proxies show what they add over
direct in the same round; they are timed on the wire (from the request's bytes going into the
client's socket to the response's last bytes coming out), and the "client work included" rows
time the same requests and events around the client's own TLS, framing and parsing. CPU and
memory rows: the proxy process's own utime+stime or RSS; in the direct column, the upstream
server's own cost for the same work, for scale."""
