"""The pure MCP audit and policy logic (mcp_policy.py, issue #23)."""

from __future__ import annotations

import json
import random
from fnmatch import fnmatchcase

import pytest

from mcp_tunnel.errors import BadRequest, UpstreamProtocolError
from mcp_tunnel.http_rules import json_body
from mcp_tunnel.mcp_policy import (
    MAX_BODY,
    McpExchange,
    McpPolicy,
    McpSettings,
    SseEvents,
    SseFilter,
    ToolPolicy,
    denial,
    filter_tools,
    json_doc,
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


# --- the faster paths give what the plain ones give ------------------------------------------


JSON_EDGES = [
    b'{"a": 1}',
    b'{"a": 1}  \r\n\t',
    b'{"a": 1} x',
    b'{"a": 1}{"b": 2}',
    b"[1, 2, 3]",
    b"[]",
    b"{}",
    b"{",
    b"[",
    b'{"a": NaN, "b": Infinity}',
    b'{"a": "\\ud800"}',
    b'{"a": "\xed\xa0\x80"}',  # a lone surrogate, UTF-8 encoded: json.loads takes it (surrogatepass)
    b'{"a": "\xff"}',
    b'{"a": "\xc3\xa9"}',
    b'{"a": "\x01"}',  # a control character in a string: refused (strict)
    b'{"a": 1, "a": 2}',  # the last one wins, as in json.loads
    b"\xef\xbb\xbf{}",  # a UTF-8 BOM: json.loads's own path
    '{"a": 1}'.encode("utf-16-le"),
    '{"a": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32"),
    b"{\x00",
    b' {"a": 1}',
    b"1",
    b"null",
    b"",
    b"[" * 100_000,  # deeper than the parser goes: not JSON, no RecursionError
    b"[" * 500 + b"]" * 500,
]


@pytest.mark.parametrize("body", JSON_EDGES, ids=range(len(JSON_EDGES)))
def test_json_doc_is_what_json_loads_gives(body: bytes) -> None:
    assert repr(json_doc(body)) == repr(json_body(body))  # repr: NaN is not equal to itself


def test_json_doc_on_mutated_requests() -> None:
    """Every single-byte change of a request parses (or not) as json.loads parses it."""
    rng = random.Random(23)
    seed = json.dumps(
        [call("search_docs", 7), {"jsonrpc": "2.0", "method": "x", "params": [1.5, None]}]
    ).encode()
    for _ in range(3000):
        i = rng.randrange(len(seed))
        body = seed[:i] + bytes([rng.randrange(256)]) + seed[i + 1 :]
        assert repr(json_doc(body)) == repr(json_body(body)), body


def test_patterns_match_as_fnmatchcase() -> None:
    rng = random.Random(5)
    alphabet = "ab_*?[]!-."
    for _ in range(400):
        patterns = tuple("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6))) for _ in range(3))
        allow, deny = ToolPolicy(allow=patterns), ToolPolicy(deny=patterns)
        for _ in range(10):
            name = "".join(rng.choice("ab_-.[]") for _ in range(rng.randrange(0, 6)))
            hit = any(fnmatchcase(name, p) for p in patterns)
            assert allow.allows(name) is hit and deny.allows(name) is not hit, (patterns, name)
    assert not ToolPolicy(allow=()).allows("x") and ToolPolicy(deny=()).allows("x")
    assert ToolPolicy(allow=("a*",)) == ToolPolicy(allow=("a*",)) != ToolPolicy(deny=("a*",))


# --- SSE: events cut as they come, outcomes read from them -------------------------------------


def _events_at_once(stream: bytes) -> tuple[list[bytes], bytes]:
    """The reference: events cut from the whole stream at its earliest blank line each time."""
    out = []
    while True:
        ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := stream.find(sep)) >= 0]
        if not ends:
            return out, stream
        out.append(stream[: min(ends)])
        stream = stream[min(ends) :]


def test_sse_events_are_cut_as_the_whole_stream_would_be() -> None:
    rng = random.Random(11)
    for _ in range(500):
        stream = bytes(rng.choice(b"ab:\r\n") for _ in range(rng.randrange(0, 60)))
        events = SseEvents()
        got: list[bytes] = []
        pos = 0
        while pos < len(stream):
            step = rng.randrange(1, 8)
            got += events.split(stream[pos : pos + step])
            pos += step
        assert (got, events.rest()) == _events_at_once(stream), stream


def test_sse_events_many_in_one_piece() -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(2000)) + b"data: 1\r\n\r\n" + b"data: open"
    events = SseEvents()
    got = events.split(stream)
    assert len(got) == 2001 and got[1999] == b"data: 1999\n\n" and got[2000] == b"data: 1\r\n\r\n"
    assert events.held == len(b"data: open") and events.rest() == b"data: open"


