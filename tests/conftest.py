from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.pki import PKI, make_pki
from support.upstreams import RecordingUpstream


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
