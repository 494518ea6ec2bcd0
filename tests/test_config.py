"""The config loader (SPEC §3): valid files load with the documented defaults, and every rule has
an error test asserting the one-line message: file:line, the dotted field, what was found, what
is expected, and the official text where one exists."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mcp_tunnel.config import Config, Limits, UpstreamTLS, load_config
from mcp_tunnel.errors import ConfigError
from mcp_tunnel.ippolicy import RFC1918
from mcp_tunnel.routing import Route

ENV = {"TUNNEL_DOMAIN": "abcd1234.tunnel.anthropic.com"}


class Files:
    """A scratch directory with placeholder cert/key files and a way to write configs into it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cert = root / "tls.crt"
        self.key = root / "tls.key"
        self.cert.write_text("placeholder certificate\n")
        self.key.write_text("placeholder key\n")

    def write(self, text: str, name: str = "config.yaml") -> str:
        path = self.root / name
        path.write_text(text.replace("@DIR@", str(self.root)))
        return str(path)

    def minimal(self, extra: str = "", routes: str = "routes:\n  echo: http://hello-mcp:9000\n") -> str:
        """A valid config (lines 1-5 fixed) with `extra` appended after the routes."""
        return self.write(
            'listen_addr: ":8080"\n'  # 1
            "tls:\n"  # 2
            "  cert_file: @DIR@/tls.crt\n"  # 3
            "  key_file: @DIR@/tls.key\n"  # 4
            "tunnel_domain: abcd1234.tunnel.anthropic.com\n"  # 5
            + routes  # 6...
            + extra
        )


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def load_error(path: str, **kwargs: object) -> str:
    """The rendered ConfigError of a load that must fail; it must be exactly one line."""
    kwargs.setdefault("environ", ENV)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert info.value.exit_code == 2
    assert message == info.value.render()
    return message


def assert_shape(message: str, path: str, line: int, field: str, *parts: str) -> None:
    """file:line: field: ... and every other expected fragment."""
    assert message.startswith(f"{path}:{line}: {field}: "), message
    for part in parts:
        assert part in message, (part, message)


# --------------------------------------------------------------------------------------------
# Valid configurations


OFFICIAL_PROGRAMMATIC = """\
listen_addr: ":8080"
log_level: info
shutdown_timeout: 30s
tunnel_domain: ${TUNNEL_DOMAIN}
tls:
  cert_file: @DIR@/tls.crt
  key_file: @DIR@/tls.key
routes:
  echo: http://hello-mcp:9000
"""

OFFICIAL_MANUAL = """\
listen_addr: ":8080"
log_level: info
tunnel_domain: ${TUNNEL_DOMAIN}
tls:
  cert_file: @DIR@/tls.crt
  key_file: @DIR@/tls.key
routes:
  echo: http://hello-mcp:9000
"""

OFFICIAL_CLAUDE_AI = """\
listen_addr: ":8080"
log_level: info
shutdown_timeout: 30s
tunnel_domain: ${TUNNEL_DOMAIN}
tls:
  cert_file: @DIR@/tls.crt
  key_file: @DIR@/tls.key
routes:
  docs: http://docs-mcp.example.corp:8080
  search: http://10.0.12.7:9000
upstream:
  allowed_ips:
    - 10.0.0.0/8
"""

OFFICIAL_QUICKSTART = """\
listen_addr: ":8080"
tunnel_domain: ${TUNNEL_DOMAIN}
tls:
  cert_file: @DIR@/tls.crt
  key_file: @DIR@/tls.key
routes:
  echo: http://hello-mcp:9000
"""


@pytest.mark.parametrize("text", [OFFICIAL_PROGRAMMATIC, OFFICIAL_MANUAL, OFFICIAL_QUICKSTART])
def test_official_examples_load_with_documented_defaults(files: Files, text: str) -> None:
    cfg = load_config(files.write(text), environ=ENV)
    assert isinstance(cfg, Config)
    assert (cfg.listen_host, cfg.listen_port) == ("", 8080)
    assert cfg.tunnel_domain == "abcd1234.tunnel.anthropic.com"
    assert (cfg.cert_file, cfg.key_file) == (str(files.cert), str(files.key))
    assert dict(cfg.routes) == {"echo": Route("echo", "http", "hello-mcp", 9000)}
    assert cfg.log_level == "info"
    assert cfg.shutdown_timeout == 30.0
    assert cfg.log_format == "text"
    assert cfg.upstream.policy.networks == RFC1918
    assert cfg.upstream.policy.disabled is False
    assert cfg.upstream.tls == UpstreamTLS(ca_file=None, include_system_cas=False)
    assert cfg.upstream.host_header == "original"
    assert (cfg.admin_host, cfg.admin_port) == (None, None)
    assert cfg.cert_reload_interval == 2.0
    assert cfg.limits == Limits()
    assert cfg.warnings == ()
    assert cfg.router.lookup("echo.abcd1234.tunnel.anthropic.com") == cfg.routes["echo"]


def test_official_claude_ai_example_replaces_the_default_ranges(files: Files) -> None:
    cfg = load_config(files.write(OFFICIAL_CLAUDE_AI), environ=ENV)
    assert cfg.upstream.policy.networks == (IPv4Network("10.0.0.0/8"),)
    assert cfg.routes["docs"] == Route("docs", "http", "docs-mcp.example.corp", 8080)
    assert cfg.routes["search"] == Route("search", "http", "10.0.12.7", 9000)
    assert cfg.warnings == ()


def test_routes_is_read_only(files: Files) -> None:
    cfg = load_config(files.minimal(), environ=ENV)
    with pytest.raises(TypeError):
        cfg.routes["x"] = Route("x", "http", "h", 1)  # type: ignore[index]


