"""Issue 16: dead workers, cancelled calls, in-flight caps, refused calls and the SLO clock. Engine logic on a fake
pool and a manual clock; worker replacement and cancellation also end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb

from helpers import start_fixture_server
from superserve.records import CANCELLED, UNAVAILABLE
from superserve.outcomes import Reason, Refused
from superserve.server.engine import CallResult
from superserve.server.security import LimitExceeded, SecurityConfig, SecurityInterceptor
from superserve.server.workers import BatchResult
from test_server_engine import call, make_engine

MODEL = "superserve"


def _lose(pool, engine, index: int = 0) -> None:
    worker_id, batch = pool.batches.pop(index)
    engine.on_result(BatchResult(batch.batch_id, worker_id, None, f"worker process {worker_id} died", 0.0,
                                 lost=True))


# --- the engine: cancellation ------------------------------------------------------------------------------------
def test_cancelled_queued_call_is_never_computed_and_answered_once():
    engine, pool, clock = make_engine()
    answers = []
    call(engine, answers, 1.0)  # dispatched: the only worker is busy with it
    x = torch.full((3, 1, 28, 28), 2.0)
    cancel = engine.submit(x, None, 0.0, lambda r: answers.append((2.0, r)))
    assert len(pool.batches) == 1
    assert cancel() is True
    assert [(v, r.outcome) for v, r in answers] == [(2.0, CANCELLED)]
    assert cancel() is False  # once
    pool.finish()  # the worker frees up: nothing of the cancelled call is dispatched
    assert not pool.batches
    assert [(v, r.outcome) for v, r in answers] == [(2.0, CANCELLED), (1.0, "ok")]


def test_cancelled_running_call_is_answered_when_its_batch_comes_back():
    engine, pool, clock = make_engine()
    answers = []
    x = torch.full((2, 1, 28, 28), 1.0)
    cancel = engine.submit(x, None, 0.0, lambda r: answers.append(r))
    assert len(pool.batches) == 1 and cancel()
    assert answers == []  # its images are in a worker: the handler must wait for them (the in-flight cap counts it)
    pool.finish()
    assert [r.outcome for r in answers] == [CANCELLED]
    drained = engine.drain(timeout_s=1.0)
    assert drained


def test_late_backlog_of_a_cancelled_call_is_dropped():
    engine, pool, clock = make_engine(late="serve")
    answers = []
    call(engine, answers, 1.0, slo_ms=10)
    cancel = engine.submit(torch.zeros(2, 1, 28, 28), 10.0, 0.0, lambda r: answers.append((2.0, r)))
    clock.t += 0.050  # both late: the queued call goes to the back-log when the worker frees up
    pool.finish()
    cancel()
    while pool.batches:
        pool.finish()
    assert sorted((v, r.outcome) for v, r in answers) == [(1.0, "late"), (2.0, CANCELLED)]


# --- the engine: a lost worker ---------------------------------------------------------------------------------------
def test_lost_batch_is_unavailable_and_the_down_worker_gets_nothing_until_it_is_back():
    engine, pool, clock = make_engine(workers=2)
    answers = []
    call(engine, answers, 1.0)  # worker 0
    call(engine, answers, 2.0)  # worker 1
    assert sorted(w for w, _ in pool.batches) == [0, 1]
    engine.worker_down(0)
    _lose(pool, engine, [w for w, _ in pool.batches].index(0))
    assert [(v, r.outcome) for v, r in answers] == [(1.0, UNAVAILABLE)]
    assert "retry" in answers[0][1].message
    assert engine.serving and engine.workers_up == 1
    call(engine, answers, 3.0)  # queued for worker 1, never sent to the dead worker 0
    assert all(w == 1 for w, _ in pool.batches)
    while pool.batches:
        pool.finish()
    engine.worker_up(0)
    call(engine, answers, 4.0)
    assert [w for w, _ in pool.batches] == [0]  # the replacement serves again
    pool.finish()
    assert sorted((v, r.outcome) for v, r in answers) == [(1.0, UNAVAILABLE), (2.0, "ok"), (3.0, "ok"), (4.0, "ok")]


def test_no_worker_up_refuses_calls_and_fails_the_queue_unavailable():
    engine, pool, clock = make_engine(workers=1)
    answers = []
    call(engine, answers, 1.0)  # running
    call(engine, answers, 2.0)  # queued
    engine.worker_down(0)
    assert not engine.serving
    assert [(v, r.outcome) for v, r in answers] == [(2.0, UNAVAILABLE)]
    with pytest.raises(Refused) as err:
        call(engine, answers, 3.0)
    assert err.value.reason == Reason.UNAVAILABLE
    _lose(pool, engine)
    assert [(v, r.outcome) for v, r in answers] == [(2.0, UNAVAILABLE), (1.0, UNAVAILABLE)]
    engine.worker_up(0)
    assert engine.serving
    call(engine, answers, 4.0)
    pool.finish()
    assert answers[-1][1].outcome == "ok"


# --- the security layer: refusals spend nothing -----------------------------------------------------------------------
def test_calls_refused_by_the_in_flight_cap_spend_no_rate_tokens():
    t = [0.0]
    sec = SecurityInterceptor(SecurityConfig(rate_limit_images_per_s=1.0, rate_burst_images=100.0,
                                             max_inflight_per_tenant=1), clock=lambda: t[0])
    sec.admit("a", 60)
    for _ in range(5):
        with pytest.raises(LimitExceeded, match="in flight"):
            sec.admit("a", 30)
    sec.release("a")
    sec.admit("a", 40)  # 100 - 60 = 40 tokens left: the five refused calls took none
    sec.release("a")
    with pytest.raises(LimitExceeded, match="rate limit"):
        sec.admit("a", 1)
    sec.admit("b", 1)  # the rate refusal released a's slot; b is another tenant anyway
    assert sec._inflight == {"b": 1}


# --- the SLO clock ----------------------------------------------------------------------------------------------------
def test_the_slo_counts_from_the_arrival_stamp_not_the_handler():
    from superserve.server.codec import ModelSpec
    from superserve.server.service import ARRIVAL_S, InferenceService

    seen = []

    class Engine:
        accepting = True
        clock = staticmethod(lambda: 50.0)

        def submit(self, images, slo_ms, min_accuracy, on_done, arrival_s=None):
            seen.append(arrival_s)
            on_done(CallResult("ok", np.full((images.shape[0], 10), 0.1, np.float32), ("s",), 0.9, "", 0.0))
            return lambda: False

    spec = ModelSpec(MODEL, "1", 1, 28, 10, (0.5,), (0.25,))
    service = InferenceService(spec, Engine(), None, preload_decoder=False)
    req = pb.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1, 28, 28])
    req.raw_input_contents.append(bytes(784 * 4))

    async def main():
        ARRIVAL_S.set(42.0)  # what EntryInterceptor stamped before the message was received
        return await service._infer(req)

    asyncio.run(main())
    assert seen == [42.0]
    service.close()


# --- end to end: cancellation and the in-flight cap ------------------------------------------------------------------
class _Gate:
    """Holds every batch in the (embedded) worker until opened; counts the batches computed."""

    def __init__(self, monkeypatch) -> None:
        from superserve.server import workers

        self.open, self.computed, self.entered = threading.Event(), [], threading.Event()
        real = workers.run_batch

        def gated(net, configs, batch_id, subnet_id, inputs, worker_id, *device):
            self.entered.set()
            self.open.wait(120)
            self.computed.append(inputs.shape[0])
            return real(net, configs, batch_id, subnet_id, inputs, worker_id, *device)
        monkeypatch.setattr(workers, "run_batch", gated)


def _fp32(n: int, value: float = 0.0):
    x = tc.InferInput("INPUT", [n, 1, 28, 28], "FP32")
    x.set_data_from_numpy(np.full((n, 1, 28, 28), value, np.float32))
    return x


def test_cancelled_calls_leave_the_queue_uncomputed(serving_assets, monkeypatch):
    from superserve.server.engine import EngineConfig

    gate = _Gate(monkeypatch)
    srv = start_fixture_server(serving_assets, engine=EngineConfig(default_slo_ms=600_000.0, queue_capacity=200))
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        first = []
        client.async_infer(MODEL, [_fp32(1)], lambda result, error: first.append(error))  # held in the worker
        assert gate.entered.wait(60)
        codes = []
        for _ in range(20):  # 20 calls of 8 images, each given up by its client after 0.3 s
            with pytest.raises(tc.InferenceServerException) as err:
                client.infer(MODEL, [_fp32(8)], client_timeout=0.3)
            codes.append(err.value.status())
        assert set(codes) == {"StatusCode.DEADLINE_EXCEEDED"}
        # Withdrawn: before, these 160 images stayed queued (and the 200-image queue refused the next good calls).
        deadline = time.monotonic() + 30
        while len(srv.engine._queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(srv.engine._queue) == 0
        good = []
        client.async_infer(MODEL, [_fp32(64)], lambda result, error: good.append(error))  # would not fit behind 160
        gate.open.set()
        deadline = time.monotonic() + 60
        while (not first or not good) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first == [None] and good == [None]
        assert sum(gate.computed) == 1 + 64  # the held call and the good one; none of the 160 cancelled images
        client.close()
    finally:
        gate.open.set()
        srv.stop()


def test_in_flight_cap_counts_queued_images_of_cancelled_calls(serving_assets, monkeypatch):
    """A tenant that cancels its 64-image calls frees its slots only once their images left the queue, so it cannot
    fill the queue and lock another tenant out."""
    from superserve.server.engine import EngineConfig

    keys = {"alice": "a" * 20, "bob": "b" * 20}
    gate = _Gate(monkeypatch)
    srv = start_fixture_server(serving_assets, engine=EngineConfig(default_slo_ms=600_000.0, queue_capacity=130),
                               security=SecurityConfig(api_keys=keys, max_inflight_per_tenant=2))
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        alice = {"authorization": f"Bearer {keys['alice']}"}
        held = []
        client.async_infer(MODEL, [_fp32(1)], lambda result, error: held.append(error), headers=alice)
        assert gate.entered.wait(60)
        statuses = []
        for _ in range(12):
            try:
                client.infer(MODEL, [_fp32(64)], headers=alice, client_timeout=0.2)
                statuses.append("OK")
            except tc.InferenceServerException as err:
                statuses.append(err.status())
        assert "StatusCode.DEADLINE_EXCEEDED" in statuses and "OK" not in statuses
        bob = []
        client.async_infer(MODEL, [_fp32(64)], lambda result, error: bob.append(error),
                           headers={"x-api-key": keys["bob"]})
        time.sleep(0.5)  # bob's call reaches the queue (or is refused) while alice's held call still blocks
        assert not bob or bob[0] is None, bob[0].status() if bob else ""
        gate.open.set()
        deadline = time.monotonic() + 60
        while not bob and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bob == [None]
        client.close()
    finally:
        gate.open.set()
        srv.stop()


# --- end to end: a worker process killed under load --------------------------------------------------------------
@pytest.mark.slow  # two worker processes and a replacement: about 25 s on a busy 2-core host
@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_killed_worker_process_is_noticed_answered_and_replaced(serving_assets):
    from superserve.server.engine import EngineConfig

    srv = start_fixture_server(serving_assets, workers=2, engine=EngineConfig(default_slo_ms=600_000.0))
    try:
        pool = srv.pool
        old = pool.pids()
        assert None not in old and srv.engine.workers_up == 2
        os.kill(old[0], signal.SIGSTOP)  # worker 0 takes the next batch and holds it (idle workers: 0 first)
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        answers, lock = [], threading.Lock()

        def done(result, error):
            with lock:
                answers.append("OK" if error is None else error.status())

        client.async_infer(MODEL, [_fp32(2)], done)  # to worker 0, stopped
        deadline = time.monotonic() + 30
        while not srv.engine._inflight and time.monotonic() < deadline:
            time.sleep(0.005)
        for k in range(10):  # served by worker 1 meanwhile
            client.infer(MODEL, [_fp32(1, k)])
        assert answers == []
        t_kill = time.monotonic()
        os.kill(old[0], signal.SIGKILL)
        while not answers and time.monotonic() < t_kill + 30:
            time.sleep(0.005)
        assert answers == ["StatusCode.UNAVAILABLE"]  # explicit, and at once: not after a timeout
        assert client.is_server_ready()  # one worker is still up
        for k in range(10):
            client.infer(MODEL, [_fp32(1, k)])
        while srv.engine.workers_up < 2 and time.monotonic() < t_kill + 120:
            time.sleep(0.05)
        new = pool.pids()
        assert srv.engine.workers_up == 2 and new[1] == old[1] and new[0] not in (None, old[0])
        assert pool.restarts == 1
        results = [client.infer(MODEL, [_fp32(1, k)]) for k in range(6)]  # both workers serve again
        assert all(r.as_numpy("CLASS").shape == (1,) for r in results)
        assert len(answers) == 1  # the lost call was answered exactly once
        client.close()
    finally:
        srv.stop()
