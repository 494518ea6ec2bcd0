"""Forwarding one exchange to its upstream and streaming the answer back (SPEC §5).

Bodies stream both ways; each chunk the upstream sends is written to the tunnel at once, unless
the `oauth:` or `mcp:` section holds the answer to rewrite, filter or read it whole. Proxy-made
answers (no route, refused address, timeouts) are one line of plain text; an `mcp:` answer
(a denied tool call) is JSON.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import httptools

from mcp_tunnel.config import Limits, UpstreamSettings
from mcp_tunnel.errors import (
    BadRequest,
    BodyAborted,
    NoRoute,
    ProxyError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from mcp_tunnel.http_rules import (
    LAST_CHUNK,
    ResponseFraming,
    chunk,
    downstream_response_head,
    error_response,
    upstream_request_head,
)
from mcp_tunnel.logs import Logger, millis
from mcp_tunnel.mcp_policy import (
    MAX_BODY,
    McpExchange,
    McpPolicy,
    json_answer,
    method_label,
    outcome_label,
)
from mcp_tunnel.metrics import Metrics, refusal_reason
from mcp_tunnel.oauth_rewrite import ExchangeRewrite, OAuthRewriter
from mcp_tunnel.proxy.exchange import Connection, Exchange, Tunnel
from mcp_tunnel.proxy.flow import MAX_INTERIM, MAX_RESPONSE_HEAD
from mcp_tunnel.proxy.policy import check_interval
from mcp_tunnel.proxy.upstream import Connector, ResponseSink, UpstreamConnection
from mcp_tunnel.routing import Route, Router


class ForwardConfig:
    """One configuration's worth of what forwarding uses, replaced as a whole on a reload.

    An exchange takes the one in force when it begins and keeps it to its end, whichever way it
    runs (no task, a task, a second attempt): its route, IP policy (the connector), limits,
    upstream settings, mcp: policy and oauth: rewriter all come from one config, never a mix.
    """

    __slots__ = ("connector", "limits", "mcp", "oauth", "router", "upstream_settings")

    def __init__(
        self,
        *,
        limits: Limits,
        router: Router,
        connector: Connector,
        upstream_settings: UpstreamSettings,
        mcp: McpPolicy | None,
        oauth: OAuthRewriter | None,
    ) -> None:
        self.limits = limits
        self.router = router
        self.connector = connector
        self.upstream_settings = upstream_settings
        self.mcp = mcp  # None: no JSON work at all
        self.oauth = oauth  # None: every byte passes as is


class ForwardContext:
    """What forwarding needs of the running proxy, and nothing more.

    server.py builds one and keeps it current: `configure` on a reload (a new `ForwardConfig`,
    for the exchanges that begin from then on), `draining` once the proxy drains. The lines and
    counts about an exchange are written here rather than by the server, so that this layer
    needs nothing above it.
    """

    __slots__ = ("config", "draining", "log", "loop", "metrics")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, log: Logger, metrics: Metrics, config: ForwardConfig
    ) -> None:
        self.loop = loop
        self.log = log
        self.metrics = metrics
        self.config = config
        self.draining = False  # responses say `Connection: close`; nothing is kept alive

    def configure(self, config: ForwardConfig) -> None:
        """A reload: what exchanges begun from now on use."""
        self.config = config

    def keeps_alive(self, ex: Exchange) -> bool:
        """Whether the tunnel's connection stays open after `ex`'s answer, for every answer the
        proxy writes: not when the request or an error asked to close it, nor while draining."""
        return not ex.close_after and not self.draining

    def sni_mismatch(self, tunnel: Tunnel, host: str) -> None:
        self.metrics.sni_mismatch()
        if self.log.debug_enabled:
            self.log.debug("sni differs from host", peer=tunnel.peer, sni=tunnel.sni_host or "-", host=host)

    def upstream_unsolicited(self, route: str, upstream: str) -> None:
        """An upstream sent bytes outside the response owed: its connection is closed."""
        self.metrics.upstream_unsolicited(route)
        self.log.warn(
            "upstream sent bytes outside a response, connection closed", route=route, upstream=upstream
        )

    def request_finished(self, route_key: str, status: int, seconds: float) -> None:
        # Counted with the log's next flush, off the way of the answer and of the next request;
        # a scrape flushes first (the admin's `metrics` callback).
        self.log.later(self.metrics.request_finished, route_key, status, seconds)


class _Truncated(Exception):
    """The upstream broke off mid-body: the client must see a truncation, not a clean end."""


class _StaleConnection(Exception):
    """A reused keep-alive connection that the upstream had already closed."""


class _Unsolicited(Exception):
    """Raised from a parser callback: the upstream began more than the one response owed."""


class ResponseRelay(ResponseSink):
    """One upstream response, parsed as its bytes arrive and relayed to the tunnel at once.

    httptools calls back into this object from `UpstreamProtocol.data_received`; whatever one
    upstream read completes goes to the tunnel as one write. `done` resolves with whether the
    upstream connection may be reused, or fails with what went wrong.
    """

    __slots__ = (
        "complete",
        "conn",
        "ctx",
        "deadline",
        "done",
        "ex",
        "framing",
        "head_bytes",
        "headers",
        "interim",
        "interims",
        "keep_alive",
        "mcp",
        "method",
        "oauth",
        "out",
        "parser",
        "reason",
        "received",
        "replayable",
        "route",
        "tunnel",
        "unsolicited",
    )
    __deletable__ = ("parser",)  # mypyc: `detach` deletes it (compiled classes forbid del otherwise)

    def __init__(
        self,
        ctx: ForwardContext,
        tunnel: Tunnel,
        ex: Exchange,
        conn: UpstreamConnection,
        route: Route,
        *,
        replayable: bool,
        deadline: float,
        oauth: ExchangeRewrite | None = None,
    ) -> None:
        assert ex.head is not None
        self.ctx = ctx
        self.deadline = deadline  # loop time by which the response head must have arrived
        self.parser = httptools.HttpResponseParser(self)
        self.tunnel = tunnel
        self.ex = ex
        self.conn = conn
        self.route = route
        self.method = ex.head.method
        self.replayable = replayable
        self.done: asyncio.Future[bool] = ctx.loop.create_future()
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.framing: ResponseFraming | None = None
        self.interim = False
        self.interims = 0
        self.head_bytes = 0
        self.keep_alive = False
        self.complete = False
        self.received = False
        self.unsolicited = False
        self.out: list[bytes] = []
        self.oauth = oauth  # None unless the config's oauth: section rewrites this answer
        self.mcp: McpExchange | None = ex.mcp  # None unless the config's mcp: section reads it

    # --- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request: it must reach nobody
            raise _Unsolicited
        self.reason = b""
        self.headers = []
        self.interim = False
        self.head_bytes = 0

    def on_status(self, status: bytes) -> None:
        self.reason += status
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_RESPONSE_HEAD:
            raise UpstreamProtocolError("upstream response head over 64 KiB")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True
            return
        ex = self.ex
        self.keep_alive = bool(self.parser.should_keep_alive())
        # Tell the client when this connection ends with this response (draining, a close asked).
        ex.close_after = not self.ctx.keeps_alive(ex)
        oauth = self.oauth
        hold = oauth is not None and oauth.head(status, self.headers)  # the document waits whole
        mcp = self.mcp
        if mcp is not None and mcp.head(status, self.headers):  # a JSON answer, held to be read
            hold = True
        framing = downstream_response_head(
            status, self.reason, self.headers, request_method=self.method, keep_alive=not ex.close_after
        )
        self.framing = framing
        ex.status = status
        ex.response_started = True
        if not hold:
            self.out.append(framing.head)
        if not framing.has_body:
            self._complete()

    def on_body(self, body: bytes) -> None:
        framing = self.framing
        if framing is None:
            return
        if self.complete:  # a body after a HEAD answer, a 204 or a 304: owed to nobody
            raise _Unsolicited
        self.ex.response_bytes += len(body)
        mcp = self.mcp
        if mcp is not None:
            if mcp.holding:
                if not mcp.keep(body):  # over the cap (audit only): what was held goes out as it came
                    self._let_go(framing, mcp.release())
                return
            if mcp.sse is not None:  # an event stream whose tools/list events are filtered
                body = mcp.sse.feed(body)
                if not body:
                    return
            if mcp.peeking:  # an audited answer (JSON, events) passes unchanged, read as it goes
                mcp.peek(body)
        oauth = self.oauth
        if oauth is not None and oauth.holding:
            if not oauth.keep(body):  # over the cap: what was held goes out as it came
                self._let_go(framing, oauth.release())
            return
        self.out.append(chunk(body) if framing.chunked else body)

    def on_message_complete(self) -> None:
        if self.interim:
            # 100 Continue, 103 Early Hints: passed through before the final answer, written and
            # filtered by the same writer as the final one, a bounded number of them.
            self.interims += 1
            if self.interims > MAX_INTERIM:
                raise UpstreamProtocolError("more than 16 interim (1xx) responses")
            status = self.parser.get_status_code()
            interim = downstream_response_head(
                status, self.reason, self.headers, request_method=self.method, keep_alive=True
            )
            self.out.append(interim.head)
            return
        self._complete()

    def _complete(self) -> None:
        if self.complete:
            return
        self.complete = True
        oauth = self.oauth
        mcp = self.mcp
        if mcp is not None and mcp.holding:
            self._whole(*mcp.finish())  # filtered (tools/list) or read (audit), a fresh Content-Length
        elif oauth is not None and oauth.holding:
            self._whole(*oauth.finish())  # rewritten, with a fresh Content-Length
        elif self.framing is not None and self.framing.chunked:
            if mcp is not None and mcp.sse is not None:
                rest = mcp.sse.flush()
                if rest:
                    self.out.append(chunk(rest))
            self.out.append(LAST_CHUNK)

    def _let_go(self, framing: ResponseFraming, held: list[bytes]) -> None:
        """A held answer past its cap goes out as it came: its head, then what was held."""
        self.out.append(framing.head)
        self.out += [chunk(p) if framing.chunked else p for p in held]

    def _whole(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A held answer goes out whole: its head made again (its length changed), then its body."""
        framing = downstream_response_head(
            self.ex.status,
            self.reason,
            headers,
            request_method=self.method,
            keep_alive=not self.ex.close_after,
        )
        self.ex.response_bytes = len(body)
        self.out.append(framing.head + body)

    # --- driven by the upstream connection ------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received = True
        if self.complete:  # bytes after the response: owed to nobody
            self._unsolicited()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.complete:
                self._unsolicited()
            else:
                self._fail(UpstreamProtocolError("upstream tried to switch protocols"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if self.complete:  # the answer is whole; what follows it is not for this client
                self._unsolicited()
            elif isinstance(cause, UpstreamProtocolError):
                self._fail(cause)
            else:
                self._fail(UpstreamProtocolError(f"invalid upstream response: {exc}"))
        self._flush()

    def _unsolicited(self) -> None:
        """Bytes past the one response owed: dropped with the connection, never relayed."""
        self.keep_alive = False
        if not self.unsolicited:
            self.unsolicited = True
            self.conn.transport.close()  # it is never pooled again
            self.ctx.upstream_unsolicited(self.route.key, self.route.upstream)

    def _flush(self) -> None:
        tunnel = self.tunnel
        if self.out:
            tunnel.send_plain(self.out[0] if len(self.out) == 1 else b"".join(self.out))
            self.out.clear()
        if self.complete:
            if not self.done.done():
                self.done.set_result(self.keep_alive and self.method != "HEAD")
        elif not tunnel.writable:
            # The tunnel's peer is slow: stop reading the upstream until it catches up.
            conn = self.conn
            conn.pause_reading()
            tunnel.when_writable(conn.resume_reading)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.framing is None:
            if self.conn.reused and not self.received and self.replayable:
                self._fail(_StaleConnection())
            else:
                self._fail(UpstreamProtocolError("upstream closed before responding"))
        elif self.framing.close_delimited:
            self.keep_alive = False
            self._complete()
            self._flush()
        elif not self.complete:
            self._fail(_Truncated())

    def timeout(self) -> None:
        if self.framing is None:
            self._fail(UpstreamTimeout("upstream response timeout"))

    def fail(self, exc: Exception) -> None:
        """The exchange cannot go on (its request body failed): end it with `exc`."""
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.framing is None:
            self.out.clear()  # nothing of this response reaches the client: it gets our answer
        if not self.done.done():
            self.done.set_exception(exc)

    def detach(self) -> None:
        """Drop the parser once nothing feeds this relay any more.

        The parser holds this relay's bound methods, a reference cycle: left in place, the
        relay, its exchange, task and buffers of every request wait for the cyclic garbage
        collector instead of being freed at once.
        """
        del self.parser


class Forwarder:
    """Answers the exchanges the inner HTTP connections hand over, one request path for all.

    Every decision about an exchange (a request refused while it was read, a body that failed
    while it waited its turn, SNI against Host, the route, the mcp: policy) is made once, in
    `_decide`, when the exchange begins. What follows is the same for every exchange, only run
    two ways: the usual request (its whole body read, nothing to await before the upstream, a
    pooled connection to its route) is written upstream at once and answered from the upstream
    connection's callbacks, with no task, so none of asyncio's task machinery is on its way and
    on this proxy's small machines everything done there is latency; anything else (connecting,
    a body still arriving, a body the policy must read whole first) runs as a task (`run`). Both
    give the same answers, lines and metrics, through the same `_send`, `_failed` and `_finish`.
    """

    def __init__(self, ctx: ForwardContext) -> None:
        self.ctx = ctx
        # Relays still waiting for their upstream's response head. One periodic check for all
        # of them instead of a timer per request: registering is a set insertion, and a
        # response timeout fires at most one check interval late (at most 1 s when a reload
        # changed the timeout while exchanges were waiting).
        self._waiting: set[ResponseRelay] = set()
        self._check: asyncio.TimerHandle | None = None

    def start(self, tunnel: Tunnel, http: Connection, ex: Exchange) -> None:
        """Hand over an exchange whose head has been read; it begins once this read is parsed.

        Begun from the loop's ready queue rather than at once: by then a body that came in the
        same read has arrived whole, and under load the reads of all ready tunnels are parsed
        before the upstream writes start (writing from inside each read cost ~20 us more CPU
        per request with 64 busy tunnels, measured side by side).
        """
        self.ctx.loop.call_soon(self.begin, tunnel, http, ex)

    def quiet(self) -> bool:
        """No exchange is waiting for its upstream: one more may begin at once (`InnerHTTP.read_done`).

        At a low rate the ready queue's turn is latency spent for nothing; under load it lets
        every ready tunnel's read be parsed before the upstream writes (see `start`).
        """
        return not self._waiting

    def begin(self, tunnel: Tunnel, http: Connection, ex: Exchange) -> None:
        if http.aborted:  # the tunnel went before this exchange began: it ends as if cancelled
            self._failed(tunnel, ex, asyncio.CancelledError(http.aborted))
            self._finish(http, ex)
            return
        ctx = self.ctx
        cfg = ctx.config  # the exchange's config to its end, even across a reload
        try:
            route, whole, judged = self._decide(tunnel, ex, cfg)
        except Exception as exc:  # answered by the proxy itself, now: nothing went upstream
            self._failed(tunnel, ex, exc)
            self._finish(http, ex)
            return
        if route is None:  # the mcp: policy answered it
            self._finish(http, ex)
            return
        if judged and whole is not None:
            conn = cfg.connector.pooled(route)
            if conn is not None:
                relay = self._send(tunnel, ex, route, conn, whole, cfg)
                ex.running = relay.done
                done = partial(self._answered, tunnel, http, ex, relay, cfg, whole)
                relay.done.add_done_callback(done)
                return
        task = self.run(tunnel, http, ex, route, cfg, whole, judged=judged)
        ex.running = ctx.loop.create_task(task)

    def _decide(
        self, tunnel: Tunnel, ex: Exchange, cfg: ForwardConfig
    ) -> tuple[Route | None, bytes | None, bool]:
        """Every decision about where an exchange goes, in one place for both ways it runs.

        Returns its route (None when the proxy answered it: a denied tool call, a body a policy
        route cannot judge), its body if it has arrived whole (None while it streams), and
        whether the mcp: policy has judged it (False: the task reads the body whole first).
        Raises what the exchange is answered with when it cannot go upstream.
        """
        if ex.error is not None:
            raise ex.error
        head = ex.head
        assert head is not None
        ex.body.check()  # refused while it waited its turn (400, 408, 413): nothing goes upstream
        ctx = self.ctx
        if tunnel.sni_host is not None and tunnel.sni_host != head.host:
            self._log_started(ex)
            ctx.sni_mismatch(tunnel, head.host)
        route = cfg.router.lookup(head.host)
        if route is None:
            self._log_started(ex)
            ctx.log.warn("no route for host", host=head.host)
            raise NoRoute(f"no route for host {head.host}")
        ex.route_key = route.key
        # A body that has fully arrived is sent with the head in one write, and can be sent
        # again if a pooled connection turns out to be stale.
        whole = ex.body.complete_now() if head.has_body else b""
        mcp = cfg.mcp
        if mcp is None:
            return route, whole, True
        ex.mcp = mex = mcp.exchange(route.key, head.method, head.headers, head.has_body)
        if mex is None:
            return route, whole, True
        if whole is None and mex.needs_body:
            return route, None, False  # judged once `run` has read it whole
        if self._mcp_answered(tunnel, ex, whole):
            return None, whole, True
        return route, whole, True

    def _answered(
        self,
        tunnel: Tunnel,
        http: Connection,
        ex: Exchange,
        relay: ResponseRelay,
        cfg: ForwardConfig,
        whole: bytes,
        done: asyncio.Future[bool],
    ) -> None:
        """The end of an exchange begun without a task: `run`'s ending, from a callback."""
        conn = relay.conn
        self._settle(relay)
        try:
            reusable = done.result()
        except _StaleConnection:
            conn.close()  # the second attempt, on another connection, as `_proxy` makes it
            task = self.run(tunnel, http, ex, relay.route, cfg, whole, judged=True, attempt=2)
            ex.running = self.ctx.loop.create_task(task)
            return
        except BaseException as exc:
            conn.close()
            handled = self._failed(tunnel, ex, exc)
            self._finish(http, ex)
            if handled or isinstance(exc, asyncio.CancelledError):
                return
            raise
        if reusable and conn.usable():
            cfg.connector.release(conn)
        else:
            conn.close()
        self._finish(http, ex)

    async def run(
        self,
        tunnel: Tunnel,
        http: Connection,
        ex: Exchange,
        route: Route,
        cfg: ForwardConfig,
        whole: bytes | None,
        *,
        judged: bool,
        attempt: int = 1,
    ) -> None:
        """Answer one exchange `_decide` sent upstream, and always report it done.

        `judged` False: the mcp: policy reads its body whole first. `attempt` 2: one begun
        without a task whose pooled connection was stale, tried once more on a fresh one.
        """
        try:
            if not judged:
                whole = await self._whole_body(http, ex)
                if self._mcp_answered(tunnel, ex, whole):
                    return
            await self._proxy(tunnel, http, ex, route, cfg, whole, attempt)
        except BaseException as exc:
            if not self._failed(tunnel, ex, exc):
                raise
        finally:
            self._finish(http, ex)

    async def _whole_body(self, http: Connection, ex: Exchange) -> bytes | None:
        """A policy route's request body, whole before anything of it goes upstream; None when it
        is over the cap (`McpExchange.judge` refuses it)."""
        parts: list[bytes] = []
        size = 0
        while True:
            piece = await ex.body.read()
            http.body_consumed()
            if piece is None:
                return b"".join(parts)
            size += len(piece)
            if size > MAX_BODY:
                return None
            parts.append(piece)

    def _mcp_answered(self, tunnel: Tunnel, ex: Exchange, whole: bytes | None) -> bool:
        """Judge the request body by the mcp: section; True when the proxy answered it itself (a
        denied tool call, a body a policy route cannot judge): it never reaches the upstream."""
        mcp = ex.mcp
        assert mcp is not None
        try:
            mcp.judge(whole)
        except BadRequest as refused:
            self._log_started(ex)
            self.ctx.log.info("mcp request refused", route=ex.route_key, reason=refused.reason)
            self._failed(tunnel, ex, refused)
            return True
        answer = mcp.answer
        if answer is None:
            return False
        self._log_started(ex)
        keep = self.ctx.keeps_alive(ex)
        ex.close_after = not keep
        ex.status = 200
        ex.response_started = True
        data = json_answer(answer, keep_alive=keep)
        ex.response_bytes = len(answer)
        tunnel.send_plain(data)
        return True

    def _audit(self, mcp: McpExchange, ex: Exchange, seconds: float) -> None:
        """The exchange's `mcp request` lines and counts (mcp.audit)."""
        ctx = self.ctx
        log = ctx.log
        metrics = ctx.metrics
        for r in mcp.records(ex.status, millis(seconds), ex.reason):
            log.mcp_request(r.route, r.session, r.method, r.name, r.id, r.status, r.outcome, r.duration_ms)
            metrics.mcp_request(r.route, method_label(r.method), outcome_label(r.outcome))

    def _failed(self, tunnel: Tunnel, ex: Exchange, exc: BaseException) -> bool:
        """Answer or cut an exchange that failed; False for what the caller must raise again."""
        ctx = self.ctx
        if isinstance(exc, ProxyError):
            ex.status = exc.status
            ex.reason = exc.reason
            reason = refusal_reason(exc)
            if reason is not None:
                ctx.metrics.upstream_failed(ex.route_key, reason)
            if ex.response_started:
                tunnel.close_abruptly()
            else:
                # A body not read whole leaves the connection's next bytes unknown: it closes.
                keep = ctx.keeps_alive(ex) and ex.body.done and not ex.body.failed
                ex.close_after = not keep
                head_request = ex.head is not None and ex.head.method == "HEAD"
                data = error_response(exc, keep_alive=keep, head_request=head_request)
                ex.response_bytes = len(data)
                tunnel.send_plain(data)
            return True
        if isinstance(exc, _Truncated):
            ex.reason = "upstream ended the response early"
            ex.close_after = True
            tunnel.close_abruptly()
            return True
        if isinstance(exc, BodyAborted):
            ex.status = ex.status or 499
            ex.reason = "the tunnel went away during the request body"
            ex.close_after = True
            return True
        if isinstance(exc, asyncio.CancelledError):
            ex.status = ex.status or 499
            ex.reason = ex.reason or "cancelled: the tunnel closed or the proxy is shutting down"
            return False
        if isinstance(exc, Exception):
            # A bug of ours, not the peer's: one line with its type (its text may hold request
            # data), the client an answer or a cut, never a traceback or a task left dangling.
            ctx.log.error("internal error while forwarding", error=type(exc).__name__)
            return self._failed(tunnel, ex, ProxyError(f"internal error ({type(exc).__name__})"))
        return False

    def _log_started(self, ex: Exchange) -> None:
        """The "request started" line, once per exchange and before any other line about it.

        On the usual path it is written just after the request went upstream, so its cost is
        not on the way to the upstream; a line about the request written earlier (no route,
        IP policy, SNI) is preceded by it, and an exchange refused outright gets it at the end.
        """
        if ex.logged_start:
            return
        ex.logged_start = True
        log = self.ctx.log
        if log.info_enabled:
            head = ex.head
            if head is not None:
                log.request_started(head.method, head.host, head.path)
            else:  # refused before it could be understood: still one pair of lines
                log.request_started("-", "-", "-")

    def _finish(self, http: Connection, ex: Exchange) -> None:
        ctx = self.ctx
        log = ctx.log
        seconds = time.perf_counter() - ex.started
        self._log_started(ex)
        if log.info_enabled:
            head = ex.head
            method, host, path = (head.method, head.host, head.path) if head else ("-", "-", "-")
            ms = millis(seconds)
            log.request_completed(
                method, host, path, ex.status, ms, ex.response_bytes, ex.route_key, ex.reason
            )
        mcp = ex.mcp
        if mcp is not None and mcp.audit:
            self._audit(mcp, ex, seconds)
        ctx.request_finished(ex.route_key, ex.status, seconds)
        http.exchange_done(ex)

    async def _proxy(
        self,
        tunnel: Tunnel,
        http: Connection,
        ex: Exchange,
        route: Route,
        cfg: ForwardConfig,
        whole: bytes | None,
        attempt: int = 1,
    ) -> None:
        connector = cfg.connector
        while True:
            # A second attempt (the pooled connection was stale) dials afresh: the next idle one
            # may have gone stale the same way.
            conn = connector.pooled(route) if attempt == 1 else None
            if conn is None:
                self._log_started(ex)  # before the connector's own lines (refused address, ...)
                conn = await connector.connect(route)
            try:
                if whole is None:
                    ex.body.check()  # it failed while we connected: the upstream gets nothing
                relay = self._send(tunnel, ex, route, conn, whole, cfg)
                reusable = await self._exchange(http, ex, relay)
            except _StaleConnection:
                conn.close()
                if attempt == 2:
                    raise UpstreamProtocolError("upstream closed the connection") from None
                attempt = 2
                continue
            except BaseException:
                conn.close()
                raise
            if reusable:
                connector.release(conn)
            else:
                conn.close()
            return

    def _send(
        self,
        tunnel: Tunnel,
        ex: Exchange,
        route: Route,
        conn: UpstreamConnection,
        whole: bytes | None,
        cfg: ForwardConfig,
    ) -> ResponseRelay:
        """Write the request (with its body when `whole` holds it) and set up its response's relay."""
        settings = cfg.upstream_settings
        head = ex.head
        assert head is not None
        host_header = route.authority.encode() if settings.host_header == "upstream" else head.raw_host
        out = upstream_request_head(head, host_header=host_header, forwarded_host=head.raw_host)
        if whole:
            out += (chunk(whole) + LAST_CHUNK) if head.chunked else whole
        elif whole is not None and head.chunked:
            out += LAST_CHUNK
        # The request goes out first: what follows is not on the way to the upstream.
        lost = conn.protocol.lost
        if not lost:
            conn.write(out)
            self._log_started(ex)
        ctx = self.ctx
        loop = ctx.loop
        timeout = cfg.limits.upstream_response_timeout
        oauth = cfg.oauth  # the config's oauth: section; None means every byte passes as is
        relay = ResponseRelay(
            ctx,
            tunnel,
            ex,
            conn,
            route,
            replayable=whole is not None,
            deadline=loop.time() + timeout,
            oauth=None if oauth is None else oauth.exchange(route, head.method, head.path),
        )
        conn.protocol.sink = relay
        self._waiting.add(relay)
        if self._check is None:
            self._check = loop.call_later(check_interval(timeout), self._check_waiting)
        if lost:
            relay.upstream_lost(None)
        return relay

    def _settle(self, relay: ResponseRelay) -> None:
        """Nothing feeds `relay` any more: unhook it from its connection and the timeout check."""
        self._waiting.discard(relay)
        relay.conn.protocol.sink = None
        relay.detach()
        if not relay.done.done():
            relay.done.cancel()

    async def _exchange(self, http: Connection, ex: Exchange, relay: ResponseRelay) -> bool:
        """Send the body if it is still arriving, relay the response; True if the connection may be reused."""
        conn = relay.conn
        sender: asyncio.Task[None] | None = None
        try:
            if not relay.replayable and not relay.done.done():  # the body is still arriving
                head = ex.head
                assert head is not None
                sender = self.ctx.loop.create_task(self._send_body(http, ex, conn, head.chunked))
                sender.add_done_callback(partial(_body_sent, relay))
            reusable = await relay.done
        finally:
            self._settle(relay)
            if sender is not None and not sender.done():
                sender.cancel()
        body_sent = sender is None or (
            sender.done() and not sender.cancelled() and sender.exception() is None
        )
        return body_sent and reusable and conn.usable()

    def _check_waiting(self) -> None:
        """Fail the relays whose response head is overdue; forget those that have one."""
        self._check = None
        waiting = self._waiting
        if not waiting:
            return
        ctx = self.ctx
        now = ctx.loop.time()
        for relay in [r for r in waiting if r.framing is not None or r.deadline <= now]:
            waiting.discard(relay)
            relay.timeout()  # a no-op once the head has arrived
        if waiting:
            interval = check_interval(ctx.config.limits.upstream_response_timeout)
            self._check = ctx.loop.call_later(interval, self._check_waiting)

    async def _send_body(
        self, http: Connection, ex: Exchange, conn: UpstreamConnection, chunked: bool
    ) -> None:
        protocol = conn.protocol
        while True:
            piece = await ex.body.read()
            http.body_consumed()
            if piece is None:
                if chunked:
                    conn.write(LAST_CHUNK)
                break
            conn.write(chunk(piece) if chunked else piece)
            await protocol.drain()


def _body_sent(relay: ResponseRelay, sender: asyncio.Task[None]) -> None:
    """A body that cannot be sent whole ends its exchange at once, answered as it failed (400,
    408, 413, a tunnel gone), not when the upstream gives up waiting for the rest."""
    if sender.cancelled():
        return
    exc = sender.exception()  # taken here: no "exception was never retrieved"
    if exc is None:
        return
    if not isinstance(exc, (ProxyError, BodyAborted)):  # the upstream went while it was sent
        exc = UpstreamProtocolError("upstream closed while the request body was sent")
    relay.fail(exc)
