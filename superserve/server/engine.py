"""The router: a global EDF queue, the policy invoked whenever a worker is free, every call completed exactly once.

The scheduling is the dispatch core's (`superserve.dispatch.DispatchCore`), the one the simulator and the cluster
worker run too, so the simulator's prediction for a trace is what the server does with it: each image of a call is one
`Request` in the `EdfQueue`; whenever a worker is free and the queue is not empty (on an arrival, and after each batch
completes) the core runs `policy.decide(snapshot, now, worker, state)`; requests it reports infeasible are shed at
once (answered with the DEADLINE reason) or, with `late="serve"`, kept in a back-log that idle workers serve on the
fastest subnet meeting their accuracy hints; every finished batch goes through the core's completion (outcomes,
`policy.observe`, the online profile correction). This module adds what only a live server has: the lock, the calls
(`CallTracker`) and their payloads, the worker pool, records and metrics, and the refresher that rebuilds the policy
from corrected latencies.

Threads: protocol handlers call `submit`, pool threads call `on_result`; both take one lock, do the bookkeeping and
scheduling (microseconds), and hand batches to workers and answers to callers after releasing it. A call's
`on_done` runs exactly once: the call's `done` flag is set under the lock before any answer is handed out.

Refusals are values: `submit` raises `superserve.outcomes.Refused(reason, message)`; the doors map the reason to
their status. No grpc here, and no torch at import (only a multi-image batch stacks tensors).

`submit` returns the call's `cancel`: its queued images leave the queue uncomputed, and `on_done` gets CANCELLED once
no image of the call is left in a worker. The pool reports a worker it lost (`worker_down`: its batch is answered
UNAVAILABLE, nothing is dispatched to it) and the replacement (`worker_up`); with no worker up, calls are refused
UNAVAILABLE and `serving` is False (readiness says so).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from policies.base import Policy
from superserve.dispatch import CallResult, CallTracker, Dispatch, DispatchCore, shed_message
from superserve.outcomes import Outcome, Reason, Refused
from superserve.queue import EdfQueue
from superserve.records import RequestRecord
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.profile_correction import CORRECTION_INTERVAL_S, ProfileCorrector
from superserve.types import Request
from superserve.zoo import Zoo

if TYPE_CHECKING:
    from superserve.server.workers import Batch, BatchResult

log = logging.getLogger("superserve.engine")
__all__ = ["CallResult", "Engine", "EngineConfig"]  # CallResult: superserve.dispatch's, re-exported
OK, LATE, SHED, REJECTED = Outcome.OK, Outcome.LATE, Outcome.SHED, Outcome.REJECTED
ERROR, CANCELLED, UNAVAILABLE = Outcome.ERROR, Outcome.CANCELLED, Outcome.UNAVAILABLE


@dataclass(frozen=True)
class EngineConfig:
    default_slo_ms: float = 100.0  # SLO of a request without an `slo_ms` hint
    late: Literal["shed", "serve"] = "shed"  # requests that cannot meet their deadline: answer at once, or serve late
    queue_capacity: int = 1024  # images queued at most; beyond it calls are refused (Reason.BUSY)
    correction_interval_s: float | None = CORRECTION_INTERVAL_S  # how often to rebuild the policy from corrected latencies; None = off

    def __post_init__(self) -> None:
        if self.late not in ("shed", "serve"):
            raise ValueError(f"late must be 'shed' or 'serve', got {self.late!r}")
        if not self.default_slo_ms > 0 or self.queue_capacity < 1:
            raise ValueError("default_slo_ms must be > 0 and queue_capacity >= 1")


class _Call(CallTracker):
    __slots__ = ("cancelled", "inputs")

    def __init__(self, inputs: Any, on_done: Callable[[CallResult], None], arrival_s: float) -> None:
        super().__init__(inputs.shape[0], arrival_s, on_done)
        self.inputs = inputs  # (B, C, S, S) torch tensor
        self.cancelled = False


class _Item:
    __slots__ = ("call", "dispatched", "index", "request")

    def __init__(self, call: _Call, index: int, request: Request) -> None:
        self.call, self.index, self.request = call, index, request
        self.dispatched = False


class Engine:
    def __init__(self, zoo: Zoo, policy_factory: Callable[[Zoo], Policy], config: EngineConfig,
                 metrics: ServerMetrics | None = None, records: RecordWriter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.zoo = zoo
        self.config = config
        self._policy_factory = policy_factory
        self._policy0 = policy_factory(zoo)  # the core is built in start(), when the pool's size is known
        self._accuracy = {e.subnet_id: e.accuracy for e in zoo.entries}
        self._max_accuracy = max(self._accuracy.values())
        self.metrics, self.records, self.clock = metrics, records, clock
        self.t0 = clock()  # records are seconds since the engine started
        self._lock = threading.Lock()
        self._idle_cv = threading.Condition(self._lock)
        self._queue = EdfQueue(config.queue_capacity)
        self.core: DispatchCore | None = None
        self._items: dict[int, _Item] = {}  # queued, back-logged or in-flight images
        self._inflight: dict[int, Dispatch] = {}  # batch id -> its dispatch
        self._next_rid = 0
        self._next_batch = 0
        self._accepting = True
        self._pool: Any = None
        self._corrector = ProfileCorrector(zoo) if config.correction_interval_s else None
        self._table_generation = 0  # bumped by replace_table: a correction built from an older table is dropped
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def policy(self) -> Policy:
        return self.core.policy if self.core is not None else self._policy0

    @property
    def corrector(self) -> ProfileCorrector | None:
        return self._corrector

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self, pool: Any) -> None:
        """Attach a worker pool whose results arrive at `on_result`, and start the correction refresher."""
        from superserve.server.workers import Batch  # torch: only once a pool exists

        self._batch_type = Batch
        self._pool = pool
        self.core = DispatchCore(self.zoo, self._policy0, self._queue, pool.size, self.config.late, self._corrector)
        if self.metrics is not None:
            self.metrics.set_workers_up(pool.size)
        if self._corrector is not None:
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
        return self.core is None or self.core.workers_up > 0

    @property
    def workers_up(self) -> int:
        return 0 if self.core is None else self.core.workers_up

    # --- worker supervision (called by the pool) ------------------------------------------------------------------
    def worker_down(self, worker_id: int) -> None:
        """The pool lost `worker_id` (its process died) and is replacing it; its in-flight batch is reported
        through `on_result` with `lost=True`. When no worker is left, queued calls are answered UNAVAILABLE."""
        core = self.core
        assert core is not None
        with self._lock:
            core.worker_down(worker_id)
            answers = [] if self.serving else self._fail_queued_locked(
                UNAVAILABLE, "no worker is available (every worker process died; replacements are starting)")
        log.error("worker %d lost; %d of %d workers up", worker_id, self.workers_up, len(core.workers))
        if self.metrics is not None:
            self.metrics.set_workers_up(self.workers_up)
        self._fire(answers, [])

    def worker_up(self, worker_id: int) -> None:
        """The replacement of `worker_id` is ready: dispatch to it again."""
        core = self.core
        assert core is not None
        with self._lock:
            if not core.worker_up(worker_id):
                return
            dispatches, answers = self._schedule_locked(self.clock())
        log.warning("worker %d is back; %d of %d workers up", worker_id, self.workers_up, len(core.workers))
        if self.metrics is not None:
            self.metrics.set_workers_up(self.workers_up)
            self.metrics.worker_restarted()
        self._fire(answers, dispatches)

    # --- the two entry points -------------------------------------------------------------------------------------
    def submit(self, inputs: Any, slo_ms: float | None, min_accuracy: float,
               on_done: Callable[[CallResult], None], arrival_s: float | None = None) -> Callable[[], bool]:
        """Queue one call of B images (`inputs`: a (B, C, S, S) tensor). Raises Refused when it is refused (nothing
        queued, on_done not run). Returns the call's `cancel()` (True if the call was still unanswered).

        `arrival_s` (engine clock) is when the call reached the server, before decoding; the deadline counts from it.
        """
        batch = inputs.shape[0]
        if min_accuracy > self._max_accuracy + 1e-12:
            raise Refused(Reason.INVALID, f"min_accuracy {min_accuracy:g} exceeds the most accurate subnet "
                                          f"({self._max_accuracy:.4f}); no subnet can serve it")
        slo_s = (self.config.default_slo_ms if slo_ms is None else slo_ms) * 1e-3
        with self._lock:
            now = self.clock()
            if not self._accepting:
                raise Refused(Reason.UNAVAILABLE, "server is shutting down")
            if not self.serving:
                raise Refused(Reason.UNAVAILABLE, "no worker is available (every worker process died; replacements "
                                                  "are starting); retry")
            if len(self._queue) + batch > self.config.queue_capacity:
                self._reject_record(now, slo_s, min_accuracy, batch)
                raise Refused(Reason.BUSY, f"queue full ({len(self._queue)} of {self.config.queue_capacity} images "
                                           "queued)")
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
            records = self._withdraw_locked(call, CANCELLED)
            answers = []
            if not any(rid in self._items for rid in call.rids):
                answers.append((call, call.fail(CANCELLED, "cancelled by the client", now)))
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
        core = self.core
        assert core is not None
        with self._lock:
            now = self.clock()
            d = self._inflight.pop(result.batch_id)
            worker_id, subnet_id, rids, dispatch_s = d.slot, d.subnet_id, d.request_ids, d.dispatch_s
            probs, error = result.probabilities, result.error
            if error is None and (probs is None or probs.shape[0] != len(rids)):
                error = f"worker returned {None if probs is None else probs.shape[0]} rows for {len(rids)} requests"
                log.error("batch %d: %s", result.batch_id, error)
            on_time, _ = core.complete(d, now, failed=error is not None)
            answers: list[tuple[_Call, CallResult]] = []
            records: list[RequestRecord] = []
            failed = (UNAVAILABLE if result.lost else ERROR) if error is not None else None
            queued_s, met = 0.0, 0
            accuracy = self._accuracy[subnet_id]
            for k, rid in enumerate(rids):
                item = self._items.pop(rid)
                req, call = item.request, item.call
                queued_s += dispatch_s - req.arrival_s
                status = failed or (OK if on_time[k] else LATE)
                met += status == OK
                if self.records is not None:
                    records.append(self._record(req, status, dispatch_s, now, subnet_id, worker_id))
                if call.done:
                    continue
                if call.cancelled:  # computed before the cancel could withdraw it: answered once all are back
                    if not any(r in self._items for r in call.rids):
                        answers.append((call, call.fail(CANCELLED, "cancelled by the client", now)))
                    continue
                if failed is not None:
                    message = f"{error}; retry" if result.lost else f"inference failed: {error}"
                    answers.append(self._fail_call_locked(call, failed, message, now, records))
                    continue
                if call.add(item.index, probs[k], subnet_id, accuracy, on_time[k]):  # type: ignore[index]
                    answers.append((call, call.result(now)))
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
        core = self.core
        assert core is not None
        dispatches = [(d.slot, self._batch_locked(d)) for d in core.schedule(now)]
        answers: list[tuple[_Call, CallResult]] = []
        if core.shed:
            records: list[RequestRecord] = []
            for req in core.shed:
                item = self._items.pop(req.request_id, None)
                if item is None:  # withdrawn with a call that failed just before
                    continue
                records.append(self._record(req, SHED))
                if not item.call.done:
                    answers.append(self._fail_call_locked(item.call, SHED, shed_message(req.slo_ms), now, records))
            core.shed.clear()
            if records and self.records is not None:
                self.records.write(records)
        if self.metrics is not None:
            self.metrics.set_queue_depth(len(self._queue))
        if not self._items:
            self._idle_cv.notify_all()
        return dispatches, answers

    def _batch_locked(self, d: Dispatch) -> Batch:
        items = [self._items[rid] for rid in d.request_ids]
        for item in items:
            item.dispatched = True
        batch_id = self._next_batch
        self._next_batch += 1
        self._inflight[batch_id] = d
        if len(items) == 1:  # the common light-load case: the call's own tensor (or a view of its row), no copy
            call, index = items[0].call, items[0].index
            inputs = call.inputs if call.inputs.shape[0] == 1 else call.inputs[index:index + 1]
            return self._batch_type(batch_id, d.subnet_id, d.request_ids, inputs)
        import torch

        return self._batch_type(batch_id, d.subnet_id, d.request_ids,
                                torch.stack([item.call.inputs[item.index] for item in items]))

    def _withdraw_locked(self, call: _Call, status: Outcome) -> list[RequestRecord]:
        """Take the call's images that no worker holds out of the queue and the back-log; their records."""
        left = [rid for rid in call.rids if rid in self._items and not self._items[rid].dispatched]
        if not left:
            return []
        self.core.withdraw(left)  # type: ignore[union-attr]
        return [self._record(self._items.pop(rid).request, status) for rid in left]

    def _fail_call_locked(self, call: _Call, outcome: Outcome, message: str, now: float,
                          records: list[RequestRecord]) -> tuple[_Call, CallResult]:
        """Answer `call` with a failure; its images still waiting leave the queue (no worker spends time on a failed
        call) and are recorded with the call's outcome."""
        records += self._withdraw_locked(call, outcome)
        return call, call.fail(outcome, message, now)

    def _fail_queued_locked(self, outcome: Outcome, message: str) -> list[tuple[_Call, CallResult]]:
        """Answer every call that has an image waiting (queued or back-logged) with `outcome` (no worker is left)."""
        now = self.clock()
        answers, records = [], []
        for item in list(self._items.values()):
            if not item.call.done and not item.dispatched:
                answers.append(self._fail_call_locked(item.call, outcome, message, now, records))
        self.core.withdraw_all()  # type: ignore[union-attr]
        for rid in [rid for rid, item in self._items.items() if not item.dispatched]:
            records.append(self._record(self._items.pop(rid).request, outcome))
        if records and self.records is not None:
            self.records.write(records)
        return answers

    def _fail_all_locked(self, message: str) -> list[tuple[_Call, CallResult]]:
        now = self.clock()
        answers = []
        for item in list(self._items.values()):
            if not item.call.done and not item.dispatched:
                answers.append((item.call, item.call.fail(ERROR, message, now)))
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
        corrector = ProfileCorrector(zoo, self._corrector.config) if self._corrector is not None else None
        with self._lock:
            self.zoo = zoo
            self._table_generation += 1
            if corrector is not None:
                self._corrector = corrector
            if self.core is None:
                self._policy0 = policy
            else:
                self.core.corrector = corrector
                self.core.install_policy(policy, zoo)

    def _refresh_loop(self) -> None:
        assert self._corrector is not None and self.config.correction_interval_s and self.core is not None
        while not self._stop.wait(self.config.correction_interval_s):
            with self._lock:
                zoo = self.core.corrected_zoo(self.config.correction_interval_s)
                factors = self.core.corrector.factors()  # type: ignore[union-attr]
                generation = self._table_generation
            if self.metrics is not None:
                self.metrics.set_correction(factors)
            if zoo is None:
                continue
            policy = self._policy_factory(zoo)  # milliseconds: built outside the lock
            with self._lock:
                if generation != self._table_generation:  # replace_table ran meanwhile: this correction is stale
                    continue
                self.core.install_policy(policy)

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
