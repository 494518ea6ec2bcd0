"""`python -m bench`: start everything on loopback, measure round by round, print and save.

Each round runs every figure against every target, rotating the target order from round to
round so no target always goes first; the idle-memory figure uses a freshly started set of
servers each round. Medians over rounds go to the terminal as one table; every raw round goes
to a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import phases, report
from bench.clients import HTTPTarget, Target, TunnelTarget, https_context
from bench.nginx import nginx_version, start_nginx
from bench.phases import Settings
from bench.servers import HOST, PKI, Process, free_port, make_pki, start_proxy, start_upstream
from mcp_tunnel.native import MODULES, compiled_modules

ROOT = Path(__file__).resolve().parent.parent
Phase = Callable[[Target, Settings, int], Awaitable[dict[str, Any]]]
LOAD_PHASES: dict[str, Phase] = {
    "small": phases.small_requests,
    "download": phases.download,
    "sse": phases.sse,
    "latency": phases.latency,
    "new": phases.new_connection,
}
ALL_PHASES = (*LOAD_PHASES, "idle")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure mcp-tunnel's proxy beside nginx (plain and TLS-terminating) and a direct "
        "connection, on 127.0.0.1, with the same client. See docs/performance.md.",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds, each measuring everything (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny counts: checks the harness, not the numbers")
    p.add_argument(
        "--idle-tunnels", type=int, default=None, help="connections held for the RSS figure (default 2000)"
    )
    p.add_argument(
        "--figures",
        default=",".join(ALL_PHASES),
        help=f"comma-separated subset of {','.join(ALL_PHASES)} (default all)",
    )
    p.add_argument(
        "--targets", default=",".join(report.TARGETS), help="comma-separated subset of the targets"
    )
    p.add_argument("--output", type=Path, help="JSON file (default bench/results/<UTC time>.json)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    return p


@dataclass
class Stack:
    """The four targets' servers; `targets` in the table's order."""

    procs: dict[str, Process]
    targets: dict[str, Target]

    @property
    def upstream_pid(self) -> int:
        return self.procs["upstream"].pid

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited (code {proc.proc.returncode}):\n{proc.tail()}")

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            proc.stop()


def start_stack(directory: Path, pki: PKI, *, max_connections: int) -> Stack:
    procs: dict[str, Process] = {}
    try:
        up_port = free_port()
        procs["upstream"] = start_upstream(directory, up_port)
        ports = {name: free_port() for name in ("nginx", "nginx-tls", "mcp-tunnel", "admin")}
        procs["nginx"] = start_nginx(
            directory / "nginx", port=ports["nginx"], upstream_port=up_port, connections=max_connections
        )
        procs["nginx-tls"] = start_nginx(
            directory / "nginx-tls",
            port=ports["nginx-tls"],
            upstream_port=up_port,
            connections=max_connections,
            tls=(pki.cert_file, pki.key_file),
        )
        procs["mcp-tunnel"] = start_proxy(
            directory / "mcp-tunnel",
            pki,
            port=ports["mcp-tunnel"],
            admin_port=ports["admin"],
            upstream_port=up_port,
            max_connections=max_connections,
        )
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    ctx: ssl.SSLContext = https_context(str(pki.ca_file))
    targets: dict[str, Target] = {
        "direct": HTTPTarget("direct", procs["upstream"].pid, up_port),
        "nginx": HTTPTarget("nginx", procs["nginx"].pid, ports["nginx"]),
        "nginx-tls": HTTPTarget(
            "nginx-tls", procs["nginx-tls"].pid, ports["nginx-tls"], ssl_context=ctx, host=HOST
        ),
        "mcp-tunnel": TunnelTarget(
            "mcp-tunnel",
            procs["mcp-tunnel"].pid,
            ports["mcp-tunnel"],
            ca_file=str(pki.ca_file),
            host=HOST,
            admin_port=ports["admin"],
        ),
    }
    return Stack(procs, targets)


def raise_nofile(needed: int) -> int:
    """Lift RLIMIT_NOFILE for the harness and (inherited) its children; the idle figure needs it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            raise SystemExit(
                f"error: --idle-tunnels needs {needed} open files, the hard limit is {hard} "
                "(raise it with `ulimit -Hn` as root, or use fewer idle tunnels)"
            ) from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard if hard != resource.RLIM_INFINITY else soft


def order(names: list[str], rnd: int) -> list[str]:
    """The targets rotated by the round number, so each one takes every position in turn."""
    k = rnd % len(names)
    return names[k:] + names[:k]


