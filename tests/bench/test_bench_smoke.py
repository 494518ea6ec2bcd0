"""The benchmark harness, run for real with tiny counts, so it cannot rot.

It starts every server (upstream, nginx plain and TLS, the proxy as a user runs it) and runs
every figure against every target; nothing here looks at timings, only that each figure was
produced and the JSON of the raw rounds is well-formed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["direct", "nginx", "nginx-tls", "mcp-tunnel"]
FIGURES = ["small", "download", "sse", "latency", "new", "idle"]
TABLE_ROWS = ["small", "download", "sse", "latency.p50", "latency.p99", "new", "idle"]


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
