"""The policy trade-off experiment (simulator): every policy's (mean serving accuracy, SLO attainment) point for a
trace and a load, and how SlackFit compares with the best baseline "at equal" attainment or accuracy.

Load is relative to what the most accurate subnet sustains: `capacity_qps` = workers x its best throughput (batch /
median latency) among batch sizes whose p99 latency is at most half the SLO. Load 1 is where the most accurate model
alone starts to fall behind; a zoo's smaller subnets carry loads several times higher, and the fastest one's limit is
overload for every policy.

Configurations. SlackFit runs once plainly and, for the "at equal accuracy" comparison, again with accuracy hints
(floors) tuned until its mean accuracy matches each baseline configuration's within `MATCH_TOL` (see
`match_accuracy`). The systems SuperServe compares with are Clipper+ (one static subnet each, AIMD batching) and
INFaaS (per-query variant selection from the requests' accuracy hints, a model load on every switch: its
configurations differ in the hints the requests carry, `infaas_hint_mixes`). Clockwork-style and the ablations
(MaxAcc, MaxBatch) are run and reported beside them, never folded into the systems' comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from loadtest import traces
from policies.base import Policy, make_policy
from superserve.metrics import summarize
from superserve.sim import SimConfig, simulate
from superserve.zoo import Zoo

SYSTEMS = ("clipper+", "infaas")  # the systems SuperServe compares with, one configuration per subnet/hint mix
BESIDE = ("clockwork",)  # run and reported beside the systems, never folded into their comparison
ABLATIONS = ("maxacc", "maxbatch")
MATCH_TOL = 0.003  # "equal accuracy": SlackFit's mean accuracy within 0.3 points of the baseline configuration's


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


@dataclass(frozen=True)
class Config:
    """One policy configuration: the policy and the accuracy hints its requests carry.

    `hints` is a categorical distribution over min_accuracy values, ((hint, probability), ...), drawn per request
    with a seeded generator; empty = no hints.
    """

    policy: Policy
    hints: tuple[tuple[float, float], ...] = ()
    label: str = ""  # defaults to the policy's name

    @property
    def name(self) -> str:
        return self.label or self.policy.name

    def min_accuracy(self, n: int, seed: int) -> np.ndarray | float:
        if not self.hints:
            return 0.0
        values = np.array([h for h, _ in self.hints])
        probs = np.array([p for _, p in self.hints], dtype=np.float64)
        return values[np.random.default_rng(seed + 7919).choice(len(values), size=n, p=probs / probs.sum())]


def infaas_hint_mixes(zoo: Zoo, fixed_subnets: int) -> list[tuple[tuple[float, float], ...]]:
    """INFaaS's configurations: requests' accuracy hints drawn uniformly from the accuracies of the first k+1 of the
    spread subnets, k = 0..fixed_subnets-1 (k = 0: every request accepts the smallest, so INFaaS never switches)."""
    accs = [zoo.entries[i].accuracy for i in spread_indices(len(zoo.entries), fixed_subnets)]
    return [tuple((a, 1.0 / (k + 1)) for a in accs[:k + 1]) for k in range(len(accs))]


def lineup(zoo: Zoo, fixed_subnets: int = 4, infaas_switch_ms: float | None = None,
           slackfit_params: dict[str, Any] | None = None) -> list[Config]:
    """SlackFit (plain), its two ablations, Clipper+ and Clockwork on `fixed_subnets` subnets spread over the zoo,
    and INFaaS under each hint mix of `infaas_hint_mixes`."""
    configs = [Config(make_policy("slackfit", zoo, **(slackfit_params or {})))]
    configs += [Config(make_policy(name, zoo)) for name in ABLATIONS]
    infaas_kw = {} if infaas_switch_ms is None else {"switch_ms": infaas_switch_ms}
    for i in spread_indices(len(zoo.entries), fixed_subnets):
        configs.append(Config(make_policy("clipper+", zoo, subnet=i)))
        configs.append(Config(make_policy("clockwork", zoo, subnet=i)))
    infaas = make_policy("infaas", zoo, **infaas_kw)
    for mix in infaas_hint_mixes(zoo, fixed_subnets):
        configs.append(Config(infaas, mix, f"infaas[hints {'/'.join(f'{a * 100:.1f}' for a, _ in mix)}%]"))
    return configs


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
    hints: str = ""  # the accuracy-hint mix its requests carried ("" = none)


def arrivals_for(zoo: Zoo, trace: str, load: float, workers: int, slo_ms: float, duration_s: float,
                 seed: int) -> tuple[np.ndarray, float]:
    rate = load * capacity_qps(zoo, workers, slo_ms)
    return traces.named(trace, rate, duration_s, np.random.default_rng(seed)), rate


def run_config(config: Policy | Config, arrivals: np.ndarray, *, trace: str, load: float, rate: float,
               slo_ms: float, sim: SimConfig) -> Point:
    """One configuration's point on the given arrivals."""
    c = config if isinstance(config, Config) else Config(config)
    s = summarize(simulate(arrivals, c.policy, slo_ms, c.min_accuracy(len(arrivals), sim.seed), config=sim))
    family = c.policy.name.split("[")[0]
    hints = "/".join(f"{p:.3f}@{a:.4f}" for a, p in c.hints)
    return Point(c.name, family, trace, load, rate, s.requests, s.slo_attainment,
                 s.mean_accuracy if not math.isnan(s.mean_accuracy) else 0.0, s.p99_latency_ms, s.goodput_qps, hints)


