"""`curl https://<proxy>:8080` fails with `wrong version number`, exactly as the official
troubleshooting table says: the listener answers a raw ClientHello with a plain-text HTTP 400
(as Go's server does), which OpenSSL reads as a TLS record with a bad version. Real curl."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from support.pki import PKI
from support.proxy import start_proxy


def _curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is not installed: `./dev test` installs it (Debian package curl)", pytrace=False)
    return path


async def test_curl_https_to_the_listener_says_wrong_version_number(tmp: Path, pki: PKI) -> None:
    curl = _curl()
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-k",
        "-sS",
        "--max-time",
        "10",
        f"https://127.0.0.1:{proxy.server.port}/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode != 0, (out, err)
    assert b"wrong version number" in err, err
    assert b"SSL_ERROR_SYSCALL" not in err
    assert proxy.log_has("the listener is plain WebSocket, TLS belongs inside it")
    await proxy.stop()


async def test_raw_client_hello_gets_a_plain_400_then_a_clean_close(tmp: Path, pki: PKI) -> None:
    """The bytes curl sees: one HTTP/1.1 400 response, then EOF (a FIN, not a reset)."""
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"\x16\x03\x01\x00\x05hello")  # the first bytes of a TLS record
    data = await asyncio.wait_for(reader.read(), 5)  # read() to EOF raises on a reset
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert b"Content-Type: text/plain" in head and b"Connection: close" in head
    assert body == b"This port expects a WebSocket carrying TLS, not TLS itself.\n"
    writer.close()
    assert proxy.log_has("the listener is plain WebSocket, TLS belongs inside it")
    await proxy.stop()
