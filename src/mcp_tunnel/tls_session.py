"""Inner TLS without asyncio's TLS machinery: an ``ssl.SSLObject`` between two MemoryBIOs.

Sans-I/O: the caller feeds ciphertext in and gets plaintext out, writes plaintext and drains
ciphertext to send. This keeps per-connection memory small and lets a TLS alert we generate
(``unknown_ca`` on a bad client) actually reach the peer before the close.
"""

from __future__ import annotations

import contextlib
import ssl

from mcp_tunnel.certs.reload import tls_alert_reason
from mcp_tunnel.errors import TLSHandshakeError as TLSHandshakeError

ALPN = ["http/1.1"]


def make_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Server context for the inner TLS session: TLS 1.2+, ALPN http/1.1, no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # One TLS 1.3 session ticket, as Go's crypto/tls (the official proxy) sends: resumption stays
    # possible for a client that uses it, at half the per-handshake cost of OpenSSL's default two.
    ctx.num_tickets = 1
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class TLSSession:
    """One TLS session over memory buffers; the caller moves the bytes."""

    __slots__ = ("_in", "_obj", "_out", "closed_by_peer", "handshake_done")

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self.handshake_done = False
        self.closed_by_peer = False

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return whatever plaintext it completes.

        Raises TLSHandshakeError while handshaking; afterwards a corrupt stream raises
        ssl.SSLError. A close_notify from the peer sets `closed_by_peer`.
        """
        if data:
            self._in.write(data)
        if not self.handshake_done:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            except ssl.SSLError as exc:
                raise TLSHandshakeError(tls_alert_reason(exc)) from exc
            self.handshake_done = True
            if not self._in.pending and not self._obj.pending():
                return b""  # the client's Finished came alone: no read, and no SSLWantReadError
        chunks: list[bytes] = []
        obj, incoming = self._obj, self._in
        while True:
            try:
                piece = obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                break
            if not piece:
                self.closed_by_peer = True
                break
            chunks.append(piece)
            # Nothing left to decrypt: stop without paying for the SSLWantReadError.
            if not incoming.pending and not obj.pending():
                break
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def start_handshake(self) -> None:
        """Client side: produce the ClientHello."""
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            raise TLSHandshakeError(tls_alert_reason(exc)) from exc
        else:
            self.handshake_done = True

    def send(self, data: bytes | memoryview) -> None:
        """Encrypt plaintext; the records wait in `outgoing()`."""
        if not data:
            return
        n = self._obj.write(data)
        if n == len(data):  # all of it, as a memory BIO takes it: no view to make and slice
            return
        view = memoryview(data)[n:]
        while view:
            n = self._obj.write(view)
            view = view[n:]

    def outgoing(self) -> bytes:
        return self._out.read()

    def close(self) -> None:
        """Queue our close_notify."""
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
            self._obj.unwrap()
