"""The dispatch core: the one scheduling step and the one batch completion that every driver runs.

The simulator (`superserve.sim`), the embedded engine (`superserve.server.engine`) and the Redis cluster's worker
(`superserve.cluster.worker`) differ only in their clock, their queue and their executor (simulated service times, a
worker pool, the worker's own forward pass); the scheduling is this module's, so what the simulator predicts for a
trace is what the server does with it (`tests/test_parity.py` holds them to it). vLLM v1's engine core is the model:
one step, different clients and executors.

A step is one decision for one free worker: snapshot the EDF head, `policy.decide` (`decide`), then `take` the
infeasible requests out of the queue (shed, or back-logged with `late="serve"`), take the batch, mark the worker busy
on its subnet. `schedule(now)` runs steps while a worker is idle and the queue is not empty, then serves the back-log
on idle workers (the fastest subnet meeting the chunk's accuracy hints). A late request no subnet can serve (its hint
is above every subnet's accuracy) is shed, alone, in every driver: serving it is impossible and waiting cannot change
that (the simulator used to shed the whole chunk it was found in; the engine asserted it away).
`complete(dispatch, finish_s)` is a batch's end: each request's outcome (ok by its deadline, else late; an error fails
them all), the `BatchOutcome` fed to `policy.observe`, the service time fed to the profile correction, the worker
idle again. `corrected_zoo`/`install_policy` rebuild the policy from corrected latencies.

`CallTracker` is one protocol call's per-image answers (a call of B images is B requests, possibly split across
batches): filled image by image, answered exactly once (`CallResult`), by the engine, the cluster front end and the
hint defense's per-image split alike.

No locks (drivers serialise calls), no clock reads, no torch, no grpc.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from policies.base import Policy, late_subnet
from superserve.outcomes import Outcome
from superserve.types import BatchOutcome, Decision, QueueSnapshot, Request, WorkerState
from superserve.zoo import Zoo

LatePolicy = Literal["shed", "serve"]


class Queue(Protocol):
    """What the core needs of a queue: the EDF queue (`superserve.queue.EdfQueue`) has it; the cluster worker wraps
    its Redis zset in it."""

    def __len__(self) -> int: ...

    def snapshot(self, limit: int) -> QueueSnapshot: ...

    def pop_ids(self, request_ids: Any) -> list[Request]: ...

    def __contains__(self, request_id: int) -> bool: ...

    def drain(self) -> list[Request]: ...


class Corrector(Protocol):
    """Online profile correction (`superserve.profile_correction.ProfileCorrector` has it)."""

    def observe(self, subnet_id: str, batch_size: int, service_s: float) -> None: ...

    def relax(self, elapsed_s: float) -> None: ...

    def corrected_zoo(self) -> Zoo | None: ...


class Dispatch:
    """A batch handed to a worker: the requests (EDF order), the subnet, when, and whether the worker switched."""

    __slots__ = ("dispatch_s", "expected_ms", "request_ids", "requests", "slot", "subnet_id", "switched")

    def __init__(self, slot: int, subnet_id: str, request_ids: tuple[int, ...], requests: list[Request],
                 dispatch_s: float, switched: bool, expected_ms: float) -> None:
        self.slot = slot  # the worker's index in `DispatchCore.workers`
        self.subnet_id = subnet_id
        self.request_ids = request_ids
        self.requests = requests
        self.dispatch_s = dispatch_s
        self.switched = switched  # the worker ran another subnet before (a model-switching policy pays for it)
        self.expected_ms = expected_ms  # the latency the policy planned with (0 for a late batch)

    def __repr__(self) -> str:
        return f"Dispatch(slot={self.slot}, subnet={self.subnet_id}, ids={self.request_ids}, t={self.dispatch_s})"


class DispatchCore:
    """The policy, its state, the queue, the late back-log and the workers' states of one driver."""

    def __init__(self, zoo: Zoo, policy: Policy, queue: Queue, workers: int, late: LatePolicy = "shed",
                 corrector: Corrector | None = None, worker_ids: list[int] | None = None) -> None:
        if late not in ("shed", "serve"):
            raise ValueError(f"late must be 'shed' or 'serve', got {late!r}")
        if workers < 1:
            raise ValueError(f"need at least one worker, got {workers}")
        self.zoo = zoo
        self.policy = policy
        self.state = policy.initial_state()
        self.queue = queue
        self.serve_late = late == "serve"
        self.corrector = corrector
        self.last_correction_s = 0.0  # `correct_when_due`'s clock (the driver's), set by the driver at its start
        ids = list(range(workers)) if worker_ids is None else worker_ids
        self.workers = [WorkerState(w) for w in ids]  # by slot; the policy sees the worker's own id
        self.idle = list(range(workers - 1, -1, -1))  # a stack: worker 0 first
        self.down: set[int] = set()  # slots lost and being replaced: nothing is dispatched to them
        self.busy: set[int] = set()
        self.late: dict[int, Request] = {}  # the back-log (late="serve"), arrival order of being found infeasible
        self.shed: list[Request] = []  # shed since the driver last emptied it (the driver answers them)
        self._max_batch = zoo.batch_sizes[-1]
        self._max_accuracy = max(e.accuracy for e in zoo.entries) + 1e-12  # late_subnet's tolerance

    # --- the step ---------------------------------------------------------------------------------------------------
    def decide(self, slot: int, now: float, snapshot: QueueSnapshot | None = None) -> tuple[Decision | None, Any]:
        """The policy's decision for the free worker `slot` and the state it returned (committed by `take`)."""
        if snapshot is None:
            snapshot = self.queue.snapshot(self.policy.snapshot_limit)
        return self.policy.decide(snapshot, now, self.workers[slot], self.state)

    def take(self, slot: int, decision: Decision, state: Any, now: float, batch: list[Request] | None = None,
             infeasible: list[Request] | None = None) -> Dispatch | None:
        """Apply `decision` (and commit the policy's `state`): the infeasible requests leave the queue (shed, or
        back-logged), the batch is popped and dispatched. `batch` and `infeasible`: the caller took them out of the
        queue itself (the cluster worker's atomic claim)."""
        self.state = state
        if decision.infeasible_ids:
            gone = self.queue.pop_ids(decision.infeasible_ids) if infeasible is None else infeasible
            if self.serve_late:
                for req in gone:
                    self.late[req.request_id] = req
            else:
                self.shed.extend(gone)
        if batch is None:
            if not decision.request_ids:
                return None
            ids = decision.request_ids
            batch = self.queue.pop_ids(ids)
        else:  # what the claim got (requests whose caller is gone are dropped there)
            if not batch:
                return None
            ids = tuple([r.request_id for r in batch])
        return self._dispatch(slot, decision.subnet_id, ids, batch, now,  # type: ignore[arg-type]
                              decision.expected_latency_ms)

    def schedule(self, now: float) -> list[Dispatch]:
        """Steps while a worker is idle and the queue is not empty, then the back-log on idle workers."""
        out: list[Dispatch] = []
        idle, queue, policy, workers = self.idle, self.queue, self.policy, self.workers
        limit = policy.snapshot_limit
        while idle and len(queue):  # `decide` then `take`, inlined: the simulator's hot loop
            slot = idle[-1]
            decision, state = policy.decide(queue.snapshot(limit), now, workers[slot], self.state)
            if decision is None:
                break
            d = self.take(slot, decision, state, now)
            if d is not None:
                out.append(d)
        if self.late and idle:
            self._serve_late(now, out)
        return out

    def _serve_late(self, now: float, out: list[Dispatch]) -> None:
        late, idle = self.late, self.idle
        while late and idle:
            chunk = []
            for rid in late:
                chunk.append(rid)
                if len(chunk) == self._max_batch:
                    break
            requests = [late.pop(rid) for rid in chunk]
            best = self._max_accuracy
            if any(r.min_accuracy > best for r in requests):  # hints above every subnet: never servable, shed alone
                self.shed.extend([r for r in requests if r.min_accuracy > best])
                requests = [r for r in requests if r.min_accuracy <= best]
                if not requests:
                    continue
            sid = late_subnet(self.zoo, requests)
            assert sid is not None  # every hint left is met by the most accurate subnet
            out.append(self._dispatch(idle[-1], sid, tuple([r.request_id for r in requests]), requests, now, 0.0))

    def _dispatch(self, slot: int, subnet_id: str, ids: tuple[int, ...], requests: list[Request], now: float,
                  expected_ms: float) -> Dispatch:
        idle = self.idle
        if idle and idle[-1] == slot:
            idle.pop()
        else:
            idle.remove(slot)
        self.busy.add(slot)
        ws = self.workers[slot]
        switched = False
        if ws.loaded_subnet_id != subnet_id:  # replace() costs tens of us: only on a switch
            switched = ws.loaded_subnet_id is not None  # warm start: a worker's first subnet was loaded before
            self.workers[slot] = WorkerState(ws.worker_id, subnet_id)
        return Dispatch(slot, subnet_id, ids, requests, now, switched, expected_ms)

    def withdraw(self, request_ids: Any) -> list[Request]:
        """Take queued or back-logged requests out uncomputed (a cancelled or failed call); unknown ids are skipped."""
        queue, late = self.queue, self.late
        gone = queue.pop_ids([rid for rid in request_ids if rid in queue])
        if late:
            gone += [late.pop(rid) for rid in request_ids if rid in late]
        return gone

    def withdraw_all(self) -> list[Request]:
        """Everything queued or back-logged (no worker is left to serve it)."""
        gone = self.queue.drain() + list(self.late.values())
        self.late.clear()
        return gone

    # --- completion -------------------------------------------------------------------------------------------------
    def complete(self, d: Dispatch, finish_s: float, failed: bool = False) -> tuple[list[bool], BatchOutcome]:
        """A batch ended at `finish_s`: per request whether it finished by its deadline, and the outcome the policy
        observed. A failed batch (`failed`) misses every request and teaches the correction nothing. The worker is
        idle again unless it is down."""
        reqs = d.requests
        n = len(reqs)
        if n == 1:  # light load's common case, on the simulator's hot path
            r = reqs[0]
            ok = not failed and finish_s <= r.deadline_s
            on_time, missed, min_slo_s = [ok], 0 if ok else 1, r.deadline_s - r.arrival_s
        else:
            if failed:
                on_time, missed = [False] * n, n
            else:
                on_time = [finish_s <= r.deadline_s for r in reqs]
                missed = on_time.count(False)
            min_slo_s = min([r.deadline_s - r.arrival_s for r in reqs])
        outcome = BatchOutcome(self.workers[d.slot].worker_id, d.subnet_id, n, d.dispatch_s, finish_s,
                               min_slo_s * 1e3, missed)
        self.state = self.policy.observe(outcome, self.state)
        if self.corrector is not None and not failed:
            self.corrector.observe(d.subnet_id, n, finish_s - d.dispatch_s)
        self.busy.discard(d.slot)
        if d.slot not in self.down:
            self.idle.append(d.slot)
        return on_time, outcome

    @staticmethod
    def outcome_of(on_time: bool) -> Outcome:
        return Outcome.OK if on_time else Outcome.LATE

    # --- workers lost and back ----------------------------------------------------------------------------------
    def worker_down(self, slot: int) -> None:
        self.down.add(slot)
        if slot in self.idle:
            self.idle.remove(slot)

    def worker_up(self, slot: int) -> bool:
        """The replacement of `slot` is ready; True if it was down."""
        if slot not in self.down:
            return False
        self.down.discard(slot)
        if slot not in self.busy and slot not in self.idle:
            self.idle.append(slot)
        return True

    @property
    def workers_up(self) -> int:
        return len(self.workers) - len(self.down)

    # --- profile correction and policy rebuilds -----------------------------------------------------------------
    def corrected_zoo(self, elapsed_s: float) -> Zoo | None:
        """Relax the correction by `elapsed_s` and return a corrected zoo when it moved enough (else None)."""
        if self.corrector is None:
            return None
        self.corrector.relax(elapsed_s)
        return self.corrector.corrected_zoo()

    def correct_when_due(self, now_s: float, interval_s: float, factory: Callable[[Zoo], Policy]) -> None:
        """After a completion, on the driver's clock: once `interval_s` has passed since the last time
        (`last_correction_s`, which the driver starts), relax the correction by the time elapsed and serve with a
        policy rebuilt by `factory` from the corrected table when it moved. The simulator and the cluster worker call
        this; the embedded engine does the same from its timer thread, outside its lock."""
        elapsed = now_s - self.last_correction_s
        if elapsed < interval_s:
            return
        self.last_correction_s = now_s
        zoo = self.corrected_zoo(elapsed)
        if zoo is not None:
            self.install_policy(factory(zoo))

    def install_policy(self, policy: Policy, zoo: Zoo | None = None) -> None:
        """Serve with `policy` from now on (built from a corrected or re-profiled table); a policy of another kind
        starts from its initial state, the same kind keeps its state (Clipper+'s batch cap)."""
        if type(policy) is not type(self.policy):
            self.state = policy.initial_state()
        self.policy = policy
        if zoo is not None:
            self.zoo = zoo


