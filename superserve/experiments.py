"""The policy trade-off experiment (simulator): every policy's (mean serving accuracy, SLO attainment) point for a
trace and a load, and how SlackFit compares with the best baseline "at equal" attainment or accuracy.

Load is relative to what the most accurate subnet sustains: `capacity_qps` = workers x its best throughput (batch /
median latency) among batch sizes whose p99 latency is at most half the SLO. Load 1 is where the most accurate model
alone starts to fall behind; a zoo's smaller subnets carry loads several times higher, and the fastest one's limit is
overload for every policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from loadtest import traces
from policies.base import Policy, make_policy
from superserve.metrics import summarize
from superserve.sim import SimConfig, simulate
from superserve.zoo import Zoo

ACTUATION_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "actuation.json"
SYSTEMS = ("clipper+", "clockwork", "infaas")  # baseline systems, one instance per chosen subnet/accuracy
ABLATIONS = ("maxacc", "maxbatch")


def measured_model_load_ms(path: Path = ACTUATION_RESULTS) -> float | None:
    """The model-load time the actuation benchmark measured on this host (median, ms), if it has run."""
    try:
        return float(json.loads(path.read_text())["headline"]["load_standalone_median_ms"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def capacity_qps(zoo: Zoo, workers: int, slo_ms: float) -> float:
    """Throughput of `workers` running the most accurate subnet that can run within half the SLO, at its best batch
    size within half the SLO (half: a request may wait for one batch before its own runs), queries/s."""
    for e in sorted(zoo.entries, key=lambda e: -e.accuracy):
        fits = [b / (s.median_ms * 1e-3) for b, s in e.latency_ms.items() if s.p99_ms <= slo_ms / 2]
        if fits:
            return workers * max(fits)
    raise ValueError(f"no subnet of the zoo runs within half the SLO ({slo_ms / 2} ms)")


def spread_indices(count: int, pick: int) -> list[int]:
    """`pick` indices spread evenly over range(count), always including the first and the last."""
    if pick >= count:
        return list(range(count))
    return sorted({round(k * (count - 1) / (pick - 1)) for k in range(pick)}) if pick > 1 else [count - 1]


def lineup(zoo: Zoo, fixed_subnets: int = 4, infaas_switch_ms: float | None = None,
           slackfit_params: dict[str, Any] | None = None) -> list[Policy]:
    """SlackFit, its two ablations, and the baseline systems on `fixed_subnets` subnets spread over the zoo."""
    policies: list[Policy] = [make_policy("slackfit", zoo, **(slackfit_params or {}))]
    policies += [make_policy(name, zoo) for name in ABLATIONS]
    infaas_kw = {} if infaas_switch_ms is None else {"switch_ms": infaas_switch_ms}
    for i in spread_indices(len(zoo.entries), fixed_subnets):
        policies.append(make_policy("clipper+", zoo, subnet=i))
        policies.append(make_policy("clockwork", zoo, subnet=i))
        policies.append(make_policy("infaas", zoo, accuracy_floor=zoo.entries[i].accuracy, **infaas_kw))
    return policies


@dataclass(frozen=True)
class Point:
    policy: str
    family: str  # registry name: slackfit, maxacc, clipper+, ...
    trace: str
    load: float  # multiple of capacity_qps (the most accurate subnet's sustainable rate)
    rate_qps: float
    requests: int
    slo_attainment: float
    mean_accuracy: float
    p99_latency_ms: float
    goodput_qps: float


def run_points(zoo: Zoo, policies: Sequence[Policy], trace: str, load: float, *, workers: int, slo_ms: float,
               duration_s: float, seed: int, config: SimConfig | None = None,
               progress: Callable[[], None] | None = None) -> list[Point]:
    """Simulate every policy on the same arrivals (same seed) and return their points."""
    rate = load * capacity_qps(zoo, workers, slo_ms)
    arrivals = traces.named(trace, rate, duration_s, np.random.default_rng(seed))
    config = config or SimConfig(workers=workers, seed=seed)
    out = []
    for policy in policies:
        s = summarize(simulate(arrivals, policy, slo_ms, config=config))
        family = policy.name.split("[")[0]
        out.append(Point(policy.name, family, trace, load, rate, s.requests, s.slo_attainment,
                         s.mean_accuracy if not math.isnan(s.mean_accuracy) else 0.0, s.p99_latency_ms,
                         s.goodput_qps))
        if progress:
            progress()
    return out


# --- "at equal": comparing one point with a frontier of baseline points --------------------------------------------
def frontier(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (accuracy, attainment) points, accuracy ascending (so attainment strictly descending)."""
    out: list[tuple[float, float]] = []
    for a, t in sorted(points, key=lambda p: (-p[0], -p[1])):  # most accurate first
        if not out or t > out[-1][1]:
            out.append((a, t))
    return out[::-1]


