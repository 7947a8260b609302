"""Zoo file contract, Pareto selection, profiling tables, and a tiny end-to-end `zoo build` / check / reprofile."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from helpers import TEST_HOST, make_zoo
from supernet.checkpoint import load_checkpoint, round_trip_half, save_checkpoint
from supernet.config import SubnetConfig, SupernetSpace
from supernet.network import SuperNet
from superserve.cli import main as cli_main
from superserve.zoo import HostFingerprint, Zoo, ZooError, pareto_front
from training.calibrate import calibrate_subnets
from superserve.profiler import ProfileConfig, monotone_violations, percentile_stats, profile_subnets
from training.search import Candidate, SearchConfig, select_front

TINY = SupernetSpace(image_size=8, stem_width=8, stage_widths=(8, 16), stage_strides=(1, 2), head_width=16,
                     depth_choices=(1, 2))


# --- the file contract ----------------------------------------------------------------------------------------------
def test_zoo_round_trip(tmp_path):
    zoo = make_zoo()
    zoo.save(tmp_path / "z.json")
    back = Zoo.load(tmp_path / "z.json")
    assert back == zoo and back.subnet_ids == zoo.subnet_ids
    assert back.latency_ms(back.subnet_ids[1], 3, "median") == zoo.entry(zoo.subnet_ids[1]).latency_ms[4].median_ms


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(format="other"), "not a superserve zoo"),
    (lambda d: d["subnets"][0].pop("accuracy"), "missing or wrong field"),
    (lambda d: d["subnets"][0].update(accuracy=1.5), "outside"),
    (lambda d: d["subnets"][0].update(subnet_id="d999-deadbeef"), "does not match"),
    (lambda d: d["subnets"][1]["latency_ms"].pop("64"), "batch sizes"),
    (lambda d: d["subnets"][1].update(subnet_id=d["subnets"][0]["subnet_id"],
                                      config=d["subnets"][0]["config"]), "duplicate"),
    (lambda d: (d["subnets"][0].pop("subnet_id"), d["subnets"][0]["config"]["kernel_sizes"][0].__setitem__(0, 4)),
     "kernel size 4"),
])
def test_zoo_validation_errors(tmp_path, mutate, match):
    data = make_zoo().to_dict()
    mutate(data)
    (tmp_path / "z.json").write_text(json.dumps(data))
    with pytest.raises((ZooError, ValueError), match=match):
        Zoo.load(tmp_path / "z.json")


def test_zoo_load_errors(tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        Zoo.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        Zoo.load(tmp_path / "bad.json")


# --- Pareto ---------------------------------------------------------------------------------------------------------
def test_pareto_front_on_a_hand_made_table():
    table = [("a", 1.0, 0.90), ("b", 2.0, 0.95), ("c", 2.5, 0.94), ("d", 3.0, 0.95), ("e", 4.0, 0.99),
             ("f", 1.0, 0.89), ("g", 5.0, 0.98)]
    # c is slower and worse than b; d ties b's accuracy but is slower; f ties a's speed but is worse; g is beaten by e
    assert pareto_front(table) == ["a", "b", "e"]


def _cand(k: int, macs: int, acc: float) -> Candidate:
    configs = [SubnetConfig.random(TINY, 100 + i) for i in range(400)]
    unique = list({c.subnet_id: c for c in configs}.values())
    return Candidate(unique[k], macs, 0, acc)


def test_select_front_fills_thins_and_keeps_the_endpoints():
    cands = [_cand(0, 100, 0.80), _cand(1, 200, 0.85), _cand(2, 400, 0.90), _cand(3, 800, 0.92),
             _cand(4, 1600, 0.91),  # largest, dominated by the 800-MAC one, but always kept
             _cand(5, 300, 0.84), _cand(6, 600, 0.88), _cand(7, 1000, 0.70)]
    front = select_front(cands, min_size=2, max_size=10)
    assert [c.macs for c in front] == [100, 200, 400, 800, 1600]
    filled = select_front(cands, min_size=7, max_size=10)  # two from the next layer, where the gaps are widest
    assert len(filled) == 7 and {300, 600} <= {c.macs for c in filled}
    thin = select_front(cands, min_size=2, max_size=3)
    assert [c.macs for c in thin] == [100, 400, 1600]


# --- profiling ------------------------------------------------------------------------------------------------------
def test_percentiles():
    stats = percentile_stats([float(v) for v in range(1, 101)])
    assert stats.median_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)


def test_profile_tables_have_the_right_keys_and_grow_with_batch():
    torch.manual_seed(0)
    net = SuperNet(TINY)
    subnets = [SubnetConfig.min(TINY), SubnetConfig.max(TINY)]
    calibrate_subnets(net, subnets, torch.randn(64, 1, 8, 8))
    cfg = ProfileConfig(batch_sizes=(1, 4, 64), min_repeats=5, max_repeats=20, target_s=0.05)
    tables = profile_subnets(net, subnets, cfg, progress=False)
    assert set(tables) == {s.subnet_id for s in subnets}
    for table in tables.values():
        assert sorted(table) == [1, 4, 64]
        assert all(s.p99_ms >= s.median_ms > 0 for s in table.values())
        assert table[64].median_ms > table[1].median_ms  # 64 images cost more than one
    assert monotone_violations({1: percentile_stats([2.0]), 2: percentile_stats([1.0])}) == [2]


class _SlowSpell(torch.nn.Module):
    """A net whose forwards number `spell` (1-based) each take 20 ms longer: a slow spell of a shared host."""

    def __init__(self, net: SuperNet, spell: range) -> None:
        super().__init__()
        self.net, self.spell, self.calls, self.space = net, spell, 0, net.space

    def forward(self, x, cfg):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls in self.spell:
            import time

            time.sleep(0.02)
        return self.net(x, cfg)


def test_profile_passes_spread_a_slow_spell_over_every_cell() -> None:
    """Forwards 1-4 are slow. In one pass they are 4 of the first cell's 6 repeats, and its median is the spell's; in
    3 passes of 2 repeats each they are 2 of each cell's 6, and both medians stay the net's."""
    torch.manual_seed(0)
    net = SuperNet(TINY)
    subnets = [SubnetConfig.min(TINY), SubnetConfig.max(TINY)]
    calibrate_subnets(net, subnets, torch.randn(64, 1, 8, 8))
    medians = {}
    for passes in (1, 3):
        cfg = ProfileConfig(batch_sizes=(1,), warmup=0, min_repeats=6, max_repeats=6, target_s=0.0, passes=passes)
        tables = profile_subnets(_SlowSpell(net, range(1, 5)), subnets, cfg, progress=False)
        medians[passes] = [tables[s.subnet_id][1].median_ms for s in subnets]
    assert medians[1][0] > 20.0 > medians[1][1]
    assert max(medians[3]) < 20.0
    with pytest.raises(ValueError):
        ProfileConfig(passes=0)


# --- end to end -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from training.zoo_build import build_zoo

    tmp = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    net = SuperNet(TINY)
    save_checkpoint(net, tmp / "trained.pt", meta={"data": "digits", "data_seed": 0})
    search = SearchConfig(num_random=6, generations=1, population=3, search_calibration_images=64, min_size=4,
                          max_size=6)
    profile = ProfileConfig(batch_sizes=(1, 2, 4), min_repeats=2, max_repeats=3, target_s=0.01)
    result = build_zoo(tmp / "trained.pt", tmp / "zoo.json", tmp / "supernet.pt", search_cfg=search,
                       profile_cfg=profile, calibration_images=64, half_weights=True, progress=False,
                       log=lambda m: None)
    return tmp, result


def test_build_writes_a_consistent_zoo_and_checkpoint(built):
    tmp, result = built
    zoo = Zoo.load(tmp / "zoo.json")
    assert zoo == result.zoo and 4 <= len(zoo.entries) <= 6 and zoo.batch_sizes == (1, 2, 4)
    ids = set(zoo.subnet_ids)
    assert {SubnetConfig.min(TINY).subnet_id, SubnetConfig.max(TINY).subnet_id} <= ids
    assert all(e.test_accuracy is not None and e.flops > 0 for e in zoo.entries)
    net, data = load_checkpoint(tmp / "supernet.pt")
    assert set(net.norm_table.stats) == ids  # statistics of the served subnets only
    assert data["state_dict"]["head.weight"].dtype == torch.float16 and net.head.weight.dtype == torch.float32
    assert data["meta"]["normalization"]["raw_max"] == 16.0
    # the served weights are the float16 round trip, and the zoo's accuracy is reproducible from the checkpoint
    from superserve.data import load_dataset
    from training.trainer import evaluate

    splits = load_dataset("digits", seed=0)
    for e in zoo.entries[:2]:
        assert evaluate(net, e.config, splits.val_x, splits.val_y) == pytest.approx(e.accuracy)
    cands = json.loads((tmp / "zoo_candidates.json").read_text())
    assert len(cands["candidates"]) == 2 + 6 + 3 and set(cands["selected"]) == ids


def test_check_detects_foreign_host_and_wrong_checkpoint(built, tmp_path, capsys):
    from training.zoo_build import check

    tmp, result = built
    assert check(result.zoo, tmp / "supernet.pt", threads=1) == []
    foreign = replace(result.zoo, host=HostFingerprint("arm64", "Other CPU", "cpu", 1, "2.0.0"))
    problems = check(foreign, tmp / "trained.pt", threads=1)
    assert any("another host" in p for p in problems) and any("sha256" in p for p in problems)
    foreign.save(tmp_path / "foreign.json")
    assert cli_main(["zoo", "check", "--zoo", str(tmp_path / "foreign.json")]) == 1
    assert "STALE" in capsys.readouterr().out


def test_reprofile_refreshes_the_host_and_keeps_accuracies(built, tmp_path):
    from training.zoo_build import reprofile

    tmp, result = built
    foreign = replace(result.zoo, host=TEST_HOST)
    foreign.save(tmp_path / "z.json")
    new = reprofile(tmp_path / "z.json", tmp / "supernet.pt", ProfileConfig(min_repeats=2, max_repeats=2),
                    progress=False)
    assert new.host != TEST_HOST and Zoo.load(tmp_path / "z.json") == new
    assert {e.subnet_id: e.accuracy for e in new.entries} == {e.subnet_id: e.accuracy for e in result.zoo.entries}


def test_round_trip_half_matches_a_half_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = SuperNet(TINY)
    save_checkpoint(net, tmp_path / "h.pt", half_weights=True)
    round_trip_half(net)
    loaded, _ = load_checkpoint(tmp_path / "h.pt")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
