"""The EDF queue: order, capacity, removal by id, snapshots, against a sorted-list reference under random use."""

from __future__ import annotations

import random

import pytest

from superserve.queue import EdfQueue, PushResult
from superserve.types import Request


def req(rid: int, deadline_s: float) -> Request:
    return Request(rid, 0.0, deadline_s)


def test_earliest_deadline_first_with_fifo_ties() -> None:
    q = EdfQueue()
    for rid, dl in [(0, 3.0), (1, 1.0), (2, 2.0), (3, 1.0)]:
        assert q.push(req(rid, dl)) is PushResult.OK
    snap = q.snapshot(10)
    assert [r.request_id for r in snap.requests] == [1, 3, 2, 0] and snap.queue_len == 4
    assert q.peek().request_id == 1
    assert [r.request_id for r in q.pop_batch(2)] == [1, 3] and len(q) == 2


def test_capacity_and_duplicates_are_explicit() -> None:
    q = EdfQueue(capacity=2)
    assert q.push(req(0, 1.0)) is PushResult.OK
    assert q.push(req(0, 1.0)) is PushResult.DUPLICATE
    assert q.push(req(1, 1.0)) is PushResult.OK
    assert q.push(req(2, 0.5)) is PushResult.FULL and 2 not in q
    q.pop_ids([0])
    assert q.push(req(2, 0.5)) is PushResult.OK
    with pytest.raises(ValueError):
        EdfQueue(capacity=0)


def test_snapshot_is_a_bounded_immutable_prefix() -> None:
    q = EdfQueue()
    for rid in range(100):
        q.push(req(rid, 100 - rid))
    snap = q.snapshot(5)
    assert [r.request_id for r in snap.requests] == [99, 98, 97, 96, 95] and snap.queue_len == 100
    q.push(req(1000, -1.0))  # earlier than the whole head
    assert snap.requests[0].request_id == 99  # the old snapshot did not change
    assert q.snapshot(2).requests[0].request_id == 1000


def test_pop_unknown_id_raises() -> None:
    q = EdfQueue()
    q.push(req(1, 1.0))
    with pytest.raises(KeyError):
        q.pop_ids([2])


def test_random_operations_match_a_sorted_reference() -> None:
    rng = random.Random(7)
    q = EdfQueue(front_max=8)
    ref: dict[int, Request] = {}
    next_id = 0
    for _ in range(5000):
        op = rng.random()
        if op < 0.5:
            r = req(next_id, rng.choice([rng.random(), round(rng.random(), 1)]))
            next_id += 1
            assert q.push(r) is PushResult.OK
            ref[r.request_id] = r
        elif op < 0.7 and ref:
            k = rng.randint(1, 10)
            snap = q.snapshot(k)
            expected = sorted(ref.values(), key=lambda r: (r.deadline_s, r.request_id))[:k]
            assert list(snap.requests) == expected and snap.queue_len == len(ref)
        elif op < 0.85 and ref:
            ids = rng.sample(sorted(ref), min(len(ref), rng.randint(1, 5)))  # arbitrary ids, not just the head
            assert [r.request_id for r in q.pop_ids(ids)] == ids
            for i in ids:
                del ref[i]
        elif ref:
            k = rng.randint(1, 6)
            got = q.pop_batch(k)
            expected = sorted(ref.values(), key=lambda r: (r.deadline_s, r.request_id))[:k]
            assert got == expected
            for r in got:
                del ref[r.request_id]
        assert len(q) == len(ref)
    assert q.drain() == sorted(ref.values(), key=lambda r: (r.deadline_s, r.request_id)) and len(q) == 0


def test_deadline_ordered_pushes_mixed_with_a_shorter_slo_class_match_a_sorted_reference() -> None:
    # Two SLO classes arriving in time order: each class's deadlines are increasing (the O(1) tail), and the short
    # class overtakes the long one (the heap and the front). Random removals make stale entries to skip and compact.
    rng = random.Random(11)
    q = EdfQueue(front_max=4)
    ref: dict[int, Request] = {}
    now = 0.0
    for rid in range(6000):
        now += rng.expovariate(1000.0)
        r = Request(rid, now, now + rng.choice([0.036, 0.036, 0.036, 0.010]))
        assert q.push(r) is PushResult.OK
        ref[rid] = r
        op = rng.random()
        if op < 0.2:
            k = rng.randint(1, 40)
            expected = sorted(ref.values(), key=lambda r: (r.deadline_s, r.request_id))[:k]
            assert list(q.snapshot(k).requests) == expected
            take = [r.request_id for r in expected[:rng.randint(1, k)]]
            if rng.random() < 0.3:  # not the head's prefix: the slow path
                take = rng.sample(sorted(ref), min(len(ref), 5))
            q.pop_ids(take)
            for i in take:
                del ref[i]
        elif op < 0.25 and len(ref) > 50:
            for i in rng.sample(sorted(ref), 30):  # removed from deep in the queue: stale in the tail or heap
                q.pop_ids([i])
                del ref[i]
        assert len(q) == len(ref)
    assert q.drain() == sorted(ref.values(), key=lambda r: (r.deadline_s, r.request_id))
