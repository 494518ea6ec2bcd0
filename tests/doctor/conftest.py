"""Every doctor test runs with a guard: no connection and no DNS lookup may leave this machine.

This directory is put on sys.path so tests import doctor_support by name (tests/ is not a
package), as tests/certs does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from doctor_support import Guard


def _local(host: object) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    """Record every outgoing connection and lookup; refuse any that is not loopback."""
    guard = Guard()
    loop_cls = asyncio.base_events.BaseEventLoop
    real_create = loop_cls.create_connection
    real_gai = loop_cls.getaddrinfo
    real_connect = socket.socket.connect
    real_socket_gai = socket.getaddrinfo

    async def create_connection(
        self: Any, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        guard.connects.append((str(host), int(port or 0)))
        if host is not None and not _local(host):
            raise guard.refuse(f"connect {host}:{port}")
        return await real_create(self, protocol_factory, host, port, **kw)

    async def getaddrinfo(self: Any, host: Any, port: Any, **kw: Any) -> Any:
        guard.lookups.append(str(host))
        if not _local(host):
            raise guard.refuse(f"resolve {host}")
        return await real_gai(self, host, port, **kw)

    def socket_getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        """The proxy's resolver looks names up on threads of its own, not through the loop."""
        guard.lookups.append(str(host))
        if not _local(host):
            raise guard.refuse(f"resolve {host}")
        return real_socket_gai(host, port, *args, **kw)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and not _local(address[0]):
            raise guard.refuse(f"connect {address}")
        return real_connect(self, address)

    monkeypatch.setattr(loop_cls, "create_connection", create_connection)
    monkeypatch.setattr(loop_cls, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", socket_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield guard
    assert not guard.violations, guard.violations


@pytest.fixture
def open_dir() -> Iterator[Any]:
    """A directory the proxy's uid can enter (pytest's tmp dirs are 0700, which would be a finding)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="doctor-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def up_url() -> Any:
    """A live loopback upstream, so a test about another layer has a healthy routing step."""
    from support.upstreams import RecordingUpstream

    up = await RecordingUpstream().start()
    yield f"http://127.0.0.1:{up.port}"
    await up.close()
