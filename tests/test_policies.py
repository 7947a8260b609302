"""Policies on hand-built snapshots. Zoo (tests.helpers.make_zoo defaults), latency in ms at batch B:
small (acc .90): 1 1.25 1.75 2.75 4.75 8.75 16.75 | mid (.95): 2 2.5 3.5 5.5 9.5 17.5 33.5 |
big (.98): 4 5 7 11 19 35 67, for B = 1 2 4 8 16 32 64; p99 = median."""

from __future__ import annotations

import dataclasses

import pytest

from policies.base import Policy, available, late_subnet, make_policy
from policies.baselines import AimdState
from policies.slackfit import SlackFit
from superserve.types import BatchOutcome, Decision, QueueSnapshot, WorkerState
from helpers import make_request, make_snapshot, make_zoo, snapshot_of

ZOO = make_zoo()
SMALL, MID, BIG = ZOO.subnet_ids
W = WorkerState(0)
# Tests of the fit rule's mechanics pin it (and K=4); the paper rule (the default) has its own tests below.


def decide(policy: Policy, snapshot: QueueSnapshot, now_s: float, worker: WorkerState = W,
           state: object = None) -> Decision | None:
    decision, _ = policy.decide(snapshot, now_s, worker, policy.initial_state() if state is None else state)
    return decision


def acc(subnet_id: str | None) -> float:
    assert subnet_id is not None
    return ZOO.entry(subnet_id).accuracy


def test_registry_lists_every_policy_and_rejects_unknown_names_and_parameters() -> None:
    assert set(available()) >= {"slackfit", "maxacc", "maxbatch", "clipper+", "infaas", "clockwork"}
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("fastest", ZOO)
    with pytest.raises(ValueError, match="bad parameters"):
        make_policy("slackfit", ZOO, nonsense=1)
    with pytest.raises(ValueError):
        make_policy("slackfit", ZOO, buckets=0)
    with pytest.raises(ValueError):
        make_policy("clipper+", ZOO, subnet="no-such-subnet")
    for name in available():
        assert isinstance(make_policy(name, ZOO), Policy)


def test_slackfit_light_load_picks_the_most_accurate_subnet() -> None:
    d = decide(SlackFit(ZOO), make_snapshot(1), now_s=0.0)
    assert d is not None and d.subnet_id == BIG and d.request_ids == (0,) and d.infeasible_ids == ()


def test_slackfit_burst_picks_a_small_subnet_and_a_big_batch() -> None:
    # 100 queued, head has 17 ms left: only the small subnet runs 64 in the slack.
    d = decide(SlackFit(ZOO, buckets=4, rule="fit"), make_snapshot(100, limit=128), now_s=0.019)
    assert d is not None and d.subnet_id == SMALL and len(d.request_ids) == 64
    assert d.request_ids == tuple(range(64))  # EDF prefix


def test_slackfit_moves_down_buckets_as_slack_shrinks_and_always_fits() -> None:
    policy = SlackFit(ZOO, buckets=4, rule="fit")
    snap = make_snapshot(100, limit=128)
    previous_latency = float("inf")
    for now_ms in range(0, 36):
        d = decide(policy, snap, now_s=now_ms * 1e-3)
        assert d is not None and d.request_ids
        slack_ms = 36 - now_ms
        assert d.expected_latency_ms <= slack_ms + 1e-9  # the batch fits the slack
        assert d.expected_latency_ms <= previous_latency + 1e-9  # less slack never picks a slower choice
        previous_latency = d.expected_latency_ms


def test_slackfit_caps_the_batch_at_what_the_queue_needs() -> None:
    # 5 queued with the whole SLO: batch 8 of the big subnet (11 ms) beats running 5 on a small subnet's B=64 plan.
    d = decide(SlackFit(ZOO, buckets=4, rule="fit"), make_snapshot(5), now_s=0.0)
    assert d is not None and d.subnet_id == BIG and len(d.request_ids) == 5


