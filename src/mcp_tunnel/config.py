"""The proxy's configuration file (SPEC §3): types and loading. Pure apart from reading files.

The types are the interface the proxy codes against. `load_config` reads the YAML as nodes (not
Python objects) so that every mistake can name its file and line; it then checks one section at a
time and raises the first mistake as a one-line `ConfigError`. The only I/O is reading the config
file and the upstream CA bundle and probing that the certificate and key can be opened: the
certificate pair itself is checked by the proxy.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import pwd
import re
import socket
import ssl
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mcp_tunnel import redact
from mcp_tunnel.duration import SECOND, parse_duration_ns
from mcp_tunnel.envref import EnvRefError, expand
from mcp_tunnel.errors import ConfigError
from mcp_tunnel.ippolicy import RFC1918, IPPolicy
from mcp_tunnel.mcp_policy import McpSettings, ToolPolicy
from mcp_tunnel.oauth_rewrite import OAuthSettings, public_url
from mcp_tunnel.routing import Route, Router

DEFAULT_CONFIG_PATH = "/etc/mcp-gateway/config.yaml"


@dataclass(frozen=True, slots=True)
class Limits:
    """Our additions (SPEC §5): every limit and timeout has a default and a config field.

    YAML: a ``limits:`` mapping with these keys; durations are Go-style strings (``10s``).
    """

    handshake_timeout: float = 10.0  # WebSocket upgrade + inner TLS handshake
    header_timeout: float = 10.0  # read one request's headers (slowloris)
    idle_timeout: float = 120.0  # keep-alive idle on an inner connection
    upstream_connect_timeout: float = 10.0
    upstream_response_timeout: float = 300.0  # until the upstream's response headers
    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 0  # 0 = no limit
    max_connections: int = 1024  # concurrent tunnel (WebSocket) connections
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    dns_timeout: float = 5.0  # one upstream name's resolution; a stuck name delays no other
    body_timeout: float = 60.0  # a request body, from its head to its last byte (408)
    write_timeout: float = 60.0  # a tunnel peer that takes nothing of what is owed it is closed


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    ca_file: str | None = None
    include_system_cas: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    policy: IPPolicy = field(default_factory=IPPolicy)
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    host_header: str = "original"  # "original" (public tunnel host) or "upstream" (host:port)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listen_host: str  # "" = all interfaces (":8080")
    listen_port: int
    cert_file: str
    key_file: str
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))
    tunnel_domain: str = ""
    log_level: str = "info"  # debug | info | warn | error
    log_format: str = "text"  # text | json
    shutdown_timeout: float = 30.0
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    admin_host: str | None = None  # admin_addr, off unless set
    admin_port: int | None = None
    cert_reload_interval: float = 2.0  # tls.reload_interval
    limits: Limits = field(default_factory=Limits)
    oauth: OAuthSettings | None = None  # oauth: (SPEC §5.1), None = no OAuth rewriting
    mcp: McpSettings | None = None  # mcp: (issue #23), None = no MCP audit or policy, no JSON work
    workers: int = 1  # proxy processes on the listener (issue #24); 1 = no supervisor process
    warnings: tuple[str, ...] = ()  # one-line warnings found while loading (logged at start)

    @property
    def router(self) -> Router:
        return Router(self.routes, self.tunnel_domain)


# --------------------------------------------------------------------------------------------
# The keys each mapping accepts. Anything else is refused with a suggestion, because a typo
# must not silently turn into "no route for host" at request time.

_TOP_KEYS = (
    "listen_addr",
    "log_level",
    "log_format",
    "shutdown_timeout",
    "tunnel_domain",
    "admin_addr",
    "tls",
    "routes",
    "upstream",
    "limits",
    "oauth",
    "mcp",
    "workers",
)
_TLS_KEYS = ("cert_file", "key_file", "reload_interval")
_UPSTREAM_KEYS = ("allowed_ips", "disable_ip_validation", "tls", "host_header")
_UPSTREAM_TLS_KEYS = ("ca_file", "include_system_cas")
_LIMIT_KEYS = tuple(f.name for f in fields(Limits))
_OAUTH_KEYS = ("authorization_server", "authorization_endpoint", "protected_resources")
_MCP_KEYS = ("audit", "routes")
_MCP_ROUTE_KEYS = ("allow_tools", "deny_tools")
_ALL_FIELDS = (
    *(k for k in _TOP_KEYS),
    *(f"tls.{k}" for k in _TLS_KEYS),
    *(f"upstream.{k}" for k in _UPSTREAM_KEYS),
    *(f"upstream.tls.{k}" for k in _UPSTREAM_TLS_KEYS),
    *(f"limits.{k}" for k in _LIMIT_KEYS),
    *(f"oauth.{k}" for k in _OAUTH_KEYS),
    *(f"mcp.{k}" for k in _MCP_KEYS),
    *(f"mcp.routes.<key>.{k}" for k in _MCP_ROUTE_KEYS),
)

# Variables whose values every message may show: the tunnel domain is no secret (SPEC §3).
SHOWN_VARIABLES = frozenset({"TUNNEL_DOMAIN"})
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
HOST_HEADER_MODES = ("original", "upstream")

_OFFICIAL_SEQ_ROUTES = "cannot unmarshal !!seq into map[string]string"
_OFFICIAL_BAD_UPSTREAM = "invalid upstream (must be scheme://host:port)"
_UPSTREAM_EXAMPLE = "scheme://host:port with scheme http or https, e.g. http://hello-mcp:9000"

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_NULL_TAG = "tag:yaml.org,2002:null"


# --------------------------------------------------------------------------------------------
# The node-walking layer: where a value is, what it is, and one-line errors that say so.


@dataclass(slots=True)
class _Doc:
    """The file being loaded: its name (for every message), environment and warnings so far."""

    file: str
    environ: Mapping[str, str]
    warnings: list[str] = field(default_factory=list)
    hidden: dict[str, str] = field(default_factory=dict)  # value from ${NAME} -> "${NAME}"
    shown: set[str] = field(default_factory=set)  # of those, the ones that proved an address or path

    def hide(self, name: str, value: str) -> None:
        """A value from the environment: masked in every message unless it proves harmless."""
        if name not in SHOWN_VARIABLES and len(value) >= redact.MIN_LENGTH:
            self.hidden.setdefault(value, "${" + name + "}")

    def show(self, text: str) -> None:
        """`text` validated as a hostname, host:port, upstream URL, CIDR or path: the operator
        needs to see it, so the environment values in it are shown."""
        for value in self.hidden:
            if value in text:
                self.shown.add(value)

    def mask(self, text: str) -> str:
        for value in sorted(self.hidden, key=len, reverse=True):
            if value not in self.shown and value in text:
                text = text.replace(value, self.hidden[value])
        return text

    def register_hidden(self) -> None:
        """After a successful load: the values still hidden are hidden from logs too."""
        for value, label in self.hidden.items():
            if value not in self.shown:
                redact.register(value, label)

    def error(
        self,
        node: Node | None,
        fld: str | None,
        message: str,
        *,
        found: str | None = None,
        expected: str | None = None,
        detail: str | None = None,
        line: int | None = None,
    ) -> ConfigError:
        def m(text: str) -> str:
            return _printable(self.mask(text))

        return ConfigError(
            m(message),
            file=self.file,
            line=line if line is not None else (_line(node) if node is not None else None),
            field=None if fld is None else _printable(fld),
            found=None if found is None else m(found),
            expected=None if expected is None else m(expected),
            detail=None if detail is None else m(detail),
        )

    def warn(self, node: Node, fld: str, message: str) -> None:
        text = f"{self.file}:{_line(node)}: {_printable(fld)}: {message}".replace("\n", " ")
        self.warnings.append(_printable(self.mask(text)))


def _printable(text: str) -> str:
    """`text` with control characters written as escapes (a key `"\\r"` is shown as `\\r`): a
    carriage return or an escape sequence from the file must not break or rewrite the one line
    a mistake is shown on (found by fuzzing/config_file.py). A newline stays: render() makes it a
    space."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


