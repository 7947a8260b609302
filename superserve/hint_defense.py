"""Defenses against fingerprinting: transforms of the requested metrics applied before selection, and goodput.

Kept apart from the server and from the attack code (`security/`), importing neither: the server applies these
transforms and the attack measures them, and neither of those imports the other (tests/test_layers.py).

A `HintTransform` is a pure function `(slo_ms, min_accuracy, rng) -> (slo_ms', min_accuracy')` on arrays of shape
(N,) (one entry per image), drawing only from the `np.random.Generator` it is handed. The server applies it per image
before queueing (`superserve.server.security.HintDefenseHook`); the simulator sweeps apply it to every request of the
trace (attacker and benign alike: the server cannot tell them apart).

- `MetricNoise` is the PSML defense (papers.md §3: noise on the *specified* metrics; the distribution is not known
  from the paper, so it is configurable): min_accuracy' = min_accuracy + scale_acc * z and
  slo_ms' = slo_ms * exp(scale_slo * z'), with z, z' of unit standard deviation from a Gaussian, Laplace or uniform
  distribution. It moves every request, loose or tight, and the attacker's pinned request only when the noise crosses
  the gap to a neighbouring subnet (moving it up into no-subnet territory just sheds the query, which the attacker
  shrugs off).
- `ParetoDefense` is ours. It uses the zoo to see how many subnets a request's ORIGINAL hints admit (accuracy >= hint,
  profiled batch-1 latency + overhead <= SLO). A fingerprinting attacker must send hints that admit exactly one
  subnet (that is what pinning is); with probability `pinned_probability` such a request is moved to the adjacent
  Pareto subnet (the faster one, so the violation is the smallest accuracy step and never a latency miss; the next
  slower one for the fastest subnet). Requests that admit several subnets are, with probability
  `spread_probability`, served by another subnet they admit: that never violates the hints. So the goodput it costs
  is paid only by benign requests as tight as a pin, while every pinned attack query is poisoned with probability p.
  `move_to="fastest"` sends the moved requests to the fastest subnet instead: the same goodput (goodput does not see
  how far a hint is missed) but labels that disagree with the victim more often, at a larger accuracy shortfall for
  the benign requests it moves (reported separately).

Goodput here is the fraction of requests served by a subnet that meets the user's ORIGINAL hints: finished by the
original deadline and with profiled accuracy >= the original accuracy hint (shed/rejected requests count as not
served).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from superserve.records import RecordTable, RequestRecord

DISTRIBUTIONS = ("gaussian", "laplace", "uniform")
_EPS = 1e-9


class HintTransform(Protocol):
    def __call__(self, slo_ms: np.ndarray, min_accuracy: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Args: slo_ms (N,) > 0, min_accuracy (N,) in [0, 1], rng. Returns new arrays of the same shape (the inputs
        are not modified); slo_ms' > 0 and min_accuracy' in [0, 1]."""


