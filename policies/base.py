"""The policy interface, the registry, and the profile lookups every policy shares.

A policy is built once from a zoo (`make_policy(name, zoo, **params)`); building precomputes lookup tables from the
zoo's latency profile so that a decision costs a few bisections instead of a scan of every (subnet, batch) pair.
After construction a policy is immutable: `decide` is a pure function of (snapshot, now_s, worker, state) and the
zoo it was built from. No I/O, no clock reads, no torch. State a policy needs (Clipper+'s adaptive batch size) is a
frozen value handed in and returned, updated from `BatchOutcome`s by `observe`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from superserve.types import BatchOutcome, Decision, QueueSnapshot, Request, WorkerState
from superserve.zoo import LatencyStat, Zoo

_EPS = 1e-12
# A fit test after split_head's feasibility test must never fail on rounding: split_head compares with _EPS (ms), the
# fit lookup with the looser _FIT_EPS (ms).
_FIT_EPS = 1e-9


@runtime_checkable
class Policy(Protocol):
    """What the simulator and the server call. Attributes are read-only after construction."""

    name: str  # registry name plus distinguishing parameters, e.g. "clipper+[d2222-1a2b3c4d]"
    zoo: Zoo  # the profile this policy was built from
    switch_ms: float  # time a worker spends changing subnet (SubNetAct: ~0; model loading: milliseconds)
    snapshot_limit: int  # how many EDF-head requests `decide` wants to see

    def initial_state(self) -> Any:
        """The state to pass to the first `decide`/`observe` (None for stateless policies)."""

    def decide(self, snapshot: QueueSnapshot, now_s: float, worker: WorkerState,
               state: Any) -> tuple[Decision | None, Any]:
        """Choose the next batch for the free `worker`.

        Args:
            snapshot: the first `snapshot_limit` queued requests, earliest deadline first, and the queue length.
            now_s: the current time on the caller's clock, seconds.
            worker: the free worker (its id and the subnet it ran last).
            state: the value returned by the previous `decide`/`observe` (or `initial_state()`).
        Returns:
            (decision, new_state). The decision is None when there is nothing to do. Otherwise its batch is a
            subset of `snapshot.requests` whose members all accept the subnet's accuracy, and `infeasible_ids`
            lists the head requests no allowed choice can finish by their deadline (never silently dropped).
        """

    def observe(self, outcome: BatchOutcome, state: Any) -> Any:
        """Fold a finished batch into the state; returns the new state."""


class PolicyBase:
    """Shared defaults: stateless, no switch cost, snapshot limit = twice the largest profiled batch."""

    name = "base"
    switch_ms = 0.0

    def __init__(self, zoo: Zoo, stat: LatencyStat = "p99", overhead_ms: float = 0.0) -> None:
        if stat not in ("median", "p99"):
            raise ValueError(f"latency statistic must be 'median' or 'p99', got {stat!r}")
        if overhead_ms < 0:
            raise ValueError(f"overhead_ms must be >= 0, got {overhead_ms}")
        self.zoo = zoo
        self.stat = stat
        self.overhead_ms = overhead_ms  # dispatch/RPC time budgeted on top of the profiled latency
        self.profile = Profile(zoo, stat)
        # Twice the largest batch: room to skip requests whose accuracy hint the chosen subnet cannot meet.
        self.snapshot_limit = 2 * self.profile.batch_sizes[-1]

    def initial_state(self) -> Any:
        return None

    def observe(self, outcome: BatchOutcome, state: Any) -> Any:
        return state

    def __repr__(self) -> str:
        return f"<policy {self.name} stat={self.stat}>"


class Profile:
    """The zoo's latency table for one statistic, as plain lists indexed [subnet index][batch index]."""

    def __init__(self, zoo: Zoo, stat: LatencyStat) -> None:
        self.subnet_ids: tuple[str, ...] = zoo.subnet_ids
        self.accuracies: tuple[float, ...] = tuple(e.accuracy for e in zoo.entries)
        self.batch_sizes: tuple[int, ...] = zoo.batch_sizes
        self.lat_ms: tuple[tuple[float, ...], ...] = tuple(
            tuple(e.latency_ms[b].get(stat) for b in self.batch_sizes) for e in zoo.entries)
        # Distinct accuracy levels, ascending: a hint maps to the lowest level >= it.
        self.acc_levels: tuple[float, ...] = tuple(sorted(set(self.accuracies)))
        # Per level: the fastest batch-of-one latency among subnets at or above it (the feasibility test).
        self.fastest1_ms: tuple[float, ...] = tuple(
            min(self.lat_ms[i][0] for i, a in enumerate(self.accuracies) if a >= level) for level in self.acc_levels)
        self.index = {sid: i for i, sid in enumerate(self.subnet_ids)}

    def level_index(self, min_accuracy: float) -> int | None:
        """Index of the lowest accuracy level meeting the hint, None when no subnet meets it."""
        k = bisect.bisect_left(self.acc_levels, min_accuracy - _EPS)
        return k if k < len(self.acc_levels) else None

    def bcap_index(self, queued: int) -> int:
        """Index of the smallest profiled batch size >= `queued` (the largest if none is)."""
        return min(bisect.bisect_left(self.batch_sizes, queued), len(self.batch_sizes) - 1)

    def latency_ms(self, subnet_index: int, batch_size: int) -> float:
        """Profiled latency of a batch, rounded up to the next profiled batch size (O1: latency grows with B)."""
        return self.lat_ms[subnet_index][self.bcap_index(batch_size)]


