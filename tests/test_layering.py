"""The package's modules import one another one way only: no import cycle anywhere in src/.

Every import counts, not only those that run at import time: an import under `if TYPE_CHECKING:`
or inside a function is still a dependency of the design, and a cycle hidden that way is the
tangle this test exists to keep out (issue #22). Relative imports are resolved. A module that
imports a name from a package depends on that package's `__init__`, or on the submodule when
the name is one.

The request path's layers run server -> tunnel -> http_server -> forward -> upstream; a lower
layer reaches a higher one only through the interfaces in `proxy/exchange.py` and the narrow
contexts the server builds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Edges whose removal is pending in another piece of work, each with where it goes. The test
# below fails when one of them is gone, so this list can only shrink.
PENDING: dict[tuple[str, str], str] = {}


def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under `src`: dotted name -> (file, is a package's `__init__`)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = (path, package)
    return found


def imports(name: str, path: Path, package: bool, known: dict[str, tuple[Path, bool]]) -> set[str]:
    """The modules of `known` that module `name` imports, in any form and anywhere in its body."""
    here = name if package else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")
                base_parts = base_parts[: len(base_parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            # A module named in a string is imported by name (`importlib.import_module`, the
            # command table of cli.py) or run (`python -m`): a dependency all the same.
            targets.append(node.value)
    found: set[str] = set()
    for target in targets:
        while target and target not in known:  # `import a.b.c` of an outside name, a re-export
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def graph(src: Path) -> dict[str, set[str]]:
    known = modules(src)
    return {name: imports(name, path, package, known) for name, (path, package) in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path back to its start) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph is a few hundred modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_path_through(group, edges) for group in groups]


def _path_through(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the group's first module back to it, within the group."""
    start, members = group[0], set(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return group  # unreachable for a strongly connected group


def without_pending(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {v: {w for w in ws if (v, w) not in PENDING} for v, ws in edges.items()}


def test_no_import_cycle_in_src() -> None:
    found = cycles(without_pending(graph(SRC)))
    assert not found, "import cycles in src/:\n" + "\n".join(" -> ".join(c) for c in found)


def test_pending_edges_still_exist() -> None:
    """An allowance for an edge that is gone must go too: the list only shrinks."""
    edges = graph(SRC)
    gone = [f"{a} -> {b} ({why})" for (a, b), why in PENDING.items() if b not in edges.get(a, set())]
    assert not gone, "remove from PENDING, the import is gone: " + "; ".join(gone)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("mcp_tunnel.proxy.upstream", "mcp_tunnel.proxy.forward"),
        ("mcp_tunnel.proxy.exchange", "mcp_tunnel.proxy.forward"),
        ("mcp_tunnel.proxy.forward", "mcp_tunnel.proxy.http_server"),
        ("mcp_tunnel.proxy.http_server", "mcp_tunnel.proxy.tunnel"),
        ("mcp_tunnel.proxy.tunnel", "mcp_tunnel.proxy.server"),
        ("mcp_tunnel.proxy.server", "mcp_tunnel.proxy.reload"),
        ("mcp_tunnel.proxy.server", "mcp_tunnel.proxy.cli"),
        ("mcp_tunnel.proxy.admin", "mcp_tunnel.proxy.server"),
        ("mcp_tunnel.certs.check", "mcp_tunnel.certs.generate"),
    ],
)
def test_lower_layer_never_reaches_a_higher_one(lower: str, higher: str) -> None:
    """server -> tunnel -> http_server -> forward -> upstream, and what sits on top of them."""
    edges = without_pending(graph(SRC))
    reach, todo = set(), [lower]
    while todo:
        for w in edges[todo.pop()]:
            if w not in reach:
                reach.add(w)
                todo.append(w)
    assert higher not in reach, f"{lower} reaches {higher}"


def test_the_finder_sees_every_import_form(tmp_path: Path) -> None:
    """TYPE_CHECKING, function-local, relative, `from package import module` and a module named
    in a string (imported by name) all count."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import X\n"
    )
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("from ..a import Y\nimport os.path\n")
    (pkg / "d.py").write_text("import pkg.sub.c\n")
    # imported by name, as cli.py's command table does; a string naming no module is no edge
    (pkg / "e.py").write_text("import importlib\nm = importlib.import_module('pkg.d')\nx = 'pkg.zz'\n")
    edges = graph(tmp_path)
    assert edges["pkg.a"] == {"pkg.b"}
    assert edges["pkg.b"] == {"pkg.sub.c"}
    assert edges["pkg.sub.c"] == {"pkg.a"}
    assert edges["pkg.d"] == {"pkg.sub.c"}
    assert edges["pkg.e"] == {"pkg.d"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
