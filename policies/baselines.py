"""The baselines SlackFit is compared with: its two ablations and three systems' policies, on the same zoo.

- MaxAcc (ablation): the most accurate subnet that fits the slack, then the largest batch for it.
- MaxBatch (ablation): the largest batch size that fits the slack (whatever the queue holds), then the most
  accurate subnet at it. Throughput first, so it gives up accuracy even at light load.
- Clipper+: one fixed subnet (one policy instance per Pareto subnet), Clipper's AIMD adaptive batching: the batch cap
  grows by `increase` while a batch's service time stays within the SLO and shrinks by `backoff` when it does not.
  It does not look at deadlines when batching.
- INFaaS-style: per query (the EDF head), the cheapest (fastest) variant meeting its accuracy hint (or the
  policy's `accuracy_floor`) whose execution latency fits its slack; an already loaded variant that qualifies is
  kept. Changing variant loads the model on the critical path: `switch_ms` is paid on every switch, even when the
  load makes the batch miss its deadline (INFaaS selects on the variant's profiled latency and loads reactively; the
  paper's point is that those loads cause SLO violations under bursts). The batch is the head's plus every queued
  request whose hint the variant meets, as large as fits the slack after the load. Per-query variation comes from
  the requests' hints: with one floor for all requests it never switches (a Clockwork-like fixed model).
- Clockwork-style: one fixed subnet, EDF, the largest batch that meets every deadline in it; requests that cannot make
  it are dropped (reported infeasible).

All of them report requests no allowed choice can finish in time as infeasible, exactly like SlackFit, so the
comparison is about the choices, not about drop rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.base import (Choice, FitTable, PolicyBase, all_choices, finish, register, split_head,
                           take_batch)
from superserve.types import BatchOutcome, Decision, QueueSnapshot, Request, WorkerState
from superserve.zoo import LatencyStat, Zoo

INFAAS_DEFAULT_SWITCH_MS = 5.0  # placeholder until the actuation benchmark measures model-load time on this host


class _TablePolicy(PolicyBase):
    """A slack-driven greedy policy over all (subnet, batch) choices, one FitTable per (accuracy level, batch cap)."""

    queue_aware = True  # cap batch sizes at the smallest profiled batch >= queued requests

    def __init__(self, zoo: Zoo, stat: LatencyStat = "p99", overhead_ms: float = 0.0) -> None:
        super().__init__(zoo, stat, overhead_ms)
        prof = self.profile
        caps = range(len(prof.batch_sizes)) if self.queue_aware else [len(prof.batch_sizes) - 1]
        self.tables = [[FitTable(all_choices(prof, level, bcap), self.key) for bcap in caps]
                       for level in range(len(prof.acc_levels))]

    @staticmethod
    def key(c: Choice) -> tuple[float, ...]:
        """The preference order among choices that fit the slack; each concrete policy (MaxAcc, MaxBatch, SlackFit's
        tables) defines its own."""
        raise TypeError("_TablePolicy is abstract: subclasses define key()")

    def _fastest_ms(self, req: Request) -> float | None:
        level = self.profile.level_index(req.min_accuracy)
        return None if level is None else self.profile.fastest1_ms[level] + self.overhead_ms

    def decide(self, snapshot: QueueSnapshot, now_s: float, worker: WorkerState,
               state: Any) -> tuple[Decision | None, Any]:
        infeasible, start = split_head(snapshot, now_s, self._fastest_ms)
        if start == len(snapshot.requests):
            return finish((), None, infeasible, 0.0), state
        head = snapshot.requests[start]
        level = self.profile.level_index(head.min_accuracy)
        assert level is not None
        bcap = self.profile.bcap_index(snapshot.queue_len - len(infeasible)) if self.queue_aware else 0
        choice = self.tables[level][bcap].lookup((head.deadline_s - now_s) * 1e3 - self.overhead_ms)
        assert choice is not None
        ids = take_batch(snapshot.requests, start, choice.batch_size, choice.accuracy)
        return finish(ids, self.profile.subnet_ids[choice.subnet_index], infeasible, choice.latency_ms), state


class MaxAcc(_TablePolicy):
    name = "maxacc"

    @staticmethod
    def key(c: Choice) -> tuple[float, ...]:
        return (c.accuracy, c.batch_size, -c.latency_ms)


class MaxBatch(_TablePolicy):
    name = "maxbatch"
    queue_aware = False

    @staticmethod
    def key(c: Choice) -> tuple[float, ...]:
        return (c.batch_size, c.accuracy, -c.latency_ms)


class _FixedSubnetPolicy(PolicyBase):
    """Serves every batch with one subnet, given by id or by index into the zoo (fastest first; -1 = most
    accurate)."""

    label = "fixed"

    def __init__(self, zoo: Zoo, subnet: str | int = -1, stat: LatencyStat = "p99", overhead_ms: float = 0.0) -> None:
        super().__init__(zoo, stat, overhead_ms)
        prof = self.profile
        if isinstance(subnet, str) and subnet not in prof.index:
            raise ValueError(f"subnet {subnet!r} is not in the zoo ({', '.join(prof.subnet_ids)})")
        if isinstance(subnet, int) and not -len(prof.subnet_ids) <= subnet < len(prof.subnet_ids):
            raise ValueError(f"subnet index {subnet} out of range for a zoo of {len(prof.subnet_ids)}")
        self.subnet_index = prof.index[subnet] if isinstance(subnet, str) else subnet % len(prof.subnet_ids)
        self.subnet_id = prof.subnet_ids[self.subnet_index]
        self.accuracy = prof.accuracies[self.subnet_index]
        self.name = f"{self.label}[{self.accuracy * 100:.2f}%]"

    def _fastest_ms(self, req: Request) -> float | None:
        if req.min_accuracy > self.accuracy + 1e-12:
            return None  # this system's only model cannot serve the request at all
        return self.profile.lat_ms[self.subnet_index][0] + self.overhead_ms


@dataclass(frozen=True)
class AimdState:
    batch_cap: float  # current adaptive maximum batch size (fractional so that the 10% back-off accumulates)


class ClipperPlus(_FixedSubnetPolicy):
    label = "clipper+"

    def __init__(self, zoo: Zoo, subnet: str | int = -1, stat: LatencyStat = "p99", overhead_ms: float = 0.0,
                 increase: float = 1.0, backoff: float = 0.9, initial_batch: float = 1.0) -> None:
        super().__init__(zoo, subnet, stat, overhead_ms)
        if increase <= 0 or not 0 < backoff < 1 or initial_batch < 1:
            raise ValueError("AIMD needs increase > 0, 0 < backoff < 1 and initial_batch >= 1")
        self.increase, self.backoff, self.initial_batch = increase, backoff, initial_batch

    def initial_state(self) -> AimdState:
        return AimdState(self.initial_batch)

    def decide(self, snapshot: QueueSnapshot, now_s: float, worker: WorkerState,
               state: AimdState) -> tuple[Decision | None, AimdState]:
        infeasible, start = split_head(snapshot, now_s, self._fastest_ms)
        ids = take_batch(snapshot.requests, start, int(state.batch_cap), self.accuracy) \
            if start < len(snapshot.requests) else ()
        lat = self.profile.latency_ms(self.subnet_index, len(ids)) if ids else 0.0
        return finish(ids, self.subnet_id, infeasible, lat), state

    def observe(self, outcome: BatchOutcome, state: AimdState) -> AimdState:
        if outcome.subnet_id != self.subnet_id:
            return state
        if outcome.service_ms > outcome.min_slo_ms:
            return AimdState(max(1.0, state.batch_cap * self.backoff))
        return AimdState(min(float(self.profile.batch_sizes[-1]), state.batch_cap + self.increase))


class Clockwork(_FixedSubnetPolicy):
    label = "clockwork"

    def decide(self, snapshot: QueueSnapshot, now_s: float, worker: WorkerState,
               state: Any) -> tuple[Decision | None, Any]:
        infeasible, start = split_head(snapshot, now_s, self._fastest_ms)
        if start == len(snapshot.requests):
            return finish((), None, infeasible, 0.0), state
        prof, row = self.profile, self.profile.lat_ms[self.subnet_index]
        slack_ms = (snapshot.requests[start].deadline_s - now_s) * 1e3 - self.overhead_ms
        bcap = prof.bcap_index(snapshot.queue_len - len(infeasible))
        j = max(j for j in range(bcap + 1) if j == 0 or row[j] <= slack_ms)
        ids = take_batch(snapshot.requests, start, prof.batch_sizes[j], self.accuracy)
        return finish(ids, self.subnet_id, infeasible, prof.latency_ms(self.subnet_index, len(ids))), state


class INFaaS(PolicyBase):
    def __init__(self, zoo: Zoo, accuracy_floor: float = 0.0, switch_ms: float = INFAAS_DEFAULT_SWITCH_MS,
                 stat: LatencyStat = "p99", overhead_ms: float = 0.0) -> None:
        super().__init__(zoo, stat, overhead_ms)
        if switch_ms < 0:
            raise ValueError(f"switch_ms must be >= 0, got {switch_ms}")
        self.switch_ms = switch_ms
        self.accuracy_floor = accuracy_floor
        self.name = "infaas" if accuracy_floor <= 0 else f"infaas[>={accuracy_floor * 100:.2f}%]"
        prof = self.profile
        # Variants cheapest first (batch-of-one latency), the order INFaaS considers them in.
        self.by_cost = sorted(range(len(prof.subnet_ids)), key=lambda i: (prof.lat_ms[i][0], -prof.accuracies[i]))

    def _eligible(self, req: Request) -> list[int]:
        need = max(req.min_accuracy, self.accuracy_floor) - 1e-12
        return [i for i in self.by_cost if self.profile.accuracies[i] >= need]

    def _cost_ms(self, i: int, loaded: int | None) -> float:
        # A worker that has run nothing yet was provisioned before traffic: its first variant is loaded for free
        # (the simulator charges the same way), so only changes of variant pay the load.
        return self.overhead_ms + (0.0 if loaded is None or i == loaded else self.switch_ms)

    def decide(self, snapshot: QueueSnapshot, now_s: float, worker: WorkerState,
               state: Any) -> tuple[Decision | None, Any]:
        prof = self.profile
        loaded = prof.index.get(worker.loaded_subnet_id) if worker.loaded_subnet_id is not None else None

        def fastest(req: Request) -> float | None:
            # Feasibility on execution latency alone: INFaaS does not refuse a query because a load is needed.
            options = [prof.lat_ms[i][0] + self.overhead_ms for i in self._eligible(req)]
            return min(options) if options else None

        infeasible, start = split_head(snapshot, now_s, fastest)
        if start == len(snapshot.requests):
            return finish((), None, infeasible, 0.0), state
        head = snapshot.requests[start]
        slack_ms = (head.deadline_s - now_s) * 1e3
        eligible = self._eligible(head)
        fits = [i for i in eligible if prof.lat_ms[i][0] + self.overhead_ms <= slack_ms + 1e-9]
        # Keep the loaded variant when it qualifies (no load on the critical path), else load the cheapest.
        variant = loaded if loaded in fits else fits[0]
        cost = self._cost_ms(variant, loaded)
        row = prof.lat_ms[variant]
        bcap = prof.bcap_index(snapshot.queue_len - len(infeasible))
        j = max(j for j in range(bcap + 1) if j == 0 or row[j] + cost <= slack_ms)
        ids = take_batch(snapshot.requests, start, prof.batch_sizes[j], prof.accuracies[variant])
        return finish(ids, prof.subnet_ids[variant], infeasible, prof.latency_ms(variant, len(ids)) + cost), state


@register("maxacc")
def _make_maxacc(zoo: Zoo, **params: Any) -> MaxAcc:
    return MaxAcc(zoo, **params)


@register("maxbatch")
def _make_maxbatch(zoo: Zoo, **params: Any) -> MaxBatch:
    return MaxBatch(zoo, **params)


@register("clipper+")
def _make_clipper(zoo: Zoo, **params: Any) -> ClipperPlus:
    return ClipperPlus(zoo, **params)


@register("clockwork")
def _make_clockwork(zoo: Zoo, **params: Any) -> Clockwork:
    return Clockwork(zoo, **params)


@register("infaas")
def _make_infaas(zoo: Zoo, **params: Any) -> INFaaS:
    return INFaaS(zoo, **params)
