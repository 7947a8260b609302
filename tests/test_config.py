"""SubnetConfig / SupernetSpace: validation, canonical ids, JSON round-trip, seeded sampling."""

import random

import pytest

from supernet.config import InvalidSubnetError, SubnetConfig, SupernetSpace

SPACE = SupernetSpace()


def test_space_holds_the_documented_number_of_subnets():
    """README: 3 stages, depth 1-4, expand 0.25/0.5/1.0 x kernel 3/5 per block -> 3,752,779,464 subnets, i.e.
    (sum over depth d = 1..4 of 6^d)^3."""
    assert SPACE.num_subnets() == 3_752_779_464 == sum(6 ** d for d in range(1, 5)) ** 3


def test_max_and_min_are_valid_and_distinct():
    big, small = SubnetConfig.max(SPACE), SubnetConfig.min(SPACE)
    assert big.validate(SPACE) is big and small.validate(SPACE) is small
    assert big.depths == (4, 4, 4) and small.depths == (1, 1, 1)
    assert big.subnet_id != small.subnet_id


@pytest.mark.parametrize("config, message", [
    (SubnetConfig(((1.0,),) * 2, ((3,),) * 2), "2 stages"),
    (SubnetConfig(((1.0,) * 5,) + ((1.0,),) * 2, ((3,) * 5,) + ((3,),) * 2), "depth 5"),
    (SubnetConfig(((0.3,),) * 3, ((3,),) * 3), "expand ratio 0.3"),
    (SubnetConfig(((1.0,),) * 3, ((4,),) * 3), "kernel size 4"),
])
def test_validation_names_the_problem(config, message):
    with pytest.raises(InvalidSubnetError, match=message):
        config.validate(SPACE)


def test_mismatched_lengths_fail_at_construction():
    with pytest.raises(InvalidSubnetError, match="2 expand ratios but 1 kernel"):
        SubnetConfig(((1.0, 1.0),), ((3,),))


def test_json_round_trip_and_hashing():
    rng = random.Random(0)
    for _ in range(50):
        cfg = SubnetConfig.random(SPACE, rng)
        back = SubnetConfig.from_json(cfg.to_json())
        assert back == cfg and hash(back) == hash(cfg) and back.subnet_id == cfg.subnet_id
    assert len({SubnetConfig.random(SPACE, s) for s in range(200)}) > 190


def test_ids_are_stable_across_runs():
    # Zoo files and served responses carry these ids: they must never change for the same config.
    assert SubnetConfig.max(SPACE).subnet_id == "d444-42213266"
    assert SubnetConfig.min(SPACE).subnet_id == "d111-fa9d624e"


def test_int_and_float_spellings_are_one_subnet():
    a = SubnetConfig(((1,),) * 3, ((3,),) * 3)
    b = SubnetConfig(((1.0,),) * 3, ((3,),) * 3)
    assert a == b and a.subnet_id == b.subnet_id


@pytest.mark.parametrize("text, message", [("not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                           ('{"kernel_sizes": []}', "not a subnet config")])
def test_bad_json_is_a_clear_error(text, message):
    with pytest.raises(InvalidSubnetError, match=message):
        SubnetConfig.from_json(text)


def test_random_is_seeded_and_respects_restrictions():
    assert SubnetConfig.random(SPACE, 7) == SubnetConfig.random(SPACE, 7)
    cfg = SubnetConfig.random(SPACE, 3, depths=(4,), kernel_choices=(5,), expand_choices=(1.0,))
    assert cfg == SubnetConfig.max(SPACE)


def test_mutate_and_crossover_stay_in_space():
    rng = random.Random(1)
    a, b = SubnetConfig.random(SPACE, rng), SubnetConfig.random(SPACE, rng)
    for _ in range(100):
        a = a.mutate(SPACE, rng, prob=0.5).validate(SPACE)
        SubnetConfig.crossover(a, b, rng).validate(SPACE)


def test_space_round_trip_and_rejects_unknown_fields():
    assert SupernetSpace.from_dict(SPACE.to_dict()) == SPACE
    with pytest.raises(ValueError, match="unknown"):
        SupernetSpace.from_dict({**SPACE.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="odd"):
        SupernetSpace(kernel_choices=(3, 4))
