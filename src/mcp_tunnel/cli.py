"""The `mcp-tunnel` command: a thin dispatcher to one module per subcommand.

Each subcommand module exposes ``main(argv: list[str]) -> int`` and parses its own flags, so
the proxy can keep its Go-style single-dash flags (``-config``) while the rest use ``--long``.
Modules are imported lazily so that `mcp-tunnel proxy` does not pay for the setup client.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from mcp_tunnel.cli_common import DEBUG_FLAGS, run_guarded

COMMANDS: dict[str, tuple[str, str]] = {
    "proxy": ("mcp_tunnel.proxy.cli", "run the tunnel proxy (drop-in for mcp-proxy)"),
    "certs": ("mcp_tunnel.certs.cli", "create, renew and check the inner-TLS certificates"),
    "setup": ("mcp_tunnel.setup.cli", "provision a tunnel: init, renew-cert (drop-in for /setup)"),
    "call": ("mcp_tunnel.client.cli", "send one request through a tunnel proxy, as Anthropic would"),
    "connect": ("mcp_tunnel.client.connect_cli", "a local HTTP endpoint that forwards through the tunnel"),
    "demo": ("mcp_tunnel.demo", "the whole stack on loopback in one command"),
    "doctor": ("mcp_tunnel.doctor", "diagnose a tunnel stack, layer by layer"),
}


def _usage() -> str:
    lines = ["usage: mcp-tunnel [--debug] COMMAND [args...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "--debug (before or after COMMAND): print the traceback of an internal error"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version", "-version"):
        from mcp_tunnel import __version__

        print(f"mcp-tunnel {__version__}")
        return 0
    debug = False
    while args and args[0] in DEBUG_FLAGS:  # `mcp-tunnel --debug COMMAND ...`
        debug = True
        args = args[1:]
    if not args:
        print(_usage())
        return 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry: Callable[[list[str]], int] = module.main
    return run_guarded(entry, rest, debug=debug)


def proxy_main() -> int:
    """The `mcp-proxy` entry point: the proxy's flags, as the official image takes them."""
    return main(["proxy", *sys.argv[1:]])


def setup_main() -> int:
    """The `setup` entry point: `setup init ...` as the official `/setup` binary takes it."""
    return main(["setup", *sys.argv[1:]])
