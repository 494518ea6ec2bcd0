"""config: `load_config` on generated files, the operator-facing parser.

Inputs are configs built field by field (every section of SPEC §3, each value valid most of the
time, else one from a pool of wrong ones: nulls, lists for scalars, bad durations, ports,
addresses, URLs, `${}` references set and unset, unknown keys), dumped as YAML and then often
edited as text: a line dropped, repeated or moved, indentation changed, a character inserted,
deep nesting, a control character, bytes that are not UTF-8. Some are random YAML documents of
the right and wrong keys, some random text.

Oracle: a Config whose values are in range (ports, routes with an http(s) scheme and a port,
positive limits, one-line warnings naming the file), or a ConfigError with the file, a line
inside the file and a one-line message that starts `file:line:`; nothing else (no YAML error,
RecursionError, KeyError or TypeError escapes).
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from fuzzing.common import chance, pick, text
from fuzzing.driver import Harness
from mcp_tunnel.config import Config, load_config
from mcp_tunnel.errors import ConfigError

ENV = {"TUNNEL_DOMAIN": "abcd1234.tunnel.example.com", "PORT": "8443", "UP": "hello-mcp"}


@dataclass(frozen=True)
class Case:
    data: bytes

    def __repr__(self) -> str:
        return f"Case(data={self.data!r})"


class _Files:
    """The scratch files configs point at: placeholder certificate and key, CA bundles."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mcp-tunnel-fuzz-config-")
        root = Path(self._dir.name)
        self.root = str(root)
        (root / "tls.crt").write_text("placeholder certificate\n")
        (root / "tls.key").write_text("placeholder key\n")
        (root / "ca.pem").write_bytes(_ca_pem())
        (root / "junk.pem").write_bytes(
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )
        (root / "binary.pem").write_bytes(b"\x00\xff\xfe")
        self.config = str(root / "config.yaml")


def _ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


_files: _Files | None = None


def files() -> _Files:
    global _files
    if _files is None:
        _files = _Files()
    return _files


D = "@DIR@"  # replaced by the scratch directory when the file is written

# Wrong values any field may get.
_WRONG: list[Any] = [
    None,
    "",
    [],
    {},
    ["a"],
    {"a": 1},
    0,
    -1,
    1.5,
    True,
    "abc",
    "${UNSET}",
    "$",
    "$x",
    "é",
    "a b",
]
_DURATIONS = [
    "10s",
    "1m30s",
    "500ms",
    "0s",
    "0",
    "-5s",
    "10",
    "1h",
    "s",
    "5 s",
    "1e3s",
    "9999999999h",
    "${PORT}ms",
]
_ADDRS = [
    ":8443",
    "127.0.0.1:9090",
    "[::1]:9090",
    "0.0.0.0:0",
    ":${PORT}",
    "host",
    ":99999",
    "a:b:c",
    "[::1",
    "x y:1",
]
_UPSTREAMS = [
    "http://hello-mcp:9000",
    "https://hello-mcp:9443",
    "http://10.0.0.5:80",
    "http://${UP}:9000",
    "http://127.0.0.1:80",
    "http://0x7f.1:80",
    "http://hello-mcp",
    "ftp://a:1",
    "http://a:1/",
    "http://u@a:1",
    "http://[::1]:80",
    "http://a:0",
    "hello-mcp:9000",
    "http://:80",
]
_KEYS = ["echo", "mcp", "auth", "echo.example.com", "ECHO", "*.echo", "a_b", "-x", "x" * 70]


