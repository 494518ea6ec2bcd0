"""Fixtures of the hostile-peer tests (tests/proxy/test_hostile_*.py, support/hostile.py).

`build` is "compiled" (what users run) and "pure" (the same modules as Python). The compiled case
is skipped only in a pure test run on a checkout without compiled modules (`MCP_TUNNEL_PURE=1
./dev test`); anywhere else, a compiled build that does not run compiled fails the test (the
check runs in the test: `hostile(...)`, `shared_proxy.begin()`).

`hostile` starts a proxy of that build for one test, with the routes and config it needs;
`shared_proxy` is one proxy of that build for a module's cases that need nothing but the
healthy route, each case checked on its own by `begin`/`check` (the per-case oracle), which
saves a process start per case.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from support.builds import BUILDS, assert_build, skip_reason
from support.hostile import (
    HEALTHY,
    HealthyUpstream,
    HostileProxy,
    HostileUpstream,
    MakeUpstream,
    Script,
    StartProxy,
    echo,
)
from support.pki import PKI


@pytest.fixture(scope="session")
def healthy_upstream() -> Iterator[HealthyUpstream]:
    upstream = HealthyUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module", params=BUILDS)
def build(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    reason = skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return name


@pytest.fixture
def hostile(build: str, pki: PKI, tmp: Path, healthy_upstream: HealthyUpstream) -> Iterator[StartProxy]:
    """`start(routes, **config)`: a proxy of this build with `routes` and the healthy route."""
    started: list[HostileProxy] = []

    def start(routes: Mapping[str, str] | None = None, **extra: Any) -> HostileProxy:
        assert_build(build)  # in the test: a compiled build that is not compiled fails it
        all_routes = {HEALTHY: healthy_upstream.url, **(routes or {})}
        proxy = HostileProxy(build, pki, tmp / f"proxy{len(started)}", all_routes, healthy_upstream, **extra)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.kill()


@pytest.fixture
async def upstreams() -> AsyncIterator[MakeUpstream]:
    """`await make(script)`: a started `HostileUpstream`, closed after the test."""
    made: list[HostileUpstream] = []

    async def make(script: Script = echo) -> HostileUpstream:
        upstream = await HostileUpstream(script).start()
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        await upstream.close()


@pytest.fixture(scope="module")
def shared_proxy(
    build: str, pki: PKI, tmp_path_factory: pytest.TempPathFactory, healthy_upstream: HealthyUpstream
) -> Iterator[HostileProxy]:
    directory = tmp_path_factory.mktemp("shared")
    proxy = HostileProxy(build, pki, directory, {HEALTHY: healthy_upstream.url}, healthy_upstream)
    yield proxy  # started by the first case's `begin()`
    proxy.kill()
