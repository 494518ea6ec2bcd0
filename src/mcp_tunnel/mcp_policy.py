"""MCP-aware audit and per-route tool policy (the config's ``mcp:`` section, issue #23). Pure: no I/O.

The proxy forwards bytes; with this section it also reads the JSON-RPC messages of the POST
bodies it forwards, on the routes that need it, and

- audit: writes one ``mcp request`` line per request or notification (route, shortened
  ``Mcp-Session-Id``, method, the tool/prompt name or resource URI, JSON-RPC id, HTTP status,
  outcome, duration) and counts it in ``mcp_tunnel_mcp_requests``. The outcome is the JSON-RPC
  error code of the answer to the message's id, read from a JSON answer or from the events of an
  SSE answer as they pass (`SseOutcomes`), both bounded by `MAX_BODY`. Never arguments, results
  or any other body content;
- policy: answers a ``tools/call`` for a denied tool itself (it never reaches the upstream),
  removes the denied tools from ``tools/list`` answers (JSON and SSE), and refuses with 400 a
  request body it cannot judge (not JSON, compressed, over `MAX_BODY`, not ``application/json``).

The relay and the forwarder (proxy/forward.py) ask `McpPolicy.exchange` once per request, and
only when the section is present; everything they then do with the answer is here. This runs on
every audited message, compiled with the request path: the costs and why each part is written
as it is are in docs/mcp-policy.md ("Cost").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from json.scanner import make_scanner
from types import MappingProxyType
from typing import Any, Final

from mcp_tunnel.errors import BadRequest, UpstreamProtocolError
from mcp_tunnel.http_rules import (
    Headers,
    header_value,
    is_json_media,
    json_body,
    whole_response_head,
    with_length,
)

MAX_BODY = 1 << 20  # a request body judged on a policy route, a JSON answer held: 1 MiB
MAX_NAME = 200  # a tool/prompt name or resource URI in an audit line, at most
SESSION_SHOWN = 8  # characters of Mcp-Session-Id in an audit line

# Method label values for the metrics; any other method counts as `other`.
KNOWN_METHODS = (
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
)
_KNOWN = frozenset(KNOWN_METHODS)
# Outcome label values: anything else (a server's own error code) counts as `error`.
OUTCOMES = (
    "ok",
    "denied",
    "refused",
    "error",
    "-32700",
    "-32600",
    "-32601",
    "-32602",
    "-32603",
    "http_3xx",
    "http_4xx",
    "http_5xx",
    "http_other",
)
_OUTCOMES = frozenset(OUTCOMES)

# The params member that names what a method acts on.
_NAMED = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}

UNKNOWN_TOOL = -32602  # JSON-RPC "Invalid params": the MCP spec's answer for an unknown tool


class ToolPolicy:
    """One route's tool rule: `allow` (only these) or `deny` (all but these), shell-style patterns.

    The patterns are matched as `fnmatch.fnmatchcase` matches them, all at once: one regular
    expression, the alternation of their `fnmatch.translate` forms, compiled with the config
    (a call per pattern through fnmatch's cache cost 0.3-0.5 us each, on every tools/call).
    """

    __slots__ = ("_match", "allow", "deny")

    def __init__(self, allow: tuple[str, ...] | None = None, deny: tuple[str, ...] = ()) -> None:
        self.allow = allow
        self.deny = deny
        patterns = allow if allow is not None else deny
        self._match: Callable[[str], re.Match[str] | None] | None = (
            re.compile("|".join(translate(p) for p in patterns)).match if patterns else None
        )

    def allows(self, name: str) -> bool:
        match = self._match
        hit = match is not None and match(name) is not None
        return hit if self.allow is not None else not hit

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ToolPolicy) and (self.allow, self.deny) == (other.allow, other.deny)

    def __hash__(self) -> int:
        return hash((self.allow, self.deny))

    def __repr__(self) -> str:
        return f"ToolPolicy(allow={self.allow!r}, deny={self.deny!r})"


@dataclass(frozen=True, slots=True)
class McpSettings:
    """The config's ``mcp:`` section, checked: route keys as the routes have them (lowercase)."""

    audit: bool = False
    routes: Mapping[str, ToolPolicy] = field(default_factory=lambda: MappingProxyType({}))


def method_label(method: str) -> str:
    return method if method in _KNOWN else "other"


def outcome_label(outcome: str) -> str:
    """A bounded label: a server's own error code counts as `error`, ``http_404`` as ``http_4xx``."""
    if outcome in _OUTCOMES:
        return outcome
    if outcome.startswith("http_"):
        digit = outcome[5:6]
        return f"http_{digit}xx" if digit in ("3", "4", "5") else "http_other"
    return "error"


def status_outcome(status: int) -> str:
    """The outcome an HTTP status gives when the answer says nothing more (SSE, no body)."""
    if 200 <= status < 300:
        return "ok"
    if 300 <= status < 600:
        return f"http_{status // 100}xx"
    return "http_other"


class AuditRecord:
    """One ``mcp request`` line: what it names, never arguments or results.

    A plain class, not a NamedTuple: compiled, a NamedTuple is built by its interpreted
    ``__new__`` (about 0.5 us a record); this one is a native object.
    """

    __slots__ = ("duration_ms", "id", "method", "name", "outcome", "route", "session", "status")

    def __init__(
        self,
        route: str,
        session: str,
        method: str,
        name: str,
        msg_id: str,
        status: int,
        outcome: str,
        duration_ms: float,
    ) -> None:
        self.route = route
        self.session = session  # the first SESSION_SHOWN characters of Mcp-Session-Id, "-" without one
        self.method = method
        self.name = name  # "" when the method names nothing
        self.id = msg_id  # "" for a notification
        self.status = status
        self.outcome = outcome
        self.duration_ms = duration_ms

    def __repr__(self) -> str:
        return (
            f"AuditRecord({self.route}, {self.session}, {self.method}, {self.name}, {self.id},"
            f" {self.status}, {self.outcome}, {self.duration_ms})"
        )


# --- messages -----------------------------------------------------------------------------------


class Message:
    """One JSON-RPC request or notification: what an audit line names, never its arguments."""

    __slots__ = ("id", "method", "name", "request")

    def __init__(self, method: str, name: str, msg_id: Any, request: bool) -> None:
        self.method = method
        self.name = name  # the tool/prompt name or resource URI, "" when the method has none
        self.id = msg_id  # as sent (str or number); None for a notification
        self.request = request  # has an id: an answer is owed


# The C scanner `json.loads` ends in, without its Python layers (encoding detection, decode, the
# whitespace regex twice): 2.4 us instead of 4.6-6 us for a 150-byte request on the reference box.
_scan: Final[Callable[[str, int], tuple[Any, int]]] = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def json_doc(body: bytes) -> Any:
    """`json_body(body)` (what `json.loads` gives, None when not JSON), the common case faster.

    A body that starts with ``{`` or ``[`` followed by a non-NUL byte is UTF-8 for `json.loads`
    too (its encoding detection: no BOM, not UTF-16/32); for it the same scanner runs on the same
    text (decoded as json.loads decodes, ``surrogatepass``) and trailing bytes other than JSON
    whitespace are refused as json.loads refuses them ("Extra data"). Anything else takes
    `json_body` itself. Equal results are tested on a list of edge cases and on the garbage run.
    """
    first = body[:1]
    if (first != b"{" and first != b"[") or body[1:2] == b"\x00":
        return json_body(body)
    try:
        text = body.decode("utf-8", "surrogatepass")
        doc, end = _scan(text, 0)
    except (ValueError, RecursionError, StopIteration):  # UnicodeDecodeError is a ValueError
        return None
    if end != len(text) and text[end:].strip(" \t\n\r"):
        return None
    return doc


def parse_messages(body: bytes) -> tuple[list[Message], bool] | None:
    """The requests and notifications of a POST body, and whether it was a batch; None when it
    is not JSON-RPC (not JSON, not an object or a list of objects with a string method).

    A body of responses only (a client answering the server's request) gives an empty list.
    """
    doc = json_doc(body)
    if doc is None:
        return None
    batch = isinstance(doc, list)
    items = doc if batch else [doc]
    if batch and not items:
        return None
    out: list[Message] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        method = item.get("method")
        if method is None:
            if "result" in item or "error" in item:  # a response from the client
                continue
            return None
        if not isinstance(method, str):
            return None
        name = ""
        key = _NAMED.get(method)
        if key is not None:
            params = item.get("params")
            value = params.get(key) if isinstance(params, dict) else None
            if isinstance(value, str):
                name = value
        out.append(Message(method, name, item.get("id"), "id" in item))
    return out, batch


def _error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def denial(messages: list[Message], batch: bool, policy: ToolPolicy) -> bytes | None:
    """The proxy's answer when the body calls a denied tool, else None.

    A single call: the JSON-RPC error the MCP spec gives for an unknown tool. A batch holding a
    denied call is refused whole: each of its requests gets an error, the denied calls the
    unknown-tool one, and nothing of it reaches the upstream.
    """
    denied = [m for m in messages if m.method == "tools/call" and not policy.allows(m.name)]
    if not denied:
        return None
    if not batch:
        m = denied[0]
        return json.dumps(_error(m.id, UNKNOWN_TOOL, f"Unknown tool: {m.name}")).encode()
    answers = []
    for m in messages:
        if not m.request:
            continue
        if m.method == "tools/call" and not policy.allows(m.name):
            answers.append(_error(m.id, UNKNOWN_TOOL, f"Unknown tool: {m.name}"))
        else:
            answers.append(_error(m.id, -32600, "Batch refused: it calls a tool this route denies"))
    return json.dumps(answers).encode()


def json_answer(body: bytes, *, keep_alive: bool) -> bytes:
    """A whole HTTP 200 answer holding the JSON `body`."""
    return whole_response_head(200, b"application/json", len(body), keep_alive=keep_alive) + body


# --- tools/list answers -------------------------------------------------------------------------


def filter_tools(doc: Any, policy: ToolPolicy) -> bool:
    """Remove the denied tools from a tools/list result held in `doc` (a response or a batch of
    them), in place; True when something was removed."""
    changed = False
    for item in doc if isinstance(doc, list) else [doc]:
        if not isinstance(item, dict):
            continue
        result = item.get("result")
        if not isinstance(result, dict):
            continue
        tools = result.get("tools")
        if not isinstance(tools, list):
            continue
        kept = [
            t
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("name"), str) and policy.allows(t["name"])
        ]
        if len(kept) != len(tools):
            result["tools"] = kept
            changed = True
    return changed