def test_slackfit_bucket_count_trades_batch_for_latency() -> None:
    snap = make_snapshot(100, limit=128)
    one = decide(SlackFit(ZOO, buckets=1, rule="fit"), snap, now_s=0.0)  # one bucket: the largest batch that fits
    fine = decide(SlackFit(ZOO, buckets=1000, rule="fit"), snap, now_s=0.0)  # fine: the slowest choice that fits
    assert one is not None and fine is not None
    assert len(one.request_ids) == 64 and one.subnet_id == MID  # mid at 64 = 33.5 ms is the largest-batch fit
    assert fine.expected_latency_ms == 35.0 and fine.subnet_id == BIG  # big at 32 = 35 ms


def test_slackfit_median_statistic_uses_the_median_table() -> None:
    zoo = make_zoo(p99_factor=2.0)
    p99 = decide(SlackFit(zoo, stat="p99", buckets=4, rule="fit"), make_snapshot(1, slo_ms=6.0), now_s=0.0)
    med = decide(SlackFit(zoo, stat="median", buckets=4, rule="fit"), make_snapshot(1, slo_ms=6.0), now_s=0.0)
    assert p99 is not None and med is not None
    assert acc(med.subnet_id) == 0.98 and acc(p99.subnet_id) == 0.95  # big: median 4 fits 6 ms, p99 8 does not


def test_min_accuracy_is_never_violated() -> None:
    reqs = [make_request(k, min_accuracy=0.95 if k == 0 else 0.0) for k in range(100)]
    reqs[3] = make_request(3, min_accuracy=0.97)  # stricter than the subnet chosen for the head's batch
    snap = snapshot_of(reqs)
    for name in ("slackfit", "maxacc", "maxbatch", "infaas"):
        d = decide(make_policy(name, ZOO), snap, now_s=0.019)
        assert d is not None and d.request_ids
        assert acc(d.subnet_id) >= 0.95, name
        by_id = {r.request_id: r for r in reqs}
        assert all(by_id[i].min_accuracy <= acc(d.subnet_id) for i in d.request_ids), name
    # One bucket (the largest batch that fits 17 ms: mid at 16) so that the head's subnet is below request 3's hint.
    d = decide(SlackFit(ZOO, buckets=1, rule="fit"), snap, now_s=0.019)
    assert d is not None and d.subnet_id == MID and 3 not in d.request_ids and len(d.request_ids) == 16


def test_nothing_fits_is_reported_not_dropped() -> None:
    snap = make_snapshot(10)
    for name in available():
        d = decide(make_policy(name, ZOO), snap, now_s=0.0355)  # 0.5 ms left, fastest batch is 1 ms
        assert d is not None, name
        assert d.request_ids == () and d.subnet_id is None
        assert d.infeasible_ids == tuple(range(10)), name


def test_unmeetable_hint_is_reported_and_the_rest_is_served() -> None:
    reqs = [make_request(0, min_accuracy=0.99), make_request(1, slo_ms=40), make_request(2, slo_ms=40)]
    d = decide(SlackFit(ZOO), snapshot_of(reqs), now_s=0.0)
    assert d is not None and d.infeasible_ids == (0,) and d.request_ids == (1, 2)
    assert late_subnet(ZOO, reqs[1:]) == SMALL and late_subnet(ZOO, reqs) is None


def test_decide_is_pure() -> None:
    policy = SlackFit(ZOO)
    snap = make_snapshot(50)
    before = dataclasses.astuple(snap)
    first = decide(policy, snap, 0.01)
    assert decide(policy, snap, 0.01) == first and dataclasses.astuple(snap) == before


def test_maxacc_keeps_accuracy_under_a_burst() -> None:
    d = decide(make_policy("maxacc", ZOO), make_snapshot(100, limit=128), now_s=0.019)
    assert d is not None and d.subnet_id == BIG and len(d.request_ids) == 8  # big at 8 = 11 ms; at 16 = 19 > 17


def test_maxbatch_gives_up_accuracy_even_at_light_load() -> None:
    d = decide(make_policy("maxbatch", ZOO), make_snapshot(1), now_s=0.0)
    # plans the largest batch that fits 36 ms (64, on mid: 33.5 ms) although one request is queued
    assert d is not None and d.subnet_id == MID and d.request_ids == (0,)