def test_every_optional_field(files: Files) -> None:
    ca = files.root / "ca.pem"
    ca.write_bytes(make_ca_pem())
    path = files.write(
        'listen_addr: "127.0.0.1:0"\n'
        "log_level: DEBUG\n"
        "log_format: json\n"
        "shutdown_timeout: 1m30s\n"
        "tunnel_domain: ABCD.Tunnel.Example.COM.\n"
        'admin_addr: "127.0.0.1:9090"\n'
        "tls:\n"
        "  cert_file: @DIR@/tls.crt\n"
        "  key_file: @DIR@/tls.key\n"
        "  reload_interval: 500ms\n"
        "routes:\n"
        "  Echo: HTTP://Hello-MCP:9000\n"
        "  auth: https://sso.example.corp:8443\n"
        "upstream:\n"
        "  allowed_ips: [10.1.0.0/16, 192.168.1.20]\n"
        "  host_header: upstream\n"
        "  tls:\n"
        "    ca_file: @DIR@/ca.pem\n"
        "    include_system_cas: true\n"
        "limits:\n"
        "  handshake_timeout: 5s\n"
        "  header_timeout: 2s\n"
        "  idle_timeout: 1m\n"
        "  upstream_connect_timeout: 3s\n"
        "  upstream_response_timeout: 2160h\n"
        "  max_header_bytes: 65536\n"
        "  max_body_bytes: 0\n"
        "  max_connections: 10\n"
        "  ws_ping_interval: 15s\n"
        "  ws_ping_timeout: 1500ms\n"
    )
    cfg = load_config(path, environ={})
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 0)
    assert (cfg.log_level, cfg.log_format) == ("debug", "json")
    assert cfg.shutdown_timeout == 90.0
    assert cfg.tunnel_domain == "abcd.tunnel.example.com"
    assert (cfg.admin_host, cfg.admin_port) == ("127.0.0.1", 9090)
    assert cfg.cert_reload_interval == 0.5
    assert cfg.routes["echo"] == Route("echo", "http", "hello-mcp", 9000)
    assert cfg.routes["auth"] == Route("auth", "https", "sso.example.corp", 8443)
    assert cfg.upstream.policy.networks == (IPv4Network("10.1.0.0/16"), IPv4Network("192.168.1.20/32"))
    assert cfg.upstream.host_header == "upstream"
    assert cfg.upstream.tls == UpstreamTLS(ca_file=str(ca), include_system_cas=True)
    assert cfg.limits == Limits(
        handshake_timeout=5.0,
        header_timeout=2.0,
        idle_timeout=60.0,
        upstream_connect_timeout=3.0,
        upstream_response_timeout=2160 * 3600.0,
        max_header_bytes=65536,
        max_body_bytes=0,
        max_connections=10,
        ws_ping_interval=15.0,
        ws_ping_timeout=1.5,
    )
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [
        (":8080", "", 8080),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("[::]:8080", "::", 8080),
        ("localhost:1", "localhost", 1),
    ],
)
def test_listen_addr_forms(files: Files, addr: str, host: str, port: int) -> None:
    path = files.write(OFFICIAL_QUICKSTART.replace('":8080"', f'"{addr}"'))
    cfg = load_config(path, environ=ENV)
    assert (cfg.listen_host, cfg.listen_port) == (host, port)


def test_null_values_keep_defaults(files: Files) -> None:
    cfg = load_config(
        files.minimal("log_level:\nupstream: ~\nlimits:\nshutdown_timeout: null\n"), environ=ENV
    )
    assert (cfg.log_level, cfg.shutdown_timeout, cfg.limits) == ("info", 30.0, Limits())
    assert cfg.upstream.policy.networks == RFC1918


# --------------------------------------------------------------------------------------------
# -tunnel-domain


def test_tunnel_domain_flag_overrides_the_file(files: Files) -> None:
    cfg = load_config(files.minimal(), tunnel_domain="Other.Example.NET.", environ=ENV)
    assert cfg.tunnel_domain == "other.example.net"
    assert cfg.router.lookup("echo.other.example.net") == cfg.routes["echo"]
    assert cfg.router.lookup("echo.abcd1234.tunnel.anthropic.com") is None


def test_tunnel_domain_flag_means_the_file_value_is_not_read(files: Files) -> None:
    # Helm injects -tunnel-domain; a ${VAR} the chart does not set must not fail the load.
    cfg = load_config(files.write(OFFICIAL_PROGRAMMATIC), tunnel_domain="x.example.com", environ={})
    assert cfg.tunnel_domain == "x.example.com"


def test_tunnel_domain_flag_is_validated(files: Files) -> None:
    message = load_error(files.minimal(), tunnel_domain="https://x.example.com")
    assert message.startswith(f"{files.root}/config.yaml: tunnel_domain (from -tunnel-domain): not a domain")
    assert 'found "https://x.example.com"' in message


def test_tunnel_domain_in_file_is_validated(files: Files) -> None:
    path = files.write(OFFICIAL_QUICKSTART.replace("${TUNNEL_DOMAIN}", '"*.abcd.example.com"'))
    assert_shape(
        load_error(path), path, 2, "tunnel_domain", "not a domain name", 'found "*.abcd.example.com"'
    )


# --------------------------------------------------------------------------------------------
# ${NAME} expansion


def test_env_expansion_in_any_string_value(files: Files) -> None:
    path = files.write(
        'listen_addr: "${HOST}:${PORT}"\n'
        "tunnel_domain: ${TUNNEL_DOMAIN}\n"
        "tls:\n"
        "  cert_file: ${DIR}/tls.crt\n"
        "  key_file: @DIR@/tls.key\n"
        "routes:\n"
        "  echo: http://${UPSTREAM}:9000\n"
        "upstream:\n"
        "  disable_ip_validation: ${NO_CHECK}\n"
        "limits:\n"
        "  max_connections: ${MAXC}\n"
    )
    env = {
        **ENV,
        "HOST": "127.0.0.1",
        "PORT": "8081",
        "DIR": str(files.root),
        "UPSTREAM": "127.0.0.1",
        "NO_CHECK": "true",
        "MAXC": "7",
    }
    cfg = load_config(path, environ=env)
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8081)
    assert cfg.cert_file == f"{files.root}/tls.crt"
    assert cfg.routes["echo"].host == "127.0.0.1"
    assert cfg.upstream.policy.disabled is True
    assert cfg.limits.max_connections == 7