@dataclass(frozen=True)
class Choice:
    subnet_index: int
    batch_size: int
    latency_ms: float
    accuracy: float


class FitTable:
    """Choices sorted by latency with the answer for every "fits within the slack" prefix precomputed.

    The answer for a slack is the best choice, by `key`, among the fitting choices in the same `group` as the slowest
    fitting one (SlackFit: group = latency bucket; a constant group = the best of all fitting choices). Groups must be
    monotone in latency. `lookup(slack_ms)` is then one bisection.
    """

    def __init__(self, choices: Sequence[Choice], key: Callable[[Choice], Any],
                 group: Callable[[Choice], int] = lambda c: 0) -> None:
        ordered = sorted(choices, key=lambda c: (c.latency_ms, -c.batch_size, -c.accuracy))
        self.latencies = [c.latency_ms for c in ordered]
        self.answers: list[Choice] = []
        best, best_group = None, None
        for c in ordered:
            g = group(c)
            if best is None or g != best_group or key(c) > key(best):
                best, best_group = c, g
            self.answers.append(best)

    def lookup(self, slack_ms: float) -> Choice | None:
        p = bisect.bisect_right(self.latencies, slack_ms + _FIT_EPS) - 1
        return self.answers[p] if p >= 0 else None


def all_choices(profile: Profile, min_level: int, max_batch_index: int) -> list[Choice]:
    """Every (subnet, batch) with accuracy >= acc_levels[min_level] and batch index <= max_batch_index."""
    floor = profile.acc_levels[min_level]
    return [Choice(i, b, profile.lat_ms[i][j], a)
            for i, a in enumerate(profile.accuracies) if a >= floor
            for j, b in enumerate(profile.batch_sizes[:max_batch_index + 1])]


def split_head(snapshot: QueueSnapshot, now_s: float,
               fastest_ms: Callable[[Request], float | None]) -> tuple[list[int], int]:
    """Walk the EDF head: requests that cannot finish in time even alone on the fastest allowed subnet are
    infeasible. Returns (their ids, index of the first feasible request or len(requests))."""
    infeasible: list[int] = []
    requests = snapshot.requests
    for idx, req in enumerate(requests):
        fastest = fastest_ms(req)
        # The same arithmetic as the policies' slack (in ms), so a request found feasible here fits there too.
        if fastest is not None and fastest <= (req.deadline_s - now_s) * 1e3 + _EPS:
            return infeasible, idx
        infeasible.append(req.request_id)
    return infeasible, len(requests)


def take_batch(requests: Sequence[Request], start: int, size: int, accuracy: float) -> tuple[int, ...]:
    """The first `size` requests from `start` on (EDF order) whose accuracy hint `accuracy` satisfies."""
    ids: list[int] = []
    for req in requests[start:]:
        if req.min_accuracy <= accuracy + _EPS:
            ids.append(req.request_id)
            if len(ids) == size:
                break
    return tuple(ids)


def finish(decision_ids: tuple[int, ...], subnet_id: str | None, infeasible: list[int],
           latency_ms: float) -> Decision | None:
    """Build the Decision (or None when there is neither a batch nor anything to report)."""
    if not decision_ids and not infeasible:
        return None
    return Decision(subnet_id if decision_ids else None, decision_ids, tuple(infeasible),
                    latency_ms if decision_ids else 0.0)


def late_subnet(zoo: Zoo, requests: Sequence[Request], stat: LatencyStat = "p99") -> str | None:
    """For serving infeasible requests late: the fastest subnet meeting every accuracy hint among them (None if the
    hints exceed every subnet's accuracy, i.e. they can never be served)."""
    need = max((r.min_accuracy for r in requests), default=0.0)
    ok = [e for e in zoo.entries if e.accuracy >= need - _EPS]
    if not ok:
        return None
    b0 = zoo.batch_sizes[0]
    return min(ok, key=lambda e: e.latency_ms[b0].get(stat)).subnet_id


# --- registry ----------------------------------------------------------------------------------------------------
PolicyFactory = Callable[..., Policy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    def wrap(factory: PolicyFactory) -> PolicyFactory:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory
    return wrap


def available() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def make_policy(name: str, zoo: Zoo, **params: Any) -> Policy:
    """Build a registered policy for `zoo`. Unknown names or parameters raise ValueError naming the choices."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    try:
        return factory(zoo, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for policy {name!r}: {exc}") from exc


def _load_builtin() -> None:
    # Imported for their @register side effect; lazily so base.py has no import cycle with them.
    from policies import baselines, slackfit  # noqa: F401
