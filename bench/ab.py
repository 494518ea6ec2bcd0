"""`python -m bench.ab`: latency at a low fixed rate, versions of the proxy side by side.

Why it exists: between rounds of `python -m bench` this machine drifts by +-0.1 ms at 100 req/s,
which hides a change worth 20-50 us. Here every target gets a block of requests in turn, all
through one run, so each shares the machine's slow and fast moments with the others; two copies
of the same proxy came out within 0.01 ms of each other over 60 s. The proxies are versions of
mcp-tunnel (a git revision or another checkout's `src`), each started as a user runs it, beside
the direct connection and nginx terminating TLS for reference. Timings only; nothing asserts.

    python -m bench.ab --rev before=HEAD~1 --rev after=HEAD --seconds 120

With `--new-tunnels N` a second table follows: CPU per new connection (WebSocket and TLS
handshakes, one request, the close), the targets taken connection by connection in turn, so a
slow moment falls on all of them alike. Rounds of `python -m bench` a few seconds apart differ by
up to 20 % on this figure; two copies of one proxy here came out within 1-2 % per window.

With `--loaded N` another table follows: CPU per small request under load (64 keep-alive
tunnels, each sending the next request as soon as its answer is in, as `python -m bench`'s
`small` figure does), N requests per target in each window, the targets taken window by window
in turn and their CPU compared window by window, as for new connections.

A revision is built as `./dev build` builds the checkout (its request path compiled, if it has a
setup.py); a `--tree` runs as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.clients import Conn, HTTPTarget, Target, TunnelTarget, https_context, request_bytes
from bench.nginx import nginx_binary, start_nginx
from bench.phases import open_conns, percentile
from bench.procstat import cpu_seconds
from bench.servers import HOST, Process, free_port, make_pki, start_proxy, start_upstream
from bench.upstream import SMALL_BODY

ROOT = Path(__file__).resolve().parent.parent
CONNS = 4  # per target, used in turn: a request never waits for another
NEW_WORKERS = 4  # clients opening new connections at once
LOADED_CONNS = 64  # keep-alive tunnels per target for --loaded, as `python -m bench`'s small figure


@dataclass
class Entry:
    name: str
    target: Target
    conns: list[Conn] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)  # on the wire, as `python -m bench` times
    e2e: list[float] = field(default_factory=list)  # the client's own TLS, framing, parsing included
    cpu: float = 0.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--rev", action="append", default=[], metavar="NAME=REV", help="a git revision of this repo")
    add("--tree", action="append", default=[], metavar="NAME=DIR", help="a directory holding mcp_tunnel")
    add("--seconds", type=float, default=120.0, help="length of the run (default 120)")
    add("--rps", type=float, default=100.0, help="requests per second (default 100)")
    add("--block", type=int, default=50, help="requests per turn of a target (default 50)")
    add("--no-nginx", action="store_true", help="leave nginx TLS out")
    add("--new-tunnels", type=int, default=0, metavar="N", help="then CPU per new connection: N per target")
    add("--loaded", type=int, default=0, metavar="N", help="then CPU per request under load, N a window")
    add(
        "--windows",
        type=int,
        default=10,
        help="windows the new connections are measured in (default 10); CPU is read in 10 ms ticks,"
        " so give each window a second or more of it",
    )
    return p


def _named(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"python -m bench.ab: {what} must be NAME=VALUE, got {value!r}")
        pairs.append((name, rest))
    return pairs


def _checkout(rev: str, into: Path) -> Path:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(into), rev],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["git failed"])[-1]
        raise SystemExit(f"python -m bench.ab: cannot check out {rev!r}: {why}")
    if (into / "setup.py").is_file():  # built as ./dev builds this checkout: compiled where it can be
        build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
        built = subprocess.run(build, cwd=into, capture_output=True, text=True)
        if built.returncode != 0:
            why = (built.stderr.strip().splitlines() or ["setup.py failed"])[-1]
            raise SystemExit(f"python -m bench.ab: cannot build {rev!r}: {why}")
    return into / "src"


def _check_source(source: Path) -> None:
    """The proxy started with `source` first on its path really imports mcp_tunnel from there."""
    found = subprocess.run(
        [sys.executable, "-c", "import mcp_tunnel; print(mcp_tunnel.__file__)"],
        env={"PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise SystemExit(f"python -m bench.ab: {source} does not provide mcp_tunnel (got {found})")


async def _turn(entry: Entry, raw: bytes, count: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    cpu0 = cpu_seconds(entry.target.pid)
    start = loop.time() + interval
    for i in range(count):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = entry.conns[i % CONNS]
        t0 = time.perf_counter()
        await conn.exchange(raw)
        entry.e2e.append(time.perf_counter() - t0)
        entry.samples.append(conn.arrived_at - conn.sent_at)
    entry.cpu += cpu_seconds(entry.target.pid) - cpu0


async def in_turns(entries: list[Entry], raw: bytes, seconds: float, block: int, interval: float) -> None:
    """Every entry warmed (its connections open, pools and lazy imports filled), then blocks of
    `block` requests `interval` apart, entry after entry, for `seconds`; then the connections closed."""
    for e in entries:
        e.conns = await open_conns(e.target, CONNS)
        for conn in e.conns * 20:
            await conn.exchange(raw)
    deadline = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < deadline or turn < len(entries):
        await _turn(entries[turn % len(entries)], raw, block, interval)
        turn += 1
    for e in entries:
        for conn in e.conns:
            await conn.close()


def _table(entries: list[Entry]) -> list[str]:
    lines = [
        "| target | requests | p50 ms | p90 ms | p99 ms | p50 added | p99 added "
        "| p50 added, client work included | CPU per request us |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base50 = base99 = base_e2e = 0.0
    for e in entries:  # direct first: the others' "added" is over its percentiles
        ms = sorted(x * 1e3 for x in e.samples)
        p50, p90, p99 = (percentile(ms, p) for p in (50, 90, 99))
        e2e50 = percentile(sorted(x * 1e3 for x in e.e2e), 50)
        added = added99 = added_e2e = ""
        if e is entries[0]:
            base50, base99, base_e2e = p50, p99, e2e50
        else:
            added, added99 = f"+{p50 - base50:.3f}", f"+{p99 - base99:.3f}"
            added_e2e = f"+{e2e50 - base_e2e:.3f}"
        cpu = e.cpu / len(e.samples) * 1e6
        cells = [e.name, str(len(e.samples)), f"{p50:.3f}", f"{p90:.3f}", f"{p99:.3f}", added, added99]
        lines.append("| " + " | ".join([*cells, added_e2e, f"{cpu:.0f}"]) + " |")
    return lines


async def _new_connections(targets: list[Target], raw: bytes, rounds: int, windows: int) -> list[list[float]]:
    """CPU ms per new connection of each target's process, per window; connections taken in turn.

    Each of `NEW_WORKERS` clients makes `rounds` connections to every target in each window.
    """
    per_target: list[list[float]] = [[] for _ in targets]

    async def worker(offset: int) -> None:
        for i in range(rounds):
            for j in range(len(targets)):
                conn = await targets[(i + j + offset) % len(targets)].connect()
                await conn.exchange(raw)
                await conn.close()

    for _ in range(windows):
        before = [cpu_seconds(t.pid) for t in targets]
        await asyncio.gather(*(worker(k) for k in range(NEW_WORKERS)))
        await asyncio.sleep(0.2)  # the servers finish their side of the last closes
        for k, t in enumerate(targets):
            per_target[k].append((cpu_seconds(t.pid) - before[k]) * 1e3 / (rounds * NEW_WORKERS))
    return per_target


async def _loaded(targets: list[Target], raw: bytes, per_window: int, windows: int) -> list[list[float]]:
    """CPU us per small request of each target's process under load, per window.

    Each target keeps `LOADED_CONNS` tunnels; in each window every target in turn (the order
    rotating) answers `per_window` requests sent back to back over all of them.
    """
    pools = [await open_conns(t, LOADED_CONNS) for t in targets]

    async def warm(conn: Conn) -> None:  # upstream connections made, lazy paths taken
        for _ in range(4):
            await conn.exchange(raw)

    for conns in pools:
        await asyncio.gather(*(warm(c) for c in conns))
    per_target: list[list[float]] = [[] for _ in targets]
    try:
        for w in range(windows):
            for j in range(len(targets)):
                k = (w + j) % len(targets)
                left = per_window

                async def worker(conn: Conn) -> None:
                    nonlocal left
                    while left > 0:
                        left -= 1
                        await conn.exchange(raw)

                before = cpu_seconds(targets[k].pid)
                await asyncio.gather(*(worker(c) for c in pools[k]))
                per_target[k].append((cpu_seconds(targets[k].pid) - before) * 1e6 / per_window)
    finally:
        for conns in pools:
            for conn in conns:
                await conn.close()
    return per_target


def _new_table(
    names: list[str], per_target: list[list[float]], count: int, base: int, what: str = "new connections"
) -> list[str]:
    """Medians of the windows, and of each window's ratio to the first version's same window."""
    unit = "CPU per new connection ms" if what == "new connections" else "CPU per request us"
    lines = [
        f"| target | {what} | {unit} | ratio to {names[base]} (min-max) |",
        "|---|---:|---:|---:|",
    ]
    for name, values in zip(names, per_target, strict=True):
        ratios = [v / b for v, b in zip(values, per_target[base], strict=True) if b > 0]
        ratio = "-"
        if ratios:
            ratio = f"{percentile(sorted(ratios), 50):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        lines.append(f"| {name} | {count} | {percentile(sorted(values), 50):.3f} | {ratio} |")
    return lines


async def run(args: argparse.Namespace, work: Path, sources: list[tuple[str, Path | None]]) -> list[str]:
    pki = make_pki(work / "pki")
    procs: list[Process] = []
    try:
        up_port = free_port()
        upstream = start_upstream(work / "upstream", up_port)
        procs.append(upstream)
        entries = [Entry("direct", HTTPTarget("direct", upstream.pid, up_port))]
        if not args.no_nginx:
            port = free_port()
            tls = (pki.cert_file, pki.key_file)
            nginx = start_nginx(
                work / "nginx-tls", port=port, upstream_port=up_port, connections=256, tls=tls
            )
            procs.append(nginx)
            ctx = https_context(str(pki.ca_file))
            target = HTTPTarget("nginx-tls", nginx.pid, port, ssl_context=ctx, host=HOST)
            entries.append(Entry("nginx-tls", target))
        for name, source in sources:
            port = free_port()
            proxy = start_proxy(
                work / f"proxy-{name}",
                pki,
                port=port,
                admin_port=free_port(),
                upstream_port=up_port,
                max_connections=256,
                source=source,
                name=name,
            )
            procs.append(proxy)
            tunnel = TunnelTarget(name, proxy.pid, port, ca_file=str(pki.ca_file), host=HOST)
            entries.append(Entry(name, tunnel))
        raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
        await in_turns(entries, raw, args.seconds, args.block, 1.0 / args.rps)
        lines = _table(entries)
        if args.new_tunnels > 0:
            timed = entries[1:]  # direct's CPU is the upstream's: no handshake of its own to time
            windows = max(1, args.windows)
            rounds = max(1, args.new_tunnels // (windows * NEW_WORKERS))
            per_target = await _new_connections([e.target for e in timed], raw, rounds, windows)
            count = windows * rounds * NEW_WORKERS
            base = len(timed) - len(sources)  # the first mcp-tunnel version
            lines += ["", *_new_table([e.name for e in timed], per_target, count, base)]
        if args.loaded > 0:
            timed = entries[1:]
            windows = max(1, args.windows)
            per_target = await _loaded([e.target for e in timed], raw, args.loaded, windows)
            base = len(timed) - len(sources)
            names = [e.name for e in timed]
            what = "requests under load"
            lines += ["", *_new_table(names, per_target, windows * args.loaded, base, what)]
        return lines
    finally:
        for proc in reversed(procs):
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.no_nginx:
        nginx_binary()  # a clear error now if nginx is missing
    work = Path(tempfile.mkdtemp(prefix="mcp-tunnel-ab-"))
    checkouts: list[Path] = []
    try:
        sources: list[tuple[str, Path | None]] = []
        for name, rev in _named(args.rev, "--rev"):
            into = work / f"rev-{name}"
            sources.append((name, _checkout(rev, into)))
            checkouts.append(into)
        sources += [(name, Path(d).resolve()) for name, d in _named(args.tree, "--tree")]
        for _, source in sources:
            assert source is not None
            _check_source(source)
        if not sources:
            sources = [("mcp-tunnel", None)]  # the installed proxy
        started = time.monotonic()
        lines = asyncio.run(run(args, work, sources))
    finally:
        for into in checkouts:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(into)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    print(
        f"\n{args.rps:g} req/s in turns of {args.block} per target for {time.monotonic() - started:.0f} s;"
        " 'added' is over direct's same percentile. Times are on the wire (request bytes into"
        " the socket to the response's last bytes out of it); 'client work included' adds the"
        " client's own TLS, framing and parsing. CPU: the target's own utime+stime (the"
        " upstream's for direct)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