def test_env_expansion_uses_os_environ_by_default(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_DOMAIN", "from-os.example.com")
    cfg = load_config(files.write(OFFICIAL_QUICKSTART))
    assert cfg.tunnel_domain == "from-os.example.com"


def test_double_dollar_is_a_literal_dollar_and_values_are_not_re_expanded(files: Files) -> None:
    (files.root / "$cert").write_text("x")
    (files.root / "${KEY}").write_text("x")
    path = files.write(
        'listen_addr: ":8080"\n'
        "tls:\n"
        "  cert_file: @DIR@/$$cert\n"
        "  key_file: ${KEYPATH}\n"
        "routes:\n"
        "  echo.example.com: http://hello-mcp:9000\n"
    )
    cfg = load_config(path, environ={"KEYPATH": f"{files.root}/${{KEY}}"})
    assert cfg.cert_file == f"{files.root}/$cert"
    assert cfg.key_file == f"{files.root}/${{KEY}}"


def test_unset_variable_is_an_error_naming_it(files: Files) -> None:
    path = files.write(OFFICIAL_QUICKSTART)
    message = load_error(path, environ={})
    assert_shape(
        message,
        path,
        2,
        "tunnel_domain",
        "environment variable TUNNEL_DOMAIN is not set",
        'found "${TUNNEL_DOMAIN}"',
        "expected TUNNEL_DOMAIN set",
    )


@pytest.mark.parametrize("value", ["$TUNNEL_DOMAIN", "${TUNNEL_DOMAIN", "${1X}", "a$"])
def test_a_stray_dollar_is_an_error(files: Files, value: str) -> None:
    path = files.write(OFFICIAL_QUICKSTART.replace("${TUNNEL_DOMAIN}", f'"{value}"'))
    assert_shape(
        load_error(path),
        path,
        2,
        "tunnel_domain",
        "a $ must start a ${NAME} reference",
        f'found "{value}"',
        "$$",
    )


def test_expanded_value_is_validated_after_expansion(files: Files) -> None:
    path = files.minimal(routes="routes:\n  echo: ${URL}\n")
    message = load_error(path, environ={"URL": "http://hello-mcp:9000/mcp"})
    assert_shape(message, path, 7, "routes.echo", "invalid upstream (must be scheme://host:port)")


# --------------------------------------------------------------------------------------------
# Unknown keys, duplicates, YAML syntax, the file itself


@pytest.mark.parametrize(
    ("extra", "line", "field", "suggestion"),
    [
        ("tunnel_domian: x\n", 8, "tunnel_domian", "did you mean tunnel_domain?"),
        (
            "upstream:\n  allowd_ips: [10.0.0.0/8]\n",
            9,
            "upstream.allowd_ips",
            "did you mean upstream.allowed_ips?",
        ),
        ("upstream:\n  ca_file: /x.pem\n", 9, "upstream.ca_file", "did you mean upstream.tls.ca_file?"),
        ("limits:\n  idle_timeuot: 5s\n", 9, "limits.idle_timeuot", "did you mean limits.idle_timeout?"),
        (
            "upstream:\n  tls:\n    cafile: /x\n",
            10,
            "upstream.tls.cafile",
            "did you mean upstream.tls.ca_file?",
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    files: Files, extra: str, line: int, field: str, suggestion: str
) -> None:
    path = files.minimal(extra)
    key = field.rsplit(".", 1)[-1]
    assert_shape(
        load_error(path),
        path,
        line,
        field,
        "unknown field",
        suggestion,
        f'found key "{key}"',
        "expected one of",
    )


def test_unknown_key_in_tls_section(files: Files) -> None:
    path = files.write(
        'listen_addr: ":8080"\ntls:\n  certfile: x\n  key_file: y\nroutes: {a.b: http://h:1}\n'
    )
    assert_shape(load_error(path), path, 3, "tls.certfile", "did you mean tls.cert_file?")


def test_unknown_key_without_a_near_name_lists_the_valid_ones(files: Files) -> None:
    path = files.minimal("zzzzzz: 1\n")
    message = load_error(path)
    assert_shape(message, path, 8, "zzzzzz", "unknown field", "expected one of listen_addr, log_level")
    assert "did you mean" not in message


def test_duplicate_keys_are_an_error_naming_both_lines(files: Files) -> None:
    path = files.minimal("log_level: info\nlog_level: debug\n")
    assert_shape(
        load_error(path),
        path,
        9,
        "log_level",
        "duplicate key (first given at line 8)",
        'found "log_level" twice',
    )


def test_duplicate_route_keys_are_an_error(files: Files) -> None:
    path = files.minimal(routes="routes:\n  echo: http://a:1\n  echo: http://b:1\n")
    assert_shape(load_error(path), path, 8, "routes.echo", "duplicate key (first given at line 7)")


def test_invalid_yaml_names_the_line_and_the_problem(files: Files) -> None:
    path = files.write('listen_addr: ":8080"\ntls:\n  cert_file: a\n key_file: b\n')
    message = load_error(path)
    assert message.startswith(f"{path}:4: invalid YAML: "), message
    assert "while parsing a block mapping, expected <block end>, but found '<block mapping start>'" in message


def test_invalid_yaml_tab_indentation(files: Files) -> None:
    path = files.write('listen_addr: ":8080"\nroutes:\n\techo: http://a:1\n')
    message = load_error(path)
    assert message.startswith(f"{path}:3: invalid YAML: "), message
    assert "tab" in message


def test_control_character(files: Files) -> None:
    path = files.write('listen_addr: ":8080"\nlog_level: in\x01fo\n')
    message = load_error(path)
    assert message.startswith(f"{path}:2: invalid YAML: control character U+0001 is not allowed"), message


DEEP_BLOCK = "".join(f"\n{'  ' * i}- " for i in range(2000))


@pytest.mark.parametrize("nested", ["[" * 5000, "{a: " * 5000, DEEP_BLOCK])
def test_yaml_nested_too_deeply_is_one_line_not_a_recursion_error(files: Files, nested: str) -> None:
    """PyYAML composes recursively: deep nesting was a RecursionError (found by fuzzing/)."""
    path = files.write('listen_addr: ":8080"\nroutes: ' + nested + "\n")
    message = load_error(path)
    assert message.startswith(f"{path}:"), message
    assert ": invalid YAML: lists or mappings nested too deeply; expected " in message, message
    line = int(message[len(path) + 1 :].split(":", 1)[0])
    assert 2 <= line <= 2001, message  # where the nesting is, not line 1


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('"\\r": null\n', "\\r: unknown field"),  # a key: the field
        ('"a\\e[2J\\u2028b": 1\n', "a\\x1b[2J\\u2028b: unknown field"),
        ('listen_addr: ":8080"\ntls: {cert_file: "/no/a\\rb", key_file: x}\n', "open /no/a\\rb:"),
    ],
)
def test_control_characters_from_the_file_are_escaped_in_the_one_line(
    files: Files, text: str, shown: str
) -> None:
    """A carriage return or an escape sequence in a key or path cannot break or rewrite the line
    the mistake is shown on (found by fuzzing/config_file.py: a key "\\r" went out raw)."""
    message = load_error(files.write(text))
    assert message.isprintable(), message
    assert shown in message, message


def test_several_yaml_documents(files: Files) -> None:
    path = files.write('listen_addr: ":8080"\n---\nlisten_addr: ":9090"\n')
    message = load_error(path)
    assert message.startswith(
        f"{path}:2: invalid YAML: expected a single document in the stream, but found another document"
    ), message


def test_empty_file(files: Files) -> None:
    path = files.write("# nothing here\n")
    assert load_error(path).startswith(f"{path}:1: the file is empty")


def test_top_level_must_be_a_mapping(files: Files) -> None:
    path = files.write("- listen_addr: x\n")
    message = load_error(path)
    assert message.startswith(f"{path}:1: must be a mapping; found a list (!!seq)"), message


def test_config_file_missing(files: Files) -> None:
    path = str(files.root / "nope.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}: cannot open the file")
    assert f"open {path}: no such file or directory" in message


def test_config_file_not_utf8(files: Files) -> None:
    path = files.root / "config.yaml"
    path.write_bytes(b'listen_addr: ":8080"\n# \xff\n')
    message = load_error(str(path))
    assert message.startswith(f"{path}:2: the file is not UTF-8 text; found byte 0xff"), message


@pytest.mark.parametrize("key", ["listen_addr", "tls", "routes"])
def test_required_fields(files: Files, key: str) -> None:
    text = OFFICIAL_QUICKSTART.replace("${TUNNEL_DOMAIN}", "a.example.com")
    lines = text.splitlines(keepends=True)
    drop = {"listen_addr": [0], "tls": [2, 3, 4], "routes": [5, 6]}[key]
    path = files.write("".join(line_ for i, line_ in enumerate(lines) if i not in drop))
    message = load_error(path)
    assert f"{key}: is required; found nothing" in message
    assert message.startswith(f"{path}:1: "), message  # a missing key: the mapping's first line


def test_required_field_given_empty(files: Files) -> None:
    path = files.write('listen_addr: ":8080"\ntls:\n  cert_file:\n  key_file: k\nroutes: {a.b: http://h:1}\n')
    assert_shape(load_error(path), path, 3, "tls.cert_file", "is required", "found nothing")


# --------------------------------------------------------------------------------------------
# routes


def test_routes_as_a_list_has_the_official_text(files: Files) -> None:
    path = files.minimal(routes="routes:\n  - echo: http://hello-mcp:9000\n")
    assert_shape(
        load_error(path),
        path,
        7,
        "routes",
        "not a list",
        "found a list (!!seq)",
        "cannot unmarshal !!seq into map[string]string",
    )


def test_routes_as_a_string(files: Files) -> None:
    path = files.minimal(routes="routes: http://hello-mcp:9000\n")
    assert_shape(load_error(path), path, 6, "routes", "cannot unmarshal !!str into map[string]string")


def test_routes_empty(files: Files) -> None:
    path = files.minimal(routes="routes: {}\n")
    assert_shape(load_error(path), path, 6, "routes", "has no routes", "found {}", "expected at least one")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://hello-mcp:9000/", "upstream has a path"),
        ("http://hello-mcp:9000/mcp", "upstream has a path"),
        ("http://hello-mcp", "upstream has no port"),
        ("http://hello-mcp/", "upstream has a path"),
        ("http://hello-mcp:9000?x=1", "upstream has a query"),
        ("http://hello-mcp:9000#top", "upstream has a fragment"),
        ("http://user:pw@hello-mcp:9000", "upstream has userinfo"),
        ("ftp://hello-mcp:21", 'upstream scheme "ftp" is not http or https'),
        ("ws://hello-mcp:9000", 'upstream scheme "ws" is not http or https'),
        ("hello-mcp:9000", "upstream has no scheme"),
        ("http://hello-mcp:0", "port must be a number from 1 to 65535"),
        ("http://hello-mcp:65536", "port must be a number from 1 to 65535"),
        ("http://hello-mcp:http", "port must be a number from 1 to 65535"),
        ("http://:9000", "upstream has no host"),
        ("http://[::1]:9000", "IPv4 only"),
        ("http://hello mcp:9000", "not a hostname or IPv4 address"),
    ],
)
def test_invalid_upstream_has_the_official_text(files: Files, value: str, why: str) -> None:
    path = files.minimal(routes=f'routes:\n  echo: "{value}"\n')
    assert_shape(
        load_error(path),
        path,
        7,
        "routes.echo",
        why,
        f'found "{value}"',
        "expected scheme://host:port",
        "invalid upstream (must be scheme://host:port)",
    )