def _outcomes(doc: Any) -> dict[object, str]:
    """JSON-RPC id (see `_id_key`) -> outcome, from a response or a batch of them."""
    out: dict[object, str] = {}
    for item in doc if isinstance(doc, list) else [doc]:
        if not isinstance(item, dict):
            continue
        err = item.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            outcome = str(code) if type(code) is int else "error"
        elif "result" in item:
            outcome = "ok"
        else:
            continue
        out[_id_key(item.get("id"))] = outcome
    return out


def _id_key(msg_id: Any) -> object:
    """A JSON-RPC id as a dict key: strings and numbers as they are (hashable), anything else
    (an invalid id) as JSON text."""
    return msg_id if isinstance(msg_id, (str, int, float)) else json.dumps(msg_id)


class SseFilter:
    """Rewrites the ``data:`` lines of a text/event-stream answer whose events hold a tools/list
    result; each event is held until its blank line, every other byte passes unchanged."""

    __slots__ = ("_events", "policy")

    def __init__(self, policy: ToolPolicy) -> None:
        self.policy = policy
        self._events = SseEvents()

    def feed(self, data: bytes) -> bytes:
        events = self._events
        done = events.split(data)
        if events.held > MAX_BODY:
            raise UpstreamProtocolError(
                "an SSE event of a tools/list answer over 1 MiB: not relayed unfiltered"
            )
        if not done:
            return b""
        if len(done) == 1:
            return self._event(done[0])
        return b"".join([self._event(event) for event in done])

    def flush(self) -> bytes:
        """What is left at the end of the stream (an event without its blank line)."""
        rest = self._events.rest()
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if b"tools" not in event:
            return event
        lines = event.splitlines(keepends=True)
        data = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
        if not data:
            return event
        payload = b"\n".join(_field_value(lines[i]) for i in data)
        doc = json_doc(payload)
        if doc is None or not filter_tools(doc, self.policy):
            return event
        first = data[0]
        ending = lines[first][len(lines[first].rstrip(b"\r\n")) :] or b"\n"
        new = b"data: " + json.dumps(doc, ensure_ascii=False).encode() + ending
        return b"".join(
            [*lines[:first], new, *(line for i, line in enumerate(lines) if i > first and i not in data)]
        )