_T = TypeVar("_T")

# A mapping as read from the file: key text -> (key node, value node), in file order.
_Entries = dict[str, tuple[Node, Node]]


def _line(node: Node) -> int:
    """1-based line of a node (PyYAML marks count from 0)."""
    return int(node.start_mark.line) + 1


def _q(text: str) -> str:
    """A value quoted for a message; JSON escaping keeps control characters off the line."""
    return json.dumps(text, ensure_ascii=False)


def _kind(node: Node) -> str:
    """What a node is, in the YAML words an operator would recognise."""
    if isinstance(node, SequenceNode):
        return "a list (!!seq)"
    if isinstance(node, MappingNode):
        return "a mapping (!!map)"
    if _is_null(node):
        return "nothing (null)"
    return _q(str(node.value))


def _is_null(node: Node | None) -> bool:
    """True for a missing value: ``key:``, ``key: ~`` or ``key: null`` (Go leaves the default)."""
    return node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _mapping(doc: _Doc, node: Node, fld: str) -> _Entries:
    """The entries of a mapping node; refuses other kinds, non-scalar and duplicate keys."""
    if not isinstance(node, MappingNode):
        raise doc.error(
            node, fld or None, "must be a mapping", found=_kind(node), expected="key: value lines"
        )
    entries: _Entries = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            raise doc.error(
                key_node, fld or None, "a key must be plain text", found=_kind(key_node), expected="a name"
            )
        key = str(key_node.value)
        if key in entries:
            first = _line(entries[key][0])
            raise doc.error(
                key_node,
                _join(fld, key),
                f"duplicate key (first given at line {first})",
                found=f"{_q(key)} twice",
                expected="each key once",
            )
        entries[key] = (key_node, value_node)
    return entries


def _check_keys(doc: _Doc, entries: _Entries, allowed: Sequence[str], prefix: str) -> None:
    """Refuse keys this mapping does not have, suggesting the field that was probably meant."""
    for key, (key_node, _) in entries.items():
        if key in allowed:
            continue
        raise doc.error(
            key_node,
            _join(prefix, key),
            "unknown field" + _suggest(key, allowed, prefix),
            found=f"key {_q(key)}",
            expected="one of " + ", ".join(allowed),
        )


def _suggest(key: str, allowed: Sequence[str], prefix: str) -> str:
    """``, did you mean X?``: a near spelling here, else the same name in another section."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f", did you mean {_join(prefix, close[0])}?"
    here = _join(prefix, key)
    elsewhere = [p for p in _ALL_FIELDS if p.rsplit(".", 1)[-1] == key and p != here]
    if not elsewhere:
        by_leaf = {p.rsplit(".", 1)[-1]: p for p in _ALL_FIELDS}
        near = difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.75)
        elsewhere = [by_leaf[n] for n in near]
    return f", did you mean {elsewhere[0]}?" if elsewhere else ""


def _expand(doc: _Doc, node: Node, fld: str, text: str) -> str:
    """Replace ``${NAME}`` from the environment and ``$$`` with ``$``; any other ``$`` is refused."""
    try:
        result = expand(text, doc.environ)
    except EnvRefError as exc:
        if exc.unset is not None:
            raise doc.error(
                node,
                fld,
                str(exc),
                found=_q(text),
                expected=f"{exc.unset} set in the proxy's environment (or $$ for a literal $)",
            ) from None
        raise doc.error(
            node,
            fld,
            str(exc),
            found=_q(text),
            expected="${NAME} with NAME a variable name, or $$ for a literal $",
        ) from None
    for name, value in result.refs:
        doc.hide(name, value)
    return result.text


def _string(doc: _Doc, node: Node, fld: str, expected: str) -> str:
    """A scalar's text with environment references expanded (numbers and booleans included)."""
    if not isinstance(node, ScalarNode):
        raise doc.error(node, fld, "must be a single value", found=_kind(node), expected=expected)
    return _expand(doc, node, fld, str(node.value))


