"""Shared pieces of the setup tests: identities of the fakes and an in-process `setup` runner."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.oidc import FakeOIDCIssuer

from mcp_tunnel.setup.cli import Hooks, run
from mcp_tunnel.setup.retry import RetryPolicy

ORG = "7f1e9a52-0c1d-4c1b-9a57-2a6f1b0c9d11"
RULE_ID = "fdrl_test01"
SUBJECT = "system:serviceaccount:mcp-tunnel:mcp-tunnel-setup"


@dataclass
class Result:
    code: int
    out: str
    err: str
    sleeps: list[float]

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Runner:
    """Runs `setup ...` in-process with WIF env pointing at the fakes and a recording sleep."""

    anthropic: FakeAnthropic
    issuer: FakeOIDCIssuer
    tmp_path: Path
    env: dict[str, str] = field(default_factory=dict)
    attempts: int = 6

    def __post_init__(self) -> None:
        self.token_file = self.tmp_path / "oidc-token"
        self.token_file.write_text(self.issuer.mint(SUBJECT))
        self.env = {
            "ANTHROPIC_FEDERATION_RULE_ID": RULE_ID,
            "ANTHROPIC_ORGANIZATION_ID": ORG,
            "ANTHROPIC_IDENTITY_TOKEN_FILE": str(self.token_file),
        }

    @property
    def out_dir(self) -> Path:
        return self.tmp_path / "data"

    def __call__(self, *argv: str, env: dict[str, str] | None = None) -> Result:
        sleeps: list[float] = []
        retry = RetryPolicy(
            attempts=self.attempts, base_delay=0.001, max_delay=0.004, sleep=sleeps.append, rng=lambda: 1.0
        )
        out, err = io.StringIO(), io.StringIO()
        code = run(list(argv), self.env if env is None else env, out=out, err=err, hooks=Hooks(retry=retry))
        return Result(code, out.getvalue(), err.getvalue(), sleeps)

    def init(self, *extra: str) -> Result:
        return self(
            "init",
            f"--api-url={self.anthropic.url}",
            f"--output=dir:{self.out_dir}",
            "--key-type=ecdsa-p256",
            *extra,
        )
