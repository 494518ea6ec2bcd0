"""A fake OIDC issuer: discovery document and JWKS over HTTP, real signed JWTs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from tests.fakes.httpserver import Drop, Reply, Request, ServerThread


class FakeOIDCIssuer:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex[:12]
        self.jwks_fetches = 0
        self._server = ServerThread(self)
        self.url = self._server.url()

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    def handle(self, request: Request) -> Reply | Drop:
        if request.path == "/.well-known/openid-configuration":
            return Reply(200, {"issuer": self.url, "jwks_uri": self.jwks_url})
        if request.path == "/jwks":
            self.jwks_fetches += 1
            jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
            jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
            return Reply(200, {"keys": [jwk]})
        return Reply(404, {"error": "not found"})

    def mint(
        self,
        sub: str = "system:serviceaccount:mcp-tunnel:mcp-tunnel-setup",
        aud: str | list[str] = "api.anthropic.com",
        *,
        lifetime: int = 600,
        iat: float | None = None,
        iss: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        **claims: Any,
    ) -> str:
        now = time.time() if iat is None else iat
        payload = {
            "iss": iss or self.url,
            "sub": sub,
            "aud": aud,
            "iat": int(now),
            "exp": int(now + lifetime),
        }
        payload.update(claims)
        return jwt.encode(payload, key or self._key, algorithm="ES256", headers={"kid": self.kid})

    def close(self) -> None:
        self._server.close()
