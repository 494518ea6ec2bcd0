"""`python -m bench.workers`: requests per second at saturation, 1 and 2 workers, beside nginx.

The proxy with `workers: 1` and `workers: 2`, and nginx terminating TLS with `worker_processes 1`
and `2`, each in turn behind the same upstream, each loaded by the same closed loop: `--clients`
client processes (so the load generator is not one core), each with `--conns` keep-alive
connections sending the 1 KiB JSON POST of the `small` figure back to back for `--seconds`.

Reported per target: requests per second, the CPU seconds the server used in that time (its
whole process tree: supervisor and workers, nginx's master and workers) as cores busy, and
requests per CPU-second of the server: the CPU-normalised figure, which still means something
on a machine whose cores are shared with the load generator and the upstream. Bounded: each
target runs `--seconds` (default 4) after a short warm-up; the whole run takes well under a
minute on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Conn, HTTPTarget, Target, TunnelTarget, https_context, request_bytes
from bench.nginx import start_nginx
from bench.procstat import cpu_seconds, process_tree, tree_cpu_seconds
from bench.servers import HOST, PKI, Process, free_port, make_pki, start_proxy, start_upstream
from bench.upstream import SMALL_BODY

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (("mcp-tunnel", 1), ("mcp-tunnel", 2), ("nginx-tls", 1), ("nginx-tls", 2))
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Row:
    target: str
    workers: int
    requests: int
    wall_s: float
    cpu_s: float
    upstream_cpu_s: float
    client_cpu_s: float
    split: tuple[float, ...] = ()  # each worker's share of the workers' CPU (multi-process targets)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.requests / self.cpu_s if self.cpu_s else float("nan")


# --- one client process ---------------------------------------------------------------------------


async def client(kind: str, port: int, ca: str, conns: int, seconds: float) -> None:
    """Connect, say ready, wait for go on stdin, loop for `seconds`, print the count as JSON."""
    target: Target
    if kind == "mcp-tunnel":
        target = TunnelTarget(kind, 0, port, ca_file=ca, host=HOST)
    else:
        target = HTTPTarget(kind, 0, port, ssl_context=https_context(ca), host=HOST)
    raw = request_bytes("POST", "/small", HOST, SMALL_BODY)
    opened: list[Conn] = [await target.connect() for _ in range(conns)]
    await asyncio.gather(*(c.exchange(raw) for c in opened))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    end = loop.time() + seconds

    async def run(conn: Conn) -> int:
        done = 0
        while loop.time() < end:
            await conn.exchange(raw)
            done += 1
        return done

    counts = await asyncio.gather(*(run(c) for c in opened))
    print(json.dumps({"requests": sum(counts)}), flush=True)
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


# --- the harness -----------------------------------------------------------------------------------


def start_target(
    kind: str, workers: int, directory: Path, pki: PKI, upstream_port: int, conns: int
) -> tuple[Process, int]:
    port = free_port()
    if kind == "mcp-tunnel":
        proc = start_proxy(
            directory,
            pki,
            port=port,
            admin_port=free_port(),
            upstream_port=upstream_port,
            max_connections=max(1024, conns * 2),
            source=ROOT / "src",  # this checkout's proxy, whatever the venv's install points at
            workers=workers,
        )
    else:
        proc = start_nginx(
            directory,
            port=port,
            upstream_port=upstream_port,
            connections=max(1024, conns * 2),
            tls=(pki.cert_file, pki.key_file),
            workers=workers,
        )
    return proc, port


def load(
    kind: str, port: int, pki: PKI, *, clients: int, conns: int, seconds: float
) -> tuple[int, float, float]:
    """Run the clients against one target; (requests, wall seconds, the clients' CPU seconds)
    of the measured loop."""
    argv = [sys.executable, "-m", "bench.workers", "--client", kind, "--port", str(port)]
    argv += ["--ca", str(pki.ca_file), "--conns", str(conns), "--seconds", str(seconds)]
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(clients)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a client of {kind} did not start (said {line!r})")
        cpu0 = tree_cpu_seconds([p.pid for p in procs])
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        total = 0
        for p in procs:
            assert p.stdout is not None
            total += int(json.loads(p.stdout.readline())["requests"])
        wall = time.perf_counter() - t0
        cpu = tree_cpu_seconds([p.pid for p in procs]) - cpu0
        for p in procs:
            p.wait(READY_TIMEOUT)
        return total, wall, cpu
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def measure(
    kind: str,
    workers: int,
    directory: Path,
    pki: PKI,
    upstream: Process,
    up_port: int,
    args: argparse.Namespace,
) -> Row:
    proc, port = start_target(kind, workers, directory, pki, up_port, args.clients * args.conns)
    try:
        tree = process_tree(proc.pid)
        expected = 1 + workers if workers > 1 else 1  # supervisor/master + workers
        deadline = time.monotonic() + READY_TIMEOUT
        while len(tree) < expected:  # the proxy's workers start after its listener
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: {len(tree)} processes, expected {expected}:\n{proc.tail()}")
            time.sleep(0.05)
            tree = process_tree(proc.pid)
        load(kind, port, pki, clients=args.clients, conns=args.conns, seconds=min(1.0, args.seconds))  # warm
        each0, up0 = [tree_cpu_seconds([p]) for p in tree], cpu_seconds(upstream.pid)
        requests, wall, client_cpu = load(
            kind, port, pki, clients=args.clients, conns=args.conns, seconds=args.seconds
        )
        each = [tree_cpu_seconds([p]) - c for p, c in zip(tree, each0, strict=True)]
        cpu, up = sum(each), cpu_seconds(upstream.pid) - up0
        busy = sum(each[1:])  # tree[0] is the supervisor (nginx's master): no request work
        split = tuple(c / busy for c in each[1:]) if busy else ()
        if len(process_tree(proc.pid)) != len(tree):
            raise RuntimeError(f"{kind}: a process came or went during the measurement:\n{proc.tail()}")
    finally:
        proc.stop()
    return Row(kind, workers, requests, wall, cpu, up, client_cpu, split)


def table(rows: list[Row]) -> str:
    out = [
        "| target | workers | req/s | server cores busy | req per server CPU-second | upstream cores busy "
        "| clients' cores busy | workers' CPU split |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.target} | {r.workers} | {r.rps:,.0f} | {r.cores:.2f} | {r.per_cpu_s:,.0f} | "
            f"{r.upstream_cpu_s / r.wall_s:.2f} | {r.client_cpu_s / r.wall_s:.2f} | "
            f"{' / '.join(f'{x:.0%}' for x in r.split) or '-'} |"
        )
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=4.0, help="measured load per target (default 4)")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--conns", type=int, default=16, help="keep-alive connections per client (default 16)")
    p.add_argument("--output", type=Path, help="JSON file for the rows")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as one client process
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.client:
        asyncio.run(client(args.client, args.port, args.ca, args.conns, args.seconds))
        return 0
    if args.seconds <= 0 or args.clients < 1 or args.conns < 1:
        print("error: --seconds, --clients and --conns must be positive", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mcp-tunnel-bench-workers-"))
    rows: list[Row] = []
    try:
        pki = make_pki(workdir / "pki")
        up_port = free_port()
        upstream = start_upstream(workdir / "upstream", up_port)
        try:
            for kind, workers in TARGETS:
                row = measure(kind, workers, workdir / f"{kind}-{workers}", pki, upstream, up_port, args)
                rows.append(row)
                print(f"{kind} workers={workers}: {row.rps:,.0f} req/s", flush=True)
        finally:
            upstream.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(rows))
    if args.output:
        doc = {"settings": vars(args) | {"output": str(args.output)}, "rows": [r.__dict__ for r in rows]}
        args.output.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
