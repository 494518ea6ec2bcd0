"""What every command's module shares: the ``--debug`` flag and the guard around its `main`.

A module of its own, below `cli.py` (the dispatcher, which finds each command's module by name)
and below every command, so that no command imports the dispatcher.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from mcp_tunnel import redact
from mcp_tunnel.errors import MCPTunnelError

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
