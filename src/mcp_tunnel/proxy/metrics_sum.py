"""The sum of several workers' Prometheus expositions, as one exposition (pure: text in, text out).

With `workers: N` every worker process counts its own requests; `/metrics` on `admin_addr` must
read as one proxy. Each worker's text is parsed with prometheus_client's own parser and the
samples with the same name and labels are added: counters, gauges that are quantities (open
tunnels, resident memory, CPU seconds) and histograms bucket by bucket (`_bucket`, `_count`,
`_sum` add up as they are). Samples that are a moment or a state rather than a quantity would
be nonsense summed, so they take the minimum instead: a `_created` time, a start time, a
certificate's expiry (the earliest is the one to alert on), the last successful reload (the
oldest says some worker has not applied the newest config) and "the last reload succeeded"
(1 only when it did in every worker).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# Gauges (by sample name) whose value is a state or a moment: merged with min, not summed.
MIN_SAMPLES = frozenset(
    {
        "mcp_tunnel_certificate_expiry_timestamp_seconds",
        "mcp_tunnel_config_last_reload_success_timestamp_seconds",
        "mcp_tunnel_config_last_reload_successful",
        "process_start_time_seconds",
        "process_max_fds",
    }
)

_Key = tuple[str, tuple[tuple[str, str], ...]]


def takes_min(sample_name: str) -> bool:
    """True for a sample merged with min (see the module docstring)."""
    return sample_name in MIN_SAMPLES or sample_name.endswith("_created")


def sum_families(expositions: Iterable[str]) -> list[Metric]:
    """The families of every exposition, with equal (name, labels) samples merged.

    Families and samples keep the order of their first appearance; a family's type and help
    are the first seen (every worker runs the same code, so they agree).
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[_Key, float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            acc = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = acc.get(key)
                if old is None:
                    acc[key] = sample.value
                elif takes_min(sample.name):
                    acc[key] = min(old, sample.value)
                else:
                    acc[key] = old + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Fixed(Collector):
    """A collector that yields families built elsewhere (for `generate_latest`)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render_sum(expositions: Iterable[str], extra: Iterable[Metric] = ()) -> bytes:
    """One text exposition of the merged families, then `extra` (the supervisor's own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*sum_families(expositions), *extra]))
    return generate_latest(registry)
