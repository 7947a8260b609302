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
    def check(net, zoo, sample, warm_up=True):  # noqa: ANN001, ANN202, ARG001
        sid = true.entries[0].subnet_id
        return profiling.SpeedCheck(true.latency_ms(sid, 1, "median") / zoo.latency_ms(sid, 1, "median"),
                                    len(zoo.entries))
    return check


def _server(zoo_path: Path, ckpt: Path, mode: str) -> Server:
    return Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo_path, checkpoint_path=ckpt, quiet=True,
                              reprofile=mode))  # type: ignore[arg-type]


def test_speed_check_tells_a_table_ten_times_off_in_either_direction(loaded):
    """The one real measurement here (the others fake it): the table is 10x off against a tolerance of 1.5x, so
    only a host running 6x slower or faster than when the fixture was profiled, minutes earlier, could flip it."""
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


def test_a_zoo_from_other_hardware_is_reprofiled_at_start_and_cached(loaded, serving_assets, tmp_path, monkeypatch,
                                                                     capsys):
    """README: a zoo profiled on other hardware is re-profiled at start (cached per host); no spot check is needed
    for it (the fingerprint already says the table is not this host's)."""
    from superserve.zoo import HostFingerprint

    zoo, net, sample = loaded
    _, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    fake = _FakeProfiler(zoo)
    monkeypatch.setattr(profiling, "profile_zoo", fake)
    monkeypatch.setattr(profiling, "check_speed", lambda *a: pytest.fail("a foreign table needs no spot check"))
    foreign_host = HostFingerprint("sparc64", "Some Other CPU", "cpu", 1, "0.0")
    foreign = tmp_path / "foreign.json"
    slower = zoo.scaled(3.0)  # the other machine's table: 3x this host's
    slower.with_latencies({e.subnet_id: e.latency_ms for e in slower.entries}, foreign_host).save(foreign)
    server = Server(ServeConfig(port=0, metrics_port=None, zoo_path=foreign, checkpoint_path=ckpt, quiet=False,
                                reprofile="auto"))
    chosen = server.load_zoo(net, sample)
    err = capsys.readouterr().err
    assert fake.calls == 1
    assert f"{foreign} was profiled on other hardware (Some Other CPU, 1 thread(s)); re-profiling here once" in err
    assert chosen.host == zoo.host and chosen.host != foreign_host
    top = zoo.entries[-1].subnet_id
    assert chosen.latency_ms(top, 1) == zoo.latency_ms(top, 1)  # the table measured here, not the file's 3x
    assert profiling.cache_path(foreign, chosen.host).is_file()


def test_reprofile_never_trusts_a_foreign_table_and_warns(loaded, serving_assets, tmp_path, monkeypatch, capsys):
    from superserve.zoo import HostFingerprint

    zoo, net, sample = loaded
    _, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    fake = _FakeProfiler(zoo)
    monkeypatch.setattr(profiling, "profile_zoo", fake)
    foreign = tmp_path / "foreign.json"
    zoo.with_latencies({e.subnet_id: e.latency_ms for e in zoo.entries},
                       HostFingerprint("sparc64", "Some Other CPU", "cpu", 2, "0.0")).save(foreign)
    server = Server(ServeConfig(port=0, metrics_port=None, zoo_path=foreign, checkpoint_path=ckpt, quiet=False,
                                reprofile="never"))
    assert server.load_zoo(net, sample) == Zoo.load(foreign)
    assert fake.calls == 0 and not (tmp_path / "cache").exists()
    err = capsys.readouterr().err
    assert f"WARNING: {foreign} was profiled on other hardware (Some Other CPU, 2 thread(s))" in err
    assert "--reprofile auto" in err


@pytest.mark.parametrize("ratio, said", [(2.66, "2.66x slower"), (0.25, "4.00x faster")])
def test_the_speed_mismatch_message_says_how_far_off_the_table_is(loaded, serving_assets, tmp_path, monkeypatch,
                                                                   capsys, ratio, said):
    """README: 'this host runs the subnets 2.66x slower than the latency table in .../zoo.json says'; a passing
    stall must not cost a re-profile, so the spot check is repeated before deciding."""
    zoo, net, sample = loaded
    _, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    fake = _FakeProfiler(zoo)
    monkeypatch.setattr(profiling, "profile_zoo", fake)
    checks = []

    def check(net, zoo_, sample_, warm_up=True):  # noqa: ANN001, ANN202, ARG001
        checks.append(warm_up)
        return profiling.SpeedCheck(ratio, len(zoo_.entries))

    monkeypatch.setattr(profiling, "check_speed", check)
    path = tmp_path / "zoo.json"
    zoo.save(path)  # this host's fingerprint: only the speed can send it to a re-profile
    server = Server(ServeConfig(port=0, metrics_port=None, zoo_path=path, checkpoint_path=ckpt, quiet=False,
                                reprofile="auto"))
    server.load_zoo(net, sample)
    err = capsys.readouterr().err
    assert checks == [True, False] and fake.calls == 1  # confirmed once (without a second warm-up) before re-profiling
    assert (f"this host runs the subnets {said} than the latency table in {path} says (median over "
            f"{len(zoo.entries)} subnets at batch 1)") in err


def test_a_passing_stall_does_not_cost_a_reprofile(loaded, serving_assets, tmp_path, monkeypatch):
    zoo, net, sample = loaded
    zoo_path, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    fake = _FakeProfiler(zoo)
    monkeypatch.setattr(profiling, "profile_zoo", fake)
    ratios = iter([5.0, 1.0])  # the first spot check ran beside a process starting; the second did not
    monkeypatch.setattr(profiling, "check_speed", lambda *a, **_: profiling.SpeedCheck(next(ratios), len(zoo.entries)))
    assert _server(zoo_path, ckpt, "auto").load_zoo(net, sample) == zoo
    assert fake.calls == 0


def test_load_model_spot_checks_at_the_workers_thread_count(serving_assets, tmp_path, monkeypatch):
    # frozen_host_zoo calls load_model outside start_model, where torch runs on every core: a check at 2 threads
    # passed a table 1.75x too fast for the 1-thread workers.
    zoo_path, ckpt = serving_assets
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    seen: list[int] = []

    def check(net, zoo, sample, warm_up=True):  # noqa: ANN001, ANN202, ARG001
        seen.append(torch.get_num_threads())
        return profiling.SpeedCheck(1.0, len(zoo.entries))

    monkeypatch.setattr(profiling, "check_speed", check)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _server(zoo_path, ckpt, "auto").load_model()
        assert seen == [1]
        assert torch.get_num_threads() == 2  # the caller's setting comes back
    finally:
        torch.set_num_threads(before)
