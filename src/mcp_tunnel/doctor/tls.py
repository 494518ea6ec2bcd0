"""Step 3, inner TLS: what Anthropic's backend checks in the handshake, before it happens.

Anthropic rejects the proxy's certificate with nothing but `tls handshake failed` in the proxy's
log. The doctor runs the same requirement policy as `certs check` (`certs.check.check_pair`)
against the CA and `tunnel_domain`, judges whether the proxy's user can read the files from
their owner and mode bits, and then, with `--proxy`, does a real handshake through the running
proxy for every route host, as Anthropic would.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mcp_tunnel.certs.check import Finding, Status, check_pair
from mcp_tunnel.config import Config
from mcp_tunnel.doctor.context import Context, assigned_domain
from mcp_tunnel.doctor.model import Check, fail, ok, skip, warn
from mcp_tunnel.doctor.probes import HandshakeResult

RENEW_DAYS = 14  # warn when the server certificate has less left than this

# --- certificate requirements ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertFacts:
    ca_file: str | None
    ca_pem: bytes | None
    cert_file: str
    cert_pem: bytes | None
    key_file: str
    key_pem: bytes | None
    domain: str  # tunnel_domain ("" when unset)
    read_errors: tuple[str, ...] = ()  # files the doctor itself could not read


def _issue_cmd(facts: CertFacts, domain: str | None = None) -> str:
    ca_dir = str(Path(facts.ca_file).parent) if facts.ca_file else "data"
    return f"mcp-tunnel certs issue --ca-dir {ca_dir} --domain {domain or facts.domain or '<tunnel-domain>'}"


def _san_domains(cert_pem: bytes | None) -> list[str]:
    cert = _load(cert_pem)
    if cert is None:
        return []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names = [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)]
    return [n[2:] for n in names if n.startswith("*.")]


def _load(pem: bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def finding_fix(finding: Finding, facts: CertFacts, assigned: str | None) -> str:
    """How to repair one broken requirement (the official fixes: renew, regenerate, register)."""
    fid = finding.id
    if fid == "server.san":
        covered = _san_domains(facts.cert_pem)
        other = covered[0] if covered else None
        if assigned is not None and facts.domain == assigned:
            return (
                f"the certificate is for the wrong domain: reissue it for {assigned}: "
                f"{_issue_cmd(facts, assigned)}"
            )
        if other and other != facts.domain:
            return (
                f"if {other} is the domain on the tunnel page, tunnel_domain is wrong: set "
                f"tunnel_domain: {other} and restart the proxy; otherwise reissue the certificate "
                f"for {facts.domain}: {_issue_cmd(facts)}"
            )
        return f"reissue the certificate with SAN *.{facts.domain}: {_issue_cmd(facts)}"
    if fid == "server.validity":
        return (
            f"renew the server certificate: {_issue_cmd(facts)} --reuse-key (Helm: the cert-renew "
            "CronJob; setup renew-cert)"
        )
    if fid in ("server.signed_by_ca", "server.authority_key_identifier"):
        return (
            f"{facts.ca_file} did not issue {facts.cert_file}: reissue the certificate with the CA "
            f"registered on the tunnel ({_issue_cmd(facts)}), or pass that CA with --ca; Anthropic "
            "answers `unknown ca` otherwise"
        )
    if fid == "ca.validity":
        return "make a new CA, register it beside the old one (two slots), reissue the server certificate"
    if fid.startswith("ca."):
        return (
            "make a compliant CA (mcp-tunnel certs init --domain D --out data, or the official openssl "
            "recipe) "
            "and register data/ca.crt on the tunnel"
        )
    if fid == "key.matches":
        return (
            f"{facts.key_file} does not belong to {facts.cert_file}: put the matching key there, or "
            "reissue the pair"
        )
    return f"reissue the server certificate: {_issue_cmd(facts)}"


def judge_certificates(facts: CertFacts, *, now: datetime, assigned: str | None = None) -> list[Check]:
    """`certs check` against the CA and tunnel_domain, one check per requirement."""
    if facts.cert_pem is None:
        return [skip("certificates", "cannot read the certificate: " + "; ".join(facts.read_errors))]
    domain = facts.domain or None
    findings = check_pair(facts.ca_pem or b"", facts.cert_pem, key_pem=facts.key_pem, domain=domain, now=now)
    checks: list[Check] = []
    for f in findings:
        if facts.ca_pem is None and f.id.startswith("ca."):
            continue
        if f.status is Status.PASS:
            checks.append(ok(f.id, f"{f.requirement}: {f.detail}"))
        elif f.status is Status.SKIP or (facts.ca_pem is None and f.id == "server.signed_by_ca"):
            reason = (
                "no CA given (--ca, or ca.crt beside tls.cert_file)" if facts.ca_pem is None else f.detail
            )
            checks.append(skip(f.id, f"{f.requirement}: {reason}"))
        else:
            checks.append(fail(f.id, f"{f.requirement}: {f.detail}", finding_fix(f, facts, assigned)))
    if facts.ca_pem is None:
        checks.insert(0, skip("ca", "no CA given: pass --ca ca.crt (the CA registered on the tunnel)"))
    cert = _load(facts.cert_pem)
    if cert is not None:
        left = cert.not_valid_after_utc - now
        if 0 < left.days < RENEW_DAYS:
            checks.append(
                warn(
                    "server.renewal",
                    f"the server certificate expires in {left.days} day(s)",
                    f"renew now: {_issue_cmd(facts)} --reuse-key",
                )
            )
    if facts.key_pem is None:
        checks.append(
            skip("key.matches", "the doctor could not read the key: " + "; ".join(facts.read_errors))
        )
    return checks


def judge_route_hosts(config: Config, cert_pem: bytes | None) -> Check | None:
    """Every route's public host must be covered by a SAN name (a wildcard covers one label only)."""
    cert = _load(cert_pem)
    if cert is None or not config.routes:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    router = config.router
    hosts = [router.public_host(r) for r in config.routes.values()]
    uncovered = [h for h in hosts if not any(_covers(n, h) for n in names)]
    if not uncovered:
        return ok("route_hosts", f"the certificate covers every route host ({', '.join(hosts)})")
    return fail(
        "route_hosts",
        f"the certificate does not cover {', '.join(uncovered)} (a wildcard covers one label only)",
        "use route keys that are one label under tunnel_domain, or add those names to the certificate",
    )