def _optional(entries: _Entries, key: str) -> Node | None:
    """The value node of a key, or None when absent or null."""
    pair = entries.get(key)
    if pair is None or _is_null(pair[1]):
        return None
    return pair[1]


def _required(doc: _Doc, entries: _Entries, key: str, prefix: str, parent: Node) -> Node:
    node = _optional(entries, key)
    if node is None:
        where = entries[key][0] if key in entries else parent
        raise doc.error(where, _join(prefix, key), "is required", found="nothing", expected="a value")
    return node


def _bool(doc: _Doc, node: Node, fld: str) -> bool:
    text = _string(doc, node, fld, "true or false")
    value = _BOOLS.get(text.lower())
    if value is None:
        raise doc.error(node, fld, "must be a boolean", found=_q(text), expected="true or false")
    return value


def _choice(doc: _Doc, node: Node, fld: str, choices: Sequence[str]) -> str:
    expected = " or ".join(choices)
    text = _string(doc, node, fld, expected)
    if text.lower() not in choices:
        hint = difflib.get_close_matches(text.lower(), choices, n=1)
        message = "unknown value" + (f", did you mean {hint[0]}?" if hint else "")
        raise doc.error(node, fld, message, found=_q(text), expected=expected)
    return text.lower()


def _duration(doc: _Doc, node: Node, fld: str, *, allow_zero: bool) -> float:
    """A Go duration in seconds; zero only where it has a meaning, never negative."""
    expected = "a duration such as 30s, 1m30s or 500ms" + ("" if allow_zero else ", above zero")
    text = _string(doc, node, fld, expected)
    try:
        ns = parse_duration_ns(text)
    except ValueError as exc:
        raise doc.error(
            node, fld, "not a duration", found=_q(text), expected=expected, detail=str(exc)
        ) from None
    if ns < 0 or text.startswith("-") or (ns == 0 and not allow_zero):
        raise doc.error(node, fld, "out of range", found=_q(text), expected=expected)
    return ns / SECOND


def _int(doc: _Doc, node: Node, fld: str, *, minimum: int) -> int:
    """A plain decimal count (``_`` separators allowed); no units, so nothing is ambiguous."""
    expected = f"a whole number >= {minimum}"
    text = _string(doc, node, fld, expected)
    digits = text.replace("_", "")
    if not re.fullmatch(r"[0-9]+", digits):
        raise doc.error(node, fld, "not a number", found=_q(text), expected=expected)
    if int(digits) < minimum:
        raise doc.error(node, fld, "out of range", found=_q(text), expected=expected)
    return int(digits)


def _host_port(doc: _Doc, node: Node, fld: str) -> tuple[str, int]:
    """Go's ``host:port`` (``net.SplitHostPort``): ``:8080``, ``0.0.0.0:8080``, ``[::1]:9090``."""
    expected = 'host:port, e.g. ":8080" for all interfaces or "127.0.0.1:9090"'
    text = _string(doc, node, fld, expected)
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1 :]) if end != -1 else ("", "")
        if not rest.startswith(":") or not _is_ipv6(host):
            raise doc.error(node, fld, "not a host:port address", found=_q(text), expected=expected)
        port_text = rest[1:]
    else:
        if text.count(":") != 1:
            why = "missing port" if ":" not in text else "too many colons (write IPv6 as [addr]:port)"
            raise doc.error(node, fld, why, found=_q(text), expected=expected)
        host, port_text = text.split(":")
        if host and not (_HOSTNAME.match(host.lower()) or _is_ipv4(host)):
            raise doc.error(node, fld, "not a valid host", found=_q(text), expected=expected)
    if not _PORT.match(port_text) or int(port_text) > 65535:
        raise doc.error(node, fld, "port must be a number from 0 to 65535", found=_q(text), expected=expected)
    doc.show(text)
    return host, int(port_text)


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ipv4_literal(host: str) -> IPv4Address | None:
    """The address a host names when it is an IPv4 literal in any spelling the resolver takes.

    ``127.1``, ``0x7f.1``, ``2130706433`` and ``0177.0.0.1`` all reach 127.0.0.1 through
    getaddrinfo (inet_aton rules), so they are judged as 127.0.0.1, not as names.
    """
    if not re.fullmatch(r"[0-9a-fx.]+", host) or not host[0].isdigit():
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# File probes: the only I/O besides reading the config itself.


def _open_failure(doc: _Doc, node: Node | None, fld: str | None, path: str, exc: OSError) -> ConfigError:
    """The one-line error for a file the proxy cannot open, in Go's ``open <path>: ...`` words."""
    if isinstance(exc, PermissionError):
        return _permission_denied(doc, node, fld, path)
    if isinstance(exc, FileNotFoundError):
        reason, expected = "no such file or directory", "an existing file"
    elif isinstance(exc, IsADirectoryError):
        reason, expected = "is a directory", "a file, not a directory"
    else:
        reason, expected = (exc.strerror or str(exc)).lower(), "a readable file"
    return doc.error(
        node, fld, "cannot open the file", found=_q(path), expected=expected, detail=f"open {path}: {reason}"
    )