def attainment_at_accuracy(front: Sequence[tuple[float, float]], accuracy: float) -> float | None:
    """The best attainment the baselines reach at mean accuracy >= `accuracy`, linearly interpolated between
    adjacent frontier points (a time-share of two configurations gets the mix of their points). None if no baseline
    is that accurate."""
    if not front or accuracy > front[-1][0] + 1e-12:
        return None
    if accuracy <= front[0][0]:
        return front[0][1]
    for (a0, t0), (a1, t1) in zip(front, front[1:]):
        if a0 <= accuracy <= a1:
            return t0 + (t1 - t0) * (accuracy - a0) / (a1 - a0)
    return front[-1][1]


def accuracy_at_attainment(front: Sequence[tuple[float, float]], attainment: float) -> float | None:
    """The best mean accuracy the baselines reach at attainment >= `attainment` (interpolated likewise). None if no
    baseline attains that much."""
    if not front or attainment > front[0][1] + 1e-12:
        return None
    if attainment <= front[-1][1]:
        return front[-1][0]
    for (a0, t0), (a1, t1) in zip(front, front[1:]):
        if t1 <= attainment <= t0:
            return a0 + (a1 - a0) * (t0 - attainment) / (t0 - t1)
    return front[0][0]


ATTAINMENT_TOL = 0.005  # attainments this close count as equal (run-to-run noise of a few-second trace)
ACCURACY_TOL = 0.0005  # mean accuracies this close (0.05 points) count as equal


def compare(target: Point, baselines: Sequence[Point], attainment_tol: float = ATTAINMENT_TOL,
            accuracy_tol: float = ACCURACY_TOL) -> dict[str, Any]:
    """SlackFit (`target`) against the baselines' frontier:

    - accuracy_gain_points: 100 x (target accuracy - best baseline accuracy at attainment >= target's - tol); None
      when no baseline comes within tol of the target's attainment (the target is better on attainment outright).
    - attainment_gain_x: target attainment / best baseline attainment at accuracy >= target's - tol; None when no
      baseline comes within tol of the target's accuracy (or that baseline attainment is 0).

    The tolerances keep noise from counting: without them, a baseline at attainment 0.99995 against a target at
    0.99998 would be "interpolated" toward a far less accurate point that attains 1.0.
    """
    front = frontier((p.mean_accuracy, p.slo_attainment) for p in baselines)
    acc_b = accuracy_at_attainment(front, target.slo_attainment - attainment_tol)
    att_b = attainment_at_accuracy(front, target.mean_accuracy - accuracy_tol)
    return {
        "slackfit_accuracy": target.mean_accuracy, "slackfit_attainment": target.slo_attainment,
        "baseline_accuracy_at_equal_attainment": acc_b,
        "baseline_attainment_at_equal_accuracy": att_b,
        "accuracy_gain_points": None if acc_b is None else 100 * (target.mean_accuracy - acc_b),
        "attainment_gain_x": None if not att_b else target.slo_attainment / att_b,
        "frontier": front,
    }


@dataclass(frozen=True)
class TradeoffSetup:
    traces: tuple[str, ...] = ("azure", "gamma:2", "gamma:4", "gamma:8")
    loads: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # multiples of capacity_qps: light .. overload
    duration_s: float = 3.0  # trace length on the CPU zoo; a zoo scaled by f runs duration_s * f (same request count)
    slo_ms: float = 36.0
    workers: int = 8
    fixed_subnets: int = 4  # Clipper+/Clockwork/INFaaS instances, on subnets spread over the zoo
    infaas_switch_ms: float | None = None  # None: the INFaaS policy default
    seed: int = 0


def run_tradeoff(zoo: Zoo, setup: TradeoffSetup, time_scale: float = 1.0,
                 progress: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Every policy's point for every (trace, load), plus SlackFit's comparison with the baselines' frontier.

    Returns one dict per (trace, load): {"trace", "load", "rate_qps", "points": [Point...], "vs_all": compare(...)
    against every other policy, "vs_systems": against Clipper+/Clockwork/INFaaS only}.
    """
    policies = lineup(zoo, setup.fixed_subnets, setup.infaas_switch_ms)
    out = []
    for trace in setup.traces:
        for load in setup.loads:
            points = run_points(zoo, policies, trace, load, workers=setup.workers, slo_ms=setup.slo_ms,
                                duration_s=setup.duration_s * time_scale, seed=setup.seed, progress=progress)
            slackfit = points[0]
            out.append({"trace": trace, "load": load, "rate_qps": slackfit.rate_qps, "points": points,
                        "vs_all": compare(slackfit, points[1:]),
                        "vs_systems": compare(slackfit, [p for p in points if p.family in SYSTEMS])})
    return out
