"""What a reliability scenario reports, and REPORT.md.

A scenario is a set of checks (each with the figures that decided it) and
its figures: requests sent, answered, refused (by code) and lost, the p99
latency of admitted requests, the server's peak resident memory, and what
is particular to it. It passes when every check does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from edgerec.benchmarks.markdown import codes, number, table


@dataclasses.dataclass(frozen=True)
class Check:
    """One thing a scenario must show, whether it did, and the figures that decided it."""

    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class Scenario:
    """One scenario's figures and checks; it passes when every check does."""

    name: str
    shows: str  # what the scenario demonstrates, in one sentence
    figures: dict
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def explain(self) -> str:
        """The failed checks and the figures, for an assertion message."""
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]
        return f"{self.name} failed: " + "; ".join(failed) + f"\nfigures: {json.dumps(self.figures, default=str)}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "shows": self.shows,
            "passed": self.passed,
            "figures": self.figures,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


def render_report(results: dict[str, Any]) -> str:
    """The report: one summary row per scenario, then each scenario's checks and figures."""
    settings = results["settings"]
    lines = [
        f"# Reliability report: {results['model']['name']} {results['model']['version']}",
        "",
        f"Run {results['date']} on {results['machine']['cpus']} CPUs ({results['machine']['platform']}), "
        f"{results['seconds']:.0f} s in all. Bundle `{results['bundle']}`. Every server listened on 127.0.0.1.",
        "",
        "**Lost** = sent - answered - refused: requests that got no answer, or a code the scenario never "
        "allows (e.g. INTERNAL under overload). It must be zero everywhere.",
        "",
    ]
    capacity = results.get("capacity")
    if capacity:
        lines += [
            f"Capacity (closed loop, {capacity['concurrency']} requests in flight, {settings['min_candidates']}-"
            f"{settings['max_candidates']} candidates per request): {capacity['requests_per_s']:.1f} requests/s, "
            f"{capacity['pairs_per_s']:.0f} pairs/s, p99 {capacity['p99_ms']:.0f} ms, peak RSS {capacity['peak_rss_mb']:.0f} MiB.",
            "",
        ]
    header = ("scenario", "what it shows", "sent", "answered", "refused (by code)", "lost", "p99 ms (admitted)",
              "peak RSS MiB", "verdict")  # fmt: skip
    rows = [
        (
            s["name"], s["shows"], *(number(s["figures"].get(key), 0) for key in ("sent", "answered")),
            codes(s["figures"].get("refused")),
            *(number(s["figures"].get(key), 0) for key in ("lost", "p99_ms", "peak_rss_mb")),
            "**passed**" if s["passed"] else "**FAILED**",
        )
        for s in results["scenarios"]
    ]  # fmt: skip
    lines += table(header, rows)
    total_lost = sum(s["figures"].get("lost", 0) or 0 for s in results["scenarios"])
    lines += [f"Lost requests, all scenarios: **{total_lost}**.", ""]
    for s in results["scenarios"]:
        lines += [f"## {s['name']}: {s['shows']} ({s['seconds']:.0f} s)", ""]
        lines += [f"- {'✅' if c['passed'] else '❌'} **{c['name']}**: {c['detail']}" for c in s["checks"]]
        lines += ["", *_details(s), ""]
    lines += [
        "Figures in full, with the settings of this run and of the servers under test: `results.json`. "
        "Re-run with `make reliability` (or `edgerec reliability --help` for every option).",
        "",
    ]
    return "\n".join(lines)


