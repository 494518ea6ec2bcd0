"""The modules that read bodies on the request path (mcp_policy, oauth_rewrite) take garbage in
both builds: every input is judged, passed, or refused with a documented error, never anything
else (tests/support/body_garbage.py holds the inputs and the oracle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.builds import BUILDS, assert_build, build_env, skip_reason

SCRIPT = Path(__file__).resolve().parent / "support" / "body_garbage.py"


@pytest.mark.parametrize("build", BUILDS)
def test_body_readers_take_garbage(build: str) -> None:
    reason = skip_reason(build)
    if reason:
        pytest.skip(reason)
    assert_build(build)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "2000"],
        env=build_env(build),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stdout.strip() == "ok 2007"
