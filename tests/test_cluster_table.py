"""The latency table belongs to where the batches run: a cluster worker fits the published table to its own device at
start (`superserve worker --reprofile auto`: the embedded server's spot check, then the table scaled by the measured
factor), and the front end publishes the zoo file's table as it is (no spot check, no re-profile on a host that runs no
batch). Timing assertions compare factors (the worker's against one this test measures right after), never absolute
times, so a loaded host moves both alike."""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from test_cluster import REDIS, ROOT, RedisServer, wait_for

from superserve.cluster.redis_queue import ClusterConfig, parse_backend
from superserve.server import profiling
from superserve.zoo import Zoo

needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")
OFF = 10.0  # the published table claims every subnet takes 10x what it takes here


def foreign(zoo: Zoo) -> Zoo:
    """`zoo` as if profiled on another device (a GPU worker's table, or a CPU table seen from a GPU worker)."""
    return replace(zoo, host=replace(zoo.host, device="NVIDIA Elsewhere 80GB"))


def published(zoo: Zoo) -> ClusterConfig:
    return ClusterConfig(zoo.to_dict(), "slackfit", {"overhead_ms": 2.0}, "m")


def batch1_ratio(a: Zoo, b: Zoo) -> float:
    """Median over subnets of a's batch-1 latency over b's (the tables differ by one factor: any subnet says it)."""
    return statistics.median(a.latency_ms(e.subnet_id, 1, "median") / b.latency_ms(e.subnet_id, 1, "median")
                             for e in a.entries)


@pytest.fixture
def redis_url():
    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    rs = RedisServer()
    rs.start()
    yield rs.url
    rs.kill()


def make_worker(url: str, ckpt, **kw):  # noqa: ANN001, ANN201
    from superserve.cluster.worker import ClusterWorker, WorkerConfig

    return ClusterWorker(parse_backend(url), WorkerConfig(ckpt, namespace="table", correction_interval_s=None, **kw))


@needs_redis
@pytest.mark.parametrize("host", ["foreign", "same fingerprint"])
def test_a_worker_scales_a_table_10x_off_to_this_hosts_speed_before_serving(redis_url, serving_assets, host, caplog):
    """Foreign: a table profiled on another device (a front end's CPU table and a GPU worker). Same fingerprint: a
    machine of another speed behind the same one (virtual machines). Either way the worker's starting table is within
    2x of this host's speed, measured here right after from the fixture's own table (profiled on this host)."""
    zoo_path, ckpt = serving_assets
    here = Zoo.load(zoo_path)
    off = here.scaled(OFF)
    if host == "foreign":
        off = foreign(off)
    worker = make_worker(redis_url, ckpt)
    sample = torch.zeros(1, 1, 28, 28)

    def speed_here() -> float:  # this host's speed now, over the fixture's table (the faster of 3 passes)
        return min(profiling.check_speed(worker._net, here, sample, warm_up=False).ratio for _ in range(3))
    seen = []
    for _ in range(3):  # sub-millisecond forwards on a shared host: a neighbour's burst may land on one measurement
        caplog.clear()
        before = speed_here() if worker._net is not None else None  # the first load loads the weights
        with caplog.at_level("WARNING", logger="superserve.cluster.worker"):
            worker.load(published(off))
        assert worker.table_scale < 1.0
        assert worker.policy.zoo is worker.zoo  # the scheduler starts from the scaled table
        assert batch1_ratio(worker.zoo, off) == pytest.approx(worker.table_scale)  # one factor for every subnet
        assert any(f"scaled by {worker.table_scale:.3g}" in r.getMessage() for r in caplog.records), caplog.text
        after = speed_here()
        lo, hi = min(after, before or after), max(after, before or after)
        table = batch1_ratio(worker.zoo, here)  # what the worker's table says of this host, over the fixture's
        seen.append((round(table, 3), round(lo, 3), round(hi, 3)))
        if lo / 2 < table < 2 * hi:
            break
    else:
        pytest.fail(f"the worker's table was not within 2x of this host's speed (table, measured here): {seen}")


