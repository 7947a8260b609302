"""benchmarks/tradeoff.py end to end on a short CPU-zoo run: it writes the measured headline, and --reuse takes an
earlier report's units instead of running them again (only when their durations match)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp: Path, out: str, cache: str, *extra: str, duration: str = "0.3") -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tradeoff.py"), "--zoos", "cpu", "--loads", "2", "--jobs", "1",
           "--duration", duration, "--cache", str(tmp / cache), "--out-dir", str(tmp / out), *extra]
    subprocess.run(cmd, check=True, cwd=tmp, capture_output=True, text=True, timeout=600)
    return json.loads((tmp / out / "tradeoff.json").read_text())


@pytest.mark.slow  # ~45 s: three short runs of the CPU zoo's 15+ configurations
def test_tradeoff_report_and_reuse(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", "cache_a")
    keys = [k for k in first["headline"] if k.startswith("slackfit_") and k.endswith("_cpu_azure")]
    assert {"slackfit_accuracy_gain_points_at_equal_attainment_vs_clipper_cpu_azure",
            "slackfit_attainment_gain_x_at_equal_accuracy_vs_infaas_cpu_azure"} <= set(keys)
    assert first["reused"] == {} and len(list((tmp_path / "cache_a").iterdir())) == 4  # azure + 3 gamma traces
    assert (tmp_path / "a" / "tradeoff_cpu.png").is_file()

    # Same durations: every unit comes from the earlier report, nothing runs (the new cache stays empty).
    again = _run(tmp_path, "b", "cache_b", "--reuse", str(tmp_path / "a" / "tradeoff.json"))
    assert again["reused"]["units"] == sorted(f"cpu/{t}/2" for t in ("azure", "gamma:2", "gamma:4", "gamma:8"))
    assert again["reused"]["command"] == first["command"]
    assert not list((tmp_path / "cache_b").iterdir())
    assert again["headline"] == first["headline"]
    assert again["detail"]["cpu"]["results"] == first["detail"]["cpu"]["results"]

    # Another duration is another experiment: nothing is reused, the units run.
    other = _run(tmp_path, "c", "cache_c", "--reuse", str(tmp_path / "a" / "tradeoff.json"), duration="0.2")
    assert other["reused"]["units"] == [] and len(list((tmp_path / "cache_c").iterdir())) == 4


@pytest.mark.slow  # ~10 s: the 600 s paced trace at a small load, two policies
def test_tradeoff_minutes_breaks_the_paced_runs_down_by_minute(tmp_path: Path) -> None:
    out = tmp_path / "minutes.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tradeoff_minutes.py"), "--loads", "0.05",
                    "--policies", "slackfit,clipper+[75.00%]", "--out", str(out)],
                   check=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    sustain = report["sustainable_x_load1_per_subnet"]
    assert max(sustain.values()) > 4 and min(sustain.values()) == 1.0  # the smallest subnet sustains the most
    d = report["detail"]["load0.05"]
    assert len(d["rate_x_per_minute"]) == 10 and d["minutes_beyond_smallest_subnet"] == []
    assert abs(sum(d["rate_x_per_minute"]) / 10 - 0.05) < 0.005  # the mean rate is the load
    assert set(d["runs"]) == {"slackfit", "clipper+[75.00%]"}
    h = report["headline"]
    assert h["slackfit_slo_attainment_load0.05"] == 1.0 and h["clipper_75_00pct_mean_accuracy_load0.05"] == 0.75
    # Light load: SlackFit serves the most accurate subnet, one request at a time, never the smallest.
    assert h["slackfit_mean_accuracy_load0.05"] > 0.79 and h["slackfit_smallest_subnet_share_load0.05"] == 0.0
    assert all(m["mean_batch"] is not None and m["mean_batch"] >= 1 for m in d["runs"]["slackfit"]["minutes"])
    # A policy name that is not in the line-up is refused with the known names.
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tradeoff_minutes.py"), "--policies", "nope",
                          "--out", str(tmp_path / "x.json")], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "clipper+[75.00%]" in bad.stderr