def test_clipper_plus_uses_its_fixed_subnet_and_aimd_batch_cap() -> None:
    policy = make_policy("clipper+", ZOO, subnet=BIG)
    d, state = policy.decide(make_snapshot(100, limit=128), 0.0, W, AimdState(5.7))
    assert d is not None and d.subnet_id == BIG and len(d.request_ids) == 5  # the cap, not the slack, sets the batch
    ok = BatchOutcome(0, BIG, 5, 0.0, 0.010, 36.0, 0)
    slow = BatchOutcome(0, BIG, 5, 0.0, 0.040, 36.0, 5)
    assert policy.observe(ok, AimdState(5.0)) == AimdState(6.0)  # additive increase
    assert policy.observe(slow, AimdState(5.0)) == AimdState(4.5)  # multiplicative decrease
    assert policy.observe(slow, AimdState(1.0)) == AimdState(1.0)
    assert policy.observe(ok, AimdState(64.0)) == AimdState(64.0)
    assert policy.initial_state() == AimdState(1.0)
    # one instance per subnet, named by its accuracy
    names = {make_policy("clipper+", ZOO, subnet=k).name for k in range(3)}
    assert len(names) == 3


def test_clockwork_runs_the_largest_batch_meeting_every_deadline() -> None:
    policy = make_policy("clockwork", ZOO, subnet=BIG)
    d = decide(policy, make_snapshot(100, limit=128), now_s=0.0)
    assert d is not None and d.subnet_id == BIG and len(d.request_ids) == 32  # 35 ms <= 36, 64 would take 67
    # head 3 ms from its deadline cannot run even alone (4 ms): dropped; the next one (10 ms later) runs
    reqs = [make_request(0, arrival_s=0.0), make_request(1, arrival_s=0.010)]
    d = decide(policy, snapshot_of(reqs), now_s=0.033)
    assert d is not None and d.infeasible_ids == (0,) and d.request_ids == (1,)


def test_infaas_picks_the_cheapest_qualifying_variant_and_pays_to_switch() -> None:
    policy = make_policy("infaas", ZOO, accuracy_floor=0.94, switch_ms=5.0)
    snap = make_snapshot(100, limit=128)
    d = decide(policy, snap, 0.0, WorkerState(0, SMALL))  # small is below the floor: load mid
    assert d is not None and d.subnet_id == MID and len(d.request_ids) == 32  # 17.5 + 5 ms load <= 36
    assert d.expected_latency_ms == 22.5
    d = decide(policy, snap, 0.0, WorkerState(0, None))  # a fresh worker loads its first variant for free
    assert d is not None and d.subnet_id == MID and len(d.request_ids) == 64 and d.expected_latency_ms == 33.5
    d = decide(policy, snap, 0.0, WorkerState(0, BIG))  # loaded and qualifies: kept, no load
    assert d is not None and d.subnet_id == BIG and d.expected_latency_ms == 35.0
    tight = make_snapshot(1, slo_ms=6.0)
    d = decide(policy, tight, 0.0, WorkerState(0, SMALL))  # must load mid: 2 + 5 > 6, loaded anyway, served late
    assert d is not None and d.subnet_id == MID and d.request_ids == (0,) and d.expected_latency_ms == 7.0
    d = decide(policy, tight, 0.0, WorkerState(0, MID))
    assert d is not None and d.request_ids == (0,)
    assert make_policy("infaas", ZOO).switch_ms == 5.0 and make_policy("slackfit", ZOO).switch_ms == 0.0


def test_decision_rejects_empty_or_subnetless_batches() -> None:
    with pytest.raises(ValueError):
        Decision(None)
    with pytest.raises(ValueError):
        Decision(None, request_ids=(1,))


