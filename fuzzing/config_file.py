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

from fuzzing.common import chance, mostly, pick, text
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


def _field(draw: st.DrawFn, good: Any, specific: list[Any]) -> Any:
    """`good` most of the time, else a wrong value for this field or any field."""
    if not chance(draw, 4):
        return good
    return pick(draw, specific) if specific and chance(draw, 2) else pick(draw, _WRONG)


@st.composite
def _document(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    doc["listen_addr"] = _field(draw, ":8443", _ADDRS)
    if not chance(draw, 3):
        doc["tunnel_domain"] = _field(
            draw, "${TUNNEL_DOMAIN}", ["abcd.example.com.", "*.example.com", "https://a.b", "EXAMPLE.com"]
        )
    tls: dict[str, Any] = {"cert_file": f"{D}/tls.crt", "key_file": f"{D}/tls.key"}
    tls["cert_file"] = _field(draw, tls["cert_file"], [f"{D}/missing.crt", D, "tls.crt", "/dev/null"])
    if chance(draw, 3):
        tls["reload_interval"] = _field(draw, "2s", _DURATIONS)
    doc["tls"] = _field(draw, tls, [{"cert_file": f"{D}/tls.crt"}, {"cert": "x"}])
    routes: dict[str, Any] = {}
    for _ in range(mostly(draw, 1, [0, 2, 3])):
        routes[pick(draw, _KEYS)] = mostly(draw, _UPSTREAMS[0], _UPSTREAMS)
    doc["routes"] = _field(draw, routes, [["echo: http://a:1"], "echo"])
    if chance(draw, 2):
        upstream: dict[str, Any] = {}
        if chance(draw, 2):
            upstream["allowed_ips"] = mostly(
                draw, ["10.0.0.0/8"], [[], ["10.0.0.1/8"], ["0.0.0.0/0"], ["::1/128"], ["127.0.0.1"], "10/8"]
            )
        if chance(draw, 3):
            upstream["disable_ip_validation"] = mostly(draw, True, [False, "yes", "maybe"])
        if chance(draw, 2):
            upstream["tls"] = {
                "ca_file": mostly(
                    draw, f"{D}/ca.pem", [f"{D}/junk.pem", f"{D}/binary.pem", f"{D}/none.pem", D]
                ),
                "include_system_cas": mostly(draw, False, [True, "no", 2]),
            }
        if chance(draw, 3):
            upstream["host_header"] = mostly(draw, "upstream", ["original", "Original", "both"])
        doc["upstream"] = _field(draw, upstream, [[]])
    if chance(draw, 2):
        limits: dict[str, Any] = {}
        for name in ("header_timeout", "idle_timeout", "body_timeout", "max_header_bytes", "max_body_bytes"):
            if chance(draw, 2):
                count = name.startswith("max_")
                limits[name] = mostly(
                    draw, "1_000" if count else "5s", ["0", "-1", "1k", "10s", "1_0_0", "", "${PORT}"]
                )
        doc["limits"] = _field(draw, limits, [{"max_connection": 5}])
    if chance(draw, 3):
        doc["oauth"] = _field(
            draw,
            {
                "authorization_server": mostly(draw, "auth", _KEYS),
                "authorization_endpoint": mostly(
                    draw,
                    "https://login.example.com/authorize",
                    [
                        "http://login.example.com/",
                        "https://echo/",
                        "https://a:0/",
                        "https://a:x/",
                        "https://[::1/",
                    ],
                ),
                "protected_resources": mostly(draw, ["echo"], [["auth"], ["echo", "echo"], "echo", [None]]),
            },
            [{"authorization_server": "auth"}],
        )
    if chance(draw, 3):
        doc["mcp"] = _field(
            draw,
            {
                "audit": mostly(draw, True, ["on", "x"]),
                "routes": {
                    mostly(draw, "echo", _KEYS): mostly(
                        draw,
                        {"allow_tools": ["search_*"]},
                        [{"deny_tools": []}, {"allow_tools": [""], "deny_tools": ["x"]}, None, {"allow": 1}],
                    )
                },
            },
            [],
        )
    for key in ("admin_addr", "log_level", "log_format", "shutdown_timeout"):
        if chance(draw, 4):
            doc[key] = pick(
                draw,
                {
                    "admin_addr": _ADDRS,
                    "log_level": ["debug", "WARN", "verbose"],
                    "log_format": ["json", "xml"],
                    "shutdown_timeout": _DURATIONS,
                }[key],
            )
    if chance(draw, 10):
        doc[pick(draw, ["listen", "route", "limit", "tunnel-domain", "x"])] = 1
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
        assert "\n" not in message and "\r" not in message, message
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
        assert warning.startswith(f"{path}:") and "\n" not in warning, warning
    assert os.path.exists(config.cert_file), config.cert_file


HARNESS = Harness("config_file", cases(), check)
