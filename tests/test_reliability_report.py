"""`edgerec reliability` end to end (quick, a few scenarios) and the report it writes."""

from __future__ import annotations

import json
from pathlib import Path

from edgerec.benchmarks.reliability import hostile
from edgerec.benchmarks.reliability.report import render_report
from edgerec.cli import main

FIGURES = ("sent", "answered", "refused", "lost", "peak_rss_mb")


def test_reliability_command_writes_figures_per_scenario_and_a_report(exported_bundle: Path, tmp_path: Path) -> None:
    """One load scenario and one fault through the command (each scenario's own checks: test_reliability_load,
    test_reliability_faults)."""
    out = tmp_path / "reliability"
    code = main([
        "reliability", "--quick", "--bundle", str(exported_bundle), "--output-dir", str(out),
        "--scenarios", "soak", "corrupt-bundle", "--soak-s", "2", "--capacity-s", "1",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert code == 0, json.dumps(results["scenarios"], indent=1)[:4000]
    assert [s["name"] for s in results["scenarios"]] == ["soak", "corrupt-bundle"]
    for scenario in results["scenarios"]:
        assert scenario["passed"] and all(check["passed"] for check in scenario["checks"])
        assert set(FIGURES) <= set(scenario["figures"]) or scenario["name"] == "corrupt-bundle"
        assert scenario["figures"]["lost"] == 0
    assert results["capacity"]["requests_per_s"] > 0 and results["model"]["name"] == "tiny"
    report = (out / "REPORT.md").read_text()
    assert "| scenario | what it shows | sent | answered | refused (by code) | lost |" in report
    assert "Lost requests, all scenarios: **0**" in report and report.count("**passed**") == 2


def test_the_report_shows_a_failed_scenario_its_lost_requests_and_why() -> None:
    failed = {
        "name": "overload",
        "shows": "3x capacity for 30 s",
        "passed": False,
        "seconds": 31.0,
        "figures": {"sent": 10, "answered": 5, "refused": {"RESOURCE_EXHAUSTED": 3}, "lost": 2, "p99_ms": 12.0,
                    "peak_rss_mb": 300.0, "lost_by_code": {"INTERNAL": 2}, "offered_requests_per_s": 3.0,
                    "achieved_requests_per_s": 3.0, "seconds": 30, "p50_ms": 5.0, "refused_fraction": 0.3,
                    "refusal_p50_ms": 1.0, "refusal_p99_ms": 2.0, "queue_bound_pairs": 8192, "queue_drain_ms": 900.0,
                    "p99_bound_ms": 3000.0, "queue_fills_after_s": 0.45},
        "checks": [{"name": "no INTERNAL", "passed": False, "detail": "codes other than OK/RESOURCE_EXHAUSTED: {'INTERNAL': 2}"}],
    }  # fmt: skip
    results = {
        "model": {"name": "m", "version": "1"},
        "date": "today",
        "machine": {"cpus": 2, "platform": "linux"},
        "seconds": 31.0,
        "bundle": "b",
        "settings": {"min_candidates": 10, "max_candidates": 100},
        "scenarios": [failed],
    }
    report = render_report(results)
    assert "| overload | 3x capacity for 30 s | 10 | 5 | RESOURCE_EXHAUSTED 3 | 2 | 12 | 300 | **FAILED** |" in report
    assert "Lost requests, all scenarios: **2**" in report
    assert "❌ **no INTERNAL**: codes other than OK/RESOURCE_EXHAUSTED: {'INTERNAL': 2}" in report


def test_the_hostile_scenario_judges_every_known_answer_and_reports_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """`--scenarios hostile` on the tiny bundle: seeded cases of every kind (well-formed ModelInfer rows all
    answered), then issue 11's inputs with a known answer, each a check and a row of the report."""
    out = tmp_path / "reliability"
    code = main([
        "reliability", "--quick", "--bundle", str(tiny_bundle), "--output-dir", str(out), "--scenarios", "hostile",
        "--fuzz-examples", "10",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    [scenario] = results["scenarios"]
    failed = [check for check in scenario["checks"] if not check["passed"]]
    assert code == 0 and not failed, json.dumps(failed, indent=1)[:4000]
    figures = scenario["figures"]
    wells = figures["kinds"]["ModelInfer, well-formed rows"]
    assert wells["sent"] == wells["answered"] == 10  # rows built by the featurizer reach the model
    expected = [known.kind for known in hostile.known_answers(hostile.ModelFacts.of(tiny_bundle), None)]
    assert sorted(figures["known_answers"]) == sorted(expected)  # results.json sorts keys
    assert figures["known_answers"][expected[-1]]["max_diff"] >= 0  # batch-mates: measured, reported
    assert figures["sent"] == sum(kind["sent"] for kind in figures["kinds"].values()) and figures["lost"] == 0
    report = (out / "REPORT.md").read_text()
    assert "| input with a known answer | expected | got | verdict |" in report
    assert all(f"| {kind} | " in report for kind in expected)


def test_the_report_shows_each_known_answer_of_the_hostile_scenario_on_one_row() -> None:
    kinds = {"ModelInfer": {"sent": 3, "answered": 1, "refused": {"INVALID_ARGUMENT": 2}, "lost": 0, "lost_by_code": {},
                            "failed_health_checks": 0}}  # fmt: skip
    known = {
        "ModelInfer: a row without a candidate segment": {
            "expected": 'INVALID_ARGUMENT "inputs.token_type_ids: row 2 ..."', "passed": False,
            "got": "OK, p | q\nsecond line " + "x" * 300,
        },
        "Score: free text '[SEP] [CLS]'": {"expected": "OK", "got": "OK", "passed": True},
    }  # fmt: skip
    scenario = {"name": "hostile", "shows": "cases", "passed": False, "seconds": 1.0, "checks": [],
                "figures": {"sent": 3, "answered": 1, "refused": {}, "lost": 0, "kinds": kinds, "known_answers": known}}  # fmt: skip
    results = {
        "model": {"name": "m", "version": "1"}, "date": "today", "machine": {"cpus": 2, "platform": "linux"},
        "seconds": 1.0, "bundle": "b", "settings": {}, "scenarios": [scenario],
    }  # fmt: skip
    lines = render_report(results).splitlines()
    [row] = [line for line in lines if line.startswith("| ModelInfer: a row without a candidate segment |")]
    assert "OK, p \\| q second line x" in row and row.endswith("… | **FAILED** |") and len(row) < 400
    assert "| Score: free text '[SEP] [CLS]' | OK | OK | passed |" in lines


def test_an_unknown_scenario_is_refused(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    assert main(["reliability", "--bundle", str(tiny_bundle), "--output-dir", str(tmp_path), "--scenarios", "nap"]) == 2
    assert "unknown scenario" in capsys.readouterr().out
