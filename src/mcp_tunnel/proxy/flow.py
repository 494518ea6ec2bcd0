"""The bounds on what one tunnel peer or one upstream can make the proxy hold, in one place.

A hostile peer must never cost the process more than a bounded amount of memory. Each buffer on
the request path has its bound here; docs/operations.md ("What one peer can cost") adds them up.
When a bound is reached the proxy stops reading from whoever fills it (flow control) rather
than buffering on, and a peer that never lets it go on is dropped at a timeout.
"""

from __future__ import annotations

from typing import Final

# --- towards the tunnel peer ----------------------------------------------------------------
# Unsent bytes on a tunnel past which it stops reading: whatever the peer sends (pings,
# pipelined requests) makes more to send, so it must read before we read more.
HIGH_WATER: Final = 256 * 1024

# --- from the tunnel peer -------------------------------------------------------------------
MAX_MESSAGE: Final = 1 << 20  # a WebSocket message; larger closes with 1009
BODY_HIGH_WATER: Final = 1 << 20  # request body not yet taken by the upstream: stop reading
MAX_PIPELINED: Final = 16  # requests read ahead of their turn; the rest of a read waits unparsed
FEED_SLICE: Final = 16 * 1024  # a longer read is parsed in pieces, to stop at MAX_PIPELINED

# --- from the upstream ----------------------------------------------------------------------
MAX_RESPONSE_HEAD: Final = 64 * 1024  # status line and headers; more is a 502
MAX_INTERIM: Final = 16  # 1xx responses before the final one; more is a 502

# Why a tunnel's reading is paused (bits): it resumes once none is left.
READ_BODY: Final = 1  # a request body waits for its upstream
READ_BACKLOG: Final = 2  # what we owe the peer is over HIGH_WATER
READ_PIPELINE: Final = 4  # MAX_PIPELINED requests wait for their turn

# What a tunnel's one deadline is for (`Tunnel.set_timer`): a number rather than a callback, so
# that arming it allocates nothing and an idle tunnel holds no bound method.
DEADLINE_HANDSHAKE: Final = 1  # the WebSocket upgrade and the TLS handshake
DEADLINE_CLOSE: Final = 2  # our close frame went: the peer's answer
DEADLINE_HEADER: Final = 3  # a request head (inner HTTP)
DEADLINE_BODY: Final = 4  # a request body (inner HTTP)
DEADLINE_IDLE: Final = 5  # no request (inner HTTP)
