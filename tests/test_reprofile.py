"""Start-up choice of the latency table: the file's own, this host's cached re-profile, or a new re-profile, decided
by the host fingerprint and by a spot check of the speed (a table off by 10x under a matching fingerprint is the case
of a generic VM model name over machines of different speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch

from superserve.server import profiling
from superserve.server.app import Server, ServeConfig
from superserve.zoo import Zoo


@pytest.fixture()
def loaded(serving_assets):  # noqa: ANN001, ANN201 - (zoo as profiled here, net, sample)
    from supernet.checkpoint import load_checkpoint

    zoo_path, ckpt = serving_assets
    net, _ = load_checkpoint(ckpt)
    torch.set_num_threads(1)
    space = net.space
    return Zoo.load(zoo_path), net, torch.zeros(1, space.in_channels, space.image_size, space.image_size)


class _FakeProfiler:
    """Stands in for the minutes-long re-profile: returns the table measured here when the fixture was built."""

    def __init__(self, measured: Zoo) -> None:
        self.measured = measured
        self.calls = 0

    def __call__(self, net, zoo, host, progress=True):  # noqa: ANN001, ANN204, ARG002
        self.calls += 1
        return zoo.with_latencies({e.subnet_id: e.latency_ms for e in self.measured.entries}, host)


def _fake_speed(true: Zoo):  # noqa: ANN202 - check_speed as if this host ran exactly `true`'s table (no noise)
    def check(net, zoo, sample):  # noqa: ANN001, ANN202, ARG001
        sid = true.entries[0].subnet_id
        return profiling.SpeedCheck(true.latency_ms(sid, 1, "median") / zoo.latency_ms(sid, 1, "median"),
                                    len(zoo.entries))
    return check


def _server(zoo_path: Path, ckpt: Path, mode: str) -> Server:
    return Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo_path, checkpoint_path=ckpt, quiet=True,
                              reprofile=mode))  # type: ignore[arg-type]


def test_speed_check_tells_a_table_ten_times_off_in_either_direction(loaded):
    zoo, net, sample = loaded
    too_fast = profiling.check_speed(net, zoo.scaled(0.1), sample)  # the table claims 10x faster than this host
    too_slow = profiling.check_speed(net, zoo.scaled(10.0), sample)
    assert too_fast.ratio > profiling.SPEED_TOLERANCE and not too_fast.fits()
    assert too_slow.ratio < 1 / profiling.SPEED_TOLERANCE and not too_slow.fits()
    assert too_fast.subnets == len(zoo.entries)
    assert profiling.SpeedCheck(1.2, 3).fits() and profiling.SpeedCheck(0.8, 3).fits()


def test_matching_fingerprint_but_wrong_speed_is_reprofiled_once_then_cached(loaded, serving_assets, tmp_path,
                                                                              monkeypatch):
    zoo, net, sample = loaded
    _, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    fake = _FakeProfiler(zoo)
    monkeypatch.setattr(profiling, "profile_zoo", fake)
    monkeypatch.setattr(profiling, "check_speed", _fake_speed(zoo))  # the decision, not the (noisy) measuring
    wrong = tmp_path / "zoo.json"
    zoo.scaled(0.1).save(wrong)  # same fingerprint as this host, latencies 10x too optimistic

    assert _server(wrong, ckpt, "never").load_zoo(net, sample) == Zoo.load(wrong)  # never: trusted as it is
    assert fake.calls == 0

    first = _server(wrong, ckpt, "auto")
    chosen = first.load_zoo(net, sample)
    assert fake.calls == 1 and first._warmed  # the spot check ran every subnet: no second warm-up needed
    top = zoo.entries[-1].subnet_id
    assert chosen.latency_ms(top, 1) == zoo.latency_ms(top, 1)
    assert [e.accuracy for e in chosen.entries] == [e.accuracy for e in zoo.entries]
    cached = profiling.cache_path(wrong, chosen.host)
    assert cached.is_file()

    again = _server(wrong, ckpt, "auto").load_zoo(net, sample)  # next start: this host's cached table, no profile
    assert fake.calls == 1 and again == Zoo.load(cached)

    Zoo.load(cached).scaled(10.0).save(cached)  # the cache went stale (the machine changed under the same name)
    _server(wrong, ckpt, "auto").load_zoo(net, sample)
    assert fake.calls == 2

    _server(wrong, ckpt, "always").load_zoo(net, sample)
    assert fake.calls == 3


def test_a_table_that_fits_is_kept_without_profiling(loaded, serving_assets, tmp_path, monkeypatch):
    zoo, net, sample = loaded
    zoo_path, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    fake = _FakeProfiler(zoo)
    monkeypatch.setattr(profiling, "profile_zoo", fake)
    monkeypatch.setattr(profiling, "check_speed", _fake_speed(zoo.scaled(1.2)))  # 20% slower: within tolerance
    assert _server(zoo_path, ckpt, "auto").load_zoo(net, sample) == zoo
    assert fake.calls == 0 and not (tmp_path / "cache").exists()
