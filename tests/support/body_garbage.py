"""Garbage for the two modules that read bodies on the request path: `mcp_policy` (request bodies,
JSON and SSE answers) and `oauth_rewrite` (metadata documents, challenge headers).

Run as a script in a subprocess of either build (`tests/test_body_readers_garbage.py`): mypyc
checks declared types at run time, so JSON of an unexpected shape can fail compiled where Python
lets it pass. The oracle: each input is judged, answered or passed through, or refused with a
documented error (BadRequest, UpstreamProtocolError), and nothing else ever escapes; the output
stays bounded; the fast JSON parse gives what `json.loads` gives. Prints `ok N` with the count
of inputs tried.
"""

from __future__ import annotations

import json
import random
import sys

from mcp_tunnel.errors import BadRequest, UpstreamProtocolError
from mcp_tunnel.http_rules import json_body
from mcp_tunnel.mcp_policy import MAX_BODY, McpPolicy, McpSettings, ToolPolicy, json_doc
from mcp_tunnel.oauth_rewrite import OAuthRewriter, OAuthSettings, rewrite_challenge
from mcp_tunnel.routing import Route

JSON_HEADERS = [(b"content-type", b"application/json"), (b"mcp-session-id", b"s\xffid")]
SSE_HEADERS = [(b"content-type", b"text/event-stream")]
VALUES: list[object] = [
    None, True, 0, -1, 2**70, 1.5, "", "x" * 300, "tools/call", "tools/list", [], {}, [1, "a"],
    {"name": 5}, {"name": "delete_all"}, {"name": ["a"]}, {"tools": 5}, {"tools": [5, {"name": 7}]},
]  # fmt: skip
SEEDS = [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}},
    {"jsonrpc": "2.0", "id": "a", "method": "tools/list"},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "search"}, {"name": "delete"}]}},
    {"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "x"}},
    {"issuer": "http://10.0.0.1:8080", "token_endpoint": "http://10.0.0.1:8080/token"},
    {"resource": "http://127.0.0.1:9/mcp", "authorization_servers": ["http://127.0.0.1:9"]},
]


def mutate(rng: random.Random, doc: object, depth: int = 0) -> object:
    """`doc` with some of its values swapped for values of other shapes."""
    if isinstance(doc, dict) and depth < 4:
        out = {
            k: mutate(rng, v, depth + 1) if rng.random() < 0.7 else rng.choice(VALUES) for k, v in doc.items()
        }
        if rng.random() < 0.2:
            out[rng.choice(["id", "method", "params", "result", "tools", "name", "issuer"])] = rng.choice(
                VALUES
            )
        return out
    if isinstance(doc, list) and depth < 4:
        return [mutate(rng, v, depth + 1) for v in doc] + ([rng.choice(VALUES)] if rng.random() < 0.3 else [])
    return doc if rng.random() < 0.6 else rng.choice(VALUES)


def bodies(rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = [b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 10_000, b'{"a":' * 5000]
    for _ in range(n):
        doc = mutate(rng, rng.choice(SEEDS))
        if rng.random() < 0.3:
            doc = [doc, mutate(rng, rng.choice(SEEDS))]
        raw = json.dumps(doc).encode()
        if rng.random() < 0.2 and raw:  # broken bytes too
            i = rng.randrange(len(raw))
            raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
        out.append(raw)
    return out


def sse(rng: random.Random, body: bytes) -> list[bytes]:
    """`body` as an event stream, cut into pieces at random places (events split across reads)."""
    stream = b"event: message\r\ndata: " + body.replace(b"\n", b" ") + b"\r\n\r\n" + b"data: x\n\n"
    cuts = sorted(rng.sample(range(len(stream) + 1), min(3, len(stream) + 1)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def one_mcp(policy: McpPolicy, body: bytes, rng: random.Random) -> None:
    ex = policy.exchange("wiki", "POST", list(JSON_HEADERS), True)
    assert ex is not None
    try:
        ex.judge(body)
    except BadRequest:
        return
    answer = rng.choice([body, json.dumps(rng.choice(SEEDS)).encode()])
    try:
        if rng.random() < 0.5:
            headers = list(JSON_HEADERS)
            if ex.head(200, headers):
                if ex.keep(answer):
                    _, out = ex.finish()
                    assert len(out) <= MAX_BODY * 2
            elif ex.peeking:
                ex.peek(answer)
        else:
            headers = list(SSE_HEADERS)
            ex.head(200, headers)
            for piece in sse(rng, answer):  # as the relay gives them: filtered, then read
                if ex.sse is not None:
                    piece = ex.sse.feed(piece)
                if ex.peeking:
                    ex.peek(piece)
            if ex.sse is not None:
                ex.sse.flush()
    except UpstreamProtocolError:
        return
    for record in ex.records(200, 1.0, ""):
        assert len(record.name) <= 200 and len(record.id) <= 200


def one_oauth(rewriter: OAuthRewriter, body: bytes, path: str) -> None:
    for key in ("auth", "mcp"):
        route = Route(key, "http", "10.0.0.1", 8080)
        ex = rewriter.exchange(route, "GET", path)
        if ex is None:
            continue
        headers = [
            (b"content-type", b"application/json"),
            (b"www-authenticate", b'Bearer resource_metadata="' + body[:80] + b'"'),
        ]
        if ex.head(200, headers) and ex.keep(body):
            ex.finish()
    rewrite_challenge(b'Bearer resource_metadata="' + body[:200] + b'"', "https://mcp.t.test")


def main(n: int) -> int:
    rng = random.Random(17)
    tried = 0
    policies = [
        McpPolicy(McpSettings(audit=True)),
        McpPolicy(McpSettings(audit=True, routes={"wiki": ToolPolicy(allow=("search*",))})),
        McpPolicy(McpSettings(audit=False, routes={"wiki": ToolPolicy(deny=("delete*",))})),
    ]
    rewriter = OAuthRewriter(
        OAuthSettings("auth", "https://login.example.com/authorize", ("mcp",)), "t.test", lambda *a, **k: None
    )
    for body in bodies(rng, n):
        # the fast parse is json.loads's, in this build too (repr: NaN is not equal to itself)
        assert repr(json_doc(body)) == repr(json_body(body)), body
        for policy in policies:
            one_mcp(policy, body, rng)
        one_oauth(
            rewriter,
            body,
            rng.choice(
                ["/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource/mcp"]
            ),
        )
        tried += 1
    print(f"ok {tried}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
