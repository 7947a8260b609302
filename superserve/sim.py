"""Discrete-event simulator: the real EDF queue and the real policy, a simulated clock and simulated workers.

Events are arrivals (from a trace) and batch completions. Whenever a worker is free and the queue is not empty (after
a completion, or on an arrival while a worker idles) the policy decides; its batch occupies the worker for the batch's
service time, read from the zoo's median latency table (linearly interpolated between profiled batch sizes) and, with
`noise`, multiplied by a seeded log-normal factor whose 99th percentile matches the table's p99/median ratio. A worker
that changes subnet also spends the policy's `switch_ms` (model loading for INFaaS; ~0 for SubNetAct); workers start
warm, so a worker's first subnet is free. To predict a server on a CPU host, `host_ms_per_batch` and
`host_ms_per_request` (fitted by `superserve.host_cost`) add the host's own work to every batch, and
`correction_interval_s` lets the policy's table follow the observed service times as the server's does.

Requests the policy reports infeasible are shed (`late="shed"`, the default) or kept in a late backlog that workers
serve, on the fastest subnet meeting their accuracy hints, whenever the policy has nothing else for them
(`late="serve"`); a late request whose hint no subnet meets is shed. Every request ends with exactly one record.

The scheduling (decide, shed or back-log, pop, dispatch; completion and `policy.observe`) is the dispatch core's
(`superserve.dispatch.DispatchCore`), the one the server and the cluster workers run; this module adds only the
simulated clock, the trace's arrivals and the service-time model (`tests/test_parity.py` holds the two to the same
batches).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from policies.base import Policy
from superserve.dispatch import Dispatch, DispatchCore
from superserve.profile_correction import ProfileCorrector
from superserve.queue import EdfQueue
from superserve.records import LATE, OK, REJECTED, SHED, STATUSES, RecordTable
from superserve.types import Request
from superserve.zoo import Zoo

_OK, _LATE, _SHED, _REJECTED = (STATUSES.index(s) for s in (OK, LATE, SHED, REJECTED))
_P99_Z = 2.3263478740408408  # standard normal 99th percentile
_NOISE_BLOCK = 65536  # normals drawn per refill
_CLIENT_EPS_S = 1e-9  # float slack when judging an answer at the client against its deadline


@dataclass(frozen=True)
class SimConfig:
    workers: int = 8  # identical workers, each runs one batch at a time
    late: Literal["shed", "serve"] = "shed"  # what to do with requests the policy reports infeasible
    noise: bool = True  # log-normal service-time noise matched to the profile's p99/median
    seed: int = 0  # for the noise
    switch_ms: float | None = None  # override the policy's subnet-switch cost
    queue_capacity: int | None = None  # None = unbounded; arrivals beyond it are rejected
    # The serving host's own work, for predicting a server on a CPU host (0 = an ideal host, the default): each
    # arrival stalls every running batch by `host_ms_per_request` (receiving, decoding and answering a call takes
    # the CPU and the interpreter lock the workers need), and each batch costs `host_ms_per_batch` more than the
    # table (hand-off to the worker, stacking inputs). `benchmarks/e2e_tradeoff.py` measures both on the host.
    host_ms_per_request: float = 0.0
    host_ms_per_batch: float = 0.0
    # Each batch takes the table's time times this (before `host_ms_per_batch`): a table profiled at another moment
    # of a shared host is off by a factor, which a constant per batch cannot follow across subnets of 0.5 to 370 ms.
    host_table_scale: float = 1.0
    # The call's own path, as the client sees it (0 = the answer is at the client the instant its batch ends): one
    # host thread (the server's event loop) takes in each call (`host_ms_per_receive`) before the scheduler sees it
    # and sends each answer (`host_ms_per_answer`) after its batch ends, first come first served, so a burst of calls
    # or a large batch queues there; `network_ms` is the fixed transport both ways. With any of them set, a record's
    # `finish_s` is when the answer reaches the client and its status is judged on that, as a client's is; the
    # policy still sees the batch end (what the server's own clock sees).
    host_ms_per_receive: float = 0.0
    host_ms_per_answer: float = 0.0
    network_ms: float = 0.0
    # Quantiles (at evenly spaced levels from 0 to 1) of a per-answer delay around `network_ms`, drawn for each answer
    # (seeded by `seed`); () = none. `superserve.host_cost.fit_client_path` measures them.
    network_jitter_ms: tuple[float, ...] = ()
    # Where the server's clock starts: a call reaches the server `network_in_ms` (part of `network_ms`, the rest is
    # the answer's way back) plus a draw from `client_send_lag_ms` (quantiles at evenly spaced levels: the client's
    # event loop sending late) after its scheduled arrival, and the server counts the deadline from there (the
    # engine's `arrival_s`) while the client judges it from the scheduled time: the server plans against a deadline
    # that much later than the client's. Calls reach the server in the order they were scheduled. 0 / () = the server
    # sees each call when it was meant to leave.
    network_in_ms: float = 0.0
    client_send_lag_ms: tuple[float, ...] = ()
    # Quantiles (evenly spaced levels) of a delay added to every batch's time, drawn per batch (seeded by `seed`);
    # () = none. `HostCost.residual_quantiles_ms` measures them on a host: the spread of observed batch times around
    # table median + host cost, heavier-tailed on a shared CPU host than the table's own p99 says. They include the
    # table's noise, so use them with `noise=False`.
    host_batch_jitter_ms: tuple[float, ...] = ()
    # Host stalls (another tenant or the collector taking the CPU for tens of ms), at `host_stall_rate_per_s` per
    # second of batch time: a batch of t seconds suffers Poisson(rate x t) of them, each as long as a draw from the
    # quantiles `host_stall_ms` (`HostCost.stall_rate_per_s`, `stall_ms_quantiles`). 0 = none.
    host_stall_rate_per_s: float = 0.0
    host_stall_ms: tuple[float, ...] = ()
    # Correct the policy's latency table online from the simulated service times, as the server does (its
    # `correction_interval_s`, default 0.25): needs `simulate(..., policy_factory=...)` to rebuild the policy. None =
    # the policy keeps the table it was built with (the default: the service times then follow that table anyway,
    # unless a host cost is set).
    correction_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"need at least one worker, got {self.workers}")
        if self.late not in ("shed", "serve"):
            raise ValueError(f"late must be 'shed' or 'serve', got {self.late!r}")
        if not all(x >= 0 for x in (self.host_ms_per_request, self.host_ms_per_batch, self.host_ms_per_receive,
                                     self.host_ms_per_answer, self.network_ms)):
            raise ValueError("host_ms_per_* and network_ms must be >= 0")
        if not self.host_table_scale > 0:
            raise ValueError(f"host_table_scale must be > 0, got {self.host_table_scale}")
        if self.host_stall_rate_per_s < 0 or (self.host_stall_rate_per_s > 0 and not self.host_stall_ms):
            raise ValueError("host_stall_rate_per_s must be >= 0, and > 0 only with host_stall_ms")
        if not 0 <= self.network_in_ms <= self.network_ms:
            raise ValueError(f"network_in_ms must be within [0, network_ms], got {self.network_in_ms}")
        if self.client_send_lag_ms and min(self.client_send_lag_ms) < 0:
            raise ValueError("client_send_lag_ms must be >= 0")
        for name in ("network_jitter_ms", "host_batch_jitter_ms", "host_stall_ms", "client_send_lag_ms"):
            q = getattr(self, name)
            if len(q) == 1 or list(q) != sorted(q):
                raise ValueError(f"{name} must be () or at least 2 quantiles in ascending order")
        if self.correction_interval_s is not None and not self.correction_interval_s > 0:
            raise ValueError(f"correction_interval_s must be > 0 or None, got {self.correction_interval_s}")

    @property
    def client_path(self) -> bool:
        return bool(self.host_ms_per_receive or self.host_ms_per_answer or self.network_ms or self.network_jitter_ms
                    or self.client_send_lag_ms)


def _draw(quantiles: np.ndarray, rng: np.random.Generator) -> float:
    """One draw from the distribution given by its quantiles at evenly spaced levels (linear in between)."""
    u = rng.random() * (len(quantiles) - 1)
    k = int(u)
    lo = float(quantiles[k])
    return lo + (u - k) * (float(quantiles[min(k + 1, len(quantiles) - 1)]) - lo)


class ServiceTimes:
    """Service time in seconds of (subnet index, batch size), from the zoo's median and p99 tables."""

    def __init__(self, zoo: Zoo, noise: bool, rng: np.random.Generator) -> None:
        sizes = np.array(zoo.batch_sizes, dtype=float)
        max_b = zoo.batch_sizes[-1]
        b = np.arange(1, max_b + 1, dtype=float)
        self.median_s: list[list[float]] = [[0.0]]  # [subnet][batch] (index 0 unused)
        self.sigma: list[list[float]] = []
        self.median_s = []
        for e in zoo.entries:
            med = np.array([e.latency_ms[s].median_ms for s in zoo.batch_sizes]) * 1e-3
            p99 = np.array([e.latency_ms[s].p99_ms for s in zoo.batch_sizes]) * 1e-3
            med_b, p99_b = np.interp(b, sizes, med), np.interp(b, sizes, p99)
            self.median_s.append([0.0] + med_b.tolist())
            self.sigma.append([0.0] + (np.log(np.maximum(p99_b / med_b, 1.0)) / _P99_Z).tolist())
        self.noise = noise
        self.rng = rng
        self._z: list[float] = []
        self._k = 0

    def __call__(self, subnet_index: int, batch_size: int) -> float:
        med = self.median_s[subnet_index][batch_size]
        if not self.noise:
            return med
        if self._k >= len(self._z):
            self._z = self.rng.standard_normal(_NOISE_BLOCK).tolist()
            self._k = 0
        z = self._z[self._k]
        self._k += 1
        return med * math.exp(self.sigma[subnet_index][batch_size] * z)