def test_slackfit_without_queue_cap_follows_the_paper_rule() -> None:
    # No cap: the top bucket's largest batch whatever the queue holds, so a lone request lands on a small subnet.
    capped = decide(SlackFit(ZOO, buckets=1, rule="fit"), make_snapshot(1), now_s=0.0)
    paper = decide(SlackFit(ZOO, buckets=1, queue_headroom=float("inf"), rule="fit"), make_snapshot(1), now_s=0.0)
    assert capped is not None and paper is not None
    assert capped.subnet_id == BIG  # batch-of-one choices only: the most accurate fits
    assert paper.subnet_id == MID and paper.request_ids == (0,)  # plans batch 64: mid at 64 = 33.5 ms fits 36
    with pytest.raises(ValueError):
        SlackFit(ZOO, queue_headroom=0.5)


def test_slack_equal_to_the_fastest_latency_never_trips_on_rounding() -> None:
    # The head's slack is exactly the fastest batch-of-one latency (1 ms) up to float rounding, at many clock values:
    # a policy must either serve it or report it, never fail between its feasibility and fit tests.
    policies = [make_policy(name, ZOO) for name in available()]
    for k in range(500):
        arrival = k * 0.0013373 + 1e3 * (k % 3)
        snap = snapshot_of([make_request(0, arrival_s=arrival, slo_ms=1.0)])
        for policy in policies:
            d = decide(policy, snap, now_s=arrival)
            assert d is not None and (d.request_ids == (0,) or d.infeasible_ids == (0,))


def test_slackfit_bucket_rule_not_the_batch_rule_decides() -> None:
    # 100 queued, head has 12 ms left. Buckets over [1, 36] ms (K=4, 8.75 ms wide): small at 32 (8.75 ms) and mid at
    # 16 (9.5 ms) sit in bucket 0, big at 8 (11 ms) in bucket 1. The highest fitting bucket wins, so big at 8; the
    # largest-batch rule (MaxBatch) would take small at 32, and so did SlackFit with buckets over the whole table
    # (1-67 ms, every fitting choice in bucket 0): the collapse this test guards against.
    snap = make_snapshot(100, limit=128)
    slackfit = decide(SlackFit(ZOO, buckets=4, rule="fit"), snap, now_s=0.024)
    maxbatch = decide(make_policy("maxbatch", ZOO), snap, now_s=0.024)
    whole_table = decide(SlackFit(ZOO, bucket_range="table", buckets=4, rule="fit"), snap, now_s=0.024)
    assert slackfit is not None and maxbatch is not None and whole_table is not None
    assert slackfit.subnet_id == BIG and len(slackfit.request_ids) == 8
    assert maxbatch.subnet_id == SMALL and len(maxbatch.request_ids) == 32
    assert (whole_table.subnet_id, len(whole_table.request_ids)) == (SMALL, 32)


def test_slackfit_buckets_follow_each_requests_slo_class() -> None:
    policy = SlackFit(ZOO, buckets=4, rule="fit")
    assert policy.bucket_edges_ms(36.0) == (1.0, 36.0) and policy.bucket_edges_ms(100.0) == (1.0, 100.0)
    assert policy.bucket_of(11.0, 36.0) == 1 and policy.bucket_of(11.0, 100.0) == 0
    # A 100 ms class with 40 ms left: buckets 24.75 ms wide, big at 16 (19 ms) is in bucket 0 with small at 64
    # (16.75 ms) and loses to it on batch size; mid at 64 (33.5 ms, bucket 1) is the highest fitting bucket's largest.
    d = decide(policy, make_snapshot(100, limit=128, slo_ms=100.0), now_s=0.060)
    assert d is not None and d.subnet_id == MID and len(d.request_ids) == 64
    with pytest.raises(ValueError):
        SlackFit(ZOO, bucket_range="everything")  # type: ignore[arg-type]


