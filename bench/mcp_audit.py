"""Micro-benchmark: the CPU the mcp: section adds to one small request (issue #23).

`python -m bench.mcp_audit` times, per request, exactly what the proxy adds with the section:
`McpPolicy.exchange`, `judge` (one JSON parse of the request), `head`/`keep`/`finish` (the JSON
answer held and parsed for its outcome), the audit record, its log line rendered and its counter,
for a typical tools/call (a ~150-byte request, a ~200-byte answer, in JSON or as one SSE event).
Without the section none of this runs (one attribute check). Results go in docs/mcp-policy.md,
with the cost of `json.loads` of the request on the same machine for scale.

Each figure is the best of 30 rounds of 2000 requests (their lines rendered at the round's end),
in CPU time of the process (`time.process_time`): on a shared machine wall time also counts the
turns of other processes, and short rounds find quiet moments that long ones rarely get.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from json.scanner import make_scanner

from mcp_tunnel.logs import Logger
from mcp_tunnel.mcp_policy import McpPolicy, McpSettings, ToolPolicy, method_label, outcome_label
from mcp_tunnel.metrics import Metrics

REQUEST = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {"query": "tunnel"}},
    }
).encode()
ANSWER = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 42,
        "result": {"content": [{"type": "text", "text": "found 3 pages about tunnels"}], "isError": False},
    }
).encode()
HEADERS = [
    (b"content-type", b"application/json"),
    (b"accept", b"application/json, text/event-stream"),
    (b"mcp-session-id", b"4f1c9a7e2b6d4e0f8a3c5b7d9e1f2a4c"),
]
ANSWER_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
EVENT = b"event: message\r\ndata: " + ANSWER + b"\r\n\r\n"  # the same answer in SSE form
EVENT_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def one(policy: McpPolicy, log: Logger, metrics: Metrics, sse: bool = False) -> None:
    mex = policy.exchange("wiki", "POST", HEADERS, True)
    assert mex is not None
    mex.judge(REQUEST)
    body = EVENT if sse else ANSWER
    if mex.head(200, list(EVENT_HEADERS) if sse else ANSWER_HEADERS):  # held: tools/list, policy route
        mex.keep(body)
        mex.finish()
    else:  # as the relay passes it on
        if mex.sse is not None:
            body = mex.sse.feed(body)
        if mex.peeking:  # audited: read as it passes
            mex.peek(body)
    if mex.audit:
        for r in mex.records(200, 1.234, ""):
            log.mcp_request(r.route, r.session, r.method, r.name, r.id, r.status, r.outcome, r.duration_ms)
            metrics.mcp_request(r.route, method_label(r.method), outcome_label(r.outcome))


def measure(settings: McpSettings, fmt: str, sse: bool = False, n: int = 2000, rounds: int = 30) -> float:
    policy = McpPolicy(settings)
    log = Logger("info", fmt, stream=io.StringIO())
    metrics = Metrics(process=False)
    for _ in range(1000):
        one(policy, log, metrics, sse)
    log.flush()
    best = float("inf")
    for _ in range(rounds):
        log.stream = io.StringIO()
        start = time.process_time()
        for _ in range(n):
            one(policy, log, metrics, sse)
        log.flush()  # the lines are rendered at the flush: counted
        best = min(best, (time.process_time() - start) / n)
    return best * 1e6


def main() -> None:
    asyncio.run(_main())


async def _main() -> None:
    """In a running loop, as in the proxy: the lines are recorded and rendered at the flush."""
    for fmt in ("text", "json"):
        print(f"audit only, {fmt} lines: {measure(McpSettings(audit=True), fmt):.2f} us/request")
    print(
        f"audit only, text lines, SSE answer: {measure(McpSettings(audit=True), 'text', True):.2f} us/request"
    )
    policy = McpSettings(audit=False, routes={"wiki": ToolPolicy(allow=("search_*", "get_page"))})
    print(f"policy only (allow_tools), no audit: {measure(policy, 'text'):.2f} us/request")
    both = McpSettings(audit=True, routes={"wiki": ToolPolicy(allow=("search_*", "get_page"))})
    print(f"audit + policy, text lines: {measure(both, 'text'):.2f} us/request")
    print(f"audit + policy, JSON lines: {measure(both, 'json'):.2f} us/request")
    text = REQUEST.decode()
    scan = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
    for label, parse in (
        ("json.loads", lambda: json.loads(REQUEST)),
        ("its C scanner", lambda: scan(text, 0)),
    ):
        best = float("inf")
        for _ in range(20):
            start = time.process_time()
            for _ in range(5000):
                parse()
            best = min(best, (time.process_time() - start) / 5000)
        print(f"for scale, {label} of the request alone: {best * 1e6:.2f} us")


if __name__ == "__main__":
    main()
