"""loadtest/locustfile.py loads and runs headless against a test server, with constant users and with a trace
shape; every call is reported (CSV), SLO hints reach the server, and the shape follows the trace's rate."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import start_fixture_server

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
LOCUST = Path(sys.executable).with_name("locust")


@pytest.fixture
def server(serving_assets, tmp_path):
    from superserve.server.engine import EngineConfig

    srv = start_fixture_server(serving_assets, engine=EngineConfig(default_slo_ms=5000.0),
                               records_path=tmp_path / "server.jsonl")
    yield srv
    srv.stop()


def run_locust(server, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    assert LOCUST.exists(), f"locust (a required dependency) is not installed next to this Python: {LOCUST}"
    prefix = tmp_path / "locust"
    cmd = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "--host", f"127.0.0.1:{server.port}", "--csv",
           str(prefix), "--only-summary", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)
    with open(f"{prefix}_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    return proc, rows["Aggregated"]


@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_headless_constant_users_report_every_call(server, tmp_path):
    proc, total = run_locust(server, tmp_path, "-u", "2", "-r", "2", "-t", "3s", "--slo-ms", "4000",
                             "--min-accuracy", "0.96", "--user-qps", "10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(total["Request Count"]) >= 5 and int(total["Failure Count"]) == 0
    # The hints reached the server: only the most accurate fixture subnet (0.98) may serve these requests.
    from superserve.records import read_jsonl

    server.stop()  # flushes the server's records
    records = read_jsonl(server.config.records_path)
    # A call in flight when Locust stops is never reported by Locust (one per user): the server answered it, or
    # recorded it cancelled when Locust hung up before the answer.
    assert int(total["Request Count"]) <= len(records) <= int(total["Request Count"]) + 2
    served = [r for r in records if r.status != "cancelled"]
    assert len(records) - len(served) <= 2 and len(served) >= int(total["Request Count"])
    assert all(r.min_accuracy == 0.96 for r in records)
    assert all(r.accuracy is not None and r.accuracy >= 0.96 for r in served)
    assert {round((r.deadline_s - r.arrival_s) * 1e3) for r in records} == {4000}


@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_trace_shape_follows_the_trace_and_stops_with_it(server, tmp_path):
    """A 4 s ramp from 5 to 40 q/s at 5 q/s per user: the shape runs 2, 3, 6 then 10 users (ceil(rate / 5)), so the
    server should see about 10, 15, 30, 50 requests in those seconds. Locust is closed-loop and spawns users within
    the second, so per second the tolerance is wide; what must hold is the total (within 35% of the users' pace) and
    the shape (the last two seconds carry well over the first two), and no request after the trace ended."""
    import math

    from loadtest.replayer import per_second_rates  # not the locustfile: importing locust monkey-patches pytest

    user_qps = 5.0
    rates = per_second_rates("ramp:5:40", 0.0, 4.0, 0)
    assert rates == (8.0, 13.0, 26.0, 47.0)
    expected = [max(1, math.ceil(r / user_qps)) * user_qps for r in rates]  # users x their pace, per second
    proc, total = run_locust(server, tmp_path, "--trace", "ramp:5:40", "--trace-duration", "4",
                             "--user-qps", str(user_qps), "--slo-ms", "4000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Shape test updating to" in proc.stderr
    from superserve.records import read_jsonl

    server.stop()  # flushes the server's records
    records = read_jsonl(server.config.records_path)
    assert int(total["Failure Count"]) == 0
    assert int(total["Request Count"]) <= len(records) <= int(total["Request Count"]) + max(expected) / user_qps
    start = min(r.arrival_s for r in records)
    per_second = np.bincount([int(r.arrival_s - start) for r in records])
    assert len(per_second) <= len(rates) + 1, per_second  # it stops with the trace (+ the calls then in flight)
    assert abs(len(records) - sum(expected)) <= 0.35 * sum(expected), (len(records), expected, per_second)
    # Expected 80 vs 25 (3.2x) in the last two seconds against the first two; a flat load gives 1x. Arrivals are
    # binned from the first one, not Locust's clock, so the split is blurred: 1.5x is the bar.
    assert per_second[2:].sum() > 1.5 * per_second[:2].sum(), (per_second, expected)
