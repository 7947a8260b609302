"""The supernet contract and OFA's search spaces as data (no torch networks built here, except the native one)."""

from __future__ import annotations

import json
import random

import pytest

from supernet.config import InvalidSubnetError, SubnetConfig, SupernetSpace
from supernet.contract import ServableSupernet, SubnetSampler
from supernet.families import NativeSampler, build_supernet, sampler_for
from supernet.ofa_space import RESNET_BASE_DEPTHS, ResNetSampler, named_space, ofa_mbv3_space, ofa_resnet50_space


def test_native_supernet_implements_the_contract():
    net = build_supernet(SupernetSpace())
    assert isinstance(net, ServableSupernet)
    assert isinstance(net.sampler, SubnetSampler)
    assert type(net).__name__ == "SuperNet"


def test_native_ids_and_json_unchanged_by_the_ofa_fields():
    # the ids of configs written before the OFA fields existed must not move (zoo files, checkpoints name them)
    cfg = SubnetConfig(((0.25, 0.5), (1.0,), (0.5, 0.5, 0.25)), ((3, 5), (5,), (3, 3, 5)))
    assert cfg.to_dict() == {"expand_ratios": [[0.25, 0.5], [1.0], [0.5, 0.5, 0.25]],
                             "kernel_sizes": [[3, 5], [5], [3, 3, 5]]}
    old = json.dumps({"expand_ratios": cfg.expand_ratios, "kernel_sizes": cfg.kernel_sizes}, separators=(",", ":"))
    assert cfg.canonical_json() == old
    assert "family" not in SupernetSpace().to_dict()
    with pytest.raises(InvalidSubnetError, match="OFA-ResNet"):
        SubnetConfig(cfg.expand_ratios, cfg.kernel_sizes, widths=(0,) * 6).validate(SupernetSpace())


@pytest.mark.parametrize("space", [ofa_mbv3_space(64), ofa_resnet50_space(64), SupernetSpace()])
def test_samplers_yield_valid_distinct_configs_that_round_trip(space):
    sampler = sampler_for(space)
    rng = random.Random(0)
    configs = [sampler.min(), sampler.max()] + [sampler.random(rng) for _ in range(30)]
    configs += [sampler.mutate(c, rng, 0.5) for c in configs[:10]]
    configs += [sampler.crossover(a, b, rng) for a, b in zip(configs[:10], configs[10:20])]
    for cfg in configs:
        assert cfg.validate(space) is cfg
        again = SubnetConfig.from_json(cfg.to_json())
        assert again == cfg and again.subnet_id == cfg.subnet_id
    assert len({c.subnet_id for c in configs}) > 30
    assert SupernetSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


def test_resnet_space_shape_and_validation():
    space = named_space("ofa_resnet50", 224)
    sampler = ResNetSampler(space)
    top, bottom = sampler.max(), sampler.min()
    assert top.depths == tuple(b + 2 for b in RESNET_BASE_DEPTHS) and top.widths == (2,) * 6 and not top.skip_stem
    assert bottom.depths == RESNET_BASE_DEPTHS and bottom.widths == (0,) * 6 and bottom.skip_stem
    assert top.subnet_id != SubnetConfig(top.expand_ratios, top.kernel_sizes, top.widths, True).subnet_id
    with pytest.raises(InvalidSubnetError, match="stage 2: depth 3"):
        SubnetConfig(((0.2,) * 2, (0.2,) * 2, (0.2,) * 3, (0.2,) * 2), ((3,) * 2, (3,) * 2, (3,) * 3, (3,) * 2),
                     (0,) * 6).validate(space)
    with pytest.raises(InvalidSubnetError, match="width unit 5"):
        SubnetConfig(bottom.expand_ratios, bottom.kernel_sizes, (0, 0, 0, 0, 0, 3)).validate(space)
    with pytest.raises(InvalidSubnetError, match="6 width indices"):
        SubnetConfig(bottom.expand_ratios, bottom.kernel_sizes).validate(space)


def test_mbv3_uses_the_native_rules():
    space = named_space("ofa_mbv3", 128)
    assert isinstance(sampler_for(space), NativeSampler)
    assert space.num_stages == 5 and space.kernel_choices == (3, 5, 7) and space.width_choices == (1.2,)
    with pytest.raises(InvalidSubnetError, match="kernel size 4"):
        SubnetConfig(((3.0,) * 2,) * 5, ((3, 4),) + ((3, 3),) * 4).validate(space)


def test_unknown_family_refused():
    with pytest.raises(ValueError, match="unknown supernet family 'bogus'"):
        build_supernet(SupernetSpace(family="bogus"))
    with pytest.raises(ValueError, match="unknown OFA supernet"):
        named_space("ofa_vit")
