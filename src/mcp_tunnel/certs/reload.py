"""The proxy's certificate source: load the pair, poll it, swap in a new context (SPEC §6).

Why a poll and not inotify: a Kubernetes Secret mount changes by swapping a ``..data`` symlink,
which inotify on the file names does not report, and the official proxy's users expect a renewed
``tls.crt`` on a host directory to be picked up as well. ``os.stat`` on the configured path
follows symlinks, so (device, inode, mtime, size) of the *target* changes on either kind of
update, and the poll costs two stat calls.

Why check the pair ourselves before OpenSSL: a renewal replaces two files one after the other;
the intermediate state (new certificate, old key) must be refused with a reason that says so,
while the old context keeps serving. OpenSSL's own message for it (``KEY_VALUES_MISMATCH``) is
obscure.

Why re-read after building the context: `build` opens the files again by path. If they changed
between our read and its read, the context might hold a different pair from the one we checked;
comparing the bytes afterwards catches that, and the pair is retried on the next poll.

Connections already established keep the `SSLContext` they were created with; only new
handshakes use `context`, so a reload never touches a live connection.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from mcp_tunnel.certs.check import key_matches_cert
from mcp_tunnel.certs.files import StrPath, read_bytes
from mcp_tunnel.certs.pem import parse_certs, parse_key
from mcp_tunnel.errors import CertificateError

BuildContext = Callable[[str, str], ssl.SSLContext]


class LogFn(Protocol):
    def __call__(self, event: str, /, **fields: Any) -> None: ...


def _no_log(event: str, /, **fields: Any) -> None:
    return None


# (st_dev, st_ino, st_mtime_ns, st_size), or the errno when stat failed: a file that vanishes
# or comes back is a change too.
_Stamp = tuple[int, int, int, int] | tuple[str, int]


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)  # follows symlinks: the Secret's ..data swap changes the target
    except OSError as exc:
        return ("error", exc.errno or 0)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class _Unstable(Exception):
    """The files changed while we were loading them; try again on the next poll."""


@dataclass(frozen=True)
class LoadedPair:
    """What is serving now. Key bytes are kept only to notice a change, never logged."""

    context: ssl.SSLContext
    cert: x509.Certificate
    cert_bytes: bytes
    key_bytes: bytes

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")


class CertificateWatcher:
    """Holds the current server `SSLContext` and replaces it when the files on disk change.

    Not thread-safe by itself: call `poll` from one place (the proxy's event loop does it on a
    timer). Readers of `context` just take the attribute; the swap is one assignment.
    """

    def __init__(
        self,
        cert_file: StrPath,
        key_file: StrPath,
        *,
        build: BuildContext,
        log: LogFn | None = None,
        stable_retries: int = 3,
    ) -> None:
        self.cert_file = os.fspath(cert_file)
        self.key_file = os.fspath(key_file)
        self._build = build
        self._log: LogFn = log or _no_log
        self._stable_retries = stable_retries
        self._current: LoadedPair | None = None
        self._seen: tuple[_Stamp, _Stamp] | None = None
        self.last_error: str | None = None

    # -- what the proxy reads -----------------------------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        if self._current is None:
            raise RuntimeError("CertificateWatcher.load() has not succeeded yet")
        return self._current.context

    @property
    def certificate(self) -> x509.Certificate | None:
        return self._current.cert if self._current else None

    @property
    def not_after(self) -> datetime | None:
        return self._current.cert.not_valid_after_utc if self._current else None

    @property
    def serial(self) -> int | None:
        return self._current.cert.serial_number if self._current else None

    # -- loading --------------------------------------------------------------------------------

    def load(self) -> ssl.SSLContext:
        """First load. Raises CertificateError with a one-line reason (the proxy exits on it)."""
        for _ in range(max(1, self._stable_retries)):
            stamps = self._stamps()
            try:
                pair = self._read_and_build()
            except _Unstable:
                continue
            self._install(pair, stamps, event="certificate loaded")
            return pair.context
        raise CertificateError(
            f"{self.cert_file} and {self.key_file} kept changing while being loaded; "
            "is something rewriting them in place?"
        )

    def poll(self) -> bool:
        """Reload if either file changed since the last attempt. True if a new pair now serves.

        A refused pair is not retried until one of the files changes again (no log spam every
        poll); a pair that changed while loading is retried on the next poll.
        """
        stamps = self._stamps()
        if stamps == self._seen:
            return False
        try:
            pair = self._read_and_build()
        except _Unstable:
            self._seen = None
            return False
        except CertificateError as exc:
            self._seen = stamps
            self.last_error = str(exc)
            self._log(
                "certificate reload failed",
                reason=str(exc),
                cert_file=self.cert_file,
                key_file=self.key_file,
                serving_serial=self._current.serial_hex if self._current else None,
            )
            return False
        if (
            self._current is not None
            and pair.cert_bytes == self._current.cert_bytes
            and pair.key_bytes == self._current.key_bytes
        ):
            self._seen = stamps  # touched or rewritten with the same content: nothing to do
            self.last_error = None
            return False
        self._install(pair, stamps, event="certificate reloaded")
        return True

    def _stamps(self) -> tuple[_Stamp, _Stamp]:
        return (_stamp(self.cert_file), _stamp(self.key_file))

    def _install(self, pair: LoadedPair, stamps: tuple[_Stamp, _Stamp], *, event: str) -> None:
        self._current = pair
        self._seen = stamps
        self.last_error = None
        not_after = pair.cert.not_valid_after_utc
        self._log(
            event,
            serial=pair.serial_hex,
            not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            days_left=(not_after - datetime.now(UTC)).days,
            cert_file=self.cert_file,
        )

    def _read_and_build(self) -> LoadedPair:
        cert_bytes = read_bytes(self.cert_file, "server certificate")
        key_bytes = read_bytes(self.key_file, "server key")
        cert = parse_certs(cert_bytes, f"server certificate {self.cert_file}")[0]
        key = parse_key(key_bytes, f"server key {self.key_file}")
        if not key_matches_cert(key.public_key(), cert):
            raise CertificateError(
                f"{self.key_file} does not match {self.cert_file} (certificate serial "
                f"{format(cert.serial_number, 'x')}); if a renewal is replacing the two files, "
                "the pair loads once both have landed"
            )
        try:
            context = self._build(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            self._raise_if_changed(cert_bytes, key_bytes)
            raise CertificateError(
                f"cannot use {self.cert_file} / {self.key_file}: {tls_alert_reason(exc)}"
            ) from None
        except OSError as exc:
            self._raise_if_changed(cert_bytes, key_bytes)
            raise CertificateError(f"cannot load {self.cert_file} / {self.key_file}: {exc}") from None
        self._raise_if_changed(cert_bytes, key_bytes)
        return LoadedPair(context=context, cert=cert, cert_bytes=cert_bytes, key_bytes=key_bytes)

    def _raise_if_changed(self, cert_bytes: bytes, key_bytes: bytes) -> None:
        try:
            same = (
                read_bytes(self.cert_file, "server certificate") == cert_bytes
                and read_bytes(self.key_file, "server key") == key_bytes
            )
        except CertificateError:
            same = False
        if not same:
            raise _Unstable()


# -- TLS failure reasons as operators grep for them ----------------------------------------------

_REASONS: dict[str, str] = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown ca (unknown certificate authority)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake failure",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol version",
    "UNSUPPORTED_PROTOCOL": "protocol version (unsupported protocol)",
    "TLSV1_ALERT_DECRYPT_ERROR": "decrypt error",
    "TLSV1_ALERT_INTERNAL_ERROR": "internal error",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
    "TLSV1_UNRECOGNIZED_NAME": "unrecognized name",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "no application protocol",
    "NO_APPLICATION_PROTOCOL": "no application protocol",
    "NO_SHARED_CIPHER": "no shared cipher",
    "NO_CIPHERS_AVAILABLE": "no shared cipher (no ciphers available)",
    "HTTP_REQUEST": "http request (plain HTTP sent to the TLS port)",
    "HTTPS_PROXY_REQUEST": "http request (an HTTP CONNECT sent to the TLS port)",
    "WRONG_VERSION_NUMBER": "wrong version number",
    "UNEXPECTED_EOF_WHILE_READING": "unexpected eof (peer closed during the handshake)",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": "bad record mac",
    "SSLV3_ALERT_BAD_RECORD_MAC": "bad record mac",
    "KEY_VALUES_MISMATCH": "key values mismatch (the key does not belong to the certificate)",
    "EE_KEY_TOO_SMALL": "ee key too small",
    "CA_MD_TOO_WEAK": "ca md too weak",
}
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_", "TLSV1_")


def tls_alert_reason(exc: ssl.SSLError) -> str:
    """A TLS failure in the words the official troubleshooting uses (``unknown ca``, ...).

    For a certificate we refused as a client (``CERTIFICATE_VERIFY_FAILED``) the verify message
    is added, since it says which check failed (``certificate has expired``).
    """
    reason: str | None = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        message = getattr(exc, "verify_message", None)
        return f"certificate verify failed ({message})" if message else "certificate verify failed"
    if not reason:
        if isinstance(exc, ssl.SSLEOFError):
            return "unexpected eof (peer closed during the handshake)"
        text = str(exc.args[1] if len(exc.args) > 1 else exc).strip().lower()
        return text or "unknown tls error"
    if reason in _REASONS:
        return _REASONS[reason]
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
            break
    return reason.lower().replace("_", " ")
