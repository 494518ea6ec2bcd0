"""errors.py's docstring draws the whole error tree: every drawn class is there with the parent
drawn, and every error class there is drawn (issue #22)."""

from __future__ import annotations

import inspect
import re

from mcp_tunnel import errors


def drawn_tree() -> dict[str, str | None]:
    """Each class name in the docstring's tree -> the name of its drawn parent (None: the root)."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name), the current line of ancestors
    for line in doc.splitlines():
        found = re.match(r"^(\s*(?:[│ ]*[├└]── )?)([A-Z][A-Za-z]+)\b", line)
        if found is None or ("──" not in line and found.group(2) != "MCPTunnelError"):
            continue
        column, name = len(found.group(1)), found.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_every_drawn_error_is_defined_with_its_drawn_parent() -> None:
    tree = drawn_tree()
    assert tree["MCPTunnelError"] is None and len(tree) > 20
    for name, parent in tree.items():
        cls = getattr(errors, name, None)
        assert inspect.isclass(cls), f"{name} is drawn but not defined in errors.py"
        if parent is not None:
            assert cls.__bases__ == (getattr(errors, parent),), f"{name} is not drawn under {cls.__bases__}"


def test_every_error_defined_is_drawn() -> None:
    tree = drawn_tree()
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(tree), (
        f"defined, not drawn: {defined - set(tree)}; drawn, gone: {set(tree) - defined}"
    )


def test_the_modules_that_raised_them_still_name_them() -> None:
    """They moved to errors.py; the modules that raised them before re-export the same class."""
    from mcp_tunnel import tls_session, ws_frames, ws_handshake
    from mcp_tunnel.proxy import upstream
    from mcp_tunnel.setup import api
    from mcp_tunnel.setup import errors as setup_errors

    assert ws_frames.FrameError is errors.FrameError
    assert ws_handshake.UpgradeRefused is errors.UpgradeRefused
    assert tls_session.TLSHandshakeError is errors.TLSHandshakeError
    assert upstream.UpstreamDNSError is errors.UpstreamDNSError
    assert (setup_errors.SetupError, setup_errors.APIError) == (errors.SetupError, errors.APIError)
    assert api.AmbiguousResult is errors.AmbiguousResult
    refused = ws_handshake.refused(426, "upgrade\n", headers=(("Upgrade", "websocket"),))
    assert refused.status == 426 and refused.response.startswith(b"HTTP/1.1 426 ")
    assert b"Upgrade: websocket" in refused.response and str(refused) == "upgrade"