SSE = [(b"content-type", b"text/event-stream")]


def sse_event(doc: object, *, crlf: bool = True) -> bytes:
    end = b"\r\n" if crlf else b"\n"
    return b"event: message" + end + b"data: " + json.dumps(doc).encode() + end + end


def audited_stream(
    policy: ToolPolicy | None, body: object, pieces: list[bytes], status: int = 200
) -> McpExchange:
    """An audited exchange whose event-stream answer passes in `pieces`, as the relay gives it."""
    mex = exchange(policy)
    mex.judge(json.dumps(body).encode())
    headers = list(SSE)
    assert not mex.head(status, headers)
    for piece in pieces:
        if mex.sse is not None:
            piece = mex.sse.feed(piece)
            if not piece:
                continue
        if mex.peeking:
            mex.peek(piece)
    return mex


def cut(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_sse_error_answer_gives_its_code(size: int) -> None:
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"level": "error", "data": "x"},
    }
    error = {"jsonrpc": "2.0", "id": 3, "error": {"code": -32001, "message": "tool failed"}}
    stream = sse_event(progress) + sse_event(error, crlf=False)
    mex = audited_stream(None, call("search_docs", 3), cut(stream, size))
    assert not mex.peeking  # the answer owed was seen: nothing more is looked at
    [record] = mex.records(200, 1.0, "")
    assert (record.name, record.id, record.outcome) == ("search_docs", "3", "-32001")
    assert outcome_label(record.outcome) == "error"


def test_sse_ok_answer_ends_the_look_without_a_parse() -> None:
    answer = {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "ok"}]}}
    later = {"jsonrpc": "2.0", "id": 3, "error": {"code": -32603, "message": "never looked at"}}
    mex = audited_stream(None, call("get_page", 3), [sse_event(answer), sse_event(later)])
    assert not mex.peeking and mex.records(200, 1.0, "")[0].outcome == "ok"


def test_sse_answers_of_a_batch_and_other_ids() -> None:
    body = [call("a", 1), call("b", 2), {"jsonrpc": "2.0", "method": "notifications/x"}]
    stream = (
        sse_event({"jsonrpc": "2.0", "id": 9, "error": {"code": -32600, "message": "not ours"}})
        + sse_event({"jsonrpc": "2.0", "id": 1, "result": {}})
        + sse_event(
            [
                {"jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "bad"}},
                {"jsonrpc": "2.0", "id": 1, "result": {"error": "in a result"}},
            ]
        )
    )
    mex = audited_stream(None, body, cut(stream, 5))
    assert [(r.id, r.outcome) for r in mex.records(200, 1.0, "")] == [
        ("1", "ok"),
        ("2", "-32602"),
        ("", "ok"),
    ]
    assert not mex.peeking


def test_sse_outcome_look_is_bounded_and_falls_back_to_the_status() -> None:
    filler = sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"p": "x" * 60_000}})
    error = sse_event({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "late"}})
    mex = audited_stream(None, call("a", 1), [filler] * 20 + [error])
    assert not mex.peeking and mex.events is not None and mex.events.done
    assert mex.records(200, 1.0, "")[0].outcome == "ok"  # past MAX_BODY: the status decides
    unfinished = audited_stream(None, call("a", 1), [b"data: " + b"x" * (MAX_BODY + 10)])
    assert not unfinished.peeking  # an endless event is not held past the bound either
    assert unfinished.records(200, 1.0, "")[0].outcome == "ok"
    cut_off = audited_stream(None, call("a", 1), [error[:-4]])  # ended before its blank line
    assert cut_off.records(200, 1.0, "")[0].outcome == "ok"
    assert cut_off.records(502, 1.0, "upstream ended the response early")[0].outcome == "http_502"


def test_sse_filtered_and_audited_stream() -> None:
    """On a policy route the relay gives the filtered events; their outcomes are read all the same."""
    body = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, call("get_page", 2)]
    stream = sse_event(tools_result("get_page", "delete_page")) + sse_event(
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32002, "message": "gone"}}
    )
    mex = audited_stream(ALLOW, body, cut(stream, 9))
    assert mex.sse is not None
    assert [(r.method, r.outcome) for r in mex.records(200, 1.0, "")] == [
        ("tools/list", "ok"),
        ("tools/call", "-32002"),
    ]


def test_sse_notifications_only_and_not_audited_are_not_read() -> None:
    mex = exchange(None)
    mex.judge(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())
    assert not mex.head(200, list(SSE)) and not mex.peeking and mex.events is None
    failed = exchange(None)
    failed.judge(json.dumps(call("a", 1)).encode())
    assert not failed.head(500, list(SSE)) and not failed.peeking  # the status says it all