def test_upstream_given_as_a_mapping(files: Files) -> None:
    path = files.minimal(routes="routes:\n  echo:\n    url: http://hello-mcp:9000\n")
    assert_shape(
        load_error(path),
        path,
        8,
        "routes.echo",
        "found a mapping (!!map)",
        "cannot unmarshal !!map into string",
    )


def test_route_keys_and_hosts_are_lowercased(files: Files) -> None:
    cfg = load_config(
        files.minimal(
            routes="routes:\n  ECHO: HTTPS://Hello-MCP.Example.CORP:9000\n"
            "upstream:\n  tls:\n    include_system_cas: true\n"
        ),
        environ=ENV,
    )
    assert dict(cfg.routes) == {"echo": Route("echo", "https", "hello-mcp.example.corp", 9000)}


def test_route_keys_colliding_after_lowercasing_name_both_lines(files: Files) -> None:
    path = files.minimal(routes="routes:\n  Echo: http://a:1\n  other: http://c:1\n  ECHO: http://b:1\n")
    assert_shape(
        load_error(path),
        path,
        9,
        "routes.echo",
        'key "ECHO" (line 9) collides with "Echo" (line 7)',
        "compared lowercase",
    )


@pytest.mark.parametrize("key", ["https://echo", "*.example.com", "echo.example.com.", "echo:9000", "-echo"])
def test_invalid_route_keys(files: Files, key: str) -> None:
    path = files.minimal(routes=f'routes:\n  "{key}": http://a:1\n')
    message = load_error(path)
    assert_shape(
        message, path, 7, f"routes.{key}", "not a valid route key", f'found "{key}"', "expected a subdomain"
    )


def test_https_route_without_trust_anchor_names_the_route(files: Files) -> None:
    path = files.minimal(routes="routes:\n  echo: http://a:1\n  auth: https://sso.example.corp:8443\n")
    assert_shape(
        load_error(path),
        path,
        8,
        "routes.auth",
        "https upstream without a trust anchor",
        'found "https://sso.example.corp:8443"',
        "expected upstream.tls.ca_file or upstream.tls.include_system_cas: true",
        "no trust anchor for the upstream certificate",
    )


def test_https_route_with_system_cas_loads(files: Files) -> None:
    cfg = load_config(
        files.minimal(
            "upstream:\n  tls:\n    include_system_cas: yes\n",
            routes="routes:\n  auth: https://sso.example.corp:8443\n",
        ),
        environ=ENV,
    )
    assert cfg.routes["auth"].scheme == "https"
    assert cfg.upstream.tls.include_system_cas is True


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
        ("169.254.169.254", "169.254.169.254"),
        ("0", "0.0.0.0"),
    ],
)
def test_ip_literal_upstream_outside_the_allowed_ranges(files: Files, host: str, address: str) -> None:
    path = files.minimal(routes=f"routes:\n  echo: http://{host}:9000\n")
    assert_shape(
        load_error(path),
        path,
        7,
        "routes.echo",
        f"upstream address {address} is outside upstream.allowed_ips",
        f'found "http://{host}:9000"',
        "expected an address in 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16",
        f"IP validation failed: {address} is not a private address",
    )


def test_ip_literal_upstream_is_judged_against_the_configured_list(files: Files) -> None:
    path = files.minimal(
        "upstream:\n  allowed_ips: [127.0.0.0/8]\n",
        routes="routes:\n  lo: http://127.0.0.1:9000\n  ten: http://10.0.0.5:9000\n",
    )
    # Setting allowed_ips replaces RFC1918: 10.0.0.5 is now refused.
    assert_shape(
        load_error(path), path, 8, "routes.ten", "10.0.0.5 is outside", "expected an address in 127.0.0.0/8"
    )