def _covers(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


# --- can the proxy's user read the files? -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileStat:
    path: str
    uid: int
    gid: int
    mode: int  # permission bits
    is_dir: bool = False


class Access(Enum):
    YES = "yes"
    NO = "no"
    GROUP = "group"  # only if the proxy's user is in the file's group: unknowable from here


def access(st: FileStat, uid: int) -> Access:
    """POSIX permission check from the bits: owner bits for the owner, else group, else other.

    The proxy's groups are unknown (supplementary groups live in the container's /etc/group), so
    a grant only through the group bits is `GROUP`, not a yes or a no. The official images run
    as 65532:65532, so a group equal to the uid counts as the proxy's primary group.
    """
    need = 0o1 if st.is_dir else 0o4  # search for directories, read for files
    if uid == 0:
        return Access.YES
    if st.uid == uid:
        return Access.YES if st.mode & (need << 6) else Access.NO
    if st.gid == uid:
        return Access.YES if st.mode & (need << 3) else Access.NO
    if st.mode & need:
        return Access.YES
    return Access.GROUP if st.mode & (need << 3) else Access.NO


def who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def judge_readable(label: str, chain: Sequence[FileStat], uid: int, error: str | None = None) -> Check:
    """`chain` is the file then its directories up to /; each must let `uid` through."""
    name = f"{label}_readable"
    if error is not None or not chain:
        return skip(name, f"cannot stat the file: {error or 'no such file'}")
    target = chain[0]
    for st in chain[1:]:
        if access(st, uid) is Access.NO:
            return fail(
                name,
                f"directory {st.path} (owner {who(st.uid)}, mode {st.mode:04o}) does not let {who(uid)} "
                f"through to {target.path}",
                f"chmod o+x {st.path} (or make it owned by uid {uid})",
            )
    verdict = access(target, uid)
    desc = f"{target.path} is owned by {who(target.uid)}, group {target.gid}, mode {target.mode:04o}"
    if verdict is Access.YES:
        return ok(name, f"{desc}: readable by the proxy's {who(uid)}")
    if verdict is Access.GROUP:
        return warn(
            name,
            f"{desc}: the proxy's {who(uid)} can read it only through group {target.gid}, and the "
            "proxy's supplementary groups cannot be known from here",
            f"chown {uid} {target.path} (it stays 0600: the safe fix); or chmod 644 {target.path}, the "
            "official troubleshooting's fix, which makes it readable by every user of the host",
        )
    return fail(
        name,
        f"{desc}: the proxy's {who(uid)} cannot read it (the proxy exits with "
        f"`open {target.path}: permission denied`; Anthropic then sees tls handshake failed)",
        f"chown {uid} {target.path} (it stays 0600: the safe fix); or chmod 644 {target.path}, the "
        "official troubleshooting's fix, which makes it readable by every user of the host",
    )


def stat_chain(path: str) -> tuple[list[FileStat], str | None]:
    """Gather: the file and every directory above it (symlinks followed, as the proxy's open does)."""
    chain: list[FileStat] = []
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as exc:
        return [], (exc.strerror or str(exc)).lower()
    chain.append(FileStat(path, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
    parent = Path(real).parent
    while True:
        try:
            dst = os.stat(parent)
        except OSError:
            break
        chain.append(FileStat(str(parent), dst.st_uid, dst.st_gid, stat.S_IMODE(dst.st_mode), is_dir=True))
        if parent.parent == parent:
            break
        parent = parent.parent
    return chain, None


# --- the live handshake ------------------------------------------------------------------------


def handshake_fix(result: HandshakeResult, proxy_url: str) -> str:
    error = (result.error or "").lower()
    if result.stage == "websocket":
        return f"start the proxy, or point --proxy at its listen_addr (now {proxy_url})"
    if result.stage == "timeout":
        return (
            "the proxy does not answer in time: check that listen_addr is the proxy's and nothing else "
            "holds it"
        )
    if "unable to get local issuer" in error or "unknown ca" in error or "self-signed" in error:
        return (
            "the proxy serves a certificate this CA did not issue: reissue it with the registered CA "
            "(see the checks above)"
        )
    if "hostname mismatch" in error or "doesn't match" in error:
        return "the served certificate does not cover this host: reissue it for *.<tunnel_domain>"
    if "expired" in error:
        return "the served certificate has expired: renew it (the proxy reloads it within 2 s)"
    return "see the certificate checks above; the proxy logs `tls handshake failed` with the reason"


def judge_handshake(result: HandshakeResult, proxy_url: str, file_der: bytes | None) -> Check:
    name = f"handshake:{result.host}"
    if result.stage is None:
        extra = ""
        if file_der is not None and result.served_der is not None and result.served_der != file_der:
            return warn(
                name,
                "handshake ok, but the proxy serves a different certificate than tls.cert_file "
                "(a reload is pending, or the proxy runs another config)",
                "wait for the reload (2 s), or restart the proxy with this config",
            )
        if result.alpn != "http/1.1":
            extra = f"; ALPN {result.alpn or 'none'}"
        return ok(name, f"TLS through {proxy_url} verified against the CA for {result.host}{extra}")
    label = {"tls": "tls handshake failed", "websocket": "websocket refused"}.get(result.stage, result.stage)
    return fail(name, f"{label}: {result.error}", handshake_fix(result, proxy_url))


# --- the step ----------------------------------------------------------------------------------


def _read(path: str | None, errors: list[str]) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        errors.append(f"{path}: {(exc.strerror or str(exc)).lower()}")
        return None


def choose_ca(ctx: Context) -> str | None:
    """--ca, else setup's ca.crt beside the server certificate."""
    if ctx.options.ca:
        return ctx.options.ca
    found = ctx.data_file("ca.crt")
    return str(found) if found else None


async def run(ctx: Context) -> list[Check]:
    config = ctx.config
    if config is None:
        return [skip("certificates", "the config did not load, so the certificate and key are unknown")]
    ctx.ca_file = choose_ca(ctx)
    errors: list[str] = []
    facts = CertFacts(
        ca_file=ctx.ca_file,
        ca_pem=_read(ctx.ca_file, errors),
        cert_file=config.cert_file,
        cert_pem=_read(config.cert_file, errors),
        key_file=config.key_file,
        key_pem=_read(config.key_file, errors),
        domain=config.tunnel_domain,
        read_errors=tuple(errors),
    )
    assigned = assigned_domain(ctx)[0]
    checks: list[Check] = []
    if ctx.ca_file and not ctx.options.ca:
        checks.append(ok("ca", f"using {ctx.ca_file} (beside tls.cert_file; --ca overrides)"))
    checks += judge_certificates(facts, now=datetime.now(UTC), assigned=assigned)
    covered = judge_route_hosts(config, facts.cert_pem)
    if covered is not None:
        checks.append(covered)
    uid = ctx.options.proxy_uid
    for label, path in (("cert", config.cert_file), ("key", config.key_file)):
        chain, error = stat_chain(path)
        checks.append(judge_readable(label, chain, uid, error))
    checks += await _handshakes(ctx, facts)
    return checks


async def _handshakes(ctx: Context, facts: CertFacts) -> list[Check]:
    assert ctx.config is not None
    proxy = ctx.options.proxy
    if proxy is None:
        return [skip("handshake", "no --proxy given: pass --proxy ws://HOST:PORT/ for a live handshake")]
    if ctx.ca_file is None or facts.ca_pem is None:
        return [skip("handshake", "no readable CA to verify the proxy's certificate with (--ca)")]
    router = ctx.config.router
    hosts = list(dict.fromkeys(router.public_host(r) for r in ctx.config.routes.values()))
    cert = _load(facts.cert_pem)
    file_der = cert.public_bytes(Encoding.DER) if cert is not None else None
    client = ctx.probes.tunnel(proxy, ctx.ca_file)
    checks: list[Check] = []
    unreachable: str | None = None
    for host in hosts:
        if unreachable is not None:
            checks.append(skip(f"handshake:{host}", f"the proxy is not reachable: {unreachable}"))
            continue
        result = await ctx.probes.handshake(client, host)
        ctx.handshakes[host] = result
        checks.append(judge_handshake(result, proxy, file_der))
        if result.stage in ("websocket", "timeout"):
            unreachable = result.error
    return checks