def run_points(zoo: Zoo, policies: Sequence[Policy | Config], trace: str, load: float, *, workers: int,
               slo_ms: float, duration_s: float, seed: int, config: SimConfig | None = None,
               progress: Callable[[], None] | None = None) -> list[Point]:
    """Simulate every configuration on the same arrivals (same seed) and return their points."""
    arrivals, rate = arrivals_for(zoo, trace, load, workers, slo_ms, duration_s, seed)
    config = config or SimConfig(workers=workers, seed=seed)
    out = []
    for policy in policies:
        out.append(run_config(policy, arrivals, trace=trace, load=load, rate=rate, slo_ms=slo_ms, sim=config))
        if progress:
            progress()
    return out


# --- SlackFit at a baseline's accuracy ----------------------------------------------------------------------------
def hint_mix(levels: Sequence[float], x: float) -> tuple[tuple[float, float], ...]:
    """The hint mix at knob position x in [0, len(levels)]: x = k + q hints a share q of requests with the
    (k+1)-th level and the rest with the k-th (level 0 = no hint). Mean accuracy grows with x."""
    values = [0.0, *levels]
    k = min(math.floor(x), len(levels))
    q = x - k
    if q <= 1e-12 or k == len(levels):
        return ((values[k], 1.0),)
    return ((values[k], 1.0 - q), (values[k + 1], q))


