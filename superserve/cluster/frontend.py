"""A front end of the Redis cluster: the same gRPC servicer and codec as the embedded server, with `RedisEngine` in
place of the in-process engine.

`RedisEngine` keeps the engine's contract (`superserve.server.engine_api.ServingEngine`): `submit(inputs, slo_ms,
min_accuracy, on_done, arrival_s) -> cancel`, raising `Refused` only for refusals that need no I/O (an accuracy hint
above the best subnet, shutting down, Redis known to be unreachable, the front end's own send backlog full);
`on_done` runs exactly once per admitted call; `cancel()` withdraws a call; `drain`, `accepting`, `serving`,
`clock`. A call's per-image answers are collected by the same `CallTracker` the embedded engine uses. The queue is
Redis's: each image becomes one request in the global EDF zset, workers anywhere decide and compute, and the answers
come back on this front end's reply list, read by one thread that completes the calls.

No Redis I/O ever runs on the caller's thread (the servicer's asyncio event loop): `submit` only checks, books the
call and appends it to a bounded backlog; one sender thread writes the backlog to Redis (ENQUEUE scripts, pipelined)
and the withdrawals of cancelled or failed calls. Outcomes found out there (queue full, no worker registered, Redis
lost) reach the caller through `on_done`: REJECTED (the servicer answers RESOURCE_EXHAUSTED) or UNAVAILABLE.

Every Redis command of a front end waits at most `FrontendConfig.redis_timeout_s` (1 s) for its reply (socket and
connect timeout) and is tried twice (one retry), so it fails within 2 x 1 s. A stalled Redis (SIGSTOP, a network
partition) is noticed by whichever thread waits on it first; the heartbeat asks every `heartbeat_s` (0.5 s), so every
pending call is answered UNAVAILABLE within `FrontendConfig.unavailable_within_s` = heartbeat_s + 2 x redis_timeout_s
+ 0.1 s = 2.6 s of the stall starting (or of the call's arrival, if later), and new calls are refused UNAVAILABLE at
once until the heartbeat reaches Redis again. Health checks never wait on Redis: ServerLive is answered throughout,
and ServerReady says not ready while Redis is unreachable or no worker is registered (a call sent then would fail).

Every admitted call is answered exactly once, whatever fails:
- an image's reply is applied only while the image is still pending here (a late duplicate is counted, not applied);
- Redis unreachable -> every pending call is answered UNAVAILABLE (above) and new calls are refused until it is back;
  Redis restarted (our liveness key vanished) -> the same, then this front end re-registers and re-publishes the zoo;
- nothing answered `grace_s` after a deadline (no worker is looking at the queue) -> UNAVAILABLE;
- cancelled -> CANCELLED.
The images of calls answered here without a reply (cancelled, failed, expired) are taken out of the Redis queue in the
background once Redis answers again, so no worker computes them for nobody.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from superserve.cluster.redis_queue import (DEFAULT_NAMESPACE, ID_BLOCK, ClusterConfig, Keys, RedisURL, Reply,
                                            Scripts, connect, decode_reply, member)
from superserve.dispatch import CallResult, CallTracker, shed_message
from superserve.outcomes import Reason, Refused
from superserve.records import CANCELLED, ERROR, LATE, OK, REJECTED, SHED, UNAVAILABLE, RequestRecord
from superserve.server.engine import EngineConfig
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.zoo import Zoo

log = logging.getLogger("superserve.cluster.frontend")
__all__ = ["FrontendConfig", "RedisEngine", "UNAVAILABLE"]  # UNAVAILABLE: superserve.records', re-exported
_BLMPOP_S = 1  # the reply reader's blocking wait per BLMPOP
_SEND_CALLS = 64  # calls written to Redis per pipeline round trip at most
_WITHDRAW_MAX = 1 << 17  # withdrawals kept while Redis is away (older ones are left to the requests' TTLs)


@dataclass(frozen=True)
class FrontendConfig:
    namespace: str = DEFAULT_NAMESPACE
    heartbeat_s: float = 0.5  # liveness refresh, reconnect attempts, deadline watchdog
    alive_ttl_s: int = 5  # liveness key TTL: workers drop queued work of a front end silent for this long
    grace_s: float = 2.0  # a request unanswered this long after its deadline is answered UNAVAILABLE here
    reply_ttl_s: int = 30  # TTL of the reply list (refreshed on each push)
    max_attempts: int = 3  # worker deaths a request survives before it is failed instead of re-queued
    reap_interval_s: float = 1.0
    # Socket and connect timeout of every Redis command (one retry): a stalled Redis fails a command within 2 x this.
    # Well above Redis's own latency (~0.1 ms; tens of ms on a busy host), well below a client's patience.
    redis_timeout_s: float = 1.0
    max_backlog_images: int = 4096  # images accepted but not yet written to Redis; beyond it RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if not self.redis_timeout_s > 0 or not self.heartbeat_s > 0 or self.max_backlog_images < 1:
            raise ValueError("redis_timeout_s and heartbeat_s must be > 0, max_backlog_images >= 1")

    @property
    def unavailable_within_s(self) -> float:
        """The documented bound: a call pending when Redis stalls is answered UNAVAILABLE within this many seconds of
        the stall starting (the heartbeat's next command, failing after its two tries, plus scheduling slack)."""
        return self.heartbeat_s + 2 * self.redis_timeout_s + 0.1


class _Call(CallTracker):
    __slots__ = ("deadline_s", "min_accuracy", "payload", "queued")

    def __init__(self, n: int, on_done: Callable[[CallResult], None], arrival_s: float, deadline_s: float,
                 min_accuracy: float, payload: np.ndarray) -> None:
        super().__init__(n, arrival_s, on_done)  # arrival and deadline: front-end clock, seconds
        self.deadline_s = deadline_s  # its rids are allocated by the sender thread
        self.min_accuracy = min_accuracy
        self.payload: np.ndarray | None = payload  # (B, C, S, S) float32 until written to Redis
        self.queued = False  # ENQUEUE may have put its images in Redis (so a failure must withdraw them)


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
        # BackendError with a clear message when Redis is not there.
        self.client = connect(url, socket_timeout_s=cluster.redis_timeout_s,
                              connect_timeout_s=min(1.0, cluster.redis_timeout_s))
        # The reply reader blocks up to _BLMPOP_S per BLMPOP: its own connection, timeout on top of that.
        self._reader_client = connect(url, socket_timeout_s=_BLMPOP_S + cluster.redis_timeout_s, check=False,
                                      connect_timeout_s=min(1.0, cluster.redis_timeout_s))
        self.scripts = Scripts(self.client, self.keys)
        self.frontend_id = uuid.uuid4().hex[:12]
        self._alive_key, self._reply_key = self.keys.frontend(self.frontend_id), self.keys.replies(self.frontend_id)
        self.t0 = clock()
        self._wall_offset_s = time.time() - clock()  # Redis holds wall-clock times; this front end's clock + offset
        self._lock = threading.Lock()
        self._idle_cv = threading.Condition(self._lock)  # notified when calls finish or the backlog empties
        self._work_cv = threading.Condition(self._lock)  # wakes the sender
        self._calls: dict[int, _Call] = {}  # id(call) -> every admitted call not answered yet
        self._items: dict[int, tuple[_Call, int, str]] = {}  # rid -> (call, index in call, queue member)
        self._backlog: deque[_Call] = deque()  # admitted, not yet written to Redis
        self._backlog_images = 0
        self._sending = False
        self._withdraw: deque[tuple[int, str]] = deque(maxlen=_WITHDRAW_MAX)  # (rid, member) to take out of Redis
        self._next_id, self._id_end = 0, 0  # the sender thread's alone
        self._accepting, self._connected = True, True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.duplicates = 0  # replies for images already answered (a re-dispatched request answered twice: a bug)
        self.late_replies = 0  # replies for calls already answered here (Redis outage, watchdog, cancel): ignored
        self.withdrawn = 0  # queued images taken out of Redis after their call was answered here
        self.state_losses = 0  # times Redis lost this front end's state (restart) and it re-registered
        self.workers_seen = 0
        self._answered = _RecentIds()

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "RedisEngine":
        self._register()
        self.workers_seen = int(self.client.scard(self.keys.workers))
        for target, name in ((self._read_loop, "superserve-replies"), (self._heartbeat_loop, "superserve-heartbeat"),
                             (self._send_loop, "superserve-sender")):
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
        """Ready to serve: not draining, Redis reachable and at least one worker registered (as last seen by the
        heartbeat). The servicer's ServerReady answers this; it never waits on Redis."""
        return self._accepting and self._connected and self.workers_seen > 0

    @property
    def serving(self) -> bool:
        """Redis reachable and at least one worker registered (as last seen by the heartbeat)."""
        return self._connected and self.workers_seen > 0

    @property
    def connected(self) -> bool:
        return self._connected

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Stop admitting calls and wait until every admitted one is answered. True if all were."""
        with self._lock:
            self._accepting = False
            ok = self._idle_cv.wait_for(lambda: not self._calls, timeout=timeout_s)
            answers = [] if ok else self._fail_all_locked(UNAVAILABLE, "server shut down before an answer came")
        self._fire(answers)
        return ok

    def wait_sent(self, timeout_s: float = 10.0) -> bool:
        """Block until every call submitted so far was written to Redis (or failed). True if so in time."""
        with self._lock:
            return self._idle_cv.wait_for(lambda: not self._backlog and not self._sending, timeout=timeout_s)

    def close(self) -> None:
        """Stop the threads and remove this front end's keys (its queued images were answered or failed)."""
        self._stop.set()
        with self._lock:
            self._work_cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        try:
            self.client.delete(self._alive_key, self._reply_key)
        except Exception:  # noqa: BLE001 - Redis may be gone; the keys expire by themselves
            pass
        self.client.close()
        self._reader_client.close()

    # --- the engine contract --------------------------------------------------------------------------------------
    def submit(self, inputs: Any, slo_ms: float | None, min_accuracy: float,
               on_done: Callable[[CallResult], None], arrival_s: float | None = None) -> Callable[[], bool]:
        """Admit one call of B images: no Redis I/O here (the sender thread writes it). Returns `cancel`. Raises
        Refused when refused at once (nothing queued, on_done not run); outcomes found out later (queue full:
        REJECTED, no worker or Redis lost: UNAVAILABLE) come through `on_done`."""
        n = inputs.shape[0]
        if min_accuracy > self._max_accuracy + 1e-12:
            raise Refused(Reason.INVALID, f"min_accuracy {min_accuracy:g} exceeds the most accurate subnet "
                                          f"({self._max_accuracy:.4f}); no subnet can serve it")
        slo_s = (self.config.default_slo_ms if slo_ms is None else slo_ms) * 1e-3
        if not self._accepting:
            raise Refused(Reason.UNAVAILABLE, "server is shutting down")
        if not self._connected:
            raise Refused(Reason.UNAVAILABLE, f"Redis at {self.url.display} is unreachable (no answer within "
                                              f"{2 * self.cluster.redis_timeout_s:g} s); reconnecting, retry later")
        now = self.clock()
        arrival = now if arrival_s is None else min(arrival_s, now)
        x = np.ascontiguousarray(inputs.numpy(), dtype=np.float32)  # (B, C, S, S)
        call = _Call(n, on_done, arrival, arrival + slo_s, min_accuracy, x)
        with self._lock:
            if self._backlog_images + n > self.cluster.max_backlog_images:
                backlog = self._backlog_images
                full = True
            else:
                full = False
                self._calls[id(call)] = call
                self._backlog.append(call)
                self._backlog_images += n
                self._work_cv.notify()
        if full:
            self._reject_record(now, slo_s, min_accuracy, n)
            raise Refused(Reason.BUSY, f"this front end has {backlog} images not yet written to Redis (its limit is "
                                       f"{self.cluster.max_backlog_images}): Redis is slow; retry later")
        return lambda: self._cancel(call)

    def _cancel(self, call: _Call) -> bool:
        """Withdraw a call: its queued images leave Redis (in the background), on_done gets CANCELLED once. True if
        the call was still pending."""
        with self._lock:
            if call.done:
                return False
            answer = self._finish_locked(call, CANCELLED, "cancelled by the client", self.clock())
            self._work_cv.notify()  # the sender withdraws its images
        self._fire([answer])
        return True

    # --- the sender thread: every write of calls to Redis ---------------------------------------------------------
    def _send_loop(self) -> None:
        import redis

        while True:
            with self._lock:
                self._work_cv.wait_for(lambda: self._stop.is_set() or self._backlog
                                       or (self._withdraw and self._connected), timeout=self.cluster.heartbeat_s)
                if self._stop.is_set():
                    return
                calls: list[_Call] = []
                images = 0
                while self._backlog and len(calls) < _SEND_CALLS:
                    call = self._backlog.popleft()
                    self._backlog_images -= call.n
                    if not call.done:  # cancelled or failed while waiting: nothing to send
                        calls.append(call)
                        images += call.n
                withdraw = list(self._withdraw) if self._connected else []
                if withdraw:
                    self._withdraw.clear()
                self._sending = bool(calls or withdraw)
                if not self._backlog and not self._sending:
                    self._idle_cv.notify_all()
            try:
                if calls:
                    self._send(calls, images)
                if withdraw:
                    self._send_withdrawals(withdraw)
            except redis.RedisError as exc:
                with self._lock:
                    self._withdraw.extend(withdraw)  # again once Redis is back
                self._connection_lost(exc)  # fails `calls` too (still pending)
            except Exception:  # noqa: BLE001 - a bug must not strand calls: fail them loudly
                log.exception("sending calls to Redis failed")
                self._fail_calls(calls, ERROR, "internal error while queueing the request")
            finally:
                with self._lock:
                    self._sending = False
                    if not self._backlog:
                        self._idle_cv.notify_all()

    def _send(self, calls: list[_Call], images: int) -> None:
        k = self.keys
        self._reserve_ids(images)  # Redis I/O, outside the lock: ids are the sender's alone
        sent: list[tuple[_Call, list[str], np.ndarray]] = []
        with self._lock:  # a call cancelled from here on is withdrawn after this round trip (same thread, in order)
            for call in calls:
                if call.done or call.payload is None:
                    continue
                rids = tuple(range(self._next_id, self._next_id + call.n))
                self._next_id += call.n
                call.rids = rids
                arrival_wall = call.arrival_s + self._wall_offset_s
                members = [member(rid, arrival_wall, call.min_accuracy) for rid in rids]
                for j, rid in enumerate(rids):
                    self._items[rid] = (call, j, members[j])
                call.queued = True
                sent.append((call, members, call.payload))
                call.payload = None
        if not sent:
            return
        now = self.clock()
        pipe = self.client.pipeline(transaction=False)
        for call, members, x in sent:
            ttl = int(math.ceil(max(call.deadline_s - now, 0.0) + 2 * self.cluster.grace_s + 1))
            deadline_wall = repr(call.deadline_s + self._wall_offset_s)
            args: list[Any] = [k.prefix, self.config.queue_capacity, self.frontend_id, call.n]
            for j, rid in enumerate(call.rids):
                args += [rid, deadline_wall, members[j], x[j].tobytes(), ttl]
            self.scripts.enqueue(keys=[k.queue, k.wake, k.workers, self._alive_key], args=args, client=pipe)
        results = [int(r) for r in pipe.execute()]
        lost = False
        failed: list[tuple[_Call, str, str]] = []
        for (call, _, _), result in zip(sent, results):
            if result == 1:
                continue
            call.queued = False  # nothing of it was queued
            if result == -1:
                failed.append((call, UNAVAILABLE, f"no superserve worker is registered at {self.url.display} (start "
                                                  f"one with `superserve worker --backend {self.url.display}`)"))
            elif result == -2:  # our liveness key is gone: Redis restarted, or this process stalled for alive_ttl_s
                lost = True
                failed.append((call, UNAVAILABLE, "Redis lost this front end's state (restarted?); retry"))
            else:
                self._reject_record(now, call.deadline_s - call.arrival_s, call.min_accuracy, call.n)
                failed.append((call, REJECTED, f"queue full ({-result - 3} of {self.config.queue_capacity} images "
                                               "queued in the cluster)"))
        answers = []
        with self._lock:
            for call, outcome, message in failed:
                if not call.done:
                    answers.append(self._finish_locked(call, outcome, message, self.clock(),
                                                       record=outcome != REJECTED))
        self._fire(answers)
        if lost:
            self._state_lost()

    def _reserve_ids(self, n: int) -> None:
        if self._next_id + n <= self._id_end:
            return
        block = max(ID_BLOCK, n)
        pipe = self.client.pipeline(transaction=False)
        # Seeded from the wall clock (microseconds) so that ids stay unique across a Redis restart.
        pipe.set(self.keys.ids, int(time.time() * 1e6), nx=True)
        pipe.incrby(self.keys.ids, block)
        end = int(pipe.execute()[1])
        self._next_id, self._id_end = end - block, end

    def _send_withdrawals(self, withdraw: list[tuple[int, str]]) -> None:
        """Take answered calls' images out of the queue and delete their payloads: a worker never computes them (one
        that claimed them already answers into the void; that reply is counted as late and ignored)."""
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(withdraw), 512):
            part = withdraw[start:start + 512]
            pipe.zrem(self.keys.queue, *[m for _, m in part])
            pipe.delete(*[self.keys.req(rid) for rid, _ in part])
        removed = pipe.execute()[::2]
        self.withdrawn += sum(int(r) for r in removed)

    # --- replies --------------------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        import redis

        backoff = 0.05
        while not self._stop.is_set():
            try:
                got = self._reader_client.blmpop(_BLMPOP_S, 1, self._reply_key, direction="LEFT", count=512)
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
                    if call.add(index, rep.row, rep.subnet_id, self._accuracy.get(rep.subnet_id, math.nan),
                                rep.status == OK):
                        answers.append(self._finish_locked(call, OK, "", now))
                elif rep.status == SHED:
                    answers.append(self._finish_locked(
                        call, SHED, shed_message((call.deadline_s - call.arrival_s) * 1e3), now))
                elif rep.status == UNAVAILABLE:
                    answers.append(self._finish_locked(call, UNAVAILABLE, rep.message, now))
                else:
                    answers.append(self._finish_locked(call, ERROR, f"inference failed: {rep.message}", now))
        if records and self.records is not None:
            self.records.write(records)
        self._fire(answers)

    def _finish_locked(self, call: _Call, outcome: str, message: str, now: float,
                       record: bool = True) -> tuple[_Call, CallResult]:
        """Mark the call answered (under the lock; `_fire` hands the answer out after releasing it). A failed call's
        images still pending here are recorded with the call's outcome and, if queued, withdrawn from Redis."""
        call.done = True
        self._calls.pop(id(call), None)
        if not self._calls:
            self._idle_cv.notify_all()
        if outcome in (OK, LATE):  # every image served: ok, or late if any image was
            return call, call.result(now)
        unanswered: list[int] = []
        for rid in call.rids:
            entry = self._items.pop(rid, None)
            if entry is not None:
                unanswered.append(rid)
                if call.queued:
                    self._withdraw.append((rid, entry[2]))
        if not call.rids:  # never written to Redis
            unanswered = [-1] * call.n
        call.payload = None
        if record and self.records is not None and unanswered:
            status = outcome if outcome in (SHED, ERROR, CANCELLED, UNAVAILABLE, REJECTED) else ERROR
            self.records.write([RequestRecord(rid, call.arrival_s - self.t0, call.deadline_s - self.t0, status,
                                              min_accuracy=call.min_accuracy) for rid in unanswered])
        return call, call.fail(outcome, message, now)

    def _fail_all_locked(self, outcome: str, message: str) -> list[tuple[_Call, CallResult]]:
        now = self.clock()
        return [self._finish_locked(call, outcome, message, now) for call in list(self._calls.values())]

    def _fail_calls(self, calls: list[_Call], outcome: str, message: str) -> None:
        with self._lock:
            now = self.clock()
            answers = [self._finish_locked(c, outcome, message, now) for c in calls if not c.done]
        self._fire(answers)

    def _fire(self, answers: list[tuple[_Call, CallResult]]) -> None:
        for call, result in answers:
            if self.metrics is not None:
                self.metrics.call_done(result.outcome, result.latency_s)
            try:
                call.on_done(result)
            except Exception:  # noqa: BLE001 - one caller's callback must not cost the others their answers
                log.exception("on_done raised")

    # --- faults ---------------------------------------------------------------------------------------------------
    def _connection_lost(self, exc: Exception) -> None:
        with self._lock:
            if self._connected:
                log.warning("lost the connection to Redis at %s: %s; failing %d pending calls, reconnecting",
                            self.url.display, exc, len(self._calls))
            self._connected = False
            answers = self._fail_all_locked(UNAVAILABLE, f"lost the connection to Redis at {self.url.display}: "
                                                         f"{exc}")
        self._fire(answers)

    def _state_lost(self) -> None:
        with self._lock:
            log.warning("Redis lost this front end's state (restarted?); failing %d pending calls", len(self._calls))
            self.state_losses += 1
            answers = self._fail_all_locked(UNAVAILABLE, "Redis restarted (or this front end was cut off from it); "
                                                         "the request was lost")
            self._withdraw.clear()  # nothing of ours is left there
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
                    with self._lock:
                        self._connected = True
                        self._work_cv.notify()  # withdrawals held back while Redis was away
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
            except Exception:  # noqa: BLE001 - the heartbeat must outlive a bug
                log.exception("heartbeat failed")

    def _watchdog(self) -> None:
        """Answer calls still unanswered `grace_s` after their deadline (their images are withdrawn from Redis)."""
        now = self.clock()
        limit = now - self.cluster.grace_s
        with self._lock:
            expired = [c for c in self._calls.values() if c.deadline_s < limit]
            if not expired:
                return
            msg = (f"no answer from the cluster {self.cluster.grace_s:g} s after the deadline "
                   f"({self.workers_seen} worker(s) registered)")
            answers = [self._finish_locked(c, UNAVAILABLE, msg, now) for c in expired]
            self._work_cv.notify()
        self._fire(answers)

    # --- records --------------------------------------------------------------------------------------------------
    def _record(self, call: _Call, rep: Reply) -> RequestRecord:
        t0, off = self.t0, self._wall_offset_s
        status = rep.status if rep.status in (OK, LATE, SHED, UNAVAILABLE) else ERROR
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