_WRONG_BY_FIELD: dict[str, list[Any]] = {
    "listen_addr": _ADDRS,
    "tunnel_domain": ["abcd.example.com.", "*.example.com", "https://a.b", "EXAMPLE.com", "a..b"],
    "tls": [{"cert_file": f"{D}/tls.crt"}, {"cert": "x"}, [f"{D}/tls.crt"]],
    "tls.cert_file": [f"{D}/missing.crt", D, "tls.crt", "/dev/null", f"{D}/tls.crt\x00"],
    "tls.reload_interval": _DURATIONS,
    "routes": [["echo: http://a:1"], "echo", {}],
    "routes.key": _KEYS,
    "routes.value": _UPSTREAMS,
    "upstream": [[], "x"],
    "upstream.allowed_ips": [
        [],
        ["10.0.0.1/8"],
        ["0.0.0.0/0"],
        ["::1/128"],
        ["127.0.0.1"],
        "10/8",
        ["10.0.0.0/33"],
    ],
    "upstream.disable_ip_validation": [True, "yes", "maybe"],
    "upstream.tls.ca_file": [f"{D}/junk.pem", f"{D}/binary.pem", f"{D}/none.pem", D, f"{D}/tls.crt"],
    "upstream.tls.include_system_cas": [True, "no", 2],
    "upstream.host_header": ["original", "Original", "both"],
    "limits": [{"max_connection": 5}, {"header_timeout": None}],
    "limits.value": ["0", "-1", "1k", "10s", "1_0_0", "", "${PORT}", "99999999999999999999999"],
    "oauth": [{"authorization_server": "auth"}],
    "oauth.authorization_server": _KEYS,
    "oauth.authorization_endpoint": [
        "http://login.example.com/",
        "https://echo/",
        "https://a:0/",
        "https://a:x/",
        "https://[::1/",
        "https://u@a/",
        "https://a/#f",
        "https://echo.abcd1234.tunnel.example.com/",
    ],
    "oauth.protected_resources": [["auth"], ["echo", "echo"], "echo", [None], ["nope"]],
    "mcp": [[], "on"],
    "mcp.audit": ["on", "x"],
    "mcp.routes.key": _KEYS,
    "mcp.routes.value": [{"deny_tools": []}, {"allow_tools": [""], "deny_tools": ["x"]}, None, {"allow": 1}],
    "admin_addr": [*_ADDRS, ":8443", "0.0.0.0:8443"],
    "log_level": ["debug", "WARN", "verbose"],
    "log_format": ["json", "xml"],
    "shutdown_timeout": _DURATIONS,
    "unknown": ["listen", "route", "limit", "tunnel-domain", "x"],
}
_FOCUS = sorted(_WRONG_BY_FIELD)
_LIMITS = ("header_timeout", "idle_timeout", "body_timeout", "max_header_bytes", "max_body_bytes")


def _key(value: Any) -> Any:
    """A wrong value made usable as a mapping key (YAML's complex keys come from the text edits)."""
    return str(value) if isinstance(value, list | dict) else value


@st.composite
def _document(draw: st.DrawFn) -> dict[str, Any]:
    """A good config with one field made wrong (each rule reached on its own), or with every
    field wrong at times (rules behind rules)."""
    focus = None if chance(draw, 3) else pick(draw, _FOCUS)

    def value(key: str, good: Any) -> Any:
        if focus is None:
            return good if not chance(draw, 6) else pick(draw, _WRONG_BY_FIELD[key] + _WRONG)
        if key != focus:
            return good
        return pick(draw, _WRONG_BY_FIELD[key]) if not chance(draw, 4) else pick(draw, _WRONG)

    def present(section: str) -> bool:
        return (focus or "").startswith(section) or chance(draw, 2)

    doc: dict[str, Any] = {"listen_addr": value("listen_addr", ":8443")}
    if present("tunnel_domain"):
        doc["tunnel_domain"] = value("tunnel_domain", "${TUNNEL_DOMAIN}")
    tls: dict[str, Any] = {"cert_file": value("tls.cert_file", f"{D}/tls.crt"), "key_file": f"{D}/tls.key"}
    if present("tls.reload_interval"):
        tls["reload_interval"] = value("tls.reload_interval", "2s")
    doc["tls"] = value("tls", tls)
    routes = {"echo": "http://hello-mcp:9000", "auth": "https://10.0.0.5:9443"}
    routes[_key(value("routes.key", "mcp"))] = value("routes.value", "http://${UP}:9000")
    doc["routes"] = value("routes", routes)
    upstream: dict[str, Any] = {"tls": {"ca_file": value("upstream.tls.ca_file", f"{D}/ca.pem")}}
    if present("upstream.tls.include_system_cas"):
        upstream["tls"]["include_system_cas"] = value("upstream.tls.include_system_cas", False)
    if present("upstream.allowed_ips"):
        upstream["allowed_ips"] = value("upstream.allowed_ips", ["10.0.0.0/8", "192.168.1.20"])
    elif present("upstream.disable_ip_validation"):
        upstream["disable_ip_validation"] = value("upstream.disable_ip_validation", False)
    if present("upstream.host_header"):
        upstream["host_header"] = value("upstream.host_header", "upstream")
    doc["upstream"] = value("upstream", upstream)
    if present("limits"):
        limits = {name: "1_000" if name.startswith("max_") else "5s" for name in _LIMITS if chance(draw, 2)}
        if limits:
            name = pick(draw, sorted(limits))
            limits[name] = value("limits.value", limits[name])
        doc["limits"] = value("limits", limits)
    if present("oauth"):
        oauth = {
            "authorization_server": value("oauth.authorization_server", "auth"),
            "authorization_endpoint": value(
                "oauth.authorization_endpoint", "https://login.example.com/authorize"
            ),
            "protected_resources": value("oauth.protected_resources", ["echo"]),
        }
        doc["oauth"] = value("oauth", oauth)
    if present("mcp"):
        rule = value("mcp.routes.value", {"allow_tools": ["search_*"]})
        mcp = {"audit": value("mcp.audit", True), "routes": {_key(value("mcp.routes.key", "echo")): rule}}
        doc["mcp"] = value("mcp", mcp)
    for key, good in (("admin_addr", "127.0.0.1:9090"), ("log_level", "info"), ("log_format", "text")):
        if present(key):
            doc[key] = value(key, good)
    if present("shutdown_timeout"):
        doc["shutdown_timeout"] = value("shutdown_timeout", "30s")
    if focus == "unknown":
        doc[pick(draw, _WRONG_BY_FIELD["unknown"])] = 1
    return doc