def _nul_in_path(doc: _Doc, node: Node, fld: str, path: str) -> ConfigError:
    """A path with a NUL (``"\\0"`` in YAML) names no file: open() raises ValueError, not
    OSError; it was an internal error until fuzzing/config_file.py found it."""
    return doc.error(
        node, fld, "cannot open the file", found=_q(path), expected="a file path without NUL characters"
    )


def _permission_denied(doc: _Doc, node: Node | None, fld: str | None, path: str) -> ConfigError:
    """Say whose file it is, its mode, who we are, and both ways out (SPEC §3)."""
    me = _who(os.geteuid())
    try:
        st = os.stat(path)
    except OSError as exc:
        found = f"{path} (owner and mode unknown: stat failed: {exc.strerror}); the proxy runs as {me}"
        expected = f"a file the proxy can read: make the directories above {path} searchable by {me}"
        expected += f" and chmod 644 {path}, or run the proxy as the file's owner"
    else:
        owner = _who(st.st_uid)
        found = f"{path} owned by {owner} with mode {stat.S_IMODE(st.st_mode):04o}; the proxy runs as {me}"
        expected = f"a file the proxy can read: chmod 644 {path}, or run the proxy as its owner ({owner})"
    return doc.error(
        node,
        fld,
        "the proxy cannot read this file",
        found=found,
        expected=expected,
        detail=f"open {path}: permission denied",
    )


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _show_path(doc: _Doc, path: str) -> None:
    """An absolute or explicitly relative path is shown in messages; anything else from the
    environment might be a credential put in the wrong field, so it stays masked."""
    if path.startswith(("/", "./", "../")) and path.isprintable() and not any(c.isspace() for c in path):
        doc.show(path)


def _probe_readable(doc: _Doc, node: Node, fld: str, path: str) -> None:
    """Open and close: proves the proxy can read the file now; its content is checked later."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _open_failure(doc, node, fld, path, exc) from None
    except ValueError:  # open() refuses a NUL before asking the system
        raise _nul_in_path(doc, node, fld, path) from None


def _check_ca_bundle(doc: _Doc, node: Node, fld: str, path: str) -> None:
    """The upstream CA bundle must be PEM certificates that the TLS library accepts."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _open_failure(doc, node, fld, path, exc) from None
    except ValueError:
        raise _nul_in_path(doc, node, fld, path) from None
    expected = "a PEM bundle of CA certificates (-----BEGIN CERTIFICATE-----)"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        reason = f"not PEM text: byte 0x{data[exc.start]:02x} at offset {exc.start}"
    else:
        reason = "" if "-----BEGIN CERTIFICATE-----" in text else "no PEM certificate in it"
    if not reason:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
            return
        except (ssl.SSLError, ValueError) as exc:
            reason = "the TLS library refused it: " + re.sub(r" \(_ssl\.c:\d+\)", "", str(exc))
    raise doc.error(node, fld, "not a usable CA bundle", found=f"{_q(path)} ({reason})", expected=expected)


# --------------------------------------------------------------------------------------------
# The sections, top-level first. Each takes the value node and returns checked values.