def _details(scenario: dict) -> list[str]:
    """A few scenario-specific figures worth a line each."""
    f, name = scenario["figures"], scenario["name"]
    if "error" in f:
        return [f"Could not run: `{f['error']}`"]
    if name in ("soak", "overload"):
        lines = [
            f"Offered {f['offered_requests_per_s']:.1f} requests/s (achieved {f['achieved_requests_per_s']:.1f}) for "
            f"{f['seconds']:.0f} s; admitted p50 {number(f['p50_ms'], 0)} ms, p99 {number(f['p99_ms'], 0)} ms. Latencies count from "
            f"each request's scheduled arrival, so they include the load generator's own send delay "
            f"(p99 {number(f.get('client_lag_p99_ms'), 0)} ms)."
        ]
        if name == "soak":
            lines.append(
                f"Resident memory: {number(f['rss_first_fifth_mb'], 1)} MiB in the first fifth, "
                f"{number(f['rss_last_fifth_mb'], 1)} MiB in the last ({f['rss_growth_mb_per_min']:+.2f} MiB/min); "
                f"after the first fifth, trend {number(f.get('rss_trend_mb_per_min'), 2)} MiB/min with samples "
                f"{number(f.get('rss_noise_mb'), 2)} MiB (standard deviation) around it. "
                f"Refused at once by admission's time bound: {f.get('refused_fraction', 0.0):.1%}."
            )
        else:
            lines.append(
                f"Refused {f['refused_fraction']:.0%} at once: refusal p50 {number(f['refusal_p50_ms'], 1)} ms, "
                f"p99 {number(f['refusal_p99_ms'], 1)} ms. Admission bound {f['queue_bound_pairs']} pairs "
                f"= {f['queue_drain_ms']:.0f} ms of work at capacity, full after ~{f['queue_fills_after_s']:.1f} s "
                f"of overload; p99 bound {f['p99_bound_ms']:.0f} ms."
            )
        return lines
    if name == "hostile":
        rows = [
            (kind, k["sent"], k["answered"], codes(k["refused"]), f"{k['lost']} ({codes(k['lost_by_code'])})",
             k["failed_health_checks"])
            for kind, k in f.get("kinds", {}).items()
        ]  # fmt: skip
        known = [
            (kind, _cell(k["expected"]), _cell(k["got"]), "passed" if k["passed"] else "**FAILED**")
            for kind, k in f.get("known_answers", {}).items()
        ]
        lines = table(("kind", "cases", "OK", "refused", "lost", "failed health checks"), rows)
        return lines + (table(("input with a known answer", "expected", "got", "verdict"), known) if known else [])
    if name == "access":
        rows = [(attempt, a["expected"], codes(a["codes"])) for attempt, a in f.get("attempts", {}).items()]
        return table(("client", "expected", "got"), rows) + [f"Listening on: {', '.join(f.get('listening_on', []))}."]
    if name == "sigterm":
        after = f["after_signal"]
        return [
            f"{f['held_at_signal']} admitted requests held at the signal; drained in {number(f['drain_s'], 2)} s; "
            f"after the signal: answered {after['answered']}, refused {codes(after['refused'])}; exit code {f['exit_code']}."
        ]
    if name == "abandoned":
        return [
            f"Backlog {f['backlog_requests']} requests / {f['backlog_pairs']} pairs (~{f['backlog_s_estimate'] * 1000:.0f} ms); "
            f"victims {f['victims']}; server dropped {f['dropped_requests']} requests, {f['dropped_pairs']} pairs; "
            f"pairs scored {f['pairs_scored']} (backlog + answered victims: {f['pairs_scored_expected']})."
        ]
    if name == "backend-fault":
        return [
            f"{f['poisoned_requests']} poisoned requests, {f['failed_batches']} failed batches, "
            f"{f['collateral_failures']} other requests failed beside them. Status: `{f['status_details'][:200]}`"
        ]
    if name == "broken-reload":
        return [f"Reloads {f['reloads']}; {f['answered_while_broken_reloads_failed']} answers while the broken bundles were tried."]
    if name == "corrupt-bundle":
        return [f"- {c['case']}: started {c['started']}, named {c['names_file_and_checksums']}" for c in f.get("cases", [])]
    return []


def _cell(text: str, limit: int = 160) -> str:
    """`text` as one Markdown table cell: on one line, its pipes escaped, cut to `limit` characters."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")