_DOCUMENTS = _document()
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), text(max_size=12))
_ANY_YAML = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(["listen_addr", "tls", "routes", "limits"]), text(max_size=6)),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
_TEXT = text(max_size=120)
_INSERT = text(min_size=1, max_size=3)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = pick(draw, ["built", "built", "built", "any", "text"])
    if kind == "text":
        return Case(draw(_TEXT).encode())
    value = draw(_DOCUMENTS) if kind == "built" else draw(_ANY_YAML)
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=chance(draw, 4), allow_unicode=True)
    lines = text.splitlines()
    for _ in range(pick(draw, [0, 0, 1, 2])):
        if not lines:
            break
        at = pick(draw, range(len(lines)))
        how = pick(draw, ["drop", "repeat", "move", "indent", "dedent", "insert", "nest", "control", "tab"])
        line = lines[at]
        if how == "drop":
            del lines[at]
        elif how == "repeat":
            lines.insert(at, line)
        elif how == "move":
            lines.insert(pick(draw, range(len(lines))), lines.pop(at))
        elif how == "indent":
            lines[at] = "  " + line
        elif how == "dedent":
            lines[at] = line.lstrip()
        elif how == "insert":
            col = pick(draw, range(len(line) + 1))
            lines[at] = line[:col] + draw(_INSERT) + line[col:]
        elif how == "nest":  # deeper than PyYAML's recursion goes
            lines[at] = line + " " + pick(draw, ["[", "{a: ", "- "]) * pick(draw, [3, 300, 3000])
        elif how == "control":
            lines[at] = line + pick(draw, ["\x00", "\x07", "\x1b", "\ufeff", "\x85"])
        else:
            lines[at] = "\t" + line
    data = ("\n".join(lines) + "\n").encode()
    if chance(draw, 20):
        data = (
            data[: len(data) // 2] + pick(draw, [b"\xff", b"\xc3", b"\xed\xa0\x80"]) + data[len(data) // 2 :]
        )
    return Case(data)


def check(case: Case) -> None:
    where = files()
    path = where.config
    data = case.data.replace(D.encode(), where.root.encode())
    with open(path, "wb") as f:
        f.write(data)
    try:
        config = load_config(path, environ=ENV)
    except ConfigError as err:
        message = str(err)
        assert type(err) is ConfigError and err.exit_code == 2, err
        assert err.file == path and isinstance(err.line, int), (err.file, err.line, message)
        lines = len(data.decode("utf-8", "replace").splitlines())  # YAML breaks lines at \r too
        assert 1 <= err.line <= lines + 1, (err.line, message)
        assert message.startswith(f"{path}:{err.line}: "), message
        assert message.isprintable(), message  # one line, on any terminal: no CR, no escape codes
        assert err.field is None or isinstance(err.field, str), err.field
        return
    _check_config(config, path)


def _check_config(config: Config, path: str) -> None:
    assert config.path == path
    assert 0 <= config.listen_port <= 65535, config.listen_port
    assert config.routes, config
    for key, route in config.routes.items():
        assert key == route.key == key.lower() and route.scheme in ("http", "https"), route
        assert 1 <= route.port <= 65535 and route.host, route
    assert config.admin_port is None or 0 <= config.admin_port <= 65535, config.admin_port
    for name in ("header_timeout", "idle_timeout", "body_timeout", "max_header_bytes"):
        assert getattr(config.limits, name) > 0, config.limits
    assert config.limits.max_body_bytes >= 0, config.limits
    for warning in config.warnings:
        assert warning.startswith(f"{path}:") and warning.isprintable(), warning
    assert os.path.exists(config.cert_file), config.cert_file


HARNESS = Harness("config_file", cases(), check)
