"""The pure MCP audit and policy logic (mcp_policy.py, issue #23)."""

from __future__ import annotations

import json

import pytest

from mcp_tunnel.errors import BadRequest, UpstreamProtocolError
from mcp_tunnel.mcp_policy import (
    MAX_BODY,
    McpExchange,
    McpPolicy,
    McpSettings,
    SseFilter,
    ToolPolicy,
    denial,
    filter_tools,
    method_label,
    outcome_label,
    parse_messages,
)

ALLOW = ToolPolicy(allow=("search_*", "get_page"))
DENY = ToolPolicy(deny=("delete_*",))
JSON = [(b"content-type", b"application/json")]


def call(name: str, msg_id: int = 1) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": {"x": 1}},
    }


def tools_result(*names: str, msg_id: int = 1) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "result": {"tools": [{"name": n} for n in names], "nextCursor": "c"},
    }


def test_patterns() -> None:
    assert ALLOW.allows("search_docs") and ALLOW.allows("get_page")
    assert not ALLOW.allows("get_pages") and not ALLOW.allows("delete_page")
    assert DENY.allows("get_page") and not DENY.allows("delete_page")
    assert not ALLOW.allows("SEARCH_docs")  # case matters: tool names are case-sensitive


def test_parse_messages_names_what_is_acted_on() -> None:
    body = json.dumps(
        [
            call("search_docs"),
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "r", "method": "resources/read", "params": {"uri": "file:///a"}},
            {"jsonrpc": "2.0", "id": 9, "result": {}},  # a response from the client
        ]
    ).encode()
    parsed = parse_messages(body)
    assert parsed is not None
    messages, batch = parsed
    assert batch
    assert [(m.method, m.name, m.id, m.request) for m in messages] == [
        ("tools/call", "search_docs", 1, True),
        ("notifications/initialized", "", None, False),
        ("resources/read", "file:///a", "r", True),
    ]


@pytest.mark.parametrize("body", [b"nope", b"[]", b"[1]", b'{"id":1}', b'{"method":3}', b"\xff"])
def test_parse_messages_refuses_what_is_not_json_rpc(body: bytes) -> None:
    assert parse_messages(body) is None


def test_denial_single_and_batch() -> None:
    parsed = parse_messages(json.dumps(call("delete_page", 7)).encode())
    assert parsed is not None
    answer = denial(*parsed, ALLOW)
    assert answer is not None
    assert json.loads(answer) == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": -32602, "message": "Unknown tool: delete_page"},
    }
    ok = parse_messages(json.dumps(call("search_x")).encode())
    assert ok is not None and denial(*ok, ALLOW) is None
    batch = parse_messages(json.dumps([call("get_page", 1), call("delete_page", 2)]).encode())
    assert batch is not None
    answers = json.loads(denial(*batch, ALLOW) or b"")
    assert [a["error"]["code"] for a in answers] == [-32600, -32602]


def test_filter_tools_keeps_the_rest_of_the_answer() -> None:
    doc = tools_result("search_docs", "delete_page", "get_page")
    assert filter_tools(doc, ALLOW)
    assert doc["result"] == {"tools": [{"name": "search_docs"}, {"name": "get_page"}], "nextCursor": "c"}
    assert not filter_tools(tools_result("get_page"), ALLOW)
    assert not filter_tools({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}, ALLOW)


def test_sse_filter_rewrites_only_tools_events_across_reads() -> None:
    listed = json.dumps(tools_result("search_a", "delete_b"))
    other = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "tools"}})
    stream = f"event: message\r\ndata: {listed}\r\n\r\nid: 2\ndata: {other}\n\n: comment\n\n".encode()
    sse = SseFilter(ALLOW)
    out = b"".join(sse.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + sse.flush()
    events = out.split(b"\r\n\r\n", 1)
    first = events[0].split(b"\r\n")
    assert first[0] == b"event: message"
    assert json.loads(first[1][len(b"data: ") :])["result"]["tools"] == [{"name": "search_a"}]
    assert events[1] == f"id: 2\ndata: {other}\n\n: comment\n\n".encode()  # unchanged


def test_sse_filter_bounds_an_unfinished_event() -> None:
    sse = SseFilter(ALLOW)
    with pytest.raises(UpstreamProtocolError):
        sse.feed(b"data: " + b"x" * (MAX_BODY + 1))


def exchange(
    policy: ToolPolicy | None, *, audit: bool = True, headers: list[tuple[bytes, bytes]] = JSON
) -> McpExchange:
    settings = McpSettings(audit=audit, routes={"wiki": policy} if policy else {})
    mex = McpPolicy(settings).exchange(
        "wiki", "POST", [*headers, (b"mcp-session-id", b"0123456789abcdef")], True
    )
    assert mex is not None
    return mex


def test_no_work_without_audit_or_policy() -> None:
    assert McpPolicy(McpSettings()).exchange("wiki", "POST", JSON, True) is None
    policy = McpPolicy(McpSettings(routes={"wiki": ALLOW}))
    assert policy.exchange("other", "POST", JSON, True) is None
    stream = policy.exchange("wiki", "GET", [], False)
    assert stream is not None and not stream.needs_body
    stream.judge(b"")  # a GET has nothing to judge


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([(b"content-type", b"text/plain")], b"{}"),
        ([*JSON, (b"content-encoding", b"gzip")], b"{}"),
        (JSON, b"not json"),
        (JSON, None),  # over the cap while collected
        (JSON, b" " * (MAX_BODY + 1)),
    ],
)
def test_unjudgeable_bodies_are_refused_on_policy_routes(
    headers: list[tuple[bytes, bytes]], body: bytes | None
) -> None:
    with pytest.raises(BadRequest):
        exchange(ALLOW, headers=headers).judge(body)
    exchange(None, headers=headers).judge(body)  # audit only: passes, not judged


