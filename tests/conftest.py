from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.pki import PKI, make_pki
from support.upstreams import RecordingUpstream

SRC = Path(__file__).resolve().parent.parent / "src"


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test compiled modules older than their source (an edit since the last build)."""
    from mcp_tunnel.native import stale_modules

    stale = stale_modules(SRC)
    if stale:
        pytest.exit(
            f"compiled modules are older than their source ({', '.join(stale)}): run ./dev build",
            returncode=2,
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    up = await RecordingUpstream().start()
    yield up
    await up.close()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def _forget_redacted_values() -> None:
    """The redaction list is process-wide: a test's hidden values must not mask the next one's."""
    from mcp_tunnel import redact

    redact.clear()
