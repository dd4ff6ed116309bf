"""The server's own account of a load test: its Prometheus /metrics endpoint, scraped.

A load test reads counters (`edgerec_requests_total`, `edgerec_pairs_scored_total`,
`edgerec_batch_size_pairs_*`, `edgerec_dropped_requests_total`, ...) before and
after a run; their difference is what the server did during the run.
"""

from __future__ import annotations

import collections
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edgerec.benchmarks.harness.driver import LOOPBACK


class Samples(dict):
    """One scrape: (sample name, sorted (label, value) pairs) -> value."""

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, items), value in self.items() if sample == name and wanted <= set(items))

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Samples named `name` whose labels include `labels`, summed by the value of `label`."""
        wanted = set(labels.items())
        out: dict[str, float] = collections.defaultdict(float)
        for (sample, items), value in self.items():
            if sample == name and wanted <= set(items):
                out[dict(items).get(label, "")] += value
        return dict(out)

    def minus(self, before: "Samples") -> "Samples":
        """How much every sample grew since `before` (a counter absent then counts from 0)."""
        grown = Samples({key: value - before.get(key, 0.0) for key, value in self.items()})
        grown.update({key: -value for key, value in before.items() if key not in self})
        return grown


def scrape(port: int, timeout_s: float = 5.0) -> Samples:
    """Every sample of the metrics endpoint on 127.0.0.1:`port`."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    return Samples(
        {
            (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
    )
