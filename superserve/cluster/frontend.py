"""A front end of the Redis cluster: the same gRPC servicer and codec as the embedded server, with `RedisEngine` in
place of the in-process engine.

`RedisEngine` keeps the engine's contract (`submit(inputs, slo_ms, min_accuracy, on_done, arrival_s)` raising
InvalidRequest when refused, `on_done` run exactly once per admitted call, `drain`, `accepting`, `clock`), but the
queue is Redis's: each image becomes one request in the global EDF zset, workers anywhere decide and compute, and the
answers come back on this front end's reply list, read by one thread that completes the calls.

Every admitted call is answered exactly once, whatever fails:
- an image's reply is applied only while the image is still pending here (a late duplicate is counted, not applied);
- Redis unreachable -> every pending call is answered UNAVAILABLE at once and new calls are refused UNAVAILABLE until
  it is back (the heartbeat reconnects with backoff); Redis restarted (our liveness key vanished) -> the same, then
  this front end re-registers and re-publishes the zoo;
- nothing answered `grace_s` after a deadline (no worker is looking at the queue) -> UNAVAILABLE, and the images are
  taken out of the queue.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import grpc
import numpy as np
import torch

from superserve.cluster.redis_queue import (DEFAULT_NAMESPACE, ID_BLOCK, ClusterConfig, Keys, RedisURL, Reply,
                                            Scripts, connect, decode_reply, member)
from superserve.records import ERROR, LATE, OK, REJECTED, SHED, RequestRecord
from superserve.server.codec import InvalidRequest
from superserve.server.engine import CallResult, EngineConfig
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.zoo import Zoo

log = logging.getLogger("superserve.cluster.frontend")
UNAVAILABLE = "unavailable"  # CallResult.outcome of calls lost with Redis or never picked up by a worker


@dataclass(frozen=True)
class FrontendConfig:
    namespace: str = DEFAULT_NAMESPACE
    heartbeat_s: float = 0.5  # liveness refresh, reconnect attempts, deadline watchdog
    alive_ttl_s: int = 5  # liveness key TTL: workers drop queued work of a front end silent for this long
    grace_s: float = 2.0  # a request unanswered this long after its deadline is answered UNAVAILABLE here
    reply_ttl_s: int = 30  # TTL of the reply list (refreshed on each push)
    max_attempts: int = 3  # worker deaths a request survives before it is failed instead of re-queued
    reap_interval_s: float = 1.0


class _Call:
    __slots__ = ("rows", "subnets", "pending", "done", "on_done", "arrival_s", "deadline_s", "late", "rids",
                 "min_accuracy")

    def __init__(self, n: int, on_done: Callable[[CallResult], None], arrival_s: float, deadline_s: float,
                 min_accuracy: float) -> None:
        self.rows: list[np.ndarray | None] = [None] * n
        self.subnets = [""] * n
        self.pending = n
        self.done = False
        self.on_done = on_done
        self.arrival_s, self.deadline_s = arrival_s, deadline_s  # front-end clock, seconds
        self.late = False
        self.rids: tuple[int, ...] = ()
        self.min_accuracy = min_accuracy


class _RecentIds:
    """The last `size` request ids answered here (to tell a duplicate answer from one for an already-failed call)."""

    def __init__(self, size: int = 1 << 17) -> None:
        self.size = size
        self._ids: dict[int, None] = {}

    def add(self, rid: int) -> None:
        self._ids[rid] = None
        if len(self._ids) > self.size:
            for old in list(itertools.islice(self._ids, self.size // 2)):
                del self._ids[old]

    def __contains__(self, rid: int) -> bool:
        return rid in self._ids


class RedisEngine:
    def __init__(self, zoo: Zoo, url: RedisURL, published: ClusterConfig, config: EngineConfig,
                 cluster: FrontendConfig = FrontendConfig(), metrics: ServerMetrics | None = None,
                 records: RecordWriter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if config.late != "shed":
            raise ValueError("--late serve is not supported with --backend redis (requests that cannot meet their "
                             "deadline are shed)")
        self.zoo, self.url, self.published, self.config, self.cluster = zoo, url, published, config, cluster
        self.metrics, self.records, self.clock = metrics, records, clock
        self._accuracy = {e.subnet_id: e.accuracy for e in zoo.entries}
        self._max_accuracy = max(self._accuracy.values())
        self.keys = Keys(cluster.namespace)
        self.client = connect(url)  # BackendError with a clear message when Redis is not there
        # The reply reader blocks for up to 1 s per BLMPOP: its own connection, with a longer socket timeout.
        self._reader_client = connect(url, socket_timeout_s=10.0, check=False)
        self.scripts = Scripts(self.client, self.keys)
        self.frontend_id = uuid.uuid4().hex[:12]
        self._alive_key, self._reply_key = self.keys.frontend(self.frontend_id), self.keys.replies(self.frontend_id)
        self.t0 = clock()
        self._wall_offset_s = time.time() - clock()  # Redis holds wall-clock times; this front end's clock + offset
        self._lock = threading.Lock()
        self._idle_cv = threading.Condition(self._lock)
        self._items: dict[int, tuple[_Call, int, str]] = {}  # rid -> (call, index in call, queue member)
        self._next_id, self._id_end = 0, 0
        self._accepting, self._connected = True, True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.duplicates = 0  # replies for images already answered (a re-dispatched request answered twice: a bug)
        self.late_replies = 0  # replies for calls already failed here (Redis outage, watchdog): expected, ignored
        self.workers_seen = 0
        self._answered = _RecentIds()

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "RedisEngine":
        self._register()
        for target, name in ((self._read_loop, "superserve-replies"), (self._heartbeat_loop, "superserve-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _register(self) -> None:
        """Publish the zoo and policy and this front end's liveness key (again after a Redis restart)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.set(k.config, self.published.to_json())
        pipe.set(k.config_id, self.published.config_id)
        pipe.set(self._alive_key, "1", ex=self.cluster.alive_ttl_s)
        pipe.execute()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Stop admitting calls and wait until every admitted one is answered. True if all were."""
        with self._lock:
            self._accepting = False
            ok = self._idle_cv.wait_for(lambda: not self._items, timeout=timeout_s)
            answers = [] if ok else self._fail_all_locked(UNAVAILABLE, "server shut down before an answer came")
        self._fire(answers)
        return ok

    def close(self) -> None:
        """Stop the threads and remove this front end's keys (its queued images were answered or failed)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        try:
            self.client.delete(self._alive_key, self._reply_key)
        except Exception:  # noqa: BLE001 - Redis may be gone; the keys expire by themselves
            pass
        self.client.close()
        self._reader_client.close()

    # --- the engine contract --------------------------------------------------------------------------------------
    def submit(self, inputs: torch.Tensor, slo_ms: float | None, min_accuracy: float,
               on_done: Callable[[CallResult], None], arrival_s: float | None = None) -> None:
        """Queue one call of B images in Redis. Raises InvalidRequest when refused (nothing queued, on_done not run)."""
        import redis

        n = inputs.shape[0]
        if min_accuracy > self._max_accuracy + 1e-12:
            raise InvalidRequest(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"min_accuracy {min_accuracy:g} exceeds the most accurate subnet "
                                 f"({self._max_accuracy:.4f}); no subnet can serve it")
        slo_s = (self.config.default_slo_ms if slo_ms is None else slo_ms) * 1e-3
        if not self._accepting:
            raise InvalidRequest(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if not self._connected:
            raise InvalidRequest(grpc.StatusCode.UNAVAILABLE,
                                 f"lost the connection to Redis at {self.url.display}; reconnecting")
        now = self.clock()
        arrival = now if arrival_s is None else min(arrival_s, now)
        call = _Call(n, on_done, arrival, arrival + slo_s, min_accuracy)
        x = np.ascontiguousarray(inputs.numpy(), dtype=np.float32)  # (B, C, S, S)
        ttl = int(math.ceil(max(call.deadline_s - now, 0.0) + 2 * self.cluster.grace_s + 1))
        deadline_wall = repr(call.deadline_s + self._wall_offset_s)
        arrival_wall = arrival + self._wall_offset_s
        k = self.keys
        try:
            with self._lock:
                rids = self._take_ids_locked(n)
                call.rids = rids
                members = [member(rid, arrival_wall, min_accuracy) for rid in rids]
                for j, rid in enumerate(rids):
                    self._items[rid] = (call, j, members[j])
            args: list[Any] = [k.prefix, self.config.queue_capacity, self.frontend_id, n]
            for j, rid in enumerate(rids):
                args += [rid, deadline_wall, members[j], x[j].tobytes(), ttl]
            result = int(self.scripts.enqueue(keys=[k.queue, k.wake, k.workers, self._alive_key], args=args))
        except redis.RedisError as exc:
            self._forget(call)
            self._connection_lost(exc)
            raise InvalidRequest(grpc.StatusCode.UNAVAILABLE,
                                 f"Redis at {self.url.display} is unavailable: {exc}") from None
        if result == 1:
            return
        self._forget(call)
        if result == -1:
            raise InvalidRequest(grpc.StatusCode.UNAVAILABLE,
                                 f"no superserve worker is registered at {self.url.display} (start one with "
                                 f"`superserve worker --backend {self.url.display}`)")
        if result == -2:  # our liveness key is gone: Redis restarted, or this process stalled for alive_ttl_s
            self._state_lost()
            raise InvalidRequest(grpc.StatusCode.UNAVAILABLE, "Redis lost this front end's state (restarted?); retry")
        queued = -result - 3
        self._reject_record(now, slo_s, min_accuracy, n)
        raise InvalidRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"queue full ({queued} of {self.config.queue_capacity} images queued in the cluster)")

    def _take_ids_locked(self, n: int) -> tuple[int, ...]:
        if self._next_id + n > self._id_end:
            block = max(ID_BLOCK, n)
            pipe = self.client.pipeline(transaction=False)
            # Seeded from the wall clock (microseconds) so that ids stay unique across a Redis restart.
            pipe.set(self.keys.ids, int(time.time() * 1e6), nx=True)
            pipe.incrby(self.keys.ids, block)
            end = int(pipe.execute()[1])
            self._next_id, self._id_end = end - block, end
        rids = tuple(range(self._next_id, self._next_id + n))
        self._next_id += n
        return rids

    def _forget(self, call: _Call) -> None:
        with self._lock:
            for rid in call.rids:
                self._items.pop(rid, None)
            if not self._items:
                self._idle_cv.notify_all()

    # --- replies --------------------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        import redis

        backoff = 0.05
        while not self._stop.is_set():
            try:
                got = self._reader_client.blmpop(1, 1, self._reply_key, direction="LEFT", count=512)
            except redis.RedisError as exc:
                self._connection_lost(exc)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, 2.0)
                continue
            backoff = 0.05
            if got:
                self._apply([decode_reply(raw) for raw in got[1]])

    def _apply(self, replies: list[Reply]) -> None:
        now = self.clock()
        answers, records = [], []
        with self._lock:
            for rep in replies:
                entry = self._items.pop(rep.rid, None)
                if entry is None:
                    if rep.rid in self._answered:
                        self.duplicates += 1
                        log.error("request %d answered twice (second answer ignored)", rep.rid)
                    else:
                        self.late_replies += 1
                    continue
                call, index, _ = entry
                self._answered.add(rep.rid)
                records.append(self._record(call, rep))
                if call.done:
                    continue
                if rep.status in (OK, LATE):
                    call.rows[index] = rep.row
                    call.subnets[index] = rep.subnet_id
                    call.late |= rep.status == LATE
                    call.pending -= 1
                    if call.pending == 0:
                        answers.append(self._finish_locked(call, LATE if call.late else OK, "", now))
                elif rep.status == SHED:
                    answers.append(self._finish_locked(
                        call, SHED, f"cannot meet the deadline (SLO {(call.deadline_s - call.arrival_s) * 1e3:.1f} "
                                    "ms) with any subnet allowed by its accuracy hint; shed", now))
                elif rep.status == UNAVAILABLE:
                    answers.append(self._finish_locked(call, UNAVAILABLE, rep.message, now))
                else:
                    answers.append(self._finish_locked(call, ERROR, f"inference failed: {rep.message}", now))
            if not self._items:
                self._idle_cv.notify_all()
        if records and self.records is not None:
            self.records.write(records)
        self._fire(answers)

    def _finish_locked(self, call: _Call, outcome: str, message: str, now: float) -> tuple[_Call, CallResult]:
        call.done = True
        if outcome in (OK, LATE):
            accuracy = min(self._accuracy.get(s, math.nan) for s in call.subnets)
            result = CallResult(outcome, np.stack(call.rows), tuple(call.subnets), accuracy, "",  # type: ignore
                                now - call.arrival_s)
        else:
            # Its other images are dropped here: their replies, if any come, are ignored (they stay in Redis only
            # until a worker drops them or their TTL ends).
            for rid in call.rids:
                self._items.pop(rid, None)
            result = CallResult(outcome, None, (), math.nan, message, now - call.arrival_s)
        return call, result

    def _fail_all_locked(self, outcome: str, message: str) -> list[tuple[_Call, CallResult]]:
        now = self.clock()
        answers = []
        for call, _, _ in list(self._items.values()):
            if not call.done:
                answers.append(self._finish_locked(call, outcome, message, now))
        self._items.clear()
        self._idle_cv.notify_all()
        return answers

    def _fire(self, answers: list[tuple[_Call, CallResult]]) -> None:
        for call, result in answers:
            if self.metrics is not None:
                self.metrics.call_done(result.outcome, result.latency_s)
            call.on_done(result)

    # --- faults ---------------------------------------------------------------------------------------------------
    def _connection_lost(self, exc: Exception) -> None:
        with self._lock:
            if self._connected:
                log.warning("lost the connection to Redis at %s: %s; failing %d pending images, reconnecting",
                            self.url.display, exc, len(self._items))
            self._connected = False
            answers = self._fail_all_locked(UNAVAILABLE, f"lost the connection to Redis at {self.url.display}: "
                                                         f"{exc}")
        self._fire(answers)

    def _state_lost(self) -> None:
        with self._lock:
            log.warning("Redis lost this front end's state (restarted?); failing %d pending images", len(self._items))
            answers = self._fail_all_locked(UNAVAILABLE, "Redis restarted (or this front end was cut off from it); "
                                                         "the request was lost")
        self._fire(answers)
        self._register()

    def _heartbeat_loop(self) -> None:
        import redis

        last_reap = 0.0
        while not self._stop.wait(self.cluster.heartbeat_s):
            try:
                k = self.keys
                pipe = self.client.pipeline(transaction=False)
                pipe.set(self._alive_key, "1", ex=self.cluster.alive_ttl_s, xx=True)
                pipe.zcard(k.queue)
                pipe.scard(k.workers)
                alive, depth, workers = pipe.execute()
                if not alive:
                    self._state_lost()
                if not self._connected:
                    log.warning("reconnected to Redis at %s", self.url.display)
                    self._connected = True
                self.workers_seen = int(workers)
                if self.metrics is not None:
                    self.metrics.set_queue_depth(int(depth))
                now = time.time()
                if now - last_reap >= self.cluster.reap_interval_s:
                    last_reap = now
                    self.scripts.reap(now, self.cluster.grace_s, self.cluster.max_attempts, self.cluster.reply_ttl_s)
                self._watchdog()
            except redis.RedisError as exc:
                self._connection_lost(exc)

    def _watchdog(self) -> None:
        """Answer calls still unanswered `grace_s` after their deadline, and take their images out of the queue."""
        now = self.clock()
        limit = now - self.cluster.grace_s
        with self._lock:
            expired = {id(c): c for c, _, _ in self._items.values() if c.deadline_s < limit and not c.done}
            if not expired:
                return
            members = [m for c, _, m in self._items.values() if id(c) in expired]
            rids = [rid for c in expired.values() for rid in c.rids]
            msg = (f"no answer from the cluster {self.cluster.grace_s:g} s after the deadline "
                   f"({self.workers_seen} worker(s) registered)")
            answers = [self._finish_locked(c, UNAVAILABLE, msg, now) for c in expired.values()]
            if not self._items:
                self._idle_cv.notify_all()
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.queue, *members)
        pipe.delete(*[self.keys.req(r) for r in rids])
        pipe.execute()
        self._fire(answers)

    # --- records --------------------------------------------------------------------------------------------------
    def _record(self, call: _Call, rep: Reply) -> RequestRecord:
        t0, off = self.t0, self._wall_offset_s
        status = rep.status if rep.status in (OK, LATE, SHED) else ERROR
        served = rep.status in (OK, LATE)
        return RequestRecord(rep.rid, call.arrival_s - t0, call.deadline_s - t0, status,
                             None if rep.dispatch_s is None else rep.dispatch_s - off - t0,
                             None if rep.finish_s is None or not served else rep.finish_s - off - t0,
                             rep.subnet_id or None, self._accuracy.get(rep.subnet_id) if served else None,
                             call.min_accuracy, rep.worker_id)

    def _reject_record(self, now: float, slo_s: float, min_accuracy: float, count: int) -> None:
        if self.records is None:
            return
        rec = RequestRecord(-1, now - self.t0, now + slo_s - self.t0, REJECTED, min_accuracy=min_accuracy)
        self.records.write([rec] * count)
