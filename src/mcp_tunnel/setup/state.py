"""What an output holds: the documented files plus our small state record.

The state record (`setup-state.json`) is what makes `init` idempotent across partial failures:
it is written *before* any non-idempotent API call, so the next run knows a create may already
have happened (the pending display name) and which CA belongs to which tunnel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

TUNNEL_ID = "tunnel-id"
TUNNEL_DOMAIN = "tunnel-domain"
TUNNEL_TOKEN = "tunnel-token"
TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_CRT = "ca.crt"
CA_KEY = "ca.key"
STATE = "setup-state.json"

ALL_KEYS = (TUNNEL_ID, TUNNEL_DOMAIN, TUNNEL_TOKEN, TLS_CRT, TLS_KEY, CA_CRT, CA_KEY, STATE)
SECRET_KEYS = frozenset({TUNNEL_TOKEN, TLS_KEY, CA_KEY})
STATE_FORMAT = 1


@dataclass(frozen=True)
class State:
    """Non-secret bookkeeping; every field may be missing (an output from elsewhere)."""

    tunnel_id: str | None = None  # the tunnel the CA (and its certificate id) belong to
    ca_fingerprint: str | None = None  # lowercase hex SHA-256 of the CA's DER
    ca_certificate_id: str | None = None  # tcrt_..., once registration is confirmed
    token_version: str | None = None  # last --token-version applied
    token_id: str | None = None  # id of the token value written
    pending_display_name: str | None = None  # a create was attempted under this name

    def to_bytes(self) -> bytes:
        doc = {"format": STATE_FORMAT, **{k: v for k, v in asdict(self).items() if v is not None}}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> State:
        """Unreadable state is treated as absent: the API state and fingerprints still decide."""
        if not data:
            return cls()
        try:
            doc = json.loads(data)
        except ValueError:
            return cls()
        if not isinstance(doc, dict):
            return cls()
        values = {}
        for name in cls.__dataclass_fields__:
            value = doc.get(name)
            values[name] = value if isinstance(value, str) and value else None
        return cls(**values)

    def with_(self, **changes: str | None) -> State:
        return replace(self, **changes)


@dataclass(frozen=True)
class Stored:
    """A read-only view of an output's contents."""

    files: Mapping[str, bytes]

    def text(self, key: str) -> str | None:
        data = self.files.get(key)
        if data is None:
            return None
        text = data.decode("utf-8", "replace").strip()
        return text or None

    @property
    def tunnel_id(self) -> str | None:
        return self.text(TUNNEL_ID)

    @property
    def tunnel_domain(self) -> str | None:
        return self.text(TUNNEL_DOMAIN)

    @property
    def state(self) -> State:
        return State.from_bytes(self.files.get(STATE))

    @property
    def has_ca(self) -> bool:
        return bool(self.files.get(CA_CRT)) and bool(self.files.get(CA_KEY))

    @property
    def has_token(self) -> bool:
        return bool(self.text(TUNNEL_TOKEN))

    @property
    def empty(self) -> bool:
        return not any(self.files.get(k) for k in ALL_KEYS)
