"""Issue 20: first answer at once on a host of any speed. When the start-up spot check finds the latency table off,
the server serves with the table scaled by the measured factor, re-profiles in the background and swaps the new
table in (engine, metrics, log line, `superserve info --server`). The re-profile is faked (an event-held function)
except in the one test of the real child process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

from superserve.server import profiling
from superserve.server.app import Server, ServeConfig
from superserve.server.engine import EngineConfig
from superserve.zoo import Zoo

MODEL = "superserve"


class _HeldProfiler:
    """A background profiler that waits for `release` and then returns `measured`'s table (and writes the cache,
    as the real one does)."""

    def __init__(self, measured: Zoo, fail: bool = False) -> None:
        self.measured, self.fail = measured, fail
        self.release, self.started = threading.Event(), threading.Event()
        self.calls: list[tuple] = []

    def __call__(self, zoo_path, checkpoint, host, out, device, on_start):  # noqa: ANN001, ANN204
        self.calls.append((Path(zoo_path), Path(checkpoint), host, Path(out), device))
        self.started.set()
        assert self.release.wait(120)
        if self.fail:
            raise RuntimeError("profiler exploded")
        zoo = Zoo.load(zoo_path).with_latencies({e.subnet_id: e.latency_ms for e in self.measured.entries}, host)
        out.parent.mkdir(parents=True, exist_ok=True)
        zoo.save(out)
        return zoo


def _infer(port: int) -> None:
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    x = tc.InferInput("INPUT", [1, 1, 28, 28], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    client.infer(MODEL, [x])
    client.close()


def _start(zoo_path: Path, ckpt: Path, profiler, **overrides) -> Server:  # noqa: ANN001
    settings = dict(port=0, metrics_port=0, zoo_path=zoo_path, checkpoint_path=ckpt, quiet=False,
                    reprofile="auto", engine=EngineConfig(default_slo_ms=600_000.0))
    server = Server(ServeConfig(**{**settings, **overrides}))
    server.background_profiler = profiler
    return server.start()


@pytest.fixture()
def off_by_3x(serving_assets, tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """A zoo with this host's fingerprint whose table claims 3x faster than this host runs (the spot check faked
    to measure exactly that: the decision is under test, not the noisy measuring)."""
    zoo_path, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    measured = Zoo.load(zoo_path)
    optimistic = tmp_path / "zoo.json"
    measured.scaled(1 / 3).save(optimistic)
    monkeypatch.setattr(profiling, "check_speed", lambda net, zoo, sample, **_: profiling.SpeedCheck(3.0, len(zoo.entries)))
    return optimistic, ckpt, measured


def test_a_table_off_by_3x_serves_at_once_scaled_and_swaps_in_the_reprofile(off_by_3x, capsys, monkeypatch):
    zoo_path, ckpt, measured = off_by_3x
    profiler = _HeldProfiler(measured)
    srv = _start(zoo_path, ckpt, profiler)
    try:
        assert profiler.started.wait(60)  # the re-profile runs in the background...
        _infer(srv.port)  # ...and calls are answered meanwhile
        assert srv.wait_ready(60) and srv.service.ready  # readiness is not held back by the re-profile
        top = measured.entries[-1].subnet_id
        file_ms = Zoo.load(zoo_path).latency_ms(top, 1)
        assert srv.table.kind == "scaled" and srv.table.scale == 3.0
        assert srv.engine.zoo.latency_ms(top, 1) == pytest.approx(3.0 * file_ms)  # scaled by the measured factor
        reg = srv.metrics.registry
        assert reg.get_sample_value("superserve_latency_table", {"kind": "scaled", "source": srv.table.source}) == 1
        assert reg.get_sample_value("superserve_latency_table_scale") == 3.0
        assert not srv.table_swapped.is_set()

        profiler.release.set()
        assert srv.table_swapped.wait(60)
        cached = profiling.cache_path(zoo_path, profiler.calls[0][2])
        assert profiler.calls[0][3] == cached and profiler.calls[0][:2] == (zoo_path, ckpt)
        assert srv.table.kind == "reprofiled" and srv.table.source == str(cached)
        assert srv.engine.zoo.latency_ms(top, 1) == measured.latency_ms(top, 1)  # the measured table is live
        assert srv.engine.policy.zoo.latency_ms(top, 1) == measured.latency_ms(top, 1)  # the policy rebuilt on it
        assert reg.get_sample_value("superserve_latency_table", {"kind": "reprofiled", "source": str(cached)}) == 1
        assert reg.get_sample_value("superserve_latency_table", {"kind": "scaled", "source": zoo_path.name}) is None
        assert reg.get_sample_value("superserve_latency_table_swaps_total") == 1
        _infer(srv.port)
        err = capsys.readouterr().err
        assert "serving now with that table scaled by the measured 3.00x and re-profiling in the background" in err
        assert "re-profiled latency table live" in err and str(cached) in err
    finally:
        profiler.release.set()
        srv.stop()
    # The next start here uses the cached re-profile (which the spot check now finds right): no second re-profile.
    monkeypatch.setattr(profiling, "check_speed", lambda net, zoo, sample, **_: profiling.SpeedCheck(1.0, 3))
    second = _HeldProfiler(measured)
    again = _start(zoo_path, ckpt, second)
    try:
        assert again.table.kind == "cached" and again.table.source == str(cached) and second.calls == []
        assert again.engine.zoo.latency_ms(top, 1) == measured.latency_ms(top, 1)
    finally:
        again.stop()


def test_a_failed_background_reprofile_leaves_the_scaled_table_serving(off_by_3x, capsys):
    zoo_path, ckpt, measured = off_by_3x
    profiler = _HeldProfiler(measured, fail=True)
    srv = _start(zoo_path, ckpt, profiler)
    try:
        profiler.release.set()
        deadline = time.monotonic() + 60
        while "background re-profile failed" not in (err := capsys.readouterr().err) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "profiler exploded" in err
        assert srv.table.kind == "scaled" and not srv.table_swapped.is_set()
        _infer(srv.port)
    finally:
        srv.stop()


def test_a_table_that_fits_starts_no_background_reprofile(serving_assets, tmp_path, monkeypatch):
    zoo_path, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(profiling, "check_speed", lambda net, zoo, sample: profiling.SpeedCheck(1.1, 3))
    profiler = _HeldProfiler(Zoo.load(zoo_path))
    srv = _start(zoo_path, ckpt, profiler)
    try:
        _infer(srv.port)
        assert srv.table.kind == "file" and profiler.calls == []
        assert srv.metrics.registry.get_sample_value("superserve_latency_table",
                                                     {"kind": "file", "source": str(zoo_path)}) == 1
    finally:
        srv.stop()


def test_engine_replace_table_drops_a_stale_correction():
    """A correction computed from the old table while the swap happens must not overwrite the new policy."""
    from helpers import make_zoo
    from policies.base import make_policy
    from superserve.server.engine import Engine

    zoo = make_zoo()
    engine = Engine(zoo, lambda z: make_policy("slackfit", z), EngineConfig(correction_interval_s=0.25))
    new = zoo.scaled(2.0)
    engine.replace_table(new)
    assert engine.zoo is new and engine.policy.zoo is new and engine.corrector.zoo is new
    assert engine._table_generation == 1
    with pytest.raises(ValueError, match="same subnets"):
        engine.replace_table(make_zoo(accuracies=(0.5, 0.6), lat1_ms=(1.0, 2.0)))


def test_superserve_info_reads_the_live_table_from_a_server(off_by_3x, capsys):
    from superserve.cli import main as cli_main

    zoo_path, ckpt, measured = off_by_3x
    profiler = _HeldProfiler(measured)
    srv = _start(zoo_path, ckpt, profiler)
    try:
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        capsys.readouterr()
        assert cli_main(["info", "--zoo", str(zoo_path), "--server", url]) == 0
        assert "live latency table: scaled (the table scaled by the measured 3.00x" in capsys.readouterr().out
        profiler.release.set()
        assert srv.table_swapped.wait(60)
        assert cli_main(["info", "--zoo", str(zoo_path), "--server", url]) == 0
        assert "live latency table: reprofiled (re-profiled on this host at start)" in capsys.readouterr().out
    finally:
        profiler.release.set()
        srv.stop()


@pytest.mark.slow  # the real child process: torch import + profiling 3 subnets x 6 batch sizes (~15 s here)
def test_the_real_reprofiling_child_writes_a_table_for_this_host(serving_assets, tmp_path):
    from superserve.zoo import HostFingerprint

    zoo_path, ckpt = serving_assets
    here = HostFingerprint.current(threads=1)
    out = tmp_path / "cache" / "zoo.json"
    started = []
    zoo = profiling.reprofile_in_subprocess(zoo_path, ckpt, here, out, "cpu", started.append)
    assert out.is_file() and Zoo.load(out) == zoo and len(started) == 1 and started[0].returncode == 0
    assert zoo.host == here and zoo.subnet_ids == Zoo.load(zoo_path).subnet_ids
    assert all(s.median_ms > 0 for e in zoo.entries for s in e.latency_ms.values())
    with pytest.raises(RuntimeError, match="re-profile exited"):
        profiling.reprofile_in_subprocess(tmp_path / "missing.json", ckpt, here, tmp_path / "x.json")
