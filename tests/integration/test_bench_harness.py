"""The load generator of benchmarks/loadgen.py: its statistics, its report, and a tiny real run.

Correctness only: no timing is asserted (speed is measured in benchmarks/, never tested).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import loadgen  # noqa: E402

pytestmark = [pytest.mark.server]


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = sorted(np.random.default_rng(4).exponential(2.0, 1001).tolist())
    assert loadgen.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert math.isnan(loadgen.percentile([], q))


def test_merge_adds_up_the_client_processes() -> None:
    from array import array

    parts = [
        {"latencies": array("d", [1.0, 2.0]).tobytes(), "ok": 2, "errors": {}, "decisions": {"allow": 2},
         "degraded": 0, "late_sends": 0, "sent": 5, "cpu_s": 0.5},
        {"latencies": array("d", [3.0, 9.0]).tobytes(), "ok": 1, "errors": {"DEADLINE_EXCEEDED": 1},
         "decisions": {"deny": 1}, "degraded": 1, "late_sends": 2, "sent": 6, "cpu_s": 0.25},
    ]  # fmt: skip
    r = loadgen.merge(parts, loadgen.PhaseResult("t", "open", 2, 0, 100.0, duration_s=2.0))
    s = r.summary()
    assert (s["completed"], s["ok"], s["errors"], s["decisions"]) == (4, 3, {"DEADLINE_EXCEEDED": 1},
                                                                       {"allow": 2, "deny": 1})  # fmt: skip
    assert s["achieved_rate_per_s"] == 1.5 and s["late_sends"] == 2 and s["degraded"] == 1
    assert s["latency_ms"]["p50"] == 2.5 and s["cpu_ms_per_request"]["client"] == round(750 / 11, 3)


def test_update_readme_replaces_only_between_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(f"# B\n\nbefore\n\n{loadgen.README_BEGIN}\nold table\n{loadgen.README_END}\n\nafter: replay\n")
    loadgen.update_readme("| new | table |", path)
    loadgen.update_readme("| newer | table |", path)
    text = path.read_text()
    assert "old table" not in text and "| new |" not in text and text.count("| newer | table |") == 1
    assert text.startswith("# B\n\nbefore\n") and text.endswith("after: replay\n")


def test_a_tiny_run_against_the_trivial_server_and_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "lg.json"
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{loadgen.README_BEGIN}\n{loadgen.README_END}\ny\n")
    argv = ["--targets", "trivial,memory", "--warmup", "0.3", "--duration", "0.7", "--concurrency", "4",
            "--more-procs", "2", "--pool", "3000", "--out", str(out), "--readme", str(readme)]  # fmt: skip
    assert loadgen.main(argv) == 0
    report = json.loads(out.read_text())
    for name in ("trivial", "memory"):
        t = report["targets"][name]
        phases = [*t["closed"], t["open_half"]]
        assert all(p["completed"] > 0 and p["errors"] == {} for p in phases), phases
        assert t["one_in_flight"]["concurrency"] == 1 and t["open_half"]["mode"] == "open"
        assert t["open_half"]["offered_rate_per_s"] == pytest.approx(t["max"]["achieved_rate_per_s"] / 2, rel=0.01)
    assert [p["procs"] for p in report["targets"]["trivial"]["closed"]][-1] == 2  # the two-process point
    assert report["targets"]["memory"]["max"]["decisions"]  # the engine's answers were parsed
    assert set(report["ratios"]) == {"memory"}
    # CPU per call: the engine's beyond the trivial server's, against the in-process pipeline on the same requests.
    assert report["pipeline"]["calls"] == 1_000 and report["pipeline"]["cpu_us_per_call"] > 0
    r = report["ratios"]["memory"]
    assert r["overhead_x"] == pytest.approx((r["server_cpu_us"] - r["trivial_cpu_us"]) / r["pipeline_cpu_us"])
    assert r["server_cpu_us"] > 0 and r["trivial_cpu_us"] > 0
    text = readme.read_text()
    assert "engine, in-process store" in text and text.startswith("x\n") and text.endswith("y\n")
    assert "as a multiple of the pipeline's" in text
