"""Fixtures for the setup tests: the fakes on loopback and a runner for `setup` commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # so `tests.fakes` imports however pytest is started
    sys.path.insert(0, _ROOT)

from tests.fakes.anthropic import FakeAnthropic, Rule  # noqa: E402
from tests.fakes.oidc import FakeOIDCIssuer  # noqa: E402
from tests.setup.support import ORG, RULE_ID, Runner  # noqa: E402


@pytest.fixture
def issuer() -> Iterator[FakeOIDCIssuer]:
    fake = FakeOIDCIssuer()
    yield fake
    fake.close()


@pytest.fixture
def anthropic(issuer: FakeOIDCIssuer) -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.add_rule(
        Rule(
            id=RULE_ID,
            issuer=issuer.url,
            audience="api.anthropic.com",
            subject_prefix="system:serviceaccount:mcp-tunnel:",
            organization_id=ORG,
            workspaces=["default"],
        )
    )
    yield fake
    fake.close()


@pytest.fixture
def setup_cli(anthropic: FakeAnthropic, issuer: FakeOIDCIssuer, tmp_path: Path) -> Runner:
    return Runner(anthropic, issuer, tmp_path)
