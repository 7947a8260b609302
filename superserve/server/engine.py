"""The router: a global EDF queue, the policy invoked whenever a worker is free, every call completed exactly once.

It drives the policy exactly as `superserve.sim` does, so the simulator's prediction for a trace is comparable with
what the server does on it: each image of a call is one `Request` in the `EdfQueue`; whenever a worker is free and the
queue is not empty (on an arrival, and after each batch completes) `policy.decide(snapshot, now, worker, state)`
picks a (subnet, batch); requests it reports infeasible are shed at once (answered DEADLINE_EXCEEDED) or, with
`late="serve"`, kept in a backlog that idle workers serve on the fastest subnet meeting their accuracy hints; every
finished batch is fed back to `policy.observe` and to the online profile correction.

Threads: protocol handlers call `submit`, pool threads call `on_result`; both take one lock, do the bookkeeping and
scheduling (microseconds), and hand batches to workers and answers to callers after releasing it. A call's
`on_done` runs exactly once: the `_Call.done` flag is set under the lock before any answer is handed out.

`submit` returns the call's `cancel`: its queued images leave the queue uncomputed, and `on_done` gets CANCELLED once
no image of the call is left in a worker. The pool reports a worker it lost (`worker_down`: its batch is answered
UNAVAILABLE, nothing is dispatched to it) and the replacement (`worker_up`); with no worker up, calls are refused
UNAVAILABLE and `serving` is False (readiness says so).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import grpc
import numpy as np
import torch

from policies.base import Policy, late_subnet
from superserve.queue import EdfQueue
from superserve.records import CANCELLED, ERROR, LATE, OK, REJECTED, SHED, UNAVAILABLE, RequestRecord
from superserve.server.codec import InvalidRequest
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.server.profile_correction import ProfileCorrector
from superserve.server.workers import Batch, BatchResult
from superserve.types import BatchOutcome, Request, WorkerState
from superserve.zoo import Zoo

log = logging.getLogger("superserve.engine")


@dataclass(frozen=True)
class EngineConfig:
    default_slo_ms: float = 100.0  # SLO of a request without an `slo_ms` hint
    late: Literal["shed", "serve"] = "shed"  # requests that cannot meet their deadline: answer at once, or serve late
    queue_capacity: int = 1024  # images queued at most; beyond it calls get RESOURCE_EXHAUSTED
    correction_interval_s: float | None = 0.25  # how often to rebuild the policy from corrected latencies; None = off

    def __post_init__(self) -> None:
        if self.late not in ("shed", "serve"):
            raise ValueError(f"late must be 'shed' or 'serve', got {self.late!r}")
        if not self.default_slo_ms > 0 or self.queue_capacity < 1:
            raise ValueError("default_slo_ms must be > 0 and queue_capacity >= 1")


@dataclass(frozen=True, eq=False)
class CallResult:
    """The one answer to a protocol call."""

    outcome: str  # records status: ok / late (served) or shed / error (failed)
    probabilities: np.ndarray | None  # (B, num_classes) when served
    subnet_ids: tuple[str, ...]  # the subnet that served each image (empty when failed)
    accuracy: float  # the lowest profiled accuracy among them (NaN when failed)
    message: str  # why it failed ("" when served)
    latency_s: float  # from submit to answer


class _Call:
    __slots__ = ("inputs", "rows", "subnets", "pending", "done", "on_done", "arrival_s", "late", "rids", "cancelled")

    def __init__(self, inputs: torch.Tensor, on_done: Callable[[CallResult], None], arrival_s: float) -> None:
        self.inputs = inputs  # (B, C, S, S)
        self.rows: list[np.ndarray | None] = [None] * inputs.shape[0]
        self.subnets: list[str] = [""] * inputs.shape[0]
        self.pending = inputs.shape[0]
        self.done = False
        self.on_done = on_done
        self.arrival_s = arrival_s
        self.late = False
        self.rids: tuple[int, ...] = ()
        self.cancelled = False


class _Item:
    __slots__ = ("call", "index", "request", "dispatch_s", "worker_id")

    def __init__(self, call: _Call, index: int, request: Request) -> None:
        self.call, self.index, self.request = call, index, request
        self.dispatch_s: float | None = None
        self.worker_id: int | None = None


class Engine:
    def __init__(self, zoo: Zoo, policy_factory: Callable[[Zoo], Policy], config: EngineConfig,
                 metrics: ServerMetrics | None = None, records: RecordWriter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.zoo = zoo
        self.config = config
        self._policy_factory = policy_factory
        self.policy = policy_factory(zoo)
        self._state = self.policy.initial_state()
        self._accuracy = {e.subnet_id: e.accuracy for e in zoo.entries}
        self._max_accuracy = max(self._accuracy.values())
        self._max_batch = zoo.batch_sizes[-1]
        self.metrics, self.records, self.clock = metrics, records, clock
        self.t0 = clock()  # records are seconds since the engine started
        self._lock = threading.Lock()
        self._idle_cv = threading.Condition(self._lock)
        self._queue = EdfQueue(config.queue_capacity)
        self._items: dict[int, _Item] = {}  # queued, backlogged or in-flight images
        self._inflight: dict[int, tuple[int, str, tuple[int, ...], float]] = {}  # batch -> (worker, subnet, ids, t)
        self._late: list[int] = []
        self._next_rid = 0
        self._next_batch = 0
        self._accepting = True
        self._pool: Any = None
        self._workers: list[WorkerState] = []
        self._idle: list[int] = []
        self._down: set[int] = set()  # workers the pool lost and is replacing
        self.corrector = ProfileCorrector(zoo) if config.correction_interval_s else None
        self._table_generation = 0  # bumped by replace_table: a correction built from an older table is dropped
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self, pool: Any) -> None:
        """Attach a worker pool whose results arrive at `on_result`, and start the correction refresher."""
        self._pool = pool
        self._workers = [WorkerState(w) for w in range(pool.size)]
        if self.metrics is not None:
            self.metrics.set_workers_up(pool.size)
        self._idle = list(range(pool.size - 1, -1, -1))  # a stack: worker 0 first, like the simulator
        if self.corrector is not None:
            self._refresher = threading.Thread(target=self._refresh_loop, name="superserve-correction", daemon=True)
            self._refresher.start()

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Stop admitting calls and wait until every admitted one is answered. True if all were."""
        with self._lock:
            self._accepting = False
            ok = self._idle_cv.wait_for(lambda: not self._items, timeout=timeout_s)
            leftovers = [] if ok else self._fail_all_locked("server shut down before the request could run")
        self._fire(leftovers, [])
        self._stop.set()
        return ok

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def serving(self) -> bool:
        """At least one worker is up (False while the pool replaces every worker it lost)."""
        return not self._workers or len(self._down) < len(self._workers)

    @property
    def workers_up(self) -> int:
        return len(self._workers) - len(self._down)

    # --- worker supervision (called by the pool) ------------------------------------------------------------------
    def worker_down(self, worker_id: int) -> None:
        """The pool lost `worker_id` (its process died) and is replacing it; its in-flight batch is reported
        through `on_result` with `lost=True`. When no worker is left, queued calls are answered UNAVAILABLE."""
        with self._lock:
            self._down.add(worker_id)
            if worker_id in self._idle:
                self._idle.remove(worker_id)
            answers = [] if self.serving else self._fail_queued_locked(
                UNAVAILABLE, "no worker is available (every worker process died; replacements are starting)")
        log.error("worker %d lost; %d of %d workers up", worker_id, self.workers_up, len(self._workers))
        if self.metrics is not None:
            self.metrics.set_workers_up(self.workers_up)
        self._fire(answers, [])

    def worker_up(self, worker_id: int) -> None:
        """The replacement of `worker_id` is ready: dispatch to it again."""
        with self._lock:
            if worker_id not in self._down:
                return
            self._down.discard(worker_id)
            busy = any(w == worker_id for w, *_ in self._inflight.values())
            if not busy and worker_id not in self._idle:
                self._idle.append(worker_id)
            dispatches, answers = self._schedule_locked(self.clock())
        log.warning("worker %d is back; %d of %d workers up", worker_id, self.workers_up, len(self._workers))
        if self.metrics is not None:
            self.metrics.set_workers_up(self.workers_up)
            self.metrics.worker_restarted()
        self._fire(answers, dispatches)

    # --- the two entry points -------------------------------------------------------------------------------------
    def submit(self, inputs: torch.Tensor, slo_ms: float | None, min_accuracy: float,
               on_done: Callable[[CallResult], None], arrival_s: float | None = None) -> Callable[[], bool]:
        """Queue one call of B images. Raises InvalidRequest when it is refused (nothing queued, on_done not run).
        Returns the call's `cancel()` (True if the call was still unanswered).

        `arrival_s` (engine clock) is when the call reached the server, before decoding; the deadline counts from it.
        """
        batch = inputs.shape[0]
        if min_accuracy > self._max_accuracy + 1e-12:
            raise InvalidRequest(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"min_accuracy {min_accuracy:g} exceeds the most accurate subnet "
                                 f"({self._max_accuracy:.4f}); no subnet can serve it")
        slo_s = (self.config.default_slo_ms if slo_ms is None else slo_ms) * 1e-3
        with self._lock:
            now = self.clock()
            if not self._accepting:
                raise InvalidRequest(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            if not self.serving:
                raise InvalidRequest(grpc.StatusCode.UNAVAILABLE, "no worker is available (every worker process died; "
                                     "replacements are starting); retry")
            if len(self._queue) + batch > self.config.queue_capacity:
                self._reject_record(now, slo_s, min_accuracy, batch)
                raise InvalidRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"queue full ({len(self._queue)} of {self.config.queue_capacity} images queued)")
            arrival = now if arrival_s is None else min(arrival_s, now)
            call = _Call(inputs, on_done, arrival)
            rids = tuple(range(self._next_rid, self._next_rid + batch))
            self._next_rid += batch
            call.rids = rids
            for k, rid in enumerate(rids):
                req = Request(rid, arrival, arrival + slo_s, min_accuracy)
                self._queue.push(req)
                self._items[rid] = _Item(call, k, req)
            dispatches, answers = self._schedule_locked(now)
        self._fire(answers, dispatches)
        return lambda: self._cancel(call)

    def _cancel(self, call: _Call) -> bool:
        """Withdraw `call`: its queued or back-logged images are dropped uncomputed; it is answered CANCELLED at once
        if none of its images is in a worker, else when the last of them comes back."""
        with self._lock:
            if call.done or call.cancelled:
                return False
            call.cancelled = True
            now = self.clock()
            queued = [rid for rid in call.rids if rid in self._queue]
            records = []
            for req in self._queue.pop_ids(queued):
                self._items.pop(req.request_id)
                records.append(self._record(req, CANCELLED))
            for rid in call.rids:  # the back-log (late="serve"): not in the queue, not dispatched
                item = self._items.get(rid)
                if item is not None and item.dispatch_s is None:
                    del self._items[rid]
                    records.append(self._record(item.request, CANCELLED))
            answers = []
            if not any(rid in self._items for rid in call.rids):
                answers.append(self._finish_call_locked(call, CANCELLED, "cancelled by the client", now))
            if self.metrics is not None:
                self.metrics.set_queue_depth(len(self._queue))
            if not self._items:
                self._idle_cv.notify_all()
        if records and self.records is not None:
            self.records.write(records)
        self._fire(answers, [])
        return True

    def on_result(self, result: BatchResult) -> None:
        """A worker finished a batch (called from a pool thread)."""
        with self._lock:
            now = self.clock()
            worker_id, subnet_id, rids, dispatch_s = self._inflight.pop(result.batch_id)
            probs, error = result.probabilities, result.error
            if error is None and (probs is None or probs.shape[0] != len(rids)):
                error = f"worker returned {None if probs is None else probs.shape[0]} rows for {len(rids)} requests"
                log.error("batch %d: %s", result.batch_id, error)
            answers, records, met, queued_s, min_slo_s = [], [], 0, 0.0, math.inf
            accuracy = self._accuracy[subnet_id]
            for k, rid in enumerate(rids):
                item = self._items.pop(rid)
                req, call = item.request, item.call
                queued_s += dispatch_s - req.arrival_s
                min_slo_s = min(min_slo_s, req.deadline_s - req.arrival_s)
                on_time = now <= req.deadline_s
                status = (UNAVAILABLE if result.lost else ERROR) if error is not None else (OK if on_time else LATE)
                met += status == OK
                if self.records is not None:
                    records.append(self._record(req, status, dispatch_s, now, subnet_id, worker_id))
                if call.done:
                    continue
                if call.cancelled:  # computed before the cancel could withdraw it: answered once all are back
                    if not any(r in self._items for r in call.rids):
                        answers.append(self._finish_call_locked(call, CANCELLED, "cancelled by the client", now))
                    continue
                if error is not None and result.lost:
                    answers.append(self._finish_call_locked(call, UNAVAILABLE, f"{error}; retry", now))
                    continue
                if error is not None:
                    answers.append(self._finish_call_locked(call, ERROR, f"inference failed: {error}", now))
                    continue
                call.rows[item.index] = probs[k]  # type: ignore[index]
                call.subnets[item.index] = subnet_id
                call.late |= not on_time
                call.pending -= 1
                if call.pending == 0:
                    answers.append(self._finish_call_locked(call, LATE if call.late else OK, "", now))
            if self._workers[worker_id].loaded_subnet_id != subnet_id:  # replace() costs tens of us: only on a switch
                self._workers[worker_id] = replace(self._workers[worker_id], loaded_subnet_id=subnet_id)
            if worker_id not in self._down:
                self._idle.append(worker_id)
            outcome = BatchOutcome(worker_id, subnet_id, len(rids), dispatch_s, now, min_slo_s * 1e3,
                                   len(rids) - met)
            self._state = self.policy.observe(outcome, self._state)
            if self.corrector is not None and error is None:
                self.corrector.observe(subnet_id, len(rids), now - dispatch_s)
            dispatches, more = self._schedule_locked(now)
            answers += more
            if not self._items:
                self._idle_cv.notify_all()
        self._fire(answers, dispatches)  # answers first: metrics and records are not on the request's path
        if self.metrics is not None:
            self.metrics.batch_done(subnet_id, accuracy, len(rids), result.compute_s, queued_s, met)
        if self.records is not None:
            self.records.write(records)

    # --- scheduling (lock held) -----------------------------------------------------------------------------------
    def _schedule_locked(self, now: float) -> tuple[list[tuple[int, Batch]], list[tuple[_Call, CallResult]]]:
        dispatches: list[tuple[int, Batch]] = []
        answers: list[tuple[_Call, CallResult]] = []
        records: list[RequestRecord] = []
        queue, policy = self._queue, self.policy
        while self._idle and len(queue):
            w = self._idle[-1]
            decision, self._state = policy.decide(queue.snapshot(policy.snapshot_limit), now, self._workers[w],
                                                  self._state)
            if decision is None:
                break
            if decision.infeasible_ids:
                queue.pop_ids(decision.infeasible_ids)
                if self.config.late == "serve":
                    self._late.extend(decision.infeasible_ids)
                else:
                    for rid in decision.infeasible_ids:
                        item = self._items.pop(rid)
                        records.append(self._record(item.request, SHED))
                        if not item.call.done:
                            answers.append(self._finish_call_locked(
                                item.call, SHED, "cannot meet the deadline (SLO "
                                f"{item.request.slo_ms:.1f} ms) with any subnet allowed by its accuracy hint; shed",
                                now))
            if decision.request_ids:
                queue.pop_ids(decision.request_ids)
                self._idle.pop()
                dispatches.append((w, self._dispatch_locked(w, decision.subnet_id, decision.request_ids, now)))
        while self._late and self._idle:
            chunk, self._late = self._late[:self._max_batch], self._late[self._max_batch:]
            chunk = [rid for rid in chunk if rid in self._items]
            if not chunk:
                continue
            sid = late_subnet(self.zoo, [self._items[rid].request for rid in chunk])
            assert sid is not None  # submit refuses hints no subnet meets
            w = self._idle.pop()
            dispatches.append((w, self._dispatch_locked(w, sid, tuple(chunk), now)))
        if self.metrics is not None:
            self.metrics.set_queue_depth(len(queue))
        if records and self.records is not None:
            self.records.write(records)
        if not self._items:
            self._idle_cv.notify_all()
        return dispatches, answers

    def _dispatch_locked(self, worker_id: int, subnet_id: str, rids: tuple[int, ...], now: float) -> Batch:
        items = [self._items[rid] for rid in rids]
        for item in items:
            item.dispatch_s, item.worker_id = now, worker_id
        batch_id = self._next_batch
        self._next_batch += 1
        self._inflight[batch_id] = (worker_id, subnet_id, rids, now)
        if len(items) == 1:  # the common light-load case: the call's own tensor (or a view of its row), no copy
            call, index = items[0].call, items[0].index
            inputs = call.inputs if call.inputs.shape[0] == 1 else call.inputs[index:index + 1]
            return Batch(batch_id, subnet_id, rids, inputs)
        return Batch(batch_id, subnet_id, rids, torch.stack([item.call.inputs[item.index] for item in items]))

    def _finish_call_locked(self, call: _Call, outcome: str, message: str, now: float) -> tuple[_Call, CallResult]:
        call.done = True
        if outcome in (OK, LATE):
            rows = call.rows
            probs = rows[0][None] if len(rows) == 1 else np.stack(rows)  # type: ignore[index, arg-type]
            accuracy = min(self._accuracy[s] for s in call.subnets)
            result = CallResult(outcome, probs, tuple(call.subnets), accuracy, "", now - call.arrival_s)
        else:
            # Its other images may still be queued: take them out so no worker spends time on a failed call.
            queued = [rid for rid in call.rids if rid in self._queue]
            for rid in self._queue.pop_ids(queued):
                self._items.pop(rid.request_id)
            result = CallResult(outcome, None, (), math.nan, message, now - call.arrival_s)
        return call, result

    def _fail_queued_locked(self, outcome: str, message: str) -> list[tuple[_Call, CallResult]]:
        """Answer every call that has an image waiting (queued or back-logged) with `outcome`."""
        now = self.clock()
        answers = []
        for item in list(self._items.values()):
            if not item.call.done and item.dispatch_s is None:
                answers.append(self._finish_call_locked(item.call, outcome, message, now))
        for rid in [rid for rid, item in self._items.items() if item.dispatch_s is None]:
            del self._items[rid]
        self._late = []
        return answers

    def _fail_all_locked(self, message: str) -> list[tuple[_Call, CallResult]]:
        now = self.clock()
        answers = []
        for item in list(self._items.values()):
            if not item.call.done and item.dispatch_s is None:
                answers.append(self._finish_call_locked(item.call, ERROR, message, now))
        return answers

    # --- outside the lock -----------------------------------------------------------------------------------------
    def _fire(self, answers: list[tuple[_Call, CallResult]], dispatches: list[tuple[int, Batch]]) -> None:
        for worker_id, batch in dispatches:
            self._pool.submit(worker_id, batch)
        for call, result in answers:
            call.on_done(result)
        if self.metrics is not None:
            for _, result in answers:
                self.metrics.call_done(result.outcome, result.latency_s)

    def replace_table(self, zoo: Zoo) -> None:
        """Serve from now on with `zoo`'s latency table (the same subnets; a background re-profile finished): the
        policy is rebuilt from it and online correction starts afresh from it. Queued calls stay queued."""
        if zoo.subnet_ids != self.zoo.subnet_ids:
            raise ValueError("replace_table: the new table must cover the same subnets")
        policy = self._policy_factory(zoo)  # milliseconds: built outside the lock
        corrector = ProfileCorrector(zoo, self.corrector.config) if self.corrector is not None else None
        with self._lock:
            self.zoo = zoo
            self._table_generation += 1
            if corrector is not None:
                self.corrector = corrector
            if type(policy) is not type(self.policy):
                self._state = policy.initial_state()
            self.policy = policy

    def _refresh_loop(self) -> None:
        assert self.corrector is not None and self.config.correction_interval_s
        while not self._stop.wait(self.config.correction_interval_s):
            with self._lock:
                self.corrector.relax(self.config.correction_interval_s)
                zoo = self.corrector.corrected_zoo()
                factors = self.corrector.factors()
                generation = self._table_generation
            if self.metrics is not None:
                self.metrics.set_correction(factors)
            if zoo is None:
                continue
            policy = self._policy_factory(zoo)  # milliseconds: built outside the lock
            with self._lock:
                if generation != self._table_generation:  # replace_table ran meanwhile: this correction is stale
                    continue
                if type(policy) is not type(self.policy):
                    self._state = policy.initial_state()
                self.policy = policy

    # --- records --------------------------------------------------------------------------------------------------
    def _record(self, req: Request, status: str, dispatch_s: float | None = None, finish_s: float | None = None,
                subnet_id: str | None = None, worker_id: int | None = None) -> RequestRecord:
        t0 = self.t0
        return RequestRecord(req.request_id, req.arrival_s - t0, req.deadline_s - t0, status,
                             None if dispatch_s is None else dispatch_s - t0,
                             None if finish_s is None else finish_s - t0, subnet_id,
                             None if subnet_id is None else self._accuracy[subnet_id], req.min_accuracy, worker_id)

    def _reject_record(self, now: float, slo_s: float, min_accuracy: float, count: int) -> None:
        if self.records is None:
            return
        recs = [self._record(Request(-1, now, now + slo_s, min_accuracy), REJECTED) for _ in range(count)]
        self.records.write(recs)