@needs_redis
def test_a_matching_table_that_fits_is_left_alone(redis_url, serving_assets, monkeypatch):
    zoo_path, ckpt = serving_assets
    zoo = Zoo.load(zoo_path)
    calls = []

    def fits(net, z, sample, warm_up=True):  # noqa: ANN001, ANN202
        calls.append(warm_up)
        return profiling.SpeedCheck(1.2, len(z.entries))
    monkeypatch.setattr(profiling, "check_speed", fits)
    worker = make_worker(redis_url, ckpt)
    worker.load(published(zoo))
    assert calls == [True]  # the check is the warm-up; no confirming pass when it fits
    assert worker.table_scale == 1.0 and worker.zoo == zoo and worker.policy.zoo == zoo


@needs_redis
def test_a_foreign_table_is_scaled_even_when_close_and_never_leaves_it(redis_url, serving_assets, monkeypatch):
    """Another device: the measured factor is applied (it is the only measure of this device there is), the faster
    of two passes. --reprofile never: the table as published, no check."""
    zoo_path, ckpt = serving_assets
    zoo = foreign(Zoo.load(zoo_path))
    ratios = iter([1.3, 1.25])
    monkeypatch.setattr(profiling, "check_speed",
                        lambda net, z, sample, warm_up=True: profiling.SpeedCheck(next(ratios), len(z.entries)))
    worker = make_worker(redis_url, ckpt)
    worker.load(published(zoo))
    assert worker.table_scale == 1.25 and batch1_ratio(worker.zoo, zoo) == pytest.approx(1.25)

    monkeypatch.setattr(profiling, "check_speed", lambda *a, **k: pytest.fail("--reprofile never checked the table"))
    worker = make_worker(redis_url, ckpt, reprofile="never")
    worker.load(published(zoo.scaled(OFF)))
    assert worker.table_scale == 1.0 and worker.zoo == zoo.scaled(OFF)


@needs_redis
def test_the_front_end_publishes_the_table_as_is_and_the_worker_cli_scales_it(redis_url, serving_assets, tmp_path,
                                                                              monkeypatch, capfd):
    """`superserve serve --backend` (default --reprofile auto) with a table 10x off from another device: the front end
    neither spot-checks nor re-profiles it (and says so), publishes it unchanged; `superserve worker` scales it and
    says by how much, then serves."""
    from superserve.cluster.server import ClusterServer, refused_options
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    zoo_path, ckpt = serving_assets
    off = foreign(Zoo.load(zoo_path).scaled(OFF))
    off_path = tmp_path / "zoo_elsewhere.json"
    off.save(off_path)
    for name in ("check_speed", "profile_zoo", "reprofile_in_subprocess"):
        monkeypatch.setattr(profiling, name, lambda *a, _n=name, **k: pytest.fail(f"the front end ran {_n}"))
    config = ServeConfig(port=0, metrics_port=None, zoo_path=off_path, checkpoint_path=ckpt,
                         engine=EngineConfig(default_slo_ms=600_000.0))
    assert config.reprofile == "auto" and refused_options(config) == []
    assert refused_options(replace(config, reprofile="always"))  # with where it belongs
    server = ClusterServer(config, redis_url).start()
    worker = None
    try:
        assert "publishing the latency table of" in capfd.readouterr().err
        assert Zoo.from_dict(ClusterConfig.from_json(server.engine.client.get(server.engine.keys.config)).zoo) == off
        assert server.table.kind == "file" and server.zoo == off
        worker = subprocess.Popen([sys.executable, "-m", "superserve.cli", "worker", "--backend", redis_url,
                                   "--checkpoint", str(ckpt)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = worker.stdout.readline()  # once it has loaded (the table fitted) and registered
        assert "serving 3 subnets" in line, line
        wait_for(lambda: server.engine.accepting, 30, "the front end to see the worker")
    finally:
        if worker is not None:
            worker.terminate()
            _, err = worker.communicate(timeout=30)
        server.stop(drain_timeout_s=5)
    assert "runs the subnets at" in err and "serving with the table scaled by" in err, err
