"""`python -m bench.tls_memory`: what one inner TLS session costs in memory, alone.

Why it exists: issue #24 asks for an idle tunnel no bigger than nginx's TLS connection. The
tunnel's TLS session is Python's `ssl.SSLObject` between two `MemoryBIO`s (`tls_session`), the
only TLS that runs inside WebSocket frames with the standard library. This measures that session
by itself, in this process, with nothing of the proxy around it: N server sessions, each after a
full handshake with a client session of the same library (the client's side freed at once),
then the growth of `VmRSS` divided by N. What is left of an idle tunnel's RSS in `python -m
bench` is the proxy's own objects (transport, protocol, tunnel session, HTTP layer).
"""

from __future__ import annotations

import argparse
import gc
import ssl
import tempfile
from pathlib import Path

from bench.servers import DOMAIN, make_pki
from mcp_tunnel.tls_session import TLSSession, make_server_context


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _handshaken(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> TLSSession:
    server = TLSSession(server_ctx, server_side=True)
    client = TLSSession(client_ctx, server_side=False, server_hostname=DOMAIN)
    client.start_handshake()
    for _ in range(4):  # ClientHello, the server's flight, Finished, the ticket
        data = client.outgoing()
        if data:
            server.receive(data)
        data = server.outgoing()
        if data:
            client.receive(data)
    if not (server.handshake_done and client.handshake_done):
        raise RuntimeError("the in-memory handshake did not complete")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_memory", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000, help="sessions held (default 2000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        server_ctx = make_server_context(str(pki.cert_file), str(pki.key_file))
        client_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        warm = [_handshaken(server_ctx, client_ctx) for _ in range(50)]  # pools and caches filled
        gc.collect()
        before = _rss_kib()
        held = [_handshaken(server_ctx, client_ctx) for _ in range(args.sessions)]
        gc.collect()
        after = _rss_kib()
        per = (after - before) / len(held)
        print(
            f"{ssl.OPENSSL_VERSION}: {per:.1f} KiB per server TLS session after its handshake "
            f"({len(held)} held, {len(warm)} warm)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
