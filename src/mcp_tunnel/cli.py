"""The `mcp-tunnel` command: a thin dispatcher to one module per subcommand.

Each subcommand module exposes ``main(argv: list[str]) -> int`` and parses its own flags, so
the proxy can keep its Go-style single-dash flags (``-config``) while the rest use ``--long``.
Modules are imported lazily so that `mcp-tunnel proxy` does not pay for the setup client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence

from mcp_tunnel import redact
from mcp_tunnel.errors import MCPTunnelError

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


DEBUG_FLAGS = ("--debug", "-debug")


def add_debug_flag(parser: argparse.ArgumentParser, *, go_style: bool = False) -> None:
    """Every command takes ``--debug``; `run_guarded` reads it from the command line itself, so
    it also works when the failure comes before or during parsing."""
    names = ("-debug", "--debug") if go_style else ("--debug",)
    help_ = "print the traceback of an internal error"
    parser.add_argument(*names, action="store_true", default=argparse.SUPPRESS, help=help_)


def wants_debug(argv: Sequence[str]) -> bool:
    """``--debug`` (``-debug`` for the Go-style proxy flags) before any ``--``."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in DEBUG_FLAGS:
            return True
    return False


def run_guarded(entry: Callable[[list[str]], int], argv: list[str], *, debug: bool = False) -> int:
    """Run a command; our own errors become one line on stderr and their exit code.

    Anything else is a bug: one line naming only the exception's type (its message may hold
    a header or a file's content), exit 1; the traceback only with ``--debug``. Every line
    passes `redact.scrub`, so a registered credential is never printed either way.
    """
    try:
        return entry(argv)
    except MCPTunnelError as exc:
        print(f"error: {redact.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug or wants_debug(argv):
            print(redact.scrub(traceback.format_exc()), file=sys.stderr, end="")
            print(f"error: internal error ({type(exc).__name__})", file=sys.stderr)
        else:
            print(
                f"error: internal error ({type(exc).__name__}); --debug prints the traceback",
                file=sys.stderr,
            )
        return 1


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
