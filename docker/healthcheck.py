"""The image's HEALTHCHECK: ask the proxy's admin endpoint whether it is ready (no curl needed).

Which URL, first match wins:
  1. MCP_TUNNEL_HEALTH_URL, used as given (for example http://127.0.0.1:9090/healthz);
  2. ``admin_addr`` from the proxy's config file, path ``/readyz``. The file is MCP_TUNNEL_CONFIG,
     else the ``-config`` flag of the container's main process (PID 1), else
     /etc/mcp-gateway/config.yaml. An ``admin_addr`` on all interfaces (``:9090``, ``0.0.0.0:9090``)
     is checked on 127.0.0.1.
  3. No ``admin_addr`` in the config (an official config, unchanged): a TCP connect to
     ``listen_addr`` proves at least that the proxy accepts connections.

``${NAME}`` in those two values is expanded exactly as the proxy expands it: with the proxy's own
function (`mcp_tunnel.envref.expand`), imported from the installed package. The HEALTHCHECK runs
this file with the image's venv python (/opt/mcp-tunnel/bin/python), which has the package. A
value that came from the environment is never printed unless it proved to be host:port.

Exit 0 healthy, 1 unhealthy (Docker's contract); one line on stdout says why. Stdlib only, apart
from PyYAML and mcp_tunnel, which the image ships for the proxy. Never reads anything but the
config file.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

DEFAULT_CONFIG = "/etc/mcp-gateway/config.yaml"
TIMEOUT = float(os.environ.get("MCP_TUNNEL_HEALTH_TIMEOUT", "3"))


def config_from_cmdline(argv: Sequence[str]) -> str | None:
    """The value of ``-config``/``--config`` (``-config X`` or ``-config=X``) in a command line."""
    for i, arg in enumerate(argv):
        for flag in ("-config", "--config"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


def pid1_argv(path: str = "/proc/1/cmdline") -> list[str]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def config_path(environ: dict[str, str] | os._Environ[str], argv: Sequence[str]) -> str:
    return environ.get("MCP_TUNNEL_CONFIG") or config_from_cmdline(argv) or DEFAULT_CONFIG


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (Go style; ``:9090`` and ``0.0.0.0:9090`` mean all interfaces) -> a dialable pair."""
    host, sep, port = str(addr).strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {addr!r}")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    return host, int(port)


def config_addr(path: str, field: str, raw: object, environ: Mapping[str, str]) -> tuple[str, int]:
    """A ``host:port`` field of the config, ``${NAME}`` expanded as the proxy does."""
    from mcp_tunnel.envref import EnvRefError, expand  # the installed package's, as the proxy's

    text = str(raw)
    try:
        expanded = expand(text, environ).text
    except EnvRefError as exc:
        raise ValueError(f"{path}: {field} {text!r}: {exc}") from None
    try:
        return split_addr(expanded)
    except ValueError:
        raise ValueError(f"{path}: {field} {text!r} is not host:port") from None  # no env value


def target_from_config(path: str, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """("http", url) for the admin endpoint, or ("tcp", "host:port") for the listener."""
    import yaml  # the image's venv ships PyYAML for the proxy

    env = os.environ if environ is None else environ
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping")
    admin = doc.get("admin_addr")
    if admin:
        host, port = config_addr(path, "admin_addr", admin, env)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return "http", f"http://{netloc}/readyz"
    listen = doc.get("listen_addr")
    if not listen:
        raise ValueError(f"{path}: neither admin_addr nor listen_addr is set")
    host, port = config_addr(path, "listen_addr", listen, env)
    return "tcp", f"{host}:{port}"


def check_http(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:  # noqa: S310 (http only, local)
            body = resp.read(200).decode("utf-8", "replace").strip()
            return 200 <= resp.status < 300, f"{url}: {resp.status} {body}".strip()
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        return False, f"{url}: {exc.code} {body}".strip()
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def check_tcp(addr: str) -> tuple[bool, str]:
    host, port = split_addr(addr)
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return True, f"tcp {host}:{port}: accepting connections (no admin_addr configured)"
    except OSError as exc:
        return False, f"tcp {host}:{port}: {exc}"


def main(environ: dict[str, str] | os._Environ[str] = os.environ, argv: Sequence[str] | None = None) -> int:
    url = environ.get("MCP_TUNNEL_HEALTH_URL")
    if url:
        ok, why = check_http(url)
    else:
        path = config_path(environ, pid1_argv() if argv is None else argv)
        try:
            kind, target = target_from_config(path, environ)
        except (OSError, ValueError, ImportError) as exc:
            print(f"unhealthy: cannot read the proxy config: {exc}")
            return 1
        except Exception as exc:  # a YAML error: the proxy itself will say more
            print(f"unhealthy: cannot parse the proxy config {path}: {exc}")
            return 1
        ok, why = check_http(target) if kind == "http" else check_tcp(target)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