def simulate(arrivals_s: Sequence[float] | np.ndarray, policy: Policy, slo_ms: float | np.ndarray,
             min_accuracy: float | np.ndarray = 0.0, config: SimConfig = SimConfig(),
             policy_factory: Callable[[Zoo], Policy] | None = None) -> RecordTable:
    """Replay `arrivals_s` (sorted, seconds) through `policy`; one record per request, in arrival order.

    `slo_ms` and `min_accuracy` are one value for all requests or one per request. `policy_factory` builds the
    policy again from a corrected table (`config.correction_interval_s`).
    """
    if config.correction_interval_s is not None and policy_factory is None:
        raise ValueError("correction_interval_s needs a policy_factory to rebuild the policy from corrected tables")
    # The run allocates millions of small acyclic objects; the cyclic collector would rescan all of them again and
    # again (time per request then grows with the run length). Nothing here makes cycles, so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(arrivals_s, policy, slo_ms, min_accuracy, config, policy_factory)
    finally:
        if gc_was_enabled:
            gc.enable()


def _simulate(arrivals_s: Sequence[float] | np.ndarray, policy: Policy, slo_ms: float | np.ndarray,
              min_accuracy: float | np.ndarray, config: SimConfig,
              policy_factory: Callable[[Zoo], Policy] | None) -> RecordTable:
    arrivals = np.asarray(arrivals_s, dtype=np.float64)
    n = len(arrivals)
    if n and np.any(np.diff(arrivals) < 0):
        raise ValueError("arrival times must be sorted")
    slo = np.broadcast_to(np.asarray(slo_ms, dtype=np.float64), (n,))
    if n and slo.min() <= 0:
        raise ValueError("SLOs must be > 0 ms")
    min_acc = np.broadcast_to(np.asarray(min_accuracy, dtype=np.float64), (n,))
    zoo = policy.zoo
    subnet_ids = zoo.subnet_ids  # a property that builds a tuple: read once
    subnet_index = {sid: i for i, sid in enumerate(subnet_ids)}
    accuracy_of = [e.accuracy for e in zoo.entries]
    service = ServiceTimes(zoo, config.noise, np.random.default_rng(config.seed))
    switch_s = (policy.switch_ms if config.switch_ms is None else config.switch_ms) * 1e-3
    host_req_s = config.host_ms_per_request * 1e-3
    host_batch_s = config.host_ms_per_batch * 1e-3
    table_scale = config.host_table_scale
    receive_s, answer_s = config.host_ms_per_receive * 1e-3, config.host_ms_per_answer * 1e-3
    network_in_s = config.network_in_ms * 1e-3
    network_s = config.network_ms * 1e-3 - network_in_s  # the answer's way back
    lag_q = np.asarray(config.client_send_lag_ms, dtype=np.float64) * 1e-3
    lag_rng = np.random.default_rng([config.seed, 3])
    inbound = bool(network_in_s or len(lag_q))  # calls reach the server after their scheduled arrival
    reaching: deque[tuple[float, int]] = deque()  # (when the call reaches the server, request id): times ascending
    last_reach_s = -math.inf
    client_path = config.client_path
    host_free_s = -math.inf  # when the host thread (receiving calls, sending answers) is next free
    jitter_q = np.asarray(config.network_jitter_ms, dtype=np.float64) * 1e-3
    jitter_rng = np.random.default_rng([config.seed, 1])  # apart from the service-time noise's stream
    batch_q = np.asarray(config.host_batch_jitter_ms, dtype=np.float64) * 1e-3
    batch_rng = np.random.default_rng([config.seed, 2])
    stall_rate = config.host_stall_rate_per_s
    stall_q = np.asarray(config.host_stall_ms, dtype=np.float64) * 1e-3
    received: deque[tuple[float, int]] = deque()  # (when the scheduler sees it, request id): FIFO, times ascending

    arrival_l = arrivals.tolist()
    deadline_l = (arrivals + slo * 1e-3).tolist()
    slo_s_l = (slo * 1e-3).tolist()
    server_arrival_l = arrival_l if not inbound else [math.nan] * n  # the server's clock: its deadline counts from it
    hint_l = min_acc.tolist()
    nan = float("nan")
    dispatch_l = [nan] * n
    finish_l = [nan] * n
    subnet_l = [-1] * n
    worker_l = [-1] * n
    status_l = [_REJECTED] * n

    queue = EdfQueue(config.queue_capacity)
    interval_s = config.correction_interval_s
    corrector = ProfileCorrector(zoo) if interval_s is not None else None
    # the scheduling the server runs too
    core = DispatchCore(zoo, policy, queue, config.workers, config.late, corrector)
    core.last_correction_s = arrival_l[0] if n else 0.0
    idle = core.idle
    shed = core.shed
    busy: list[tuple[float, int, Dispatch]] = []  # (finish, seq, dispatch)
    seq = 0
    i = 0
    inf = math.inf

    def take_in(rid: int, now: float) -> None:  # the call is at the server: its host thread takes it in
        nonlocal host_free_s
        if receive_s:  # the scheduler sees it once the host thread has taken it in
            host_free_s = max(now, host_free_s) + receive_s
            received.append((host_free_s, rid))
        else:
            t = server_arrival_l[rid]
            queue.push(Request(rid, t, t + slo_s_l[rid], hint_l[rid]))  # a rejected one keeps REJECTED

    while i < n or busy or received or reaching:
        next_arrival = arrival_l[i] if i < n else inf
        next_received = received[0][0] if received else inf
        next_reach = reaching[0][0] if reaching else inf
        if busy and busy[0][0] <= min(next_arrival, next_received, next_reach):
            # One completion per event, even when two batches finish at the same instant: the server hears of its
            # batches one at a time and schedules after each (`Engine.on_result`), so the simulator does too.
            now, _, d = heapq.heappop(busy)
            on_time, _ = core.complete(d, now)
            disp, w, sidx = d.dispatch_s, d.slot, subnet_index[d.subnet_id]
            for rid, ok in zip(d.request_ids, on_time):
                dispatch_l[rid] = disp
                subnet_l[rid] = sidx
                worker_l[rid] = w
                if client_path:  # answers leave one after another, behind whatever the host thread has queued
                    host_free_s = max(now, host_free_s) + answer_s
                    at_client = host_free_s + network_s
                    if len(jitter_q):
                        at_client = max(host_free_s, at_client + _draw(jitter_q, jitter_rng))
                    finish_l[rid] = at_client
                    status_l[rid] = _OK if at_client <= deadline_l[rid] + _CLIENT_EPS_S else _LATE
                else:
                    finish_l[rid] = now
                    status_l[rid] = _OK if ok else _LATE
            if corrector is not None:
                core.correct_when_due(now, interval_s, policy_factory)  # type: ignore[arg-type]
        elif next_received <= min(next_arrival, next_reach):
            now = next_received
            while received and received[0][0] == now:
                rid = received.popleft()[1]
                t = server_arrival_l[rid]
                queue.push(Request(rid, t, t + slo_s_l[rid], hint_l[rid]))
        else:
            taken = 0  # calls the server takes in at this instant
            if next_reach <= next_arrival:
                now = next_reach
                while reaching and reaching[0][0] == now:
                    take_in(reaching.popleft()[1], now)
                    taken += 1
            else:
                now = next_arrival
                while i < n and arrival_l[i] == now:
                    if inbound:  # on its way: the server's clock starts when it gets there
                        reach = max(last_reach_s, now + network_in_s + (_draw(lag_q, lag_rng) if len(lag_q) else 0.0))
                        last_reach_s = server_arrival_l[i] = reach
                        reaching.append((reach, i))
                    else:
                        take_in(i, now)
                        taken += 1
                    i += 1
            if host_req_s and busy and taken:
                # The same delay for every running batch keeps the heap ordered.
                stall = host_req_s * taken
                for j, (f, s, d) in enumerate(busy):
                    busy[j] = (f + stall, s, d)
        if idle and len(queue) or core.late:
            for d in core.schedule(now):
                t = service(subnet_index[d.subnet_id], len(d.request_ids)) * table_scale + host_batch_s
                if len(batch_q):  # never below a tenth of the table's time: the spread is measured, not a speed-up
                    t = max(0.1 * t, t + _draw(batch_q, batch_rng))
                if stall_rate:
                    for _ in range(batch_rng.poisson(stall_rate * t)):
                        t += _draw(stall_q, batch_rng)
                if d.switched:
                    t += switch_s
                heapq.heappush(busy, (now + t, seq, d))
                seq += 1
            if shed:
                for req in shed:
                    status_l[req.request_id] = _SHED
                shed.clear()

    subnet_arr = np.array(subnet_l, dtype=np.int32)
    acc_lookup = np.array(accuracy_of + [nan])
    return RecordTable(
        request_id=np.arange(n, dtype=np.int64), arrival_s=arrivals.copy(),
        deadline_s=np.array(deadline_l), dispatch_s=np.array(dispatch_l), finish_s=np.array(finish_l),
        subnet=subnet_arr, accuracy=acc_lookup[subnet_arr], status=np.array(status_l, dtype=np.int8),
        min_accuracy=np.array(min_acc, dtype=np.float64), worker_id=np.array(worker_l, dtype=np.int32),
        subnet_ids=subnet_ids)
