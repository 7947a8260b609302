"""The serving-overhead benchmarks end to end on tiny settings (the commands the README quotes, shortened): both
write their result file with the command, the host's load and the headline keys the README cites, and every block
was answered. Triton is left out (its venv is made by hand, outside the project's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_serving_overhead_without_triton(tmp_path):
    out = tmp_path / "so.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "serving_overhead.py"), "--duration-s", "2",
                    "--sat-rounds", "1", "--light-calls", "4", "--rounds", "1", "--client-procs", "2", "--no-triton",
                    "--out", str(out)], check=True, cwd=REPO, timeout=900, capture_output=True)
    result = json.loads(out.read_text())
    h = result["headline"]
    assert result["command"].startswith("nice python benchmarks/serving_overhead.py") and "host_load_avg_1min" in result
    for key in ("throughput_ratio", "http_throughput_ratio", "pinned_throughput_ratio", "added_median_latency_paired_ms"):
        assert isinstance(h[key], float), key
    assert "triton_added_median_latency_ms" not in h and result["triton_saturation"] is None
    for kind in ("saturation", "http_saturation", "pinned_saturation"):
        block = result[kind]["rounds"][0]
        assert block["errors"] == 0 and block["ok"] > 0 and block["client_procs"] == 2
        assert len(block["client_cpu_per_proc"]) == 2


@pytest.mark.slow
def test_http_saturation_probe(tmp_path):
    out = tmp_path / "probe.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "http_saturation_probe.py"), "--rounds", "1",
                    "--block-s", "1", "--client-procs", "2", "--concurrency", "8", "--switch-intervals-ms", "5",
                    "--out", str(out)], check=True, cwd=REPO, timeout=600, capture_output=True)
    result = json.loads(out.read_text())
    assert [b["door"] for b in result["blocks"]] == ["grpc", "http"]
    for b in result["blocks"]:
        assert b["errors"] == 0 and b["images_per_s"] > 0 and 0 < b["worker_busy_fraction"] <= 1.05
    assert result["headline"]["http_over_grpc_images_per_s"] > 0
