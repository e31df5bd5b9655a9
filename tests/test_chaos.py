"""The chaos run (scripts/chaos.py --short) end to end: steady wrk load through the demo Envoy
while the primary fails, recovers, and then every provider fails. Its figures must show the
filter doing its job: failover keeps answers flowing, the breaker opens at once and lets the
primary back within one open period, an all-down outage is answered in degraded mode (200) and
never with a 5xx, and the report is written."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "chaos.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    if not shutil.which("wrk"):
        pytest.fail("wrk is not installed: run `make wrk`")
    out = tmp_path_factory.mktemp("chaos")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--short", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"chaos.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "Client success rate per phase" in proc.stdout  # the summary is printed too
    return out


@pytest.fixture(scope="module")
def summary(report) -> dict:
    return json.loads((report / "summary.json").read_text())


def phase(summary: dict, key: str) -> dict:
    return next(p for p in summary["phases"] if p["phase"] == key)


def test_load_was_steady_and_filter_metrics_were_sampled(summary):
    assert summary["filter_metrics"], summary["sources"]
    assert summary["duration_s"] <= 60
    c = summary["client"]
    expected = summary["load"]["rate_per_s"] * summary["duration_s"]
    assert 0.85 * expected <= c["responses"] <= 1.1 * expected, c
    assert c["socket_errors"] == 0, c
    assert summary["samples"] >= summary["duration_s"] - 2 and summary["sample_errors"] == 0


def test_success_rate_per_phase(summary):
    assert phase(summary, "baseline")["success_rate"] >= 0.95
    # The outage costs the requests that open the breaker and the failed probes, nothing more.
    outage = phase(summary, "primary_outage")
    assert outage["success_rate"] >= 0.9, outage
    assert outage["served_by"].get("fallback", 0) >= 0.8 * outage["responses"], outage
    assert phase(summary, "primary_recovered")["success_rate"] >= 0.95
    # With every provider down nothing succeeds: the outage really happened.
    assert phase(summary, "all_down")["success_rate"] <= 0.2
    settled = summary["recovery_settled"]
    assert settled is not None and settled["success_rate"] >= 0.95, settled


def test_breaker_opens_at_once_and_traffic_returns_within_an_open_period(summary):
    t = summary["timings"]
    max_open_s = summary["breaker"]["max_open_ms"] / 1000
    assert t["outage_to_breaker_open_s"] is not None and t["outage_to_breaker_open_s"] <= 2.0, t
    assert t["outage_to_primary_open_stats_s"] is not None and t["outage_to_primary_open_stats_s"] <= 3.0, t
    assert t["outage_to_first_fallback_answer_s"] <= 2.0, t
    assert t["recovered_to_traffic_on_primary_s"] <= max_open_s + 3, t
    assert t["recovery_to_traffic_on_primary_s"] <= max_open_s + 3, t
    assert t["all_down_to_first_no_provider_answer_s"] <= 3.0, t


def test_all_down_is_degraded_never_5xx(summary):
    down = phase(summary, "all_down")
    assert down["degraded"] > 0.8 * down["responses"], down
    assert summary["client"]["client_5xx"] == 0
    assert all(p["client_5xx"] == 0 for p in summary["phases"])
    assert summary["envoy"]["envoy_downstream_5xx"] == 0
    # The filter's counters saw the same story.
    e = summary["envoy"]
    assert e["degraded"].get("upstream_failure", 0) > 0 and e["degraded"].get("no_provider_available", 0) > 0, e
    assert e["failovers"].get("primary->fallback", 0) > 0, e
    assert e["breaker_transitions"].get("primary->open", 0) >= 2, e  # the primary outage and the all-down one
    assert e["breaker_transitions"].get("primary->closed", 0) >= 2, e
    assert e["breaker_transitions"].get("fallback->open", 0) >= 1, e


def test_report_files(report):
    md = (report / "summary.md").read_text()
    assert "| baseline |" in md and "success rate" in md and "breaker open" in md
    png = (report / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 700, (width, height)
    assert 30_000 <= len(png) <= 5_000_000, len(png)
    assert len((report / "timeline.csv").read_text().splitlines()) > 40