def _field_value(line: bytes) -> bytes:
    value = line[5:].rstrip(b"\r\n")
    return value[1:] if value.startswith(b" ") else value


def _event_data(event: bytes) -> bytes:
    """The data of an SSE event: its ``data:`` field values joined with newlines."""
    return b"\n".join(_field_value(line) for line in event.splitlines() if line.startswith(b"data:"))


class SseEvents:
    """Cuts a text/event-stream into its events as its pieces come, in time linear in its bytes.

    `split` gives the events a piece completes, each whole with its blank line, and keeps (a
    reference to) what the unfinished event has so far (`held` bytes); a blank line split across
    two pieces is found through the last 3 bytes of the one before. Each separator is searched
    for from where its last search stopped, never again over the same bytes (many small events
    in one piece, or a stream using only one of the line endings, cost one pass each).
    """

    __slots__ = ("_parts", "_tail", "held")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._tail = b""
        self.held = 0

    def split(self, data: bytes) -> list[bytes]:
        tail = self._tail
        buf = tail + data if tail else data
        size = len(buf)
        skip = len(tail)
        # where each blank line is next found, at or after `pos` once refreshed; -1: nowhere
        lf = buf.find(b"\n\n")
        crlf = buf.find(b"\r\n\r\n")
        cr = buf.find(b"\r\r")
        out: list[bytes] = []
        pos = 0
        while True:
            if 0 <= lf < pos:
                lf = buf.find(b"\n\n", pos)
            if 0 <= crlf < pos:
                crlf = buf.find(b"\r\n\r\n", pos)
            if 0 <= cr < pos:
                cr = buf.find(b"\r\r", pos)
            end = lf + 2 if lf >= 0 else -1
            if crlf >= 0 and (end < 0 or crlf + 4 < end):
                end = crlf + 4
            if cr >= 0 and (end < 0 or cr + 2 < end):
                end = cr + 2
            if end < 0:
                break
            if pos == 0:  # the end of the event begun in earlier pieces (past the tail: >= 1)
                parts = self._parts
                if parts:
                    parts.append(buf[skip:end])
                    out.append(b"".join(parts))
                    self._parts = []
                    self.held = 0
                else:
                    out.append(buf if end == size else buf[:end])
            else:
                out.append(buf[pos:end])
            pos = end
            if pos == size:
                break
        if pos == 0:
            self._parts.append(data)
            self.held += len(data)
            self._tail = buf[-3:]
        elif pos < size:
            rest = buf[pos:]
            self._parts = [rest]
            self.held = len(rest)
            self._tail = rest[-3:]
        else:
            self._tail = b""
        return out

    def rest(self) -> bytes:
        """The unfinished event (the stream ended without its blank line); the state is reset."""
        rest = b"".join(self._parts)
        self._parts = []
        self._tail = b""
        self.held = 0
        return rest


