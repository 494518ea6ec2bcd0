"""Errors of the setup component; all exit 1 (runtime) through the CLI dispatcher.

They live with the rest of the error tree in `mcp_tunnel.errors`; this module names them for
the setup code that imports them from here.
"""

from __future__ import annotations

from mcp_tunnel.errors import APIError as APIError
from mcp_tunnel.errors import NetworkError as NetworkError
from mcp_tunnel.errors import SetupError as SetupError
