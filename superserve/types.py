"""The small frozen values that cross module boundaries on the serving path (no torch, no numpy here).

The EDF queue (`superserve.queue`) holds `Request`s and hands a policy an immutable `QueueSnapshot`; the policy
(`policies/`) answers with a `Decision`; whoever executed the batch (the simulator now, the server later) reports a
`BatchOutcome` back so that stateful policies (Clipper+'s AIMD) can update the state they are handed. Payload tensors
never enter these types: the server keeps them beside the queue, keyed by `request_id`.

All times are seconds on one monotonic clock chosen by the caller (simulated time in `superserve.sim`); durations
carry their unit in the name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as the scheduler sees it."""

    request_id: int  # unique within one server/simulator run (the server maps protocol ids to these)
    arrival_s: float  # when it entered the system, seconds on the run's clock
    deadline_s: float  # absolute: arrival_s + the request's latency SLO, seconds
    min_accuracy: float = 0.0  # hint: never serve it with a subnet whose profiled accuracy is lower; 0 = no hint

    @property
    def slo_ms(self) -> float:
        return (self.deadline_s - self.arrival_s) * 1e3


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The head of the EDF queue at one instant, immutable.

    Only the first `len(requests)` requests in EDF order are materialised (a policy can never batch more than the
    largest profiled batch, so copying a 100k-request backlog per decision would only cost time); `queue_len` says
    how many are queued in total.
    """

    requests: tuple[Request, ...]  # earliest deadline first (ties: arrival order)
    queue_len: int  # total number of queued requests, >= len(requests)

    @property
    def head(self) -> Request | None:
        return self.requests[0] if self.requests else None

    def __len__(self) -> int:
        return self.queue_len


@dataclass(frozen=True, slots=True)
class WorkerState:
    """The free worker a decision is for, as far as a policy may know it."""

    worker_id: int  # 0..N-1
    loaded_subnet_id: str | None = None  # subnet the worker ran last (model-switching baselines pay to change it)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy asks for: run `request_ids` on `subnet_id`, and which requests cannot be served in time.

    Either part may be empty, never both. `infeasible_ids` are requests no (subnet, batch) choice allowed by their
    accuracy hint can finish before their deadline; the caller decides to shed them or serve them late. They are never
    also in `request_ids`.
    """

    subnet_id: str | None  # None only when request_ids is empty
    request_ids: tuple[int, ...] = ()  # the batch, EDF order; len <= the largest profiled batch size
    infeasible_ids: tuple[int, ...] = ()  # reported, not dispatched
    expected_latency_ms: float = 0.0  # the profiled latency the policy planned with (its statistic, incl. switch cost)

    def __post_init__(self) -> None:
        if not self.request_ids and not self.infeasible_ids:
            raise ValueError("a Decision must dispatch or report something; return None instead")
        if self.request_ids and self.subnet_id is None:
            raise ValueError("a Decision that dispatches requests must name a subnet")

    @property
    def batch_size(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What happened to one dispatched batch, fed back to `Policy.observe`."""

    worker_id: int
    subnet_id: str
    batch_size: int  # requests in the batch
    dispatch_s: float  # when the batch was handed to the worker
    finish_s: float  # when its results were ready
    min_slo_ms: float  # tightest latency SLO (deadline - arrival) among the batch's requests
    missed: int  # requests in the batch that finished after their deadline

    @property
    def service_ms(self) -> float:
        return (self.finish_s - self.dispatch_s) * 1e3