class SseOutcomes(SseEvents):
    """The outcomes of a POST's requests, read from its text/event-stream answer as it passes.

    The relay gives it every piece it sends on (`feed`); nothing is held back or changed. It
    keeps a reference to the pieces of the current event only, up to its blank line, and looks
    at `MAX_BODY` bytes of the stream at most, then stops (the HTTP status decides what is left).
    An event is parsed only when it holds ``"error"``: its responses give each pending id its
    error code (or ``ok``). With one request pending, an event holding ``"result"`` and no
    ``"method"`` is its response (a server's requests and notifications name a method; only the
    answers to this POST's requests come on this stream), and the look ends there without a parse.
    `done` once every id has its outcome, or past the bound.
    """

    __slots__ = ("done", "outcomes", "pending", "seen")

    def __init__(self, pending: set[object], outcomes: dict[object, str]) -> None:
        self._parts = []  # SseEvents' own state, set here: no call through super() per answer
        self._tail = b""
        self.held = 0
        self.pending = pending  # ids (`_id_key`) still without an outcome
        self.outcomes = outcomes  # written: id -> outcome
        self.done = not pending
        self.seen = 0  # bytes looked at

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.seen += len(data)
        if self.seen > MAX_BODY:
            self._stop()
            return
        if (
            not self.held
            and len(self.pending) == 1
            and data.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
            and b'"result"' in data
            and b'"method"' not in data
            and b'"error"' not in data
        ):
            # The usual answer: whole events, one of them the response, no error anywhere. What
            # cutting them would find (`_event` on each) without cutting them.
            self._stop()
            return
        for event in self.split(data):
            self._event(event)
            if self.done:
                return

    def _event(self, event: bytes) -> None:
        pending = self.pending
        if b'"error"' in event:
            doc = json_doc(_event_data(event))
            if doc is not None:
                for key, outcome in _outcomes(doc).items():
                    if key in pending:
                        pending.discard(key)
                        self.outcomes[key] = outcome
        elif len(pending) == 1 and b'"result"' in event and b'"method"' not in event:
            pending.clear()  # the answer, not an error: the status (2xx) says ok
        if not pending:
            self._stop()

    def _stop(self) -> None:
        self.done = True
        if self.held:
            self.rest()  # what it held is let go