def test_ip_literal_in_an_odd_spelling_inside_the_ranges_loads_with_a_warning(files: Files) -> None:
    path = files.minimal(routes="routes:\n  echo: http://10.1:9000\n")
    cfg = load_config(path, environ=ENV)
    assert cfg.routes["echo"].host == "10.1"
    assert cfg.warnings == (f"{path}:7: routes.echo: upstream host 10.1 is the IPv4 address 10.0.0.1",)


def test_hostnames_are_not_resolved_at_load(files: Files) -> None:
    cfg = load_config(files.minimal(routes="routes:\n  echo: http://localhost:9000\n"), environ=ENV)
    assert cfg.routes["echo"].host == "localhost"


def test_disabled_validation_allows_any_literal(files: Files) -> None:
    path = files.minimal(
        "upstream:\n  disable_ip_validation: true\n", routes="routes:\n  echo: http://127.0.0.1:1\n"
    )
    cfg = load_config(path, environ=ENV)
    assert cfg.upstream.policy.disabled is True
    assert cfg.warnings == (
        f"{path}:9: upstream.disable_ip_validation: upstream IP validation is off: no SSRF protection",
    )


def test_route_warnings_bare_key_without_domain_and_shadowed_key(files: Files) -> None:
    path = files.write(
        'listen_addr: ":8080"\ntls:\n  cert_file: @DIR@/tls.crt\n  key_file: @DIR@/tls.key\n'
        "routes:\n  echo: http://a:1\n"
    )
    cfg = load_config(path, environ={})
    assert cfg.warnings == (
        f"{path}:6: routes.echo: bare subdomain but no tunnel_domain: "
        "it only matches the host 'echo' exactly",
    )
    path = files.minimal(
        routes="routes:\n  echo: http://a:1\n  echo.abcd1234.tunnel.anthropic.com: http://b:1\n"
    )
    cfg = load_config(path, environ=ENV)
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith(f"{path}:7: routes.echo: never used: ")


# --------------------------------------------------------------------------------------------
# upstream.allowed_ips and disable_ip_validation


def test_allowed_ips_and_disable_are_mutually_exclusive(files: Files) -> None:
    path = files.minimal("upstream:\n  disable_ip_validation: true\n  allowed_ips:\n    - 10.0.0.0/8\n")
    assert_shape(
        load_error(path),
        path,
        11,
        "upstream.allowed_ips",
        "upstream.disable_ip_validation: true (line 9)",
        "mutually exclusive",
        "found both set",
    )


def test_allowed_ips_with_disable_false_is_fine(files: Files) -> None:
    cfg = load_config(
        files.minimal("upstream:\n  disable_ip_validation: false\n  allowed_ips: [10.0.0.0/8]\n"), environ=ENV
    )
    assert cfg.upstream.policy.disabled is False


def test_allowed_ips_ipv6_entry(files: Files) -> None:
    path = files.minimal(
        'upstream:\n  allowed_ips:\n    - 10.0.0.0/8\n    - 192.168.0.0/16\n    - "fd00::/8"\n'
    )
    assert_shape(load_error(path), path, 12, "upstream.allowed_ips[2]", "IPv4 only", 'found "fd00::/8"')


def test_allowed_ips_ipv6_single_address(files: Files) -> None:
    path = files.minimal('upstream:\n  allowed_ips: ["::1"]\n')
    assert_shape(load_error(path), path, 9, "upstream.allowed_ips[0]", "IPv6 is not supported")


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "10.1", "not-an-ip", "010.0.0.0/8", "10.0.0.0/8/8"])
def test_allowed_ips_garbage(files: Files, entry: str) -> None:
    path = files.minimal(f'upstream:\n  allowed_ips:\n    - "{entry}"\n')
    assert_shape(
        load_error(path),
        path,
        10,
        "upstream.allowed_ips[0]",
        "not an IPv4 CIDR or address",
        f'found "{entry}"',
    )


def test_allowed_ips_host_bits_are_normalised_with_a_warning(files: Files) -> None:
    path = files.minimal("upstream:\n  allowed_ips:\n    - 192.168.1.0/24\n    - 10.0.0.1/8\n")
    cfg = load_config(path, environ=ENV)
    assert cfg.upstream.policy.networks == (IPv4Network("192.168.1.0/24"), IPv4Network("10.0.0.0/8"))
    assert cfg.warnings == (
        f"{path}:11: upstream.allowed_ips[1]: 10.0.0.1/8 has host bits set; using 10.0.0.0/8",
    )


def test_allowed_ips_everything_warns(files: Files) -> None:
    path = files.minimal("upstream:\n  allowed_ips: [0.0.0.0/0]\n")
    cfg = load_config(path, environ=ENV)
    assert cfg.warnings == (
        f"{path}:9: upstream.allowed_ips[0]: 0.0.0.0/0 allows every address: this disables SSRF protection",
    )


def test_allowed_ips_must_be_a_list(files: Files) -> None:
    path = files.minimal("upstream:\n  allowed_ips: 10.0.0.0/8\n")
    assert_shape(load_error(path), path, 9, "upstream.allowed_ips", "must be a list", 'found "10.0.0.0/8"')


def test_allowed_ips_empty(files: Files) -> None:
    path = files.minimal("upstream:\n  allowed_ips: []\n")
    assert_shape(load_error(path), path, 9, "upstream.allowed_ips", "is empty", "found []")


@pytest.mark.parametrize("value", ["maybe", '"1"', "[true]"])
def test_booleans(files: Files, value: str) -> None:
    path = files.minimal(f"upstream:\n  disable_ip_validation: {value}\n")
    message = load_error(path)
    assert message.startswith(f"{path}:9: upstream.disable_ip_validation: "), message
    assert "expected true or false" in message


# --------------------------------------------------------------------------------------------
# Files: tls.cert_file, tls.key_file, upstream.tls.ca_file


@pytest.mark.parametrize(("field", "line"), [("cert_file", 3), ("key_file", 4)])
def test_missing_cert_or_key_file(files: Files, field: str, line: int) -> None:
    (files.cert if field == "cert_file" else files.key).unlink()
    path = files.minimal()
    missing = files.root / f"tls.{'crt' if field == 'cert_file' else 'key'}"
    assert_shape(
        load_error(path),
        path,
        line,
        f"tls.{field}",
        "cannot open the file",
        f'found "{missing}"',
        f"open {missing}: no such file or directory",
    )


def test_cert_file_is_a_directory(files: Files) -> None:
    files.cert.unlink()
    files.cert.mkdir()
    path = files.minimal()
    assert_shape(load_error(path), path, 3, "tls.cert_file", f"open {files.cert}: is a directory")