@dataclass
class AccuracyMatcher:
    """Finds SlackFit hint mixes whose mean accuracy matches targets, on one (trace, load): a bisection over the
    `hint_mix` knob, every evaluation a real simulation, cached and shared between targets."""

    policy: Policy
    arrivals: np.ndarray
    run: Callable[[Config], Point]
    levels: tuple[float, ...]
    max_runs: int = 8  # per target
    evaluated: dict[float, Point] = field(default_factory=dict)

    def at(self, x: float) -> Point:
        x = round(x, 6)
        if x not in self.evaluated:
            mix = hint_mix(self.levels, x)
            label = "slackfit" if mix == ((0.0, 1.0),) else \
                f"slackfit[hints {'+'.join(f'{p:.2f}x{a * 100:.1f}%' for a, p in mix)}]"
            self.evaluated[x] = self.run(Config(self.policy, () if mix == ((0.0, 1.0),) else mix, label))
        return self.evaluated[x]

    def match(self, target: float, tol: float = MATCH_TOL) -> tuple[Point, bool]:
        """The evaluated point closest to `target` mean accuracy, and whether it is within tol."""
        lo, hi = 0.0, float(len(self.levels))
        for _ in range(self.max_runs):
            # Tighten the bracket from everything evaluated so far (mean accuracy is monotone in x up to noise).
            below = [x for x, p in self.evaluated.items() if p.mean_accuracy <= target]
            above = [x for x, p in self.evaluated.items() if p.mean_accuracy >= target]
            lo = max(below, default=lo)
            hi = min([x for x in above if x >= lo], default=hi)
            best = min(self.evaluated.values(), key=lambda p: abs(p.mean_accuracy - target), default=None)
            if best is not None and abs(best.mean_accuracy - target) <= tol:
                return best, True
            if 0.0 not in self.evaluated:
                self.at(0.0)
                continue
            if self.evaluated[0.0].mean_accuracy > target + tol:
                break  # plain SlackFit is already more accurate: hints only raise accuracy
            if float(len(self.levels)) not in self.evaluated and hi == float(len(self.levels)):
                self.at(hi)
                continue
            pl, ph = self.evaluated.get(round(lo, 6)), self.evaluated.get(round(hi, 6))
            if pl is None or ph is None or ph.mean_accuracy <= pl.mean_accuracy:
                x = (lo + hi) / 2
            else:  # secant step, kept inside the bracket
                x = lo + (hi - lo) * (target - pl.mean_accuracy) / (ph.mean_accuracy - pl.mean_accuracy)
                x = min(max(x, lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
            if abs(hi - lo) < 1e-4:
                break
            self.at(x)
        best = min(self.evaluated.values(), key=lambda p: abs(p.mean_accuracy - target))
        return best, abs(best.mean_accuracy - target) <= tol


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


HEADLINE_MIN_BASELINE_ATTAINMENT = 0.05  # ratios over a baseline attaining less measure its collapse, not a gain


def measured_comparison(plain: Point, configs: Sequence[Point], matched: Sequence[tuple[Point, bool]],
                        attainment_tol: float = ATTAINMENT_TOL) -> dict[str, Any]:
    """SlackFit against one system's configurations, from measured points only (no interpolation).

    - accuracy_gain_points: 100 x (plain SlackFit's mean accuracy - that of the most accurate configuration whose
      attainment is at least SlackFit's - `attainment_tol`); None when no configuration attains that much.
    - per configuration: SlackFit run at its accuracy (`matched[i]`: the point and whether its mean accuracy is
      within MATCH_TOL) and the attainment ratio, measured on both sides.
    - attainment_gain_x: the largest ratio over matched configurations whose attainment is at least
      HEADLINE_MIN_BASELINE_ATTAINMENT; None if there is none.
    """
    ok = [c for c in configs if c.slo_attainment >= plain.slo_attainment - attainment_tol]
    best = max(ok, key=lambda c: c.mean_accuracy, default=None)
    rows = []
    for c, (m, within) in zip(configs, matched, strict=True):
        ratio = m.slo_attainment / c.slo_attainment if c.slo_attainment > 0 else None
        rows.append({"baseline": c.policy, "baseline_accuracy": c.mean_accuracy,
                     "baseline_attainment": c.slo_attainment, "slackfit_run": m.policy,
                     "slackfit_accuracy": m.mean_accuracy, "slackfit_attainment": m.slo_attainment,
                     "accuracy_matched": within, "attainment_ratio": ratio})
    eligible = [r["attainment_ratio"] for r in rows if r["accuracy_matched"] and r["attainment_ratio"] is not None
                and r["baseline_attainment"] >= HEADLINE_MIN_BASELINE_ATTAINMENT]
    return {"slackfit_accuracy": plain.mean_accuracy, "slackfit_attainment": plain.slo_attainment,
            "baseline_at_equal_attainment": None if best is None else best.policy,
            "accuracy_gain_points": None if best is None else 100 * (plain.mean_accuracy - best.mean_accuracy),
            "attainment_gain_x": max(eligible, default=None), "at_equal_accuracy": rows}


@dataclass(frozen=True)
class TradeoffSetup:
    traces: tuple[str, ...] = ("azure", "gamma:2", "gamma:4", "gamma:8")
    loads: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # multiples of capacity_qps: light .. overload
    duration_s: float = 3.0  # trace length on the CPU zoo; a zoo scaled by f runs duration_s * f (same request count)
    slo_ms: float = 36.0
    workers: int = 8
    fixed_subnets: int = 4  # Clipper+/Clockwork instances and INFaaS hint mixes, on subnets spread over the zoo
    infaas_switch_ms: float | None = None  # None: the INFaaS policy default
    seed: int = 0
    match_accuracy: bool = True  # run SlackFit at each system configuration's accuracy (the measured comparison)


def run_tradeoff(zoo: Zoo, setup: TradeoffSetup, time_scale: float = 1.0,
                 progress: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Every configuration's point for every (trace, load), and SlackFit's comparisons.

    Returns one dict per (trace, load): {"trace", "load", "rate_qps", "points": [Point...] (plain SlackFit first,
    then the ablations, Clipper+, Clockwork, INFaaS), "matched": [Point...] (SlackFit's hinted runs),
    "vs_clipper" / "vs_infaas": measured_comparison, "vs_all_interpolated": the secondary, interpolated
    comparison against every other configuration's frontier (`compare`)}.
    """
    configs = lineup(zoo, setup.fixed_subnets, setup.infaas_switch_ms)
    slackfit = configs[0].policy
    out = []
    for trace in setup.traces:
        for load in setup.loads:
            arrivals, rate = arrivals_for(zoo, trace, load, setup.workers, setup.slo_ms,
                                          setup.duration_s * time_scale, setup.seed)
            sim = SimConfig(workers=setup.workers, seed=setup.seed)

            def run(c: Config, arrivals: np.ndarray = arrivals, trace: str = trace, load: float = load,
                    rate: float = rate, sim: SimConfig = sim) -> Point:
                p = run_config(c, arrivals, trace=trace, load=load, rate=rate, slo_ms=setup.slo_ms, sim=sim)
                if progress:
                    progress()
                return p

            points = [run(c) for c in configs]
            plain = points[0]
            matcher = AccuracyMatcher(slackfit, arrivals, run, tuple(sorted({e.accuracy for e in zoo.entries})))
            matcher.evaluated[0.0] = plain
            result: dict[str, Any] = {"trace": trace, "load": load, "rate_qps": rate, "points": points}
            for family in SYSTEMS:
                fam = [p for p in points if p.family == family]
                matched = [matcher.match(p.mean_accuracy) if setup.match_accuracy else (plain, False)
                           for p in fam]
                result[f"vs_{family.rstrip('+')}"] = measured_comparison(plain, fam, matched)
            result["matched"] = [p for x, p in sorted(matcher.evaluated.items()) if x != 0.0]
            result["vs_all_interpolated"] = compare(plain, points[1:])
            out.append(result)
    return out
