"""The engine and the online profile correction without gRPC or torch models: a fake worker pool, a manual clock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_zoo
from policies.base import make_policy
from superserve.outcomes import Reason, Refused
from superserve.server.engine import Engine, EngineConfig
from superserve.profile_correction import CorrectionConfig, ProfileCorrector
from superserve.server.workers import BatchResult


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakePool:
    """Records batches; the test completes them by calling `finish`."""

    def __init__(self, engine: Engine, size: int = 1) -> None:
        self.size, self.engine, self.batches = size, engine, []

    def submit(self, worker_id, batch) -> None:
        self.batches.append((worker_id, batch))

    def finish(self, index: int = 0, rows: int | None = None, error: str | None = None) -> None:
        worker_id, batch = self.batches.pop(index)
        n = len(batch.request_ids) if rows is None else rows
        probs = None if error else np.tile(batch.inputs.reshape(len(batch.request_ids), -1)[:, :1].numpy(), (1, 10))[:n]
        self.engine.on_result(BatchResult(batch.batch_id, worker_id, probs, error, 0.001))


def make_engine(late="shed", capacity=64, workers=1):
    clock = Clock()
    zoo = make_zoo()  # 1, 2, 4 ms at batch 1; accuracies 0.90, 0.95, 0.98
    engine = Engine(zoo, lambda z: make_policy("slackfit", z), EngineConfig(10.0, late, capacity, None),
                    clock=clock)
    pool = FakePool(engine, workers)
    engine.start(pool)
    return engine, pool, clock


def call(engine, answers, value: float, images: int = 1, slo_ms=None, min_accuracy=0.0):
    x = torch.full((images, 1, 28, 28), value)
    engine.submit(x, slo_ms, min_accuracy, lambda r: answers.append((value, r)))


def test_every_call_answered_once_with_its_own_rows():
    engine, pool, clock = make_engine()
    answers = []
    for v in range(5):
        call(engine, answers, float(v), images=2)
    while pool.batches:
        clock.t += 0.001
        pool.finish()
    assert sorted(v for v, _ in answers) == [0, 1, 2, 3, 4]
    for v, r in answers:
        assert r.outcome == "ok" and r.probabilities.shape == (2, 10) and (r.probabilities == v).all()
        assert r.accuracy == min(engine.zoo.entry(s).accuracy for s in r.subnet_ids)


def test_shed_when_the_deadline_passed_while_workers_were_busy():
    engine, pool, clock = make_engine()
    answers = []
    call(engine, answers, 1.0, slo_ms=10)
    call(engine, answers, 2.0, images=3, slo_ms=10)  # queued: the only worker runs the first call
    clock.t += 0.050  # both deadlines pass while the first batch runs
    pool.finish()
    assert sorted((v, r.outcome) for v, r in answers) == [(1.0, "late"), (2.0, "shed")]
    assert "shed" in answers[1][1].message and not pool.batches


def test_serve_late_mode_serves_infeasible_requests():
    engine, pool, clock = make_engine(late="serve")
    answers = []
    call(engine, answers, 1.0, slo_ms=10)
    call(engine, answers, 2.0, slo_ms=10)
    clock.t += 0.050
    while pool.batches:
        pool.finish()
    assert {r.outcome for _, r in answers} <= {"ok", "late"} and len(answers) == 2
    assert any(r.outcome == "late" for _, r in answers)


def test_queue_full_and_unreachable_hint_are_refused_without_answer():
    engine, pool, clock = make_engine(capacity=4)
    answers = []
    call(engine, answers, 0.0)  # dispatched at once
    call(engine, answers, 1.0, images=4)  # fills the queue
    with pytest.raises(Refused) as err:
        call(engine, answers, 2.0)
    assert err.value.reason == Reason.BUSY
    with pytest.raises(Refused) as err:
        call(engine, answers, 3.0, min_accuracy=0.99)
    assert err.value.reason == Reason.INVALID
    while pool.batches:
        pool.finish()
    assert sorted(v for v, _ in answers) == [0.0, 1.0]


def test_worker_errors_and_wrong_row_counts_fail_the_calls_once():
    engine, pool, clock = make_engine()
    answers = []
    call(engine, answers, 1.0, images=2)
    pool.finish(rows=1)  # the worker broke the one-row-per-request contract
    call(engine, answers, 2.0)
    pool.finish(error="RuntimeError: boom")
    assert [(v, r.outcome) for v, r in answers] == [(1.0, "error"), (2.0, "error")]
    assert "rows" in answers[0][1].message and "boom" in answers[1][1].message


def test_drain_answers_admitted_calls_and_refuses_new_ones():
    """SIGTERM's drain on a non-empty engine: one call running, one queued behind it. While the drain waits, new
    calls are refused; it returns only once both admitted calls are answered (served, not failed)."""
    import threading

    engine, pool, clock = make_engine()
    answers = []
    call(engine, answers, 1.0)  # dispatched to the only worker
    call(engine, answers, 2.0, images=2)  # queued behind it
    assert len(pool.batches) == 1 and not answers
    drained = []
    drainer = threading.Thread(target=lambda: drained.append(engine.drain(timeout_s=30.0)))
    drainer.start()
    while engine.accepting:  # the drain has begun (flips `accepting` first, under the engine's lock)
        drainer.join(0.001)
    with pytest.raises(Refused) as err:
        call(engine, answers, 3.0)
    assert err.value.reason == Reason.UNAVAILABLE
    assert drainer.is_alive() and not drained  # two admitted calls are still unanswered: the drain waits
    while pool.batches or len(answers) < 2:
        if pool.batches:
            pool.finish()
        drainer.join(0.001)
    drainer.join(30)
    assert drained == [True]
    assert sorted((v, r.outcome) for v, r in answers) == [(1.0, "ok"), (2.0, "ok")]


def test_drain_that_times_out_fails_the_queued_calls_once():
    """A drain that runs out of time answers the calls still queued with an error; the running batch keeps its
    answer for when its worker finishes (exactly one answer each)."""
    engine, pool, clock = make_engine()
    answers = []
    call(engine, answers, 1.0)  # running; its worker does not finish before the drain gives up
    call(engine, answers, 2.0)  # queued
    assert not engine.drain(timeout_s=0.05)  # the timeout is the point here; nothing can finish meanwhile
    assert [(v, r.outcome) for v, r in answers] == [(2.0, "error")] and "shut down" in answers[0][1].message
    pool.finish()
    assert [(v, r.outcome) for v, r in answers] == [(2.0, "error"), (1.0, "ok")]


def test_profile_correction_learns_a_slowdown_and_scales_the_table():
    zoo = make_zoo()
    corr = ProfileCorrector(zoo, CorrectionConfig(alpha=0.2, prior_batches=5))
    assert corr.corrected_zoo() is None  # nothing observed: nothing to change
    sid = zoo.subnet_ids[0]
    for _ in range(100):
        corr.observe(sid, 4, 2 * zoo.latency_ms(sid, 4, "median") * 1e-3)
    assert corr.factor(sid) == pytest.approx(2.0, rel=0.02)
    assert 1.5 < corr.factor(zoo.subnet_ids[2]) < 2.01  # unseen subnets follow the global factor
    fixed = corr.corrected_zoo()
    assert fixed is not None
    assert fixed.latency_ms(sid, 8) == pytest.approx(2 * zoo.latency_ms(sid, 8), rel=0.02)
    assert corr.corrected_zoo() is None  # unchanged since the last one handed out
    corr.observe("unknown", 1, 1.0)  # ignored
    corr.observe(sid, 1000, 1.0)  # beyond the table: ignored


def test_profile_correction_widens_the_p99_when_service_times_spread():
    zoo = make_zoo()
    sid = zoo.subnet_ids[0]
    med, p99 = zoo.latency_ms(sid, 4, "median"), zoo.latency_ms(sid, 4)
    steady = ProfileCorrector(zoo, CorrectionConfig(alpha=0.2, prior_batches=5))
    for _ in range(100):  # steady at the table's median: the table's tail stays as it is
        steady.observe(sid, 4, med * 1e-3)
    assert steady.sigma(sid) == pytest.approx(0.0, abs=1e-9)
    spread = ProfileCorrector(zoo, CorrectionConfig(alpha=0.2, prior_batches=5))
    for k in range(200):  # a neighbour preempts every other batch: 1x and 4x the median
        spread.observe(sid, 4, med * (4.0 if k % 2 else 1.0) * 1e-3)
    assert 0.5 < spread.sigma(sid) <= 1.0
    fixed = spread.corrected_zoo()
    assert fixed is not None
    # median scaled by the geometric mean (2x); the p99 now covers the slow batches (4x the median) with room
    assert fixed.latency_ms(sid, 4, "median") == pytest.approx(2 * med, rel=0.1)
    assert fixed.latency_ms(sid, 4) > max(4 * med, 2 * p99)


def test_profile_correction_relaxes_back_to_the_table_without_observations():
    """A subnet made infeasible by a slow transient gets no traffic, hence no observations: the correction must
    drift back to the profile by itself, or the subnet would be shed forever."""
    zoo = make_zoo()
    sid = zoo.subnet_ids[-1]
    corr = ProfileCorrector(zoo, CorrectionConfig(alpha=0.2, prior_batches=5, relax_s=5.0))
    for k in range(50):  # a start-up transient: 4x slower, spread
        corr.observe(sid, 1, zoo.latency_ms(sid, 1, "median") * (3.0 if k % 2 else 5.0) * 1e-3)
    assert corr.factor(sid) > 3 and corr.sigma(sid) > 0.1
    assert corr.corrected_zoo().latency_ms(sid, 1) > 3 * zoo.latency_ms(sid, 1)
    for _ in range(120):  # 30 s of refresher ticks with nothing observed
        corr.relax(0.25)
    assert corr.factor(sid) == pytest.approx(1.0, abs=0.01) and corr.sigma(sid) < 0.01
    fixed = corr.corrected_zoo()
    assert fixed is not None and fixed.latency_ms(sid, 1) == pytest.approx(zoo.latency_ms(sid, 1), rel=0.03)