def test_slackfit_on_the_shipped_zoo_uses_more_than_one_bucket() -> None:
    # On the shipped zoo (CPU latencies 0.5-371 ms) light load and overload must choose from different buckets of the
    # SLO's range; with buckets over the whole table every choice that meets a 36 ms SLO was in bucket 0.
    from superserve.synthetic import DEFAULT_ZOO_PATH
    from superserve.zoo import Zoo

    zoo = Zoo.load(DEFAULT_ZOO_PATH)
    policy = SlackFit(zoo, buckets=4, rule="fit")
    light = decide(policy, make_snapshot(1), now_s=0.0)
    overload = decide(policy, make_snapshot(300, limit=policy.snapshot_limit), now_s=0.028)  # 8 ms of slack left
    assert light is not None and overload is not None
    b_light = policy.bucket_of(light.expected_latency_ms, 36.0)
    b_over = policy.bucket_of(overload.expected_latency_ms, 36.0)
    assert b_light != b_over and len(overload.request_ids) > len(light.request_ids)
    assert light.subnet_id == zoo.entries[-1].subnet_id  # the most accurate subnet at light load
    fitting = [x for row in policy.profile.lat_ms for x in row if x <= 36.0]
    assert len({policy.bucket_of(x, 36.0) for x in fitting}) == policy.buckets
    table = SlackFit(zoo, bucket_range="table", buckets=4, rule="fit")
    assert {table.bucket_of(x, 36.0) for x in fitting} == {0}  # the degenerate range, for the record


def test_slackfit_paper_rule_fits_when_a_bucket_fits_and_runs_bucket_0_when_none_does() -> None:
    # Default rule, K=8 over [1, 36] ms: bucket k spans [1 + 4.375k, 1 + 4.375(k+1)). k* = the highest bucket whose
    # upper bound is within the slack; its representative is its largest batch, then the most accurate subnet.
    assert SlackFit(ZOO).rule == "paper"
    policy = SlackFit(ZOO, buckets=8)
    snap = make_snapshot(100, limit=128)
    for now_ms in range(0, 31):  # slack 36 .. 6 ms: some bucket's upper bound fits, so the batch fits the slack
        d = decide(policy, snap, now_s=now_ms * 1e-3)
        assert d is not None and d.expected_latency_ms <= 36 - now_ms + 1e-9
    # 3 ms left, below bucket 0's upper bound (5.375 ms): the paper runs bucket 0's representative anyway (small at
    # 16, 4.75 ms; the head finishes late), where the fit rule shrinks the batch to what fits (small at 8, 2.75 ms).
    # Under overload the head always sits near its deadline; shrinking batches there is what collapses throughput.
    paper = decide(policy, snap, now_s=0.033)
    fit = decide(SlackFit(ZOO, rule="fit"), snap, now_s=0.033)
    assert paper is not None and fit is not None
    assert (paper.subnet_id, len(paper.request_ids), paper.expected_latency_ms) == (SMALL, 16, 4.75)
    assert (fit.subnet_id, len(fit.request_ids)) == (SMALL, 8)
    # Choices slower than the SLO are never representatives: with 36 ms, big at 64 (67 ms) is never chosen.
    chosen = [decide(policy, snap, now_s=t * 1e-3) for t in range(36)]
    assert all(d is not None and d.expected_latency_ms <= 36.0 for d in chosen)
    with pytest.raises(ValueError):
        SlackFit(ZOO, rule="greedy")  # type: ignore[arg-type]


def test_slackfit_default_on_the_shipped_zoo_moves_between_buckets() -> None:
    from superserve.synthetic import DEFAULT_ZOO_PATH
    from superserve.zoo import Zoo

    zoo = Zoo.load(DEFAULT_ZOO_PATH)
    policy = SlackFit(zoo)
    light = decide(policy, make_snapshot(1), now_s=0.0)
    overload = decide(policy, make_snapshot(300, limit=policy.snapshot_limit), now_s=0.028)
    assert light is not None and overload is not None
    assert light.subnet_id == zoo.entries[-1].subnet_id
    assert policy.bucket_of(light.expected_latency_ms, 36.0) != policy.bucket_of(overload.expected_latency_ms, 36.0)
    assert len(overload.request_ids) >= 8 and acc_of(zoo, overload.subnet_id) < zoo.entries[-1].accuracy


def acc_of(zoo: object, subnet_id: str | None) -> float:
    assert subnet_id is not None
    return zoo.entry(subnet_id).accuracy  # type: ignore[attr-defined]
