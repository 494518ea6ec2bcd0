"""The floor proxy and `python -m bench.floor`, run for real on loopback with tiny counts.

The floor proxy must serve the bench client as the product does (keep-alive requests, the
orderly close answered), or its figures would be those of something else; the run must print
its three tables. Nothing here looks at timings.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATHS = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this checkout's product and bench


def upstream_sockets(pid: int, up_port: int) -> int:
    """TCP connections of `pid` to 127.0.0.1:`up_port`, from /proc (its own sockets only)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        link = os.readlink(fd)
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == f"0100007F:{up_port:04X}" and fields[9] in inodes:
            count += 1
    return count


async def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)  # polling, with a deadline


@pytest.mark.parametrize("pooled", [False, True])
async def test_floor_proxy_answers_small_posts_and_the_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooled: bool
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PYTHONPATH", PATHS)  # the floor proxy imports this checkout's mcp_tunnel
    floor = importlib.import_module("bench.floor")
    servers = importlib.import_module("bench.servers")
    clients = importlib.import_module("bench.clients")
    small = importlib.import_module("bench.upstream").SMALL_BODY
    raw = clients.request_bytes("POST", "/small", servers.HOST, small)

    pki = servers.make_pki(tmp_path / "pki")
    up_port = servers.free_port()
    upstream = servers.start_upstream(tmp_path / "upstream", up_port)
    try:
        port = servers.free_port()
        proc = floor.start_floor(tmp_path / "floor", pki, port=port, upstream_port=up_port, pooled=pooled)
        try:
            target = clients.TunnelTarget(
                "floor", proc.pid, port, ca_file=str(pki.ca_file), host=servers.HOST
            )
            held = 1 if pooled else 0  # per tunnel: closed with it; pooled: one, kept for the next
            for _ in range(2):  # a second tunnel after the first one's close
                conn = await target.connect()
                sizes = [await conn.exchange(raw) for _ in range(3)]  # keep-alive on one tunnel
                assert sizes == [len(small)] * 3
                await conn.close()
                assert conn.conn.close_code == 1000  # the close frame was answered, not dropped
                await wait_for(lambda: upstream_sockets(proc.pid, up_port) == held, "upstream connections")
            assert proc.alive(), proc.tail()
        finally:
            proc.stop()
        log = proc.log.read_text()
        assert f"tunnel_session: {ROOT / 'src' / 'mcp_tunnel'}" in log, log
    finally:
        upstream.stop()


def test_floor_run_prints_every_table() -> None:
    """`python -m bench.floor` with tiny counts: a row per target in each table, and the shares."""
    argv = [sys.executable, "-m", "bench.floor", "--loaded", "40", "--new-tunnels", "8", "--windows", "2"]
    proc = subprocess.run(
        [*argv, "--idle", "8", "--seconds", "0.2", "--sse-rounds", "1", "--sse-events", "5"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": PATHS},
        capture_output=True,
        text=True,
        timeout=170,  # mypyc builds the floor first (~15 s)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tables = [block for block in proc.stdout.split("\n\n") if block.startswith("| target |")]
    assert len(tables) == 5, proc.stdout
    latency, events = tables.pop(2), tables.pop(2)  # between the timed tables and idle's
    for table in (latency, events):
        rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines()[2:]]
        assert rows == ["direct", "nginx-tls", "mcp-tunnel", "floor"], table
    assert all("| +" in line for line in events.splitlines()[3:]), events  # added over direct
    for table in tables:
        rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines()[2:]]
        pooled = ["floor-pooled"] if table is not tables[0] else []  # under load, the floor alone
        assert rows == ["nginx-tls", "mcp-tunnel", "floor", *pooled], table
    loaded, new, _ = tables
    assert all(line.split(" | ")[1] == "80" for line in loaded.splitlines()[2:])  # 2 windows of 40
    assert all(line.split(" | ")[1] == "8" for line in new.splitlines()[2:])  # 2 windows, 1 per client
    for what in ("floor per request", "floor per new connection", "floor per idle tunnel"):
        assert f"mcp-tunnel - {what}: " in proc.stdout, proc.stdout
    for what in ("per new connection", "per idle tunnel"):
        assert f"mcp-tunnel - floor-pooled {what}: " in proc.stdout, proc.stdout
    # The floor's own glue compiled with mypyc, as the product's request path is.
    (floor,) = [line for line in proc.stdout.splitlines() if line.startswith("floor floor: ")]
    assert "floor-native/floor_proxy." in floor and floor.split(";")[0].endswith(".so"), floor
    assert "; tunnel_session: " in floor, floor