# --- per config and per exchange ----------------------------------------------------------------


class McpPolicy:
    """Built once per loaded config; says for each request what MCP work it needs, if any."""

    __slots__ = ("audit", "routes", "settings")

    def __init__(self, settings: McpSettings) -> None:
        self.settings = settings
        self.audit = settings.audit
        self.routes = settings.routes

    def exchange(self, route: str, method: str, headers: Headers, has_body: bool) -> McpExchange | None:
        """The MCP work for one request, or None when it passes as it would without the section."""
        policy = self.routes.get(route)
        if policy is None and not self.audit:
            return None
        if method != "POST" and not has_body:
            if policy is None:
                return None  # GET (the SSE stream) and DELETE of a route that is only audited
            # GET (the SSE stream), DELETE: no body to judge, but tools/list answers to filter
            return McpExchange(route, policy, audit=False, session=b"", reads=False)
        session = header_value(headers, b"mcp-session-id") or b""
        return McpExchange(route, policy, audit=self.audit, session=session, headers=headers, reads=True)


class McpExchange:
    """One request of an MCP route: its messages, the proxy's own answer if any, and its response.

    The forwarder calls `judge` with the whole body (None: not judged, it streams); then either
    sends `answer` itself, or forwards and lets the relay call `head`, then for each piece of
    the body `keep` (a JSON answer held whole, then `finish`), `sse.feed` (an event stream whose
    tools/list events are filtered) and `peek` (an audited answer read as it passes: a copy of a
    JSON one, the events of a stream); `records` gives the audit lines at the end.
    """

    __slots__ = (
        "_held",
        "_size",
        "answer",
        "audit",
        "events",
        "filter",
        "headers",
        "holding",
        "messages",
        "outcomes",
        "peeking",
        "policy",
        "reads",
        "request_headers",
        "route",
        "session",
        "sse",
    )

    def __init__(
        self,
        route: str,
        policy: ToolPolicy | None,
        *,
        audit: bool,
        session: bytes,
        headers: Headers | None = None,
        reads: bool = True,
    ) -> None:
        self.route = route
        self.reads = reads  # its body is read (a POST): judged on a policy route, named in the audit
        self.policy = policy
        self.audit = audit
        self.session = session
        self.request_headers: Headers = headers or []
        self.messages: list[Message] | None = None
        self.answer: bytes | None = None  # the proxy's own JSON answer (a denied call)
        self.filter = policy is not None  # tools/list answers may come (set by `judge`)
        self.outcomes: dict[object, str] = {}
        self.holding = False
        self.peeking = False  # an audited answer read as it passes (`peek`)
        self.headers: Headers = []
        self.sse: SseFilter | None = None
        self.events: SseOutcomes | None = None  # an audited event stream: its outcomes, as it passes
        self._held: list[bytes] = []
        self._size = 0

    @property
    def needs_body(self) -> bool:
        """A policy route judges every body whole before anything of it goes upstream."""
        return self.reads and self.policy is not None

    def judge(self, body: bytes | None) -> None:
        """Read the request body. None: not available whole (an audit-only route streams it, not
        judged; a policy route collected it and it was over the cap). Raises BadRequest for a body
        a policy route cannot judge."""
        if not self.reads:
            return
        policy = self.policy
        if body is None:
            if policy is not None:
                raise BadRequest(
                    "mcp policy: request body over 1 MiB", body="Bad request: MCP body over 1 MiB"
                )
            return
        if not body and policy is None:
            return
        if policy is not None:
            media, compressed = _content(self.request_headers)
            if compressed:
                raise BadRequest(
                    "mcp policy: compressed request body", body="Bad request: compressed MCP body"
                )
            if not is_json_media(media):
                raise BadRequest(
                    "mcp policy: request body is not application/json", body="Bad request: not JSON"
                )
            if len(body) > MAX_BODY:
                raise BadRequest(
                    "mcp policy: request body over 1 MiB", body="Bad request: MCP body over 1 MiB"
                )
        parsed = parse_messages(body)
        if parsed is None:
            if policy is not None:
                raise BadRequest("mcp policy: request body is not JSON-RPC", body="Bad request: not JSON-RPC")
            return
        messages, batch = parsed
        self.messages = messages
        if policy is not None:
            self.filter = any(m.method == "tools/list" for m in messages)
            self.answer = denial(messages, batch, policy)

    # --- the response ---------------------------------------------------------------------

    def head(self, status: int, headers: Headers) -> bool:
        """Look at the response head; True when the body is a JSON answer to hold whole (to filter
        tools/list or read the outcome). An event stream to filter drops its Content-Length; an
        audited one is read as it passes (`SseOutcomes`)."""
        if not 200 <= status < 300 or status == 204:
            return False
        policy = self.policy
        filtering = self.filter and policy is not None
        messages = self.messages
        want_outcome = self.audit and bool(messages)
        if not (filtering or want_outcome):
            return False
        media, compressed = _content(headers)
        if compressed:
            if filtering:
                raise UpstreamProtocolError("mcp policy: compressed answer cannot be filtered")
            return False
        if media == b"text/event-stream":
            if filtering and policy is not None:
                self.sse = SseFilter(policy)
                headers[:] = [(n, v) for n, v in headers if n != b"content-length"]
            if want_outcome and messages is not None:
                pending = {_id_key(m.id) for m in messages if m.request}
                if pending:
                    self.events = SseOutcomes(pending, self.outcomes)
                    self.peeking = True
            return False
        if not is_json_media(media):
            return False
        if not filtering:  # audit only: the answer passes as it comes, a copy is read at the end
            self.peeking = True
            return False
        self.headers = headers
        self.holding = True
        return True

    def keep(self, body: bytes) -> bool:
        """Hold a piece of the JSON answer; False once over the cap (then `release` it; what is
        to be filtered is never relayed unfiltered: that raises)."""
        self._held.append(body)
        self._size += len(body)
        if self._size > MAX_BODY:
            if self.filter and self.policy is not None:
                raise UpstreamProtocolError("mcp policy: a JSON answer over 1 MiB cannot be filtered")
            self.holding = False
            return False
        return True

    def peek(self, body: bytes) -> None:
        """Read a piece of an audited answer as it passes (after `sse.feed` when both run): an
        event stream's events up to the responses owed, or a copy of a JSON answer, read at the
        end. Past the cap the outcome falls back to the status."""
        events = self.events
        if events is not None:
            events.feed(body)
            if events.done:
                self.peeking = False
            return
        self._size += len(body)
        if self._size > MAX_BODY:
            self.peeking = False
            self._held = []
        else:
            self._held.append(body)

    def _read_outcomes(self) -> None:
        """The outcomes of the copied answer: parsed only when it holds an error member."""
        body = b"".join(self._held) if len(self._held) != 1 else self._held[0]
        self._held = []
        if b'"error"' not in body:
            return
        doc = json_doc(body)
        if doc is not None:
            self.outcomes = _outcomes(doc)

    def release(self) -> list[bytes]:
        held, self._held = self._held, []
        return held

    def finish(self) -> tuple[Headers, bytes]:
        """The headers and body to send: filtered when it held tools, with a fresh Content-Length."""
        self.holding = False
        body = b"".join(self._held)
        self._held = []
        doc = json_doc(body)
        if doc is not None:
            self.outcomes = _outcomes(doc)
            policy = self.policy
            if self.filter and policy is not None and filter_tools(doc, policy):
                body = json.dumps(doc, ensure_ascii=False).encode()
        return with_length(self.headers, len(body)), body

    # --- the audit ------------------------------------------------------------------------

    def records(self, status: int, duration_ms: float, error: str) -> list[AuditRecord]:
        """One audit record per request or notification of the body (none when it was not read).

        `error`: why the proxy answered or cut the exchange itself ("" when the upstream's answer
        went through). The outcome is `ok` or the JSON-RPC error code the answer (JSON, or the
        events of a stream up to the responses owed) gave for the message's id; without one (an
        answer over the cap, a notification) the HTTP status decides.
        """
        messages = self.messages
        if not self.audit or messages is None:
            return []
        if self._held and self.peeking:
            self._read_outcomes()
        session = self.session[:SESSION_SHOWN].decode("latin-1") if self.session else "-"
        route = self.route
        out: list[AuditRecord] = []
        if self.answer is not None:
            policy = self.policy
            for m in messages:
                denied = m.method == "tools/call" and policy is not None and not policy.allows(m.name)
                out.append(_record(route, session, m, status, "denied" if denied else "refused", duration_ms))
            return out
        default = (f"http_{status}" if status else "http_error") if error else status_outcome(status)
        outcomes = self.outcomes if not error else None
        for m in messages:
            outcome = default
            if outcomes and m.request:
                outcome = outcomes.get(_id_key(m.id), default)
            out.append(_record(route, session, m, status, outcome, duration_ms))
        return out


def _record(route: str, session: str, m: Message, status: int, outcome: str, ms: float) -> AuditRecord:
    """The audit record of one message: names, id and method clipped to `MAX_NAME`."""
    name = m.name
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME]
    method = m.method if len(m.method) <= MAX_NAME else m.method[:MAX_NAME]
    msg_id = m.id
    if not m.request:
        shown = ""
    elif type(msg_id) is str:
        shown = msg_id if len(msg_id) <= MAX_NAME else msg_id[:MAX_NAME]
    else:
        shown = str(msg_id)[:MAX_NAME]
    return AuditRecord(route, session, method, name, shown, status, outcome, ms)


def _content(headers: Headers) -> tuple[bytes, bool]:
    """`media_type(headers)` and `is_compressed(headers)` in one pass over the headers."""
    ctype: bytes | None = None
    coding: bytes | None = None
    for n, v in headers:
        if n == b"content-type":
            if ctype is None:
                ctype = v
                if coding is not None:
                    break
        elif n == b"content-encoding" and coding is None:
            coding = v
            if ctype is not None:
                break
    media = b"" if ctype is None else ctype.split(b";", 1)[0].strip().lower()
    return media, coding is not None and coding.strip().lower() not in (b"", b"identity")