@pytest.mark.parametrize(
    ("extra", "line", "field"),
    [
        ("", 3, "tls.cert_file"),
        ('upstream:\n  tls:\n    ca_file: "@DIR@/ca.pem\\0"\n', 10, "upstream.tls.ca_file"),
    ],
)
def test_path_with_a_nul_is_a_config_error_not_a_value_error(
    files: Files, extra: str, line: int, field: str
) -> None:
    """open() raises ValueError, not OSError, for a NUL: it went out as an internal error (found
    by fuzzing/config_file.py)."""
    text = Path(files.minimal(extra)).read_text()
    if not extra:
        text = text.replace("/tls.crt\n", '/tls.crt\\0"\n').replace("cert_file: ", 'cert_file: "')
    path = files.write(text)
    assert_shape(load_error(path), path, line, field, "cannot open the file", "without NUL characters")


def make_ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_ca_file_valid(files: Files) -> None:
    (files.root / "ca.pem").write_bytes(make_ca_pem())
    cfg = load_config(
        files.minimal(
            "upstream:\n  tls:\n    ca_file: @DIR@/ca.pem\n",
            routes="routes:\n  auth: https://sso.example.corp:8443\n",
        ),
        environ=ENV,
    )
    assert cfg.upstream.tls.ca_file == f"{files.root}/ca.pem"
    assert cfg.upstream.tls.include_system_cas is False


def test_ca_file_missing(files: Files) -> None:
    path = files.minimal("upstream:\n  tls:\n    ca_file: @DIR@/ca.pem\n")
    assert_shape(
        load_error(path),
        path,
        10,
        "upstream.tls.ca_file",
        f"open {files.root}/ca.pem: no such file or directory",
    )


@pytest.mark.parametrize(
    "content",
    [
        b"not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\xff\xfe",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIB\xff\n-----END CERTIFICATE-----\n",
    ],
)
def test_ca_file_not_pem(files: Files, content: bytes) -> None:
    (files.root / "ca.pem").write_bytes(content)
    path = files.minimal("upstream:\n  tls:\n    ca_file: @DIR@/ca.pem\n")
    assert_shape(
        load_error(path),
        path,
        10,
        "upstream.tls.ca_file",
        "not a usable CA bundle",
        f'found "{files.root}/ca.pem"',
        "expected a PEM bundle of CA certificates",
    )
    reason = load_error(path).split(f'found "{files.root}/ca.pem" (', 1)[1].split(")", 1)[0]
    assert reason.startswith(
        ("no PEM certificate", "not PEM text: byte 0x", "the TLS library refused it: ")
    ), reason
    assert "None" not in reason and "_ssl.c" not in reason


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another uid can traverse (pytest's tmp_path lives under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="mcp-tunnel-cfg-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


OTHER_UID = 65532


def load_as_other_user(path: str) -> str:
    """Load the config as an unprivileged uid so a permission denial is real, and return the error.

    As root: fork and setuid(65532) in the child (the interpreter lives under a directory that
    uid cannot read, so spawning a fresh one as that user is not possible; the fork already has
    every module loaded). Not root: this process is already unprivileged.
    """
    if os.geteuid() != 0:
        return load_error(path, environ={})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            try:
                os.setgroups([])
                os.setgid(OTHER_UID)
                os.setuid(OTHER_UID)
            except PermissionError:
                os.write(write_end, b"NOSETUID")
                os._exit(0)
            try:
                load_config(path, environ={})
                result = "LOADED"
            except ConfigError as exc:
                result = "ERROR " + str(exc)
            except BaseException as exc:
                result = "CRASH " + repr(exc)
            os.write(write_end, result.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        while chunk := reader.read():
            chunks.append(chunk)
    os.waitpid(pid, 0)
    result = b"".join(chunks).decode()
    if result == "NOSETUID":
        pytest.skip("root without CAP_SETUID: cannot drop to another uid")
    assert result.startswith("ERROR "), result
    message = result.removeprefix("ERROR ")
    assert "\n" not in message
    return message


def expected_uid() -> int:
    return OTHER_UID if os.geteuid() == 0 else os.geteuid()


def _write_world_readable(files: Files) -> str:
    path = files.minimal()
    for p in (Path(path), files.cert, files.key):
        p.chmod(0o644)
    return path


def test_key_file_permission_denied_names_owner_mode_uid_and_both_fixes(shared_dir: Path) -> None:
    files = Files(shared_dir)
    path = _write_world_readable(files)
    files.key.chmod(0o000)
    message = load_as_other_user(path)
    owner_uid = files.key.stat().st_uid
    owner = f"uid {owner_uid} (root)" if owner_uid == 0 else f"uid {owner_uid}"
    assert_shape(
        message,
        path,
        4,
        "tls.key_file",
        "the proxy cannot read this file",
        f"found {files.key} owned by {owner}",
        "with mode 0000",
        f"the proxy runs as uid {expected_uid()}",
        f"chmod 644 {files.key}",
        f"run the proxy as its owner ({owner})",
        f"open {files.key}: permission denied",
    )


def test_cert_file_permission_denied(shared_dir: Path) -> None:
    files = Files(shared_dir)
    path = _write_world_readable(files)
    files.cert.chmod(0o600)
    message = load_as_other_user(path)
    assert_shape(message, path, 3, "tls.cert_file", "with mode 0600", f"open {files.cert}: permission denied")


def test_key_file_in_an_unsearchable_directory(shared_dir: Path) -> None:
    files = Files(shared_dir)
    path = _write_world_readable(files)
    private = shared_dir / "private"
    private.mkdir()
    (private / "tls.key").write_text("x")
    (private / "tls.key").chmod(0o644)
    private.chmod(0o700 if os.geteuid() == 0 else 0o000)
    Path(path).write_text(Path(path).read_text().replace(str(files.key), str(private / "tls.key")))
    try:
        message = load_as_other_user(path)
    finally:
        private.chmod(0o755)
    assert_shape(
        message,
        path,
        4,
        "tls.key_file",
        "owner and mode unknown",
        f"the proxy runs as uid {expected_uid()}",
        f"searchable by uid {expected_uid()}",
        f"open {private}/tls.key: permission denied",
    )


def test_config_file_permission_denied(shared_dir: Path) -> None:
    files = Files(shared_dir)
    path = _write_world_readable(files)
    Path(path).chmod(0o000)
    message = load_as_other_user(path)
    assert message.startswith(f"{path}: the proxy cannot read this file; found {path} owned by"), message
    assert f"open {path}: permission denied" in message
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0


# --------------------------------------------------------------------------------------------
# Scalars: addresses, levels, durations, limits


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("8080", "missing port"),
        ("localhost", "missing port"),
        (":99999", "port must be a number from 0 to 65535"),
        (":http", "port must be a number from 0 to 65535"),
        ("::1:8080", "too many colons"),
        ("[::1:8080", "not a host:port address"),
        ("bad host:80", "not a valid host"),
    ],
)
def test_listen_addr_errors(files: Files, value: str, why: str) -> None:
    path = files.write(OFFICIAL_QUICKSTART.replace('":8080"', f'"{value}"'))
    assert_shape(load_error(path), path, 1, "listen_addr", why, f'found "{value}"', "expected host:port")


