"""Progress lines for the operator, with every credential scrubbed.

Tokens and keys must never reach a log (SPEC §10, digest §9). Everything that obtains a secret
registers it here, and every line written (including the final error line) passes `scrub`, so a
secret echoed back by an error message still cannot leak.
"""

from __future__ import annotations

import sys
from typing import TextIO

from mcp_tunnel import redact

REDACTED = "[REDACTED]"
_MIN_SECRET_LEN = 8  # never "redact" something so short it would mangle ordinary text


class Reporter:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err
        self._secrets: set[str] = set()

    def secret(self, value: str | bytes | None) -> None:
        """Remember a credential so it is scrubbed from anything written afterwards."""
        if value is None:
            return
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        for piece in (text, text.strip()):
            if len(piece) >= _MIN_SECRET_LEN:
                self._secrets.add(piece)
        redact.register(text)  # and from the top-level error line and any --debug traceback

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return redact.scrub(text)

    def info(self, message: str) -> None:
        out = self._out or sys.stdout
        print(f"setup: {self.scrub(message)}", file=out, flush=True)

    def warn(self, message: str) -> None:
        out = self._err or sys.stderr
        print(f"setup: warning: {self.scrub(message)}", file=out, flush=True)