async def run(
    settings: Settings, figures: list[str], names: list[str], workdir: Path, pki: PKI, max_conns: int
) -> tuple[list[dict[str, dict[str, Any]]], dict[str, int]]:
    stack = start_stack(workdir / "main", pki, max_connections=max_conns)
    pids = {name: t.pid for name, t in stack.targets.items()}
    print("servers: " + ", ".join(f"{n} pid {p}" for n, p in pids.items()), flush=True)
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        await warm_up(stack, names)
        for rnd in range(settings.rounds):
            results: dict[str, dict[str, Any]] = {name: {} for name in names}
            t0 = time.monotonic()
            for figure in figures:
                if figure == "idle":
                    idle_dir = workdir / f"idle-{rnd + 1}"
                    await idle_round(settings, names, rnd, idle_dir, pki, max_conns, results)
                    continue
                for name in order(names, rnd):
                    target = stack.targets[name]
                    try:
                        results[name][figure] = await LOAD_PHASES[figure](
                            target, settings, stack.upstream_pid
                        )
                    except Exception as exc:
                        err = f"round {rnd + 1} {figure} {name}: {type(exc).__name__}: {exc}"
                        results[name][figure] = {"error": err}
                    stack.check_alive()
            rounds.append(results)
            print(f"round {rnd + 1}/{settings.rounds} done in {time.monotonic() - t0:.1f}s", flush=True)
    finally:
        stack.stop()
    return rounds, pids


async def warm_up(stack: Stack, names: list[str]) -> None:
    """A few requests of each kind on every target first: lazy imports and pools off the clock."""
    tiny = replace(Settings.quick(1), small_conns=4, small_requests=50, download_mib=4)
    for name in names:
        target = stack.targets[name]
        for figure in ("small", "download", "sse", "new"):
            await LOAD_PHASES[figure](target, tiny, stack.upstream_pid)


async def idle_round(
    settings: Settings,
    names: list[str],
    rnd: int,
    directory: Path,
    pki: PKI,
    max_conns: int,
    results: dict[str, dict[str, Any]],
) -> None:
    stack = start_stack(directory, pki, max_connections=max_conns)
    try:
        for name in order(names, rnd):
            try:
                results[name]["idle"] = await phases.idle(stack.targets[name], settings)
            except Exception as exc:
                results[name]["idle"] = {"error": f"round {rnd + 1} idle {name}: {type(exc).__name__}: {exc}"}
            stack.check_alive()
    finally:
        stack.stop()


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "nginx": nginx_version(),
        "git_commit": commit,
        # the proxy runs this checkout: its request path compiled by mypyc, or pure Python
        "proxy_compiled_modules": f"{len(compiled_modules())}/{len(MODULES)}",
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    settings = Settings.quick(rounds) if args.quick else Settings(rounds=rounds)
    if args.idle_tunnels is not None:
        settings = replace(settings, idle_tunnels=max(1, args.idle_tunnels))
    figures = [f for f in args.figures.split(",") if f]
    names = [t for t in args.targets.split(",") if t]
    bad = [f for f in figures if f not in ALL_PHASES] + [t for t in names if t not in report.TARGETS]
    if bad:
        print(f"error: unknown figure or target: {', '.join(bad)}", file=sys.stderr)
        return 2
    if "direct" not in names and any(row.added for row in report.ROWS if row.phase in figures):
        names.insert(0, "direct")  # latencies are reported as the amount over direct
    max_conns = max(1024, settings.idle_tunnels + 256)
    raise_nofile(max_conns + 1024)  # the busiest process holds one socket per idle connection

    workdir = Path(tempfile.mkdtemp(prefix="mcp-tunnel-bench-"))
    started = datetime.now(UTC)
    try:
        pki = make_pki(workdir / "pki")
        raw, pids = asyncio.run(run(settings, figures, names, workdir, pki, max_conns))
    finally:
        if args.keep:
            print(f"run directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    by_round = report.per_round(raw)
    med = report.medians(by_round)
    errors = [res["error"] for rnd in raw for per in rnd.values() for res in per.values() if "error" in res]
    output = args.output or ROOT / "bench" / "results" / f"{started:%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "settings": asdict(settings),
        "figures": figures,
        "targets": names,
        "pids": pids,
        "medians": med,
        "rounds": raw,
        "errors": errors,
    }
    output.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(report.table(by_round))
    print()
    print(report.NOTES)
    print(f"\nraw rounds: {output}")
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if errors else 0