def test_admin_addr_must_differ_from_listen_addr(files: Files) -> None:
    path = files.minimal('admin_addr: "0.0.0.0:8080"\n')
    assert_shape(load_error(path), path, 8, "admin_addr", "must differ from listen_addr", "port 8080")


@pytest.mark.parametrize(
    ("listen", "admin", "clash"),
    [
        (":8080", "127.0.0.1:8080", True),
        ("127.0.0.1:8080", "0.0.0.0:8080", True),
        ("127.0.0.1:8080", "127.0.0.1:8080", True),
        ("10.0.0.1:8080", "127.0.0.1:8080", False),
        (":8080", ":9090", False),
        ("127.0.0.1:0", "127.0.0.1:0", False),  # two ephemeral ports never clash
    ],
)
def test_admin_addr_against_listen_addr(files: Files, listen: str, admin: str, clash: bool) -> None:
    path = files.write(
        f'listen_addr: "{listen}"\nadmin_addr: "{admin}"\n'
        "tls:\n  cert_file: @DIR@/tls.crt\n  key_file: @DIR@/tls.key\nroutes: {a.example.com: http://h:1}\n"
    )
    if clash:
        assert_shape(load_error(path), path, 2, "admin_addr", "must differ from listen_addr")
    else:
        cfg = load_config(path, environ={})
        assert (cfg.admin_host, cfg.admin_port) == (admin.rsplit(":", 1)[0], int(admin.rsplit(":", 1)[1]))


def test_admin_addr_errors(files: Files) -> None:
    path = files.minimal("admin_addr: 9090\n")
    assert_shape(load_error(path), path, 8, "admin_addr", "missing port", 'found "9090"')


@pytest.mark.parametrize(
    ("key", "value", "message", "expected"),
    [
        (
            "log_level",
            "warning",
            "unknown value, did you mean warn?",
            "expected debug or info or warn or error",
        ),
        ("log_level", "trace", "unknown value", "expected debug or info or warn or error"),
        ("log_format", "jsno", "did you mean json?", "expected text or json"),
        ("log_format", "[json]", "must be a single value", "expected text or json"),
    ],
)
def test_choices(files: Files, key: str, value: str, message: str, expected: str) -> None:
    path = files.minimal(f"{key}: {value}\n")
    assert_shape(load_error(path), path, 8, key, message, expected)


def test_host_header_choice(files: Files) -> None:
    path = files.minimal("upstream:\n  host_header: backend\n")
    assert_shape(
        load_error(path), path, 9, "upstream.host_header", 'found "backend"', "expected original or upstream"
    )


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("30", 'time: missing unit in duration "30"'),
        ("30x", 'time: unknown unit "x" in duration "30x"'),
        ("soon", 'time: invalid duration "soon"'),
    ],
)
def test_shutdown_timeout_not_a_duration(files: Files, value: str, detail: str) -> None:
    path = files.minimal(f"shutdown_timeout: {value}\n")
    assert_shape(load_error(path), path, 8, "shutdown_timeout", "not a duration", f'found "{value}"', detail)


def test_shutdown_timeout_zero_is_allowed_but_negative_is_not(files: Files) -> None:
    assert load_config(files.minimal("shutdown_timeout: 0s\n"), environ=ENV).shutdown_timeout == 0.0
    path = files.minimal("shutdown_timeout: -5s\n")
    assert_shape(load_error(path), path, 8, "shutdown_timeout", "out of range", 'found "-5s"')


def test_reload_interval_must_be_positive(files: Files) -> None:
    path = files.write(
        'listen_addr: ":8080"\ntls:\n  cert_file: @DIR@/tls.crt\n  key_file: @DIR@/tls.key\n'
        "  reload_interval: 0s\nroutes: {a.example.com: http://h:1}\n"
    )
    assert_shape(load_error(path), path, 5, "tls.reload_interval", "out of range", "above zero")


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("idle_timeout", "0s", "out of range"),
        ("header_timeout", "10", "missing unit in duration"),
        ("max_connections", "0", "expected a whole number >= 1"),
        ("max_header_bytes", "32KiB", "not a number"),
        ("max_header_bytes", "-1", "not a number"),
        ("max_body_bytes", "1.5", "expected a whole number >= 0"),
        ("ws_ping_interval", "[1s]", "must be a single value"),
    ],
)
def test_limits_errors(files: Files, key: str, value: str, why: str) -> None:
    path = files.minimal(f"limits:\n  {key}: {value}\n")
    assert_shape(load_error(path), path, 9, f"limits.{key}", why)


def test_limits_keys_are_exactly_the_dataclass_fields(files: Files) -> None:
    from dataclasses import fields

    body = "".join(f"  {f.name}: {'7s' if f.type == 'float' else '7'}\n" for f in fields(Limits))
    cfg = load_config(files.minimal("limits:\n" + body), environ=ENV)
    for f in fields(Limits):
        assert getattr(cfg.limits, f.name) == 7, f.name


def test_dns_timeout_is_a_go_duration(files: Files) -> None:
    cfg = load_config(files.minimal("limits:\n  dns_timeout: 250ms\n"), environ=ENV)
    assert cfg.limits.dns_timeout == 0.25
    assert cfg.limits.upstream_connect_timeout == Limits().upstream_connect_timeout
    assert load_config(files.minimal(), environ=ENV).limits.dns_timeout == 5.0
    path = files.minimal("limits:\n  dns_timeout: 0s\n")
    assert_shape(load_error(path), path, 9, "limits.dns_timeout", "above zero")


def test_limits_must_be_a_mapping(files: Files) -> None:
    path = files.minimal("limits: [1]\n")
    assert_shape(load_error(path), path, 8, "limits", "must be a mapping", "found a list (!!seq)")


# --------------------------------------------------------------------------------------------
# oauth: (SPEC §5.1)

OAUTH_ROUTES = "routes:\n  mcp: http://hello-mcp:9000\n  Auth: http://keycloak:8080\n"  # lines 6-8


def test_oauth_section_loads(files: Files) -> None:
    from mcp_tunnel.oauth_rewrite import OAuthSettings

    extra = (
        "oauth:\n"  # 9
        "  authorization_server: AUTH\n"
        "  authorization_endpoint: https://login.example.com/authorize\n"
        "  protected_resources: [mcp]\n"
    )
    cfg = load_config(files.minimal(extra, routes=OAUTH_ROUTES), environ=ENV)
    assert cfg.oauth == OAuthSettings("auth", "https://login.example.com/authorize", ("mcp",))
    assert load_config(files.minimal(routes=OAUTH_ROUTES), environ=ENV).oauth is None
    assert load_config(files.minimal("oauth:\n", routes=OAUTH_ROUTES), environ=ENV).oauth is None


