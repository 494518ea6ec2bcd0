"""The benchmark harness, run for real with tiny counts, so it cannot rot.

It starts every server (upstream, nginx plain and TLS, the proxy as a user runs it) and runs
every figure against every target; nothing here looks at timings, only that each figure was
produced and the JSON of the raw rounds is well-formed. The side-by-side tool (`bench.ab`) gets
the same treatment.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["direct", "nginx", "nginx-tls", "mcp-tunnel"]
FIGURES = ["small", "download", "sse", "latency", "new", "idle"]
TABLE_ROWS = [
    *("small", "download", "sse", "latency.p50", "latency.p99", "new", "idle"),
    *("sse.e2e", "latency.e2e_p50", "latency.e2e_p99"),  # the same with the client's work included
]


def test_quick_run_produces_every_figure_for_every_target(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads(out.read_text())
    assert doc["targets"] == TARGETS
    assert doc["errors"] == []
    assert len(doc["rounds"]) == 1
    for rnd in doc["rounds"]:
        for target in TARGETS:
            for figure in FIGURES:
                result = rnd[target][figure]
                assert math.isfinite(result["value"]), (target, figure, result)
    for target in TARGETS:
        assert doc["rounds"][0][target]["idle"]["held"] == doc["settings"]["idle_tunnels"]
    for row in TABLE_ROWS:
        assert set(doc["medians"][row]) == set(TARGETS), row
    assert set(doc["pids"]) == set(TARGETS)

    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(TABLE_ROWS)  # header + one line per figure
    assert str(out) in proc.stdout


def test_ab_runs_two_versions_side_by_side() -> None:
    """`python -m bench.ab` with two copies of this checkout's source: a row for each target,
    then the new-connection table, its ratios to the first version."""
    args = ["--tree", "a=src", "--tree", "b=src", "--seconds", "0", "--block", "3"]
    args += ["--new-tunnels", "8", "--windows", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ab", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    latency, _, new = proc.stdout.partition("\n\n")
    rows = [line.split(" | ") for line in latency.splitlines() if line.startswith("| ")][1:]
    assert [row[0].strip("| ") for row in rows] == ["direct", "nginx-tls", "a", "b"]
    assert all(row[1] == "3" for row in rows)  # one turn each
    head, *rows = [line.split(" | ") for line in new.splitlines() if line.startswith("| ")]
    assert head[3] == "ratio to a (min-max) |"
    assert [row[0].strip("| ") for row in rows] == ["nginx-tls", "a", "b"]
    assert all(row[1] == "8" for row in rows)  # 2 windows of one connection per client
    # CPU is read in clock ticks: a window this small may show none, so no ratio at all.
    assert rows[1][3].rstrip(" |") == "-" or rows[1][3].startswith("1.000 (")  # a against itself


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tree", "{tmp}"], "--tree must be NAME=VALUE, got"),
        (["--tree", "x={tmp}"], "does not provide mcp_tunnel"),
        (["--rev", "x=no-such-revision-here"], "cannot check out 'no-such-revision-here'"),
    ],
)
def test_ab_refuses_bad_versions_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [arg.format(tmp=tmp_path) for arg in args]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ab", *argv, "--seconds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no traceback


def test_workers_saturation_figure_runs_every_target(tmp_path: Path) -> None:
    """`python -m bench.workers` with a tiny load: a row for the proxy and nginx at 1 and 2 workers."""
    out = tmp_path / "workers.json"
    argv = [sys.executable, "-m", "bench.workers", "--seconds", "0.3", "--clients", "1", "--conns", "2"]
    proc = subprocess.run(
        [*argv, "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["target"], r["workers"]) for r in rows] == [
        ("mcp-tunnel", 1),
        ("mcp-tunnel", 2),
        ("nginx-tls", 1),
        ("nginx-tls", 2),
    ]
    for row in rows:
        assert row["requests"] > 0 and row["cpu_s"] > 0, row
    assert proc.stdout.count("\n| ") == 1 + 4  # the table: its header and a line per target


def test_tls_memory_holds_handshaken_sessions_and_reports_their_size() -> None:
    """`python -m bench.tls_memory` with a few sessions: one line, a positive size per session."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tls_memory", "--sessions", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = proc.stdout.splitlines()
    assert "KiB per server TLS session after its handshake (300 held, 50 warm)" in line
    assert float(line.split(": ")[1].split(" KiB")[0]) > 0
