"""The dispatch core on its own: the late back-log, withdrawals, lost workers, and the call tracker."""

from __future__ import annotations

import math

import numpy as np

from helpers import make_zoo
from policies.base import make_policy
from superserve.dispatch import CallTracker, DispatchCore
from superserve.outcomes import Outcome
from superserve.queue import EdfQueue
from superserve.types import Request


def core_for(late="serve", workers=1):
    zoo = make_zoo()  # 1, 2, 4 ms at batch 1; accuracies 0.90, 0.95, 0.98
    return DispatchCore(zoo, make_policy("slackfit", zoo), EdfQueue(), workers, late)


def test_a_late_request_no_subnet_can_serve_is_shed_not_served():
    core = core_for(late="serve")
    core.queue.push(Request(0, 0.0, 0.001, 0.5))  # 1 ms SLO, found 10 ms late: infeasible, servable late
    core.queue.push(Request(1, 0.0, 0.001, 0.999))  # a hint above every subnet: never servable
    out = core.schedule(now=0.010)
    assert [d.request_ids for d in out] == [(0,)]  # the servable one runs late on the fastest subnet meeting 0.5
    assert out[0].subnet_id == min(core.zoo.entries, key=lambda e: e.latency_ms[1].p99_ms).subnet_id
    assert core.schedule(now=0.010) == []  # no idle worker left; the unservable one waits in the back-log
    on_time, outcome = core.complete(out[0], 0.012)
    assert on_time == [False] and outcome.missed == 1
    assert core.schedule(now=0.012) == [] and [r.request_id for r in core.shed] == [1] and not core.late


def test_withdraw_takes_requests_from_the_queue_and_the_back_log():
    core = core_for(late="serve")
    for rid in range(3):
        core.queue.push(Request(rid, 0.0, 0.001))
    core.worker_down(0)  # nothing dispatched: the infeasible ones stay back-logged
    assert core.schedule(now=0.0) == []
    core.worker_up(0)
    core.idle.clear()  # a busy worker: the policy is not asked
    core.late[5] = Request(5, 0.0, 0.001)
    gone = core.withdraw([0, 5, 42])
    assert sorted(r.request_id for r in gone) == [0, 5] and 0 not in core.queue and not core.late


def test_a_lost_worker_gets_nothing_until_it_is_back():
    core = core_for(late="shed", workers=2)
    core.queue.push(Request(0, 0.0, 1.0))
    first = core.schedule(now=0.0)[0]
    core.worker_down(first.slot)
    core.complete(first, 0.01, failed=True)  # its batch is reported lost
    assert first.slot not in core.idle and core.workers_up == 1
    core.queue.push(Request(1, 0.02, 1.0))
    assert [d.slot for d in core.schedule(now=0.02)] == [1 - first.slot]
    assert core.worker_up(first.slot) and first.slot in core.idle and not core.worker_up(first.slot)


def test_call_tracker_answers_served_late_and_failed_calls():
    answers = []
    t = CallTracker(2, 1.0, answers.append)
    assert not t.add(1, np.array([0.0, 1.0]), "b", 0.95, on_time=True)
    assert t.add(0, np.array([1.0, 0.0]), "a", 0.90, on_time=False)
    r = t.result(1.5)
    assert r.outcome == Outcome.LATE and r.subnet_ids == ("a", "b") and r.accuracy == 0.90
    assert r.probabilities.shape == (2, 2) and r.latency_s == 0.5 and t.done
    parts = CallTracker(3, 0.0, answers.append)  # the hint defense's per-image parts: wait for all, first failure
    assert not parts.add_failure(2, Outcome.SHED, "shed")
    assert not parts.add(0, np.zeros(2), "a", 0.9, on_time=True)
    assert parts.add_failure(1, Outcome.ERROR, "boom")
    failed = parts.result(0.2)
    assert failed.outcome == Outcome.ERROR and failed.message == "boom" and math.isnan(failed.accuracy)
