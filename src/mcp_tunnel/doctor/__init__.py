"""`mcp-tunnel doctor`: the documented three-layer diagnosis (plus OAuth), automated.

One module per step (outbound, configstep, tls, routing, oauth), each a set of pure judgements
over gathered facts plus a thin `run` that gathers them through `probes`; `runner` walks the
steps in order and `cli` prints the report.
"""

from mcp_tunnel.doctor.cli import main
from mcp_tunnel.doctor.context import Options
from mcp_tunnel.doctor.model import Check, Report, Status, StepResult
from mcp_tunnel.doctor.runner import diagnose

__all__ = ["Check", "Options", "Report", "Status", "StepResult", "diagnose", "main"]