@pytest.mark.parametrize(
    ("body", "line", "field", "parts"),
    [
        (
            "  authorization_server: keycloak\n  authorization_endpoint: https://login.example.com/a\n",
            10,
            "oauth.authorization_server",
            ("unknown route key", '"keycloak"', "mcp, auth"),
        ),
        (
            "  authorization_server: auht\n  authorization_endpoint: https://login.example.com/a\n",
            10,
            "oauth.authorization_server",
            ("unknown route key, did you mean auth?",),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: http://login.example.com/a\n",
            11,
            "oauth.authorization_endpoint",
            ("not an absolute https URL", "http://login.example.com/a"),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: /authorize\n",
            11,
            "oauth.authorization_endpoint",
            ("not an absolute https URL",),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: https://auth.abcd1234.tunnel.anthropic.com/a\n",
            11,
            "oauth.authorization_endpoint",
            ("is a tunnel host",),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: https://login.example.com/a\n"
            "  protected_resources: [mcp, auth]\n",
            12,
            "oauth.protected_resources[1]",
            ("also oauth.authorization_server (line 10)", "either the authorization server or"),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: https://login.example.com/a\n"
            "  protected_resources: [mpc]\n",
            12,
            "oauth.protected_resources[0]",
            ("unknown route key, did you mean mcp?",),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: https://login.example.com/a\n"
            "  protected_resources: mcp\n",
            12,
            "oauth.protected_resources",
            ("must be a list",),
        ),
        (
            "  authorization_endpoint: https://login.example.com/a\n",
            10,  # the mapping's first line
            "oauth.authorization_server",
            ("is required",),
        ),
        (
            "  authorization_server: auth\n  authorization_endpoint: https://login.example.com/a\n"
            "  issuer: x\n",
            12,
            "oauth.issuer",
            ("unknown field",),
        ),
    ],
)
def test_oauth_errors_name_the_field(
    files: Files, body: str, line: int, field: str, parts: tuple[str, ...]
) -> None:
    path = files.minimal("oauth:\n" + body, routes=OAUTH_ROUTES)
    assert_shape(load_error(path), path, line, field, *parts)


@pytest.mark.parametrize("stack", ["manual", "programmatic"])
def test_compose_oauth_example_loads_once_uncommented(files: Files, stack: str) -> None:
    """The commented example in the Compose config is a working section (with an auth route)."""
    text = (Path(__file__).parent.parent / "deploy/compose" / stack / "config/mcp-proxy.yaml").read_text()
    lines = text.splitlines()
    start = lines.index("# oauth:")
    example = "\n".join(line.removeprefix("# ") for line in lines[start : start + 4]) + "\n"
    routes = "routes:\n  echo: http://hello-mcp:9000\n  auth: http://keycloak:8080\n"
    cfg = load_config(files.minimal(example, routes=routes), environ=ENV)
    assert cfg.oauth is not None and cfg.oauth.protected_resources == ("echo",)


# --------------------------------------------------------------------------------------------
# mcp: (issue #23)

MCP_ROUTES = "routes:\n  wiki: http://wiki:9000\n  Tickets: http://tickets:9000\n"  # lines 6-8


def test_mcp_section_loads(files: Files) -> None:
    from mcp_tunnel.mcp_policy import ToolPolicy

    extra = (
        "mcp:\n"  # 9
        "  audit: true\n"
        "  routes:\n"
        "    wiki:\n"
        '      allow_tools: ["search_*", get_page]\n'
        "    TICKETS:\n"
        '      deny_tools: ["delete_*", "close_*"]\n'
    )
    cfg = load_config(files.minimal(extra, routes=MCP_ROUTES), environ=ENV)
    assert cfg.mcp is not None and cfg.mcp.audit
    assert dict(cfg.mcp.routes) == {
        "wiki": ToolPolicy(allow=("search_*", "get_page")),
        "tickets": ToolPolicy(deny=("delete_*", "close_*")),
    }
    assert load_config(files.minimal(routes=MCP_ROUTES), environ=ENV).mcp is None
    audit_only = load_config(files.minimal("mcp:\n  audit: yes\n", routes=MCP_ROUTES), environ=ENV).mcp
    assert audit_only is not None and audit_only.audit and not audit_only.routes


@pytest.mark.parametrize(
    ("body", "line", "field", "parts"),
    [
        (
            "  routes:\n    wiki:\n      allow_tools: [a]\n      deny_tools: [b]\n",
            13,
            "mcp.routes.wiki.deny_tools",
            ("allow_tools (line 12) or deny_tools, not both",),
        ),
        (
            "  routes:\n    wikki:\n      allow_tools: [a]\n",
            11,
            "mcp.routes",
            ("unknown route key, did you mean wiki?",),
        ),
        (
            '  routes:\n    wiki:\n      allow_tools: [a, ""]\n',
            12,
            "mcp.routes.wiki.allow_tools[1]",
            ("empty pattern",),
        ),
        (
            "  routes:\n    wiki:\n      deny_tools: [~]\n",
            12,
            "mcp.routes.wiki.deny_tools[0]",
            ("empty pattern",),
        ),
        (
            "  routes:\n    wiki:\n      deny_tools: delete_*\n",
            12,
            "mcp.routes.wiki.deny_tools",
            ("must be a list",),
        ),
        ("  routes:\n    wiki: {}\n", 11, "mcp.routes.wiki", ("needs allow_tools or deny_tools",)),
        ("  routes:\n    wiki:\n      allow: [a]\n", 12, "mcp.routes.wiki.allow", ("unknown field",)),
        ("  audit: maybe\n", 10, "mcp.audit", ("must be a boolean",)),
        ("  audits: true\n", 10, "mcp.audits", ("unknown field, did you mean mcp.audit?",)),
    ],
)
def test_mcp_errors_name_the_field(
    files: Files, body: str, line: int, field: str, parts: tuple[str, ...]
) -> None:
    path = files.minimal("mcp:\n" + body, routes=MCP_ROUTES)
    assert_shape(load_error(path), path, line, field, *parts)


# --------------------------------------------------------------------------------------------
# workers (issue #24)


def test_workers_default_number_and_auto(files: Files) -> None:
    assert load_config(files.minimal(), environ=ENV).workers == 1
    assert load_config(files.minimal("workers: 3\n"), environ=ENV).workers == 3
    cores = len(os.sched_getaffinity(0))
    assert load_config(files.minimal("workers: auto\n"), environ=ENV).workers == min(cores, 256)
    assert load_config(files.minimal('workers: "AUTO"\n'), environ=ENV).workers == min(cores, 256)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", "out of range"),
        ("-1", "out of range"),
        ("257", "out of range"),
        ('"x"', "not a number"),
        ("2.5", "not a number"),
        ("[2]", "must be a single value"),
    ],
)
def test_workers_errors(files: Files, value: str, why: str) -> None:
    path = files.minimal(f"workers: {value}\n")
    assert_shape(load_error(path), path, 8, "workers", why, "expected a whole number from 1 to 256, or auto")