# --- calls ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CallResult:
    """The one answer to a protocol call."""

    outcome: Outcome  # ok / late (served), or why it failed (shed, error, unavailable, cancelled, rejected)
    probabilities: np.ndarray | None  # (B, num_classes) when served
    subnet_ids: tuple[str, ...]  # the subnet that served each image (empty when failed)
    accuracy: float  # the lowest profiled accuracy among them (NaN when failed)
    message: str  # why it failed ("" when served)
    latency_s: float  # from arrival to answer


class CallTracker:
    """One call's per-image answers, answered exactly once: `add` each served image (True once all are in) then
    `result`, or `fail` at once. Drivers subclass it for what else they keep per call (slots)."""

    __slots__ = (
        "accuracies",
        "arrival_s",
        "done",
        "failure",
        "late",
        "n",
        "on_done",
        "pending",
        "rids",
        "rows",
        "subnets",
    )

    def __init__(self, n: int, arrival_s: float, on_done: Callable[[CallResult], None]) -> None:
        self.n = n
        self.rows: list[np.ndarray | None] = [None] * n
        self.subnets = [""] * n
        self.accuracies = [math.nan] * n
        self.pending = n
        self.done = False
        self.late = False
        self.arrival_s = arrival_s
        self.on_done = on_done
        self.rids: tuple[int, ...] = ()
        self.failure: tuple[int, Outcome, str] | None = None  # the first failed image, when parts finish alone

    def add(self, index: int, row: np.ndarray, subnet_id: str, accuracy: float, on_time: bool) -> bool:
        """Image `index` was served; True when it was the last one pending."""
        self.rows[index] = row
        self.subnets[index] = subnet_id
        self.accuracies[index] = accuracy
        self.late |= not on_time
        self.pending -= 1
        return self.pending == 0

    def add_failure(self, index: int, outcome: Outcome, message: str) -> bool:
        """Image `index` failed but the call waits for its other images (the hint defense's per-image parts); the
        answer is then the failure of the first failed image. True when it was the last one pending."""
        if self.failure is None or index < self.failure[0]:
            self.failure = (index, outcome, message)
        self.pending -= 1
        return self.pending == 0

    def result(self, now: float) -> CallResult:
        """The answer once every image is in: served (ok, or late if any image was), or the recorded failure."""
        if self.failure is not None:
            return self.fail(self.failure[1], self.failure[2], now)
        self.done = True
        rows = self.rows
        probs = rows[0][None] if len(rows) == 1 else np.stack(rows)  # type: ignore[index, arg-type]
        return CallResult(Outcome.LATE if self.late else Outcome.OK, probs, tuple(self.subnets),
                          min(self.accuracies), "", now - self.arrival_s)

    def fail(self, outcome: Outcome, message: str, now: float) -> CallResult:
        self.done = True
        return CallResult(outcome, None, (), math.nan, message, now - self.arrival_s)


def shed_message(slo_ms: float) -> str:
    """What a shed call is told, the same from every driver."""
    return f"cannot meet the deadline (SLO {slo_ms:.1f} ms) with any subnet allowed by its accuracy hint; shed"
