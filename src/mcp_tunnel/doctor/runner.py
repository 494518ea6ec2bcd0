"""Walk the five steps in the documented order, every time, and collect one report.

Facts the later steps need (the loaded config, which handshakes worked) are gathered into the
shared context as the steps run; a step whose input is missing says `skip` with the reason
rather than stopping the walk, so one run shows every layer.
"""

from __future__ import annotations

from mcp_tunnel.doctor import configstep, oauth, outbound, routing, tls
from mcp_tunnel.doctor.context import Context, Options
from mcp_tunnel.doctor.model import Check, Report, StepResult, fail
from mcp_tunnel.doctor.probes import Probes


async def diagnose(options: Options, probes: Probes | None = None) -> Report:
    """The whole diagnosis. `probes` is the network seam (tests pass a scripted resolver)."""
    ctx = Context(options, probes or Probes(timeout=options.timeout))
    configstep.load(ctx)  # outbound needs the listen port; the config step reports the result
    steps: list[StepResult] = []
    for name, run in (
        ("outbound", outbound.run),
        ("config", configstep.run),
        ("tls", tls.run),
        ("routing", routing.run),
        ("oauth", oauth.run),
    ):
        try:
            checks = await run(ctx)
        except Exception as exc:  # a doctor must finish its walk; a bug in one step is a finding
            checks = [_crashed(name, exc)]
        steps.append(StepResult(name, tuple(checks)))
    return Report(tuple(steps))


def _crashed(step: str, exc: Exception) -> Check:
    return fail(
        "internal_error",
        f"the {step} step stopped with {type(exc).__name__}: {exc}",
        "report this as a bug in mcp-tunnel doctor, with the command line",
    )
