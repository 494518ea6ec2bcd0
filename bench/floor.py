"""`python -m bench.floor`: the floor of this stack, beside mcp-tunnel and nginx terminating TLS.

The floor is `bench.floor_proxy`: the product's own parts (uvloop, `ws_handshake`,
`TunnelSession` with the product's TLS context, httptools) moving requests to one upstream
connection per tunnel and answers back, and nothing more. What mcp-tunnel costs above it is
what its features cost (validation, routing, logging, metrics, deadlines, flow control,
pooling); what the floor costs above nginx TLS is what Python and these parts cost.

The floor twice: `floor` opens an upstream connection per tunnel, `floor-pooled` takes one from
a free list at a tunnel's first request, as the product and nginx reuse theirs (the new-tunnel
and idle figures; under load, on keep-alive tunnels, the two are the same and only `floor` runs).
Three figures, the targets measured side by side in windows taken in turn as `bench.ab` takes
them: CPU per small request under load (64 keep-alive tunnels, as `bench.ab --loaded`), CPU
per new connection and one request (as `bench.ab --new-tunnels`), and RSS per idle tunnel (as
`python -m bench`'s idle figure: 16 warm, then N held, the VmRSS growth over N; fresh
processes, one measurement each). Timings only; nothing asserts.

    python -m bench.floor --loaded 25000 --new-tunnels 4800 --windows 10 --idle 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.ab import NEW_WORKERS, Entry, _loaded, _new_connections, _new_table, _table, in_turns
from bench.cli import raise_nofile
from bench.clients import HTTPTarget, Target, TunnelTarget, https_context, request_bytes
from bench.nginx import nginx_binary, start_nginx
from bench.phases import Settings, idle, sse
from bench.servers import HOST, PKI, Process, free_port, make_pki, start_proxy, start_upstream, wait_listening
from bench.upstream import SMALL_BODY
from mcp_tunnel import __file__ as _product_init

NAMES = ("nginx-tls", "mcp-tunnel", "floor", "floor-pooled")  # nginx-tls first: the ratios are to it
LOADED = 3  # under load, on keep-alive tunnels, the pooled floor is the floor: left out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--loaded", type=int, default=25000, metavar="N", help="requests per target a window (default 25000)")
    add(
        "--new-tunnels", type=int, default=4800, metavar="N", help="new connections per target (default 4800)"
    )
    add("--windows", type=int, default=10, help="windows of each timed figure (default 10)")
    add("--idle", type=int, default=2000, metavar="N", help="tunnels held for the RSS figure (default 2000)")
    add("--seconds", type=float, default=40, help="latency at 100 req/s, in turns (default 40)")
    add("--sse-rounds", type=int, default=3, help="SSE streams per target, in turns (default 3)")
    add("--sse-events", type=int, default=200, help="events 10 ms apart in each stream (default 200)")
    add("--python-floor", action="store_true", help="run the floor's own glue as Python, not compiled")
    return p


def compile_floor(work: Path) -> Path | None:
    """`bench/floor_proxy.py` compiled with mypyc in `work`, as the product's request path is
    compiled: a floor whose own glue ran as Python would stand higher than the stack's.

    Returns the directory holding the extension, or None (the reason on stderr) when mypyc
    cannot build it, and the floor then runs as Python.
    """
    out = work / "floor-native"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("floor_proxy.py"), out / "floor_proxy.py")
    # mypyc type-checks the module against the product it imports, this run's mcp_tunnel.
    env = {**os.environ, "MYPYPATH": str(Path(_product_init).parent.parent)}
    argv = [sys.executable, "-m", "mypyc", "floor_proxy.py"]
    try:
        proc = subprocess.run(argv, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"floor: mypyc did not run ({exc}); the floor runs as Python", file=sys.stderr)
        return None
    if proc.returncode != 0 or not list(out.glob("floor_proxy.*.so")):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        print(f"floor: mypyc failed; the floor runs as Python:\n{tail}", file=sys.stderr)
        return None
    (out / "floor_proxy.py").unlink()  # only the extension is left to import
    return out


def start_floor(
    directory: Path,
    pki: PKI,
    *,
    port: int,
    upstream_port: int,
    pooled: bool = False,
    native: Path | None = None,
) -> Process:
    """The floor proxy, with this interpreter and the environment's PYTHONPATH (so it imports
    the same `mcp_tunnel` as the proxy started beside it): `python -m bench.floor_proxy`, or
    the extension `compile_floor` built in `native`."""
    directory.mkdir(parents=True, exist_ok=True)
    if native is None:
        argv = [sys.executable, "-m", "bench.floor_proxy"]
    else:
        launch = "import sys; sys.path.insert(0, sys.argv.pop(1)); import floor_proxy; floor_proxy.main()"
        argv = [sys.executable, "-c", launch, str(native)]
    argv += [str(port), str(upstream_port)]
    argv += [str(pki.cert_file), str(pki.key_file), *(["pooled"] if pooled else [])]
    proc = Process(argv, directory / "floor.log", name="floor-pooled" if pooled else "floor")
    wait_listening(proc, port)
    return proc


def start_targets(
    work: Path, pki: PKI, up_port: int, max_conns: int, native: Path | None
) -> tuple[list[Process], list[Target]]:
    """nginx-tls, mcp-tunnel (info logs, metrics on, as a user runs it) and the floor, fresh."""
    procs: list[Process] = []
    try:
        ports = [free_port() for _ in NAMES]
        tls = (pki.cert_file, pki.key_file)
        procs.append(
            start_nginx(
                work / "nginx-tls", port=ports[0], upstream_port=up_port, connections=max_conns, tls=tls
            )
        )
        admin = free_port()
        procs.append(
            start_proxy(
                work / "mcp-tunnel",
                pki,
                port=ports[1],
                admin_port=admin,
                upstream_port=up_port,
                max_connections=max_conns,
            )
        )
        procs.append(start_floor(work / "floor", pki, port=ports[2], upstream_port=up_port, native=native))
        procs.append(
            start_floor(
                work / "floor-pooled", pki, port=ports[3], upstream_port=up_port, pooled=True, native=native
            )
        )
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    ca = str(pki.ca_file)
    targets: list[Target] = [
        HTTPTarget("nginx-tls", procs[0].pid, ports[0], ssl_context=https_context(ca), host=HOST),
        TunnelTarget("mcp-tunnel", procs[1].pid, ports[1], ca_file=ca, host=HOST, admin_port=admin),
        TunnelTarget("floor", procs[2].pid, ports[2], ca_file=ca, host=HOST),
        TunnelTarget("floor-pooled", procs[3].pid, ports[3], ca_file=ca, host=HOST),
    ]
    return procs, targets


def _share(per_target: list[list[float]], k: int, unit: str, fmt: Callable[[float], str]) -> str:
    """mcp-tunnel minus target `k` (a floor), window by window: the median and its share of mcp-tunnel."""
    ours, floor = per_target[1], per_target[k]
    diffs = [a - b for a, b in zip(ours, floor, strict=True)]
    shares = [(a - b) / a for a, b in zip(ours, floor, strict=True) if a > 0]
    share = f", {statistics.median(shares):.0%} of mcp-tunnel" if shares else ""
    return f"{fmt(statistics.median(diffs))} {unit} (windows {fmt(min(diffs))}..{fmt(max(diffs))}){share}"


def _idle_table(values: list[float]) -> list[str]:
    lines = ["| target | RSS per idle tunnel KiB | ratio to nginx-tls |", "|---|---:|---:|"]
    for name, value in zip(NAMES, values, strict=True):
        ratio = f"{value / values[0]:.3f}" if values[0] > 0 else "-"
        lines.append(f"| {name} | {value:.1f} | {ratio} |")
    return lines


async def _latencies(
    targets: list[Target], direct: Target, raw: bytes, args: argparse.Namespace
) -> list[str]:
    """Latency at 100 req/s (`bench.ab`'s turns) and SSE event delay, over direct's, per target.

    The latency goals of issue #24 are not about CPU: a floor that met them would say the
    product's features are what misses them.
    """
    entries = [Entry(t.name, t) for t in [direct, *targets]]
    await in_turns(entries, raw, args.seconds, 50, 0.01)
    lines = _table(entries)
    if args.sse_rounds > 0:
        settings = Settings(sse_events=args.sse_events)
        medians: list[list[float]] = [[] for _ in entries]
        for r in range(args.sse_rounds):  # the order rotates from round to round
            for k in [(r + i) % len(entries) for i in range(len(entries))]:
                result = await sse(entries[k].target, settings, direct.pid)
                medians[k].append(float(result["value"]))
        base = statistics.median(medians[0])
        lines += [
            "",
            "| target | SSE event delay, median ms | added over direct | added / nginx-tls's added |",
        ]
        lines.append("|---|---:|---:|---:|")
        nginx_added = statistics.median(medians[1]) - base
        for e, values in zip(entries, medians, strict=True):
            value = statistics.median(values)
            added = "" if e is entries[0] else f"+{value - base:.3f}"
            ratio = f"{(value - base) / nginx_added:.2f}" if e is not entries[0] and nginx_added > 0 else ""
            lines.append(f"| {e.name} | {value:.3f} | {added} | {ratio} |")
    return lines


async def run(args: argparse.Namespace, work: Path) -> list[str]:
    pki = make_pki(work / "pki")
    raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
    max_conns = max(1024, args.idle + 256)
    windows = max(1, args.windows)
    lines: list[str] = []
    native = None if args.python_floor else compile_floor(work)
    up_port = free_port()
    upstream = start_upstream(work / "upstream", up_port)
    try:
        procs, targets = start_targets(work / "timed", pki, up_port, max_conns, native)
        print("servers: " + ", ".join(f"{t.name} pid {t.pid}" for t in targets), flush=True)
        log = procs[2].tail().splitlines()
        runs = [line for line in log if line.startswith(("tunnel_session:", "floor:"))]
        print("floor " + "; ".join(runs), flush=True)  # the compiled modules' files, or the .py
        try:
            names = list(NAMES)
            if args.loaded > 0:
                t0 = time.monotonic()
                per_target = await _loaded(targets[:LOADED], raw, args.loaded, windows)
                what = "requests under load"
                lines += _new_table(names[:LOADED], per_target, windows * args.loaded, 0, what)
                share = _share(per_target, 2, "us", "{:.1f}".format)
                lines += ["", "mcp-tunnel - floor per request: " + share]
                print(f"loaded: {time.monotonic() - t0:.0f} s", flush=True)
            if args.new_tunnels > 0:
                t0 = time.monotonic()
                rounds = max(1, args.new_tunnels // (windows * NEW_WORKERS))
                per_target = await _new_connections(targets, raw, rounds, windows)
                count = windows * rounds * NEW_WORKERS
                lines += ["", *_new_table(names, per_target, count, 0)]
                lines.append("")
                for k in (2, 3):
                    share = _share(per_target, k, "ms", "{:.3f}".format)
                    lines.append(f"mcp-tunnel - {names[k]} per new connection: {share}")
                print(f"new tunnels: {time.monotonic() - t0:.0f} s", flush=True)
            if args.seconds > 0:
                t0 = time.monotonic()
                direct = HTTPTarget("direct", upstream.pid, up_port)
                lines += ["", *await _latencies(targets[:LOADED], direct, raw, args)]
                print(f"latency and SSE: {time.monotonic() - t0:.0f} s", flush=True)
        finally:
            for proc in reversed(procs):
                proc.stop()
        if args.idle > 0:
            t0 = time.monotonic()
            procs, targets = start_targets(work / "idle", pki, up_port, max_conns, native)
            try:
                settings = Settings(idle_tunnels=args.idle)
                kib = [float((await idle(t, settings))["value"]) for t in targets]
            finally:
                for proc in reversed(procs):
                    proc.stop()
            lines += [
                "",
                *_idle_table(kib),
                "",
                f"mcp-tunnel - floor per idle tunnel: {kib[1] - kib[2]:.1f} KiB",
                f"mcp-tunnel - floor-pooled per idle tunnel: {kib[1] - kib[3]:.1f} KiB",
            ]
            print(f"idle: {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        upstream.stop()
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    nginx_binary()  # a clear error now if nginx is missing
    raise_nofile(max(1024, args.idle + 256) + 1024)
    work = Path(tempfile.mkdtemp(prefix="mcp-tunnel-floor-"))
    started = time.monotonic()
    try:
        lines = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(lines))
    print(
        f"\n{time.monotonic() - started:.0f} s. CPU: each target's own utime+stime per window, the"
        " ratios window by window (median, min-max); RSS: VmRSS growth over the idle tunnels held,"
        " fresh processes. The floor is bench.floor_proxy: the product's parts, no features."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
