"""``${NAME}`` references in config values: the one expansion the proxy and the image's health
check share (SPEC §3), so both read the same file the same way.

Stdlib only: the health check imports it from the installed package with nothing else loaded.
``${NAME}`` is replaced from the environment, ``$$`` is a literal ``$``, any other ``$`` is an
error, and so is an unset variable. Errors name the variable, never a value from the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

ENV_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\})")


class EnvRefError(ValueError):
    """A reference that cannot be expanded: `unset` names the variable, else a stray ``$``."""

    def __init__(self, message: str, *, unset: str | None = None) -> None:
        self.unset = unset
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Expanded:
    """The expanded text and, in order, each (variable, value) that went into it."""

    text: str
    refs: tuple[tuple[str, str], ...] = ()


def expand(text: str, environ: Mapping[str, str]) -> Expanded:
    """Expand ``${NAME}`` and ``$$`` in `text`; raise EnvRefError for an unset name or a stray ``$``."""
    out: list[str] = []
    refs: list[tuple[str, str]] = []
    pos = 0
    for m in ENV_REF.finditer(text):
        out.append(_no_stray_dollar(text[pos : m.start()]))
        name = m.group(1)
        if name is None:
            out.append("$")
        elif name in environ:
            value = environ[name]
            out.append(value)
            refs.append((name, value))
        else:
            raise EnvRefError(f"environment variable {name} is not set", unset=name)
        pos = m.end()
    out.append(_no_stray_dollar(text[pos:]))
    return Expanded("".join(out), tuple(refs))


def _no_stray_dollar(chunk: str) -> str:
    if "$" in chunk:
        raise EnvRefError("a $ must start a ${NAME} reference")
    return chunk