def load_config(
    path: str,
    *,
    tunnel_domain: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, expand and validate the file; raise ConfigError (one line) on any mistake.

    `tunnel_domain` is the ``-tunnel-domain`` flag: when non-empty it replaces the file's value
    (the Helm chart injects the domain that way), and the file's value is then not read.
    """
    doc = _Doc(file=path, environ=os.environ if environ is None else environ)
    root = _parse_yaml(doc, path)
    top = _mapping(doc, root, "")
    _check_keys(doc, top, _TOP_KEYS, "")

    listen_host, listen_port = _host_port(doc, _required(doc, top, "listen_addr", "", root), "listen_addr")
    domain = _tunnel_domain(doc, top, tunnel_domain)
    cert_file, key_file, reload_interval = _tls_section(doc, _required(doc, top, "tls", "", root))
    upstream = _upstream_section(doc, _optional(top, "upstream"))
    routes = _routes_section(doc, _required(doc, top, "routes", "", root), upstream, domain)
    admin_host, admin_port = _admin_addr(doc, _optional(top, "admin_addr"), listen_host, listen_port)

    log_level = _or(_optional(top, "log_level"), "info", lambda n: _choice(doc, n, "log_level", LOG_LEVELS))
    log_format = _or(
        _optional(top, "log_format"), "text", lambda n: _choice(doc, n, "log_format", LOG_FORMATS)
    )
    shutdown = _or(
        _optional(top, "shutdown_timeout"),
        30.0,
        lambda n: _duration(doc, n, "shutdown_timeout", allow_zero=True),
    )
    limits = _limits_section(doc, _optional(top, "limits"))
    oauth = _oauth_section(doc, _optional(top, "oauth"), routes, domain)
    mcp = _mcp_section(doc, _optional(top, "mcp"), routes)
    workers = _or(_optional(top, "workers"), 1, lambda n: _workers(doc, n))
    doc.register_hidden()

    return Config(
        path=path,
        listen_host=listen_host,
        listen_port=listen_port,
        cert_file=cert_file,
        key_file=key_file,
        routes=MappingProxyType(routes),
        tunnel_domain=domain,
        log_level=log_level,
        log_format=log_format,
        shutdown_timeout=shutdown,
        upstream=upstream,
        admin_host=admin_host,
        admin_port=admin_port,
        cert_reload_interval=reload_interval,
        limits=limits,
        oauth=oauth,
        mcp=mcp,
        workers=workers,
        warnings=tuple(doc.warnings),
    )


def _or(node: Node | None, default: _T, convert: Callable[[Node], _T]) -> _T:
    """The default for an absent (or null) value, else the converted value."""
    return default if node is None else convert(node)


MAX_WORKERS = 256
_WORKERS_EXPECTED = f"a whole number from 1 to {MAX_WORKERS}, or auto (the cores this process may use)"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _workers(doc: _Doc, node: Node) -> int:
    """``workers: N`` or ``auto``: how many proxy processes share the listener."""
    text = _string(doc, node, "workers", _WORKERS_EXPECTED).strip()
    if text.lower() == "auto":
        return min(usable_cores(), MAX_WORKERS)
    digits = text.replace("_", "")
    if not re.fullmatch(r"[+-]?[0-9]+", digits):
        raise doc.error(node, "workers", "not a number", found=_q(text), expected=_WORKERS_EXPECTED)
    if not 1 <= int(digits) <= MAX_WORKERS:
        raise doc.error(node, "workers", "out of range", found=_q(text), expected=_WORKERS_EXPECTED)
    return int(digits)


def _parse_yaml(doc: _Doc, path: str) -> Node:
    """The file's single YAML document as a node tree, or a one-line error with the line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise _open_failure(doc, None, None, path, exc) from None
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")  # a BOM is allowed, as in Go's yaml
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise doc.error(
            None,
            None,
            "the file is not UTF-8 text",
            found=f"byte 0x{raw[exc.start]:02x}",
            expected="UTF-8 YAML",
            line=line,
        ) from None
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # yaml.compose's steps, so the place is known on recursion
        root = loader.get_single_node()
    except RecursionError:
        assert loader is not None  # the constructor does not recurse
        # PyYAML composes nested collections recursively: `[` a thousand times (found by
        # fuzzing/config_file.py) went out as an internal error instead of this line.
        raise doc.error(
            None,
            None,
            "invalid YAML: lists or mappings nested too deeply",
            expected="a config nested a few levels deep",
            line=(loader.marks[-1] if loader.marks else loader.get_mark()).line + 1,  # the innermost open
        ) from None
    except yaml.MarkedYAMLError as exc:
        # PyYAML's own wording, in its order: "while parsing X, expected Y, but found Z".
        mark = exc.problem_mark or exc.context_mark
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise doc.error(
            None,
            None,
            f"invalid YAML: {problem}{where}",
            expected="valid YAML",
            line=mark.line + 1 if mark is not None else 1,
        ) from None
    except yaml.reader.ReaderError as exc:
        raise doc.error(
            None,
            None,
            f"invalid YAML: control character U+{exc.character:04X} is not allowed",
            expected="printable text",
            line=text[: exc.position].count("\n") + 1,
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above carries a place
        raise doc.error(None, None, f"invalid YAML: {exc}", expected="valid YAML", line=1) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        raise doc.error(
            None, None, "the file is empty", expected="a YAML mapping with listen_addr, tls, routes", line=1
        )
    return root


def _tunnel_domain(doc: _Doc, top: _Entries, override: str | None) -> str:
    """Lowercase, without a trailing dot: the form incoming hosts are normalised to."""
    if override:
        text, node, fld = override, None, "tunnel_domain (from -tunnel-domain)"
    else:
        node = _optional(top, "tunnel_domain")
        if node is None:
            return ""
        fld = "tunnel_domain"
        text = _string(doc, node, fld, "a domain name such as abcd1234.tunnel.anthropic.com")
    domain = text.strip().lower()
    domain = domain[:-1] if domain.endswith(".") else domain
    if domain and not _HOSTNAME.match(domain):
        raise doc.error(
            node,
            fld,
            "not a domain name",
            found=_q(text),
            expected="a bare domain such as abcd1234.tunnel.anthropic.com (no scheme, port, path or *.)",
        )
    if "." in domain:
        doc.show(text)
    elif text in doc.hidden:
        doc.hidden.setdefault(domain, doc.hidden[text])  # the form routes and logs will show
    return domain


def _tls_section(doc: _Doc, node: Node) -> tuple[str, str, float]:
    entries = _mapping(doc, node, "tls")
    _check_keys(doc, entries, _TLS_KEYS, "tls")
    paths: list[str] = []
    for key in ("cert_file", "key_file"):
        fld = f"tls.{key}"
        value = _required(doc, entries, key, "tls", node)
        path = _string(doc, value, fld, "a file path")
        if not path:
            raise doc.error(value, fld, "is required", found='""', expected="a file path")
        _show_path(doc, path)
        _probe_readable(doc, value, fld, path)
        paths.append(path)
    interval = _or(
        _optional(entries, "reload_interval"),
        2.0,
        lambda n: _duration(doc, n, "tls.reload_interval", allow_zero=False),
    )
    return paths[0], paths[1], interval


def _admin_addr(
    doc: _Doc, node: Node | None, listen_host: str, listen_port: int
) -> tuple[str | None, int | None]:
    """Off unless set; never the tunnel listener's own address (the admin pages are private)."""
    if node is None:
        return None, None
    host, port = _host_port(doc, node, "admin_addr")
    wildcard = ("", "0.0.0.0", "::")
    overlaps = host == listen_host or host in wildcard or listen_host in wildcard
    if port == listen_port and port != 0 and overlaps:
        raise doc.error(
            node,
            "admin_addr",
            "must differ from listen_addr",
            found=f"port {port}, the tunnel listener's port",
            expected="another port, e.g. 127.0.0.1:9090",
        )
    return host, port


def _upstream_section(doc: _Doc, node: Node | None) -> UpstreamSettings:
    if node is None:
        return UpstreamSettings()
    entries = _mapping(doc, node, "upstream")
    _check_keys(doc, entries, _UPSTREAM_KEYS, "upstream")

    disable_node = _optional(entries, "disable_ip_validation")
    disabled = disable_node is not None and _bool(doc, disable_node, "upstream.disable_ip_validation")
    ips_node = _optional(entries, "allowed_ips")
    networks = RFC1918
    if ips_node is not None:
        if disabled:
            assert disable_node is not None
            raise doc.error(
                ips_node,
                "upstream.allowed_ips",
                "cannot be combined with upstream.disable_ip_validation: true "
                f"(line {_line(disable_node)}); the two are mutually exclusive",
                found="both set",
                expected="allowed_ips alone, or disable_ip_validation: true alone",
            )
        networks = _allowed_ips(doc, ips_node)
    if disabled:
        assert disable_node is not None
        doc.warn(
            disable_node,
            "upstream.disable_ip_validation",
            "upstream IP validation is off: no SSRF protection",
        )

    return UpstreamSettings(
        policy=IPPolicy(networks=networks, disabled=disabled),
        tls=_or(_optional(entries, "tls"), UpstreamTLS(), lambda n: _upstream_tls(doc, n)),
        host_header=_or(
            _optional(entries, "host_header"),
            "original",
            lambda n: _choice(doc, n, "upstream.host_header", HOST_HEADER_MODES),
        ),
    )


def _allowed_ips(doc: _Doc, node: Node) -> tuple[IPv4Network, ...]:
    """IPv4 CIDRs or single addresses; replaces the RFC1918 default rather than extending it."""
    fld = "upstream.allowed_ips"
    expected = "a list of IPv4 CIDRs or addresses, e.g. [10.0.0.0/8, 192.168.1.20]"
    if not isinstance(node, SequenceNode):
        raise doc.error(node, fld, "must be a list", found=_kind(node), expected=expected)
    if not node.value:
        raise doc.error(
            node,
            fld,
            "is empty, so no upstream could be reached",
            found="[]",
            expected=expected + ", or no allowed_ips key for the RFC1918 default",
        )
    networks: list[IPv4Network] = []
    for i, item in enumerate(node.value):
        item_fld = f"{fld}[{i}]"
        text = _string(doc, item, item_fld, "an IPv4 CIDR or address")
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise doc.error(
                item,
                item_fld,
                "not an IPv4 CIDR or address",
                found=_q(text),
                expected="a.b.c.d/len or a.b.c.d, e.g. 10.0.0.0/8",
            ) from None
        if not isinstance(net, IPv4Network):
            raise doc.error(
                item,
                item_fld,
                "IPv6 is not supported (upstream connections are IPv4 only)",
                found=_q(text),
                expected="an IPv4 CIDR or address",
            )
        doc.show(text)
        if "/" in text and str(net) != text.strip():
            doc.warn(item, item_fld, f"{text.strip()} has host bits set; using {net}")
        if net.prefixlen == 0:
            doc.warn(item, item_fld, f"{net} allows every address: this disables SSRF protection")
        networks.append(net)
    return tuple(networks)


def _upstream_tls(doc: _Doc, node: Node) -> UpstreamTLS:
    entries = _mapping(doc, node, "upstream.tls")
    _check_keys(doc, entries, _UPSTREAM_TLS_KEYS, "upstream.tls")
    ca_node = _optional(entries, "ca_file")
    ca_file: str | None = None
    if ca_node is not None:
        ca_file = _string(doc, ca_node, "upstream.tls.ca_file", "a PEM file path") or None
        if ca_file is not None:
            _show_path(doc, ca_file)
            _check_ca_bundle(doc, ca_node, "upstream.tls.ca_file", ca_file)
    system_node = _optional(entries, "include_system_cas")
    system = system_node is not None and _bool(doc, system_node, "upstream.tls.include_system_cas")
    return UpstreamTLS(ca_file=ca_file, include_system_cas=system)


def _routes_section(doc: _Doc, node: Node, upstream: UpstreamSettings, domain: str) -> dict[str, Route]:
    """The flat ``key: scheme://host:port`` map, keys lowercased, upstreams checked now."""
    if not isinstance(node, MappingNode):
        tag = "!!seq" if isinstance(node, SequenceNode) else "!!str"
        raise doc.error(
            node,
            "routes",
            "must be a mapping of subdomain or hostname to upstream URL, not "
            + ("a list" if tag == "!!seq" else "a single value"),
            found=_kind(node),
            expected="lines like `echo: http://hello-mcp:9000`",
            detail=f"cannot unmarshal {tag} into map[string]string",
        )
    entries = _mapping(doc, node, "routes")
    if not entries:
        raise doc.error(
            node, "routes", "has no routes", found="{}", expected="at least one `key: upstream` line"
        )
    routes: dict[str, Route] = {}
    key_lines: dict[str, tuple[str, int]] = {}
    for raw_key, (key_node, value_node) in entries.items():
        key = raw_key.strip().lower()
        fld = f"routes.{key}"
        if key in key_lines:
            first, first_line = key_lines[key]
            raise doc.error(
                key_node,
                fld,
                f"key {_q(raw_key)} (line {_line(key_node)}) collides with {_q(first)} (line {first_line}) "
                "because keys are compared lowercase",
                found="two keys for one host",
                expected="each route key once, in any case",
            )
        if not _HOSTNAME.match(key):
            raise doc.error(
                key_node,
                fld,
                "not a valid route key",
                found=_q(raw_key),
                expected="a subdomain such as echo or a full hostname such as echo.example.com "
                "(no scheme, port, wildcard or trailing dot)",
            )
        key_lines[key] = (raw_key, _line(key_node))
        routes[key] = _route(doc, key, value_node, upstream)
    _route_warnings(doc, entries, routes, domain)
    return routes


def _route(doc: _Doc, key: str, node: Node, upstream: UpstreamSettings) -> Route:
    fld = f"routes.{key}"
    if not isinstance(node, ScalarNode) or _is_null(node):
        tag = (
            "!!seq"
            if isinstance(node, SequenceNode)
            else "!!map"
            if isinstance(node, MappingNode)
            else "!!null"
        )
        raise doc.error(
            node,
            fld,
            "the upstream must be a URL",
            found=_kind(node),
            expected=_UPSTREAM_EXAMPLE,
            detail=f"cannot unmarshal {tag} into string",
        )
    text = _string(doc, node, fld, _UPSTREAM_EXAMPLE)
    scheme, host, port = _parse_upstream(doc, node, fld, text)
    route = Route(key=key, scheme=scheme, host=host, port=port)

    if scheme == "https" and upstream.tls.ca_file is None and not upstream.tls.include_system_cas:
        raise doc.error(
            node,
            fld,
            "https upstream without a trust anchor",
            found=_q(text),
            expected="upstream.tls.ca_file or upstream.tls.include_system_cas: true",
            detail="otherwise the proxy has no trust anchor for the upstream certificate",
        )
    literal = _ipv4_literal(host)
    if literal is not None and not upstream.policy.allows(literal):
        allowed = ", ".join(str(n) for n in upstream.policy.networks)
        raise doc.error(
            node,
            fld,
            f"upstream address {literal} is outside upstream.allowed_ips",
            found=_q(text) + (f" (= {literal})" if str(literal) != host else ""),
            expected=f"an address in {allowed}, or add {ipaddress.ip_network(f'{literal}/32')} "
            "(or its network) to upstream.allowed_ips",
            detail=f"IP validation failed: {literal} is not a private address",
        )
    if literal is not None and str(literal) != host:
        doc.warn(node, fld, f"upstream host {host} is the IPv4 address {literal}")
    return route


def _parse_upstream(doc: _Doc, node: Node, fld: str, text: str) -> tuple[str, str, int]:
    """``scheme://host:port`` and nothing else: no path (not even ``/``), query, fragment, user."""

    def bad(why: str) -> ConfigError:
        return doc.error(
            node,
            fld,
            f"upstream {why}",
            found=_q(text),
            expected=_UPSTREAM_EXAMPLE,
            detail=_OFFICIAL_BAD_UPSTREAM,
        )

    scheme, sep, rest = text.partition("://")
    if not sep:
        raise bad("has no scheme")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise bad(f"scheme {_q(scheme)} is not http or https")
    problems = (("@", "has userinfo"), ("#", "has a fragment"), ("?", "has a query"), ("/", "has a path"))
    for char, what in problems:
        if char in rest:
            raise bad(what)
    if rest.startswith("["):
        raise bad("is an IPv6 address (upstream connections are IPv4 only)")
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise bad("has no port")
    if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
        raise bad("port must be a number from 1 to 65535")
    host = host.lower()
    if not host:
        raise bad("has no host")
    if not (_HOSTNAME.match(host) or _ipv4_literal(host)):
        raise bad("host is not a hostname or IPv4 address")
    doc.show(text)
    return scheme, host, int(port_text)


def _route_warnings(doc: _Doc, entries: _Entries, routes: Mapping[str, Route], domain: str) -> None:
    """Routes that load but can never be reached as the operator probably meant."""
    lines = {raw.strip().lower(): key_node for raw, (key_node, _) in entries.items()}
    for key in routes:
        if not domain and "." not in key:
            doc.warn(
                lines[key],
                f"routes.{key}",
                f"bare subdomain but no tunnel_domain: it only matches the host {key!r} exactly",
            )
        if domain and f"{key}.{domain}" in routes:
            doc.warn(
                lines[key],
                f"routes.{key}",
                f"never used: routes.{key}.{domain} matches {key}.{domain} first",
            )


def _limits_section(doc: _Doc, node: Node | None) -> Limits:
    """``limits:`` keys are the Limits fields: floats are durations, ints are counts or bytes."""
    if node is None:
        return Limits()
    entries = _mapping(doc, node, "limits")
    _check_keys(doc, entries, _LIMIT_KEYS, "limits")
    values: dict[str, Any] = {}
    for f in fields(Limits):
        value = _optional(entries, f.name)
        if value is None:
            continue
        fld = f"limits.{f.name}"
        if f.type in ("float", float):
            values[f.name] = _duration(doc, value, fld, allow_zero=False)
        else:
            values[f.name] = _int(doc, value, fld, minimum=0 if f.name == "max_body_bytes" else 1)
    return Limits(**values)


def _oauth_section(
    doc: _Doc, node: Node | None, routes: Mapping[str, Route], domain: str
) -> OAuthSettings | None:
    """``oauth:`` (SPEC §5.1): route keys that exist, each in one role, and an https authorize URL."""
    if node is None:
        return None
    entries = _mapping(doc, node, "oauth")
    _check_keys(doc, entries, _OAUTH_KEYS, "oauth")
    as_node = _required(doc, entries, "authorization_server", "oauth", node)
    as_key = _route_key(doc, as_node, "oauth.authorization_server", routes)
    ep_node = _required(doc, entries, "authorization_endpoint", "oauth", node)
    endpoint = _authorization_endpoint(doc, ep_node, routes, domain)
    resources: list[str] = []
    pr_node = _optional(entries, "protected_resources")
    if pr_node is not None:
        fld = "oauth.protected_resources"
        if not isinstance(pr_node, SequenceNode):
            raise doc.error(
                pr_node, fld, "must be a list", found=_kind(pr_node), expected="route keys, e.g. [mcp]"
            )
        for i, item in enumerate(pr_node.value):
            item_fld = f"{fld}[{i}]"
            key = _route_key(doc, item, item_fld, routes)
            if key == as_key:
                raise doc.error(
                    item,
                    item_fld,
                    f"route {_q(key)} is also oauth.authorization_server (line {_line(as_node)}): "
                    "a route is either the authorization server or a protected resource",
                    found=_q(key) + " in both",
                    expected="the MCP servers' route keys, not the authorization server's",
                )
            if key in resources:
                raise doc.error(item, item_fld, "listed twice", found=_q(key), expected="each route key once")
            resources.append(key)
    return OAuthSettings(as_key, endpoint, tuple(resources))


def _mcp_section(doc: _Doc, node: Node | None, routes: Mapping[str, Route]) -> McpSettings | None:
    """``mcp:`` (issue #23): audit on or off, and per route key either allow_tools or deny_tools,
    each a list of non-empty shell-style patterns."""
    if node is None:
        return None
    entries = _mapping(doc, node, "mcp")
    _check_keys(doc, entries, _MCP_KEYS, "mcp")
    audit = _or(_optional(entries, "audit"), False, lambda n: _bool(doc, n, "mcp.audit"))
    policies: dict[str, ToolPolicy] = {}
    routes_node = _optional(entries, "routes")
    if routes_node is not None:
        for key_text, (key_node, value) in _mapping(doc, routes_node, "mcp.routes").items():
            key = _route_key(doc, key_node, "mcp.routes", routes)
            fld = f"mcp.routes.{key_text}"
            if key in policies:
                raise doc.error(
                    key_node, fld, "route given twice", found=_q(key_text), expected="each route once"
                )
            rule = _mapping(doc, value, fld) if not _is_null(value) else {}
            _check_keys(doc, rule, _MCP_ROUTE_KEYS, fld)
            allow = _optional(rule, "allow_tools")
            deny = _optional(rule, "deny_tools")
            if allow is not None and deny is not None:
                raise doc.error(
                    rule["deny_tools"][0],
                    f"{fld}.deny_tools",
                    f"a route has allow_tools (line {_line(rule['allow_tools'][0])}) or deny_tools, not both",
                    found="both",
                    expected="allow_tools (only these tools) or deny_tools (all but these)",
                )
            if allow is not None:
                policies[key] = ToolPolicy(allow=_patterns(doc, allow, f"{fld}.allow_tools"))
            elif deny is not None:
                policies[key] = ToolPolicy(deny=_patterns(doc, deny, f"{fld}.deny_tools"))
            else:
                raise doc.error(
                    key_node,
                    fld,
                    "needs allow_tools or deny_tools",
                    found="neither",
                    expected='allow_tools: ["search_*"] or deny_tools: ["delete_*"]',
                )
    return McpSettings(audit=audit, routes=MappingProxyType(policies))


def _patterns(doc: _Doc, node: Node, fld: str) -> tuple[str, ...]:
    """A list of non-empty shell-style tool name patterns (``search_*``, ``get_page``)."""
    expected = 'tool names or shell-style patterns, e.g. ["search_*", "get_page"]'
    if not isinstance(node, SequenceNode):
        raise doc.error(node, fld, "must be a list", found=_kind(node), expected=expected)
    out: list[str] = []
    for i, item in enumerate(node.value):
        item_fld = f"{fld}[{i}]"
        text = "" if _is_null(item) else _string(doc, item, item_fld, expected)
        if not text.strip():
            raise doc.error(item, item_fld, "empty pattern", found=_kind(item), expected=expected)
        out.append(text)
    return tuple(out)


def _route_key(doc: _Doc, node: Node, fld: str, routes: Mapping[str, Route]) -> str:
    """A key of ``routes``, as the routes have it (lowercase)."""
    text = _string(doc, node, fld, "a key of routes")
    key = text.strip().lower()
    if key not in routes:
        close = difflib.get_close_matches(key, list(routes), n=1, cutoff=0.6)
        raise doc.error(
            node,
            fld,
            "unknown route key" + (f", did you mean {close[0]}?" if close else ""),
            found=_q(text),
            expected="one of the routes: " + ", ".join(routes),
        )
    return key


def _authorization_endpoint(doc: _Doc, node: Node, routes: Mapping[str, Route], domain: str) -> str:
    """The browser-facing authorize URL: absolute https, and never a tunnel host (those accept
    only Claude, digest §11)."""
    fld = "oauth.authorization_endpoint"
    expected = "an absolute https:// URL users' browsers reach, e.g. https://login.example.com/authorize"
    text = _string(doc, node, fld, expected).strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise doc.error(node, fld, "not a URL", found=_q(text), expected=expected) from None
    if parts.scheme.lower() != "https" or not host or port == 0:
        raise doc.error(node, fld, "not an absolute https URL", found=_q(text), expected=expected)
    if parts.fragment or "@" in parts.netloc:
        raise doc.error(node, fld, "must have no fragment or userinfo", found=_q(text), expected=expected)
    host = host.lower().rstrip(".")
    if host in routes or (domain and (host == domain or host.endswith("." + domain))):
        raise doc.error(
            node,
            fld,
            "is a tunnel host: users' browsers cannot load it (tunnel hosts accept only Claude)",
            found=_q(text),
            expected="the existing browser-reachable host, not " + public_url("<key>", domain),
        )
    doc.show(text)
    return text