def test_json_answer_is_held_filtered_and_read_for_the_audit() -> None:
    mex = exchange(ALLOW)
    mex.judge(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, call("get_page", 2)]).encode())
    headers = [(b"content-type", b"application/json"), (b"content-length", b"999")]
    assert mex.head(200, headers)
    body = json.dumps(
        [
            tools_result("get_page", "delete_page"),
            {"jsonrpc": "2.0", "id": 2, "error": {"code": -32001, "message": "x"}},
        ]
    ).encode()
    assert mex.keep(body[:10]) and mex.keep(body[10:])
    new_headers, new_body = mex.finish()
    assert (b"content-length", str(len(new_body)).encode()) in new_headers
    assert [t["name"] for t in json.loads(new_body)[0]["result"]["tools"]] == ["get_page"]
    records = mex.records(200, 1.5, "")
    assert [(r.method, r.name, r.id, r.outcome) for r in records] == [
        ("tools/list", "", "1", "ok"),
        ("tools/call", "get_page", "2", "-32001"),
    ]
    assert records[0].session == "01234567"
    assert outcome_label("-32001") == "error" and outcome_label("-32602") == "-32602"


def test_sse_answer_is_filtered_in_stream_and_audited_by_status() -> None:
    mex = exchange(ALLOW)
    mex.judge(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode())
    headers = [(b"content-type", b"text/event-stream"), (b"content-length", b"5")]
    assert not mex.head(200, headers)
    assert mex.sse is not None and headers == [(b"content-type", b"text/event-stream")]
    assert mex.records(200, 1.0, "")[0].outcome == "ok"
    assert mex.records(502, 1.0, "upstream closed")[0].outcome == "http_502"
    assert outcome_label("http_502") == "http_5xx"


def test_a_tools_list_answer_over_the_cap_is_never_relayed_unfiltered() -> None:
    mex = exchange(ALLOW)
    mex.judge(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode())
    assert mex.head(200, list(JSON))
    with pytest.raises(UpstreamProtocolError):
        mex.keep(b" " * (MAX_BODY + 1))
    audit_only = exchange(None)
    audit_only.judge(json.dumps(call("x")).encode())
    assert not audit_only.head(200, list(JSON))  # audit only: never held, copied as it passes
    assert audit_only.peeking
    audit_only.peek(b" " * (MAX_BODY + 1))
    assert not audit_only.peeking  # over the cap: the status decides the outcome
    assert audit_only.records(200, 1.0, "")[0].outcome == "ok"


def test_audit_only_reads_the_outcome_from_a_copy_of_the_answer() -> None:
    mex = exchange(None)
    mex.judge(
        json.dumps([call("a", 1), call("b", 2), {"jsonrpc": "2.0", "method": "notifications/x"}]).encode()
    )
    assert not mex.head(200, list(JSON)) and mex.peeking
    answer = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "result": {}},
            {"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "boom"}},
        ]
    )
    mex.peek(answer[:20].encode())
    mex.peek(answer[20:].encode())
    records = mex.records(200, 2.0, "")
    assert [(r.name, r.id, r.outcome) for r in records] == [
        ("a", "1", "ok"),
        ("b", "2", "-32603"),
        ("", "", "ok"),
    ]


def test_denied_records_and_labels() -> None:
    mex = exchange(DENY)
    mex.judge(json.dumps(call("delete_all")).encode())
    assert mex.answer is not None
    assert [r.outcome for r in mex.records(200, 0.1, "")] == ["denied"]
    assert method_label("tools/call") == "tools/call" and method_label("x/y") == "other"