def unit_noise(distribution: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise with standard deviation 1."""
    if distribution == "gaussian":
        return rng.standard_normal(size)
    if distribution == "laplace":
        return rng.laplace(0.0, 1.0 / math.sqrt(2.0), size)
    if distribution == "uniform":
        return rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), size)
    raise ValueError(f"unknown noise distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")


def _check(slo_ms: np.ndarray, min_accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    slo = np.asarray(slo_ms, dtype=np.float64)
    acc = np.asarray(min_accuracy, dtype=np.float64)
    if slo.shape != acc.shape or slo.ndim != 1:
        raise ValueError(f"slo_ms and min_accuracy must be 1-D arrays of one shape, got {slo.shape}, {acc.shape}")
    if slo.size and (not np.all(np.isfinite(slo)) or slo.min() <= 0):
        raise ValueError("slo_ms must be finite and > 0")
    if acc.size and (not np.all(np.isfinite(acc)) or acc.min() < 0 or acc.max() > 1):
        raise ValueError("min_accuracy must be in [0, 1]")
    return slo, acc


@dataclass(frozen=True)
class MetricNoise:
    """PSML-style noise on the requested metrics (scales are standard deviations; 0 = leave that metric alone)."""

    accuracy_scale: float = 0.01  # additive, accuracy fraction (0.01 = 1 point)
    slo_scale: float = 0.0  # multiplicative, log-space: slo' = slo * exp(slo_scale * z)
    distribution: str = "gaussian"

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown noise distribution {self.distribution!r}; choose one of "
                             f"{', '.join(DISTRIBUTIONS)}")
        if not (self.accuracy_scale >= 0 and self.slo_scale >= 0):
            raise ValueError("noise scales must be >= 0")

    def __call__(self, slo_ms: np.ndarray, min_accuracy: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        slo, acc = _check(slo_ms, min_accuracy)
        n = slo.size
        if self.accuracy_scale > 0:
            acc = np.clip(acc + self.accuracy_scale * unit_noise(self.distribution, n, rng), 0.0, 1.0)
        else:
            acc = acc.copy()
        if self.slo_scale > 0:
            slo = slo * np.exp(self.slo_scale * unit_noise(self.distribution, n, rng))
        else:
            slo = slo.copy()
        return slo, acc


@dataclass(frozen=True)
class ZooView:
    """What a defense needs of the zoo: each subnet's accuracy and the policy's batch-1 budget, in zoo order.

    A real zoo need not be monotone (a re-profile, or subnets kept for large batches can be slower and less accurate
    at batch 1 than another); `front` marks the subnets an idle server can pick for some hints (non-dominated in
    (budget, accuracy)); the others are never what a single request gets."""

    accuracies: tuple[float, ...]  # fraction
    budget_ms: tuple[float, ...]  # batch-1 profiled latency (p99) + the per-batch overhead

    def __post_init__(self) -> None:
        if not self.accuracies or len(self.accuracies) != len(self.budget_ms):
            raise ValueError("a zoo view needs one accuracy and one latency per subnet")

    @property
    def front(self) -> np.ndarray:
        """(K,) bool: no other subnet is at least as fast and as accurate, and strictly better in one (or equal in
        both with a lower index)."""
        acc, lat = np.asarray(self.accuracies), np.asarray(self.budget_ms)
        k = len(acc)
        out = np.ones(k, dtype=bool)
        for i in range(k):
            for j in range(k):
                if j != i and acc[j] >= acc[i] and lat[j] <= lat[i] and (acc[j] > acc[i] or lat[j] < lat[i] or j < i):
                    out[i] = False
                    break
        return out

    @classmethod
    def from_zoo(cls, zoo, overhead_ms: float = 0.0, stat: str = "p99") -> "ZooView":
        b1 = zoo.batch_sizes[0]
        return cls(tuple(e.accuracy for e in zoo.entries),
                   tuple(e.latency_ms[b1].get(stat) + overhead_ms for e in zoo.entries))

    def admitted(self, slo_ms: np.ndarray, min_accuracy: np.ndarray) -> np.ndarray:
        """(N, K) bool: subnet k meets request n's hints at batch 1."""
        acc = np.asarray(self.accuracies)[None, :]
        lat = np.asarray(self.budget_ms)[None, :]
        return (acc >= np.asarray(min_accuracy)[:, None] - _EPS) & (lat <= np.asarray(slo_ms)[:, None] + _EPS)

    def idle_choice(self, slo_ms: np.ndarray, min_accuracy: np.ndarray) -> np.ndarray:
        """(N,) the subnet an idle SlackFit server picks for one request: at batch 1 every choice falls in its lowest
        latency buckets, so the most accurate admitted one (ties: the faster); -1 when none is admitted."""
        ok = self.admitted(slo_ms, min_accuracy)
        acc, lat = np.asarray(self.accuracies), np.asarray(self.budget_ms)
        rank = np.lexsort((-lat, acc))  # ascending accuracy, then descending latency: the best choice last
        score = np.empty(len(acc))
        score[rank] = np.arange(len(acc))
        masked = np.where(ok, score[None, :], -1.0)
        return np.where(ok.any(axis=1), masked.argmax(axis=1), -1)

    def lower_neighbour(self, k: np.ndarray) -> np.ndarray:
        """(N,) the most accurate front subnet less accurate than subnet k (-1 when k is the least accurate)."""
        acc = np.asarray(self.accuracies)
        front = np.flatnonzero(self.front)
        out = np.full(len(k), -1)
        for n, c in enumerate(np.asarray(k)):
            below = front[acc[front] < acc[c] - _EPS]
            if below.size:
                out[n] = below[np.argmax(acc[below])]
        return out

    def upper_neighbour(self, k: np.ndarray) -> np.ndarray:
        """(N,) the least accurate front subnet more accurate than subnet k (-1 when none)."""
        acc = np.asarray(self.accuracies)
        front = np.flatnonzero(self.front)
        out = np.full(len(k), -1)
        for n, c in enumerate(np.asarray(k)):
            above = front[acc[front] > acc[c] + _EPS]
            if above.size:
                out[n] = above[np.argmin(acc[above])]
        return out

    def pin_hints(self, target: np.ndarray, slo_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hints under which an idle server picks `target` (N,): the target's accuracy, and an SLO just under the
        budget of the fastest more accurate subnet (90% of the way from the target's; 1.5x the target's when none is
        more accurate), so that the target keeps as much slack as it can; capped at the request's own SLO when the
        target fits in it (a faster target never gets more time than asked)."""
        acc, lat = np.asarray(self.accuracies), np.asarray(self.budget_ms)
        target = np.asarray(target)
        cap = np.array([lat[acc > acc[t] + _EPS].min() if (acc > acc[t] + _EPS).any() else np.inf for t in target])
        mid = np.where(np.isfinite(cap), lat[target] + 0.9 * (cap - lat[target]), 1.5 * lat[target])
        slo = np.where(lat[target] <= slo_ms + _EPS, np.minimum(slo_ms, mid), mid)
        return slo, acc[target]


@dataclass(frozen=True)
class ParetoDefense:
    """Ours: poison exactly the pin-shaped requests; spread loose ones only inside what their hints admit."""

    zoo: ZooView
    pinned_probability: float = 0.3  # a request admitting exactly one subnet goes to its Pareto neighbour
    spread_probability: float = 0.0  # a request admitting several goes to another admitted one (no violation)
    move_to: str = "neighbour"  # where pinned requests go: "neighbour" (smallest violation) or "fastest" subnet

    def __post_init__(self) -> None:
        if self.move_to not in ("neighbour", "fastest"):
            raise ValueError(f"move_to must be 'neighbour' or 'fastest', got {self.move_to!r}")
        for name in ("pinned_probability", "spread_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.zoo.accuracies) < 2:
            raise ValueError("the Pareto defense needs a zoo of at least two subnets")

    def __call__(self, slo_ms: np.ndarray, min_accuracy: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        slo, acc = _check(slo_ms, min_accuracy)
        n = slo.size
        ok = self.zoo.admitted(slo, acc) & self.zoo.front[None, :]  # (N, K): what an idle server may pick
        count = ok.sum(axis=1)
        chosen = self.zoo.idle_choice(slo, acc)
        u = rng.random(n)  # one draw per request, whatever happens to it, so runs stay aligned across settings
        pick = rng.random(n)
        target = chosen.copy()
        pinned = (count == 1) & (u < self.pinned_probability)
        if pinned.any():
            c = chosen[pinned]
            down = self.zoo.lower_neighbour(c)
            if self.move_to == "fastest":
                front = np.flatnonzero(self.zoo.front)
                fastest = front[np.argmin(np.asarray(self.zoo.budget_ms)[front])]
                down = np.where(down >= 0, fastest, -1)
            target[pinned] = np.where(down >= 0, down, self.zoo.upper_neighbour(c))
            target[pinned & (target < 0)] = chosen[pinned & (target < 0)]  # a one-subnet front: nowhere to go
        spread = (count >= 2) & (u < self.spread_probability)
        for i in np.flatnonzero(spread):
            others = np.flatnonzero(ok[i])
            others = others[others != chosen[i]]
            target[i] = others[int(pick[i] * len(others))]
        moved = target != chosen
        new_slo, new_acc = slo.copy(), acc.copy()
        if moved.any():
            s, a = self.zoo.pin_hints(target[moved], slo[moved])
            # NOTE: on a zoo whose latencies are not monotone in accuracy (a noisy re-profile) some targets cannot
            # be expressed with hints; those requests keep their own hints rather than land somewhere unplanned.
            works = self.zoo.idle_choice(s, a) == target[moved]
            idx = np.flatnonzero(moved)[works]
            new_slo[idx], new_acc[idx] = s[works], a[works]
        return new_slo, new_acc


def parse_defense_spec(spec: str) -> tuple[str, dict[str, object]]:
    """`noise:acc=0.01,slo=0.2,dist=gaussian` -> ("noise", {...}); `pareto:p=0.3,q=0,to=neighbour` -> ("pareto",
    {...}) (to: neighbour | fastest).
    Checks names and values without needing the zoo; raises ValueError saying what is wrong."""
    kind, _, rest = spec.partition(":")
    allowed = {"noise": {"acc": float, "slo": float, "dist": str},
               "pareto": {"p": float, "q": float, "to": str}}
    if kind not in allowed:
        raise ValueError(f"bad defense spec {spec!r}: kind must be 'noise' or 'pareto'")
    params: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in allowed[kind]:
            raise ValueError(f"bad defense spec {spec!r}: {item!r} is not one of "
                             f"{', '.join(k + '=...' for k in allowed[kind])}")
        try:
            params[key] = allowed[kind][key](value.strip())
        except ValueError:
            raise ValueError(f"bad defense spec {spec!r}: {key} must be a number, got {value!r}") from None
    try:
        if kind == "noise":
            MetricNoise(params.get("acc", 0.01), params.get("slo", 0.0), params.get("dist", "gaussian"))  # type: ignore[arg-type]
        else:
            for key in ("p", "q"):
                if not 0 <= params.get(key, 0.0) <= 1:  # type: ignore[operator]
                    raise ValueError(f"{key} must be in [0, 1]")
            if params.get("to", "neighbour") not in ("neighbour", "fastest"):
                raise ValueError("to must be 'neighbour' or 'fastest'")
    except ValueError as exc:
        raise ValueError(f"bad defense spec {spec!r}: {exc}") from None
    return kind, params


def parse_defense(spec: str, zoo=None, overhead_ms: float = 0.0) -> HintTransform:
    """The transform a spec names (see `parse_defense_spec`); the pareto defense needs the zoo."""
    kind, params = parse_defense_spec(spec)
    if kind == "noise":
        return MetricNoise(params.get("acc", 0.01), params.get("slo", 0.0), params.get("dist", "gaussian"))  # type: ignore[arg-type]
    if zoo is None:
        raise ValueError("the pareto defense needs the zoo")
    return ParetoDefense(ZooView.from_zoo(zoo, overhead_ms), params.get("p", 0.3), params.get("q", 0.0),  # type: ignore[arg-type]
                         params.get("to", "neighbour"))  # type: ignore[arg-type]


# --- goodput ------------------------------------------------------------------------------------------------------
def goodput_fraction(records: RecordTable | Sequence[RequestRecord], original_slo_ms: np.ndarray | None = None,
                     original_min_accuracy: np.ndarray | None = None) -> float:
    """Fraction of requests served by a subnet meeting the ORIGINAL hints (finish <= arrival + original SLO and
    profiled accuracy >= original accuracy hint). The original hints default to the records' own (deadline_s,
    min_accuracy); pass them when the records hold transformed hints. Unserved requests count as misses."""
    t = records if isinstance(records, RecordTable) else RecordTable.from_records(records)
    n = len(t)
    if n == 0:
        raise ValueError("no records")
    for given in (original_slo_ms, original_min_accuracy):
        if given is not None and np.shape(given) != (n,):
            raise ValueError(f"original hints must have one entry per record ({n}), got shape {np.shape(given)}")
    deadline = t.deadline_s if original_slo_ms is None else t.arrival_s + np.asarray(original_slo_ms) * 1e-3
    need = t.min_accuracy if original_min_accuracy is None else np.asarray(original_min_accuracy, dtype=np.float64)
    served = t.served & ~np.isnan(t.finish_s)
    with np.errstate(invalid="ignore"):
        good = served & (t.finish_s <= deadline + 1e-12) & (t.accuracy >= need - _EPS)
    return float(good.sum()) / n
