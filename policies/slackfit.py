"""SlackFit (SuperServe, NSDI'25): fit the execution latency into the earliest deadline's remaining slack.

Offline, every (subnet, batch size) choice of the zoo is bucketed by its profiled latency into `buckets` equal-width
buckets; each bucket's representative is its largest batch, then its most accurate subnet (papers.md §1.5). Online,
for the free worker:

1. walk the EDF head; requests no allowed subnet can finish alone before their deadline are reported infeasible;
2. slack = deadline of the first feasible request - now - overhead;
3. among the choices allowed by that request's accuracy hint and whose batch size is at most the smallest profiled
   batch >= `queue_headroom` x the queued requests, pick by `rule`:
   - `"paper"` (default): k* = the highest bucket whose upper bound is within the slack, and its representative
     (the next lower non-empty bucket if k* holds no allowed choice). When no bucket's upper bound fits, bucket 0's
     representative, as the paper's notes infer ("if none fits: k* = 0"): the head may then finish late, but the
     batch stays large;
   - `"fit"`: the highest bucket holding a choice that fits the slack, and among its fitting choices the largest
     batch, then the most accurate (the batch always fits; this was the rule before the paper's was implemented);
4. batch = the first B queued requests (EDF) whose accuracy hint the chosen subnet meets.

Light load leaves the slack near the SLO and the queue short, so the top bucket holds large subnets at small batches;
under a burst the slack shrinks and the queue grows, so the chosen bucket drops to small subnets at large batches.
Why the fallback matters: under sustained overload the EDF head always sits near its deadline. The fit rule then
shrinks the batch to what fits that sliver of slack, throughput falls below the arrival rate, and the queue never
drains (on the paper-like zoo at 4x load, gamma CV² 4: attainment 0.18 with the fit rule, 0.94 with the paper's,
K=8; benchmarks/slackfit_defaults.py has the sweep).

Bucket range (`bucket_range`). The paper's notes give the latency axis as [min, max] of the profile table "or [0,
SLO]". Over the whole table (`"table"`) the buckets are useless when the table reaches far beyond the SLO: on the
shipped CPU zoo (0.9 to 392 ms, SLO 36 ms) every choice that can meet the SLO falls in bucket 0 of 4, so "the
highest bucket that fits" never chooses and the policy is MaxBatch with a queue cap. The default (`"slo"`) buckets
the latencies that can meet a deadline: [the fastest choice, the SLO - overhead], equal width, per SLO class (the
head request's `slo_ms`; the edges and tables are computed once per distinct SLO and memoised, so a decision is
still a few bisections and a pure function of its inputs). Choices slower than the SLO are never representatives.
DEVIATION: [fastest, SLO] rather than [0, SLO], so that no bucket is empty by construction.

NOTE: the queue-length cap in step 3 is ours. `queue_headroom=inf` removes it and gives the paper's rule (the largest
batch of the bucket whatever the queue holds), which runs a lone request on a small subnet at light load. Headroom 1
(the default) plans exactly for the queue: the most accurate at light load, but at deep overload a worker that frees
while the queue is momentarily short spends a slow subnet on a few requests; headroom > 1 plans for arrivals during
the batch, without forecasting them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from policies.base import Choice, FitTable, PolicyBase, all_choices, finish, register, split_head, take_batch
from superserve.types import Decision, QueueSnapshot, Request, WorkerState
from superserve.zoo import LatencyStat, Zoo

BucketRange = Literal["slo", "table"]
Rule = Literal["fit", "paper"]

# Defaults chosen by benchmarks/slackfit_defaults.py (results/slackfit_defaults.json: the shipped CPU zoo on 8 workers,
# the shipped zoo on each GPU profile and the paper-like OFA-ResNet50 zoo on 1 GPU; SLO 36 ms; gamma CV² 4 and Azure;
# loads 0.5-8), by mean attainment over the five zoos, then mean accuracy: paper rule K=16 0.854 (accuracy 0.895);
# K=8 0.816, K=6 0.778, K=4 0.646, K <= 2 below 0.53 (a wide bucket 0 puts large subnets at large batches in the
# fallback, which collapses under overload); the fit rule 0.785-0.826 for every K (accuracy 0.892-0.897), 0.50-0.53
# on the paper-like zoo where the paper rule attains 0.67 (K=16) to 0.69 (K=6-8). Around K=16: the whole-table range
# 0.850 (0.976 vs 0.981 on the CPU zoo), the median statistic 0.807, headroom 2 the same as 1, no queue cap 0.6
# points less accurate.
DEFAULT_BUCKETS = 16
DEFAULT_STAT: LatencyStat = "p99"
DEFAULT_QUEUE_HEADROOM = 1.0
DEFAULT_BUCKET_RANGE: BucketRange = "slo"
DEFAULT_RULE: Rule = "paper"


class SlackFit(PolicyBase):
    def __init__(self, zoo: Zoo, buckets: int = DEFAULT_BUCKETS, stat: LatencyStat = DEFAULT_STAT,
                 overhead_ms: float = 0.0, actuation_ms: float = 0.0,
                 queue_headroom: float = DEFAULT_QUEUE_HEADROOM, bucket_range: BucketRange = DEFAULT_BUCKET_RANGE,
                 rule: Rule = DEFAULT_RULE) -> None:
        # Actuation is budgeted on every batch (conservative: it is only paid on a change of subnet).
        super().__init__(zoo, stat, overhead_ms + actuation_ms)
        if buckets < 1:
            raise ValueError(f"SlackFit needs at least one bucket, got {buckets}")
        if not queue_headroom >= 1:
            raise ValueError(f"queue_headroom must be >= 1 (inf = no cap), got {queue_headroom}")
        if bucket_range not in ("slo", "table"):
            raise ValueError(f"bucket_range must be 'slo' or 'table', got {bucket_range!r}")
        if rule not in ("fit", "paper"):
            raise ValueError(f"rule must be 'fit' or 'paper', got {rule!r}")
        self.rule = rule
        self.buckets = buckets
        self.queue_headroom = queue_headroom
        self.bucket_range = bucket_range
        self.switch_ms = actuation_ms  # SubNetAct actuation: sub-millisecond, 0 unless measured
        defaults = (buckets, stat, queue_headroom, bucket_range, rule) == (
            DEFAULT_BUCKETS, DEFAULT_STAT, DEFAULT_QUEUE_HEADROOM, DEFAULT_BUCKET_RANGE, DEFAULT_RULE)
        range_tag = ("" if bucket_range == DEFAULT_BUCKET_RANGE else f",{bucket_range}") + \
            ("" if rule == DEFAULT_RULE else f",{rule}")
        self.name = "slackfit" if defaults else f"slackfit[K={buckets},{stat},h={queue_headroom:g}{range_tag}]"
        lats = [x for row in self.profile.lat_ms for x in row]
        self.lat_lo_ms, self.lat_hi_ms = min(lats), max(lats)
        # tables[level][bcap] per SLO class: the choice for a request needing accuracy level `level` with `bcap` the
        # batch index cap. A memo of a pure function of (zoo, slo_ms): decide stays a pure function of its inputs.
        self._tables: dict[float, list[list[FitTable]]] = {}
        self._reps: dict[float, list[list[list[Choice | None]]]] = {}  # the paper rule's representatives

    # --- buckets --------------------------------------------------------------------------------------------------
    def bucket_edges_ms(self, slo_ms: float) -> tuple[float, float]:
        """[low, high] of the bucketed latency range for requests of this SLO."""
        if self.bucket_range == "table":
            return self.lat_lo_ms, self.lat_hi_ms
        return self.lat_lo_ms, max(slo_ms - self.overhead_ms, self.lat_lo_ms)

    def bucket_of(self, latency_ms: float, slo_ms: float) -> int:
        """The bucket of a choice's latency for requests of this SLO (0 = fastest; slower than the range = top)."""
        lo, hi = self.bucket_edges_ms(slo_ms)
        width = (hi - lo) / self.buckets
        if width <= 0:
            return 0
        return max(0, min(self.buckets - 1, int((latency_ms - lo) / width)))

    def tables_for(self, slo_ms: float) -> list[list[FitTable]]:
        key = round(slo_ms, 6)  # deadline - arrival carries float noise; a microsecond is far below any bucket
        tables = self._tables.get(key)
        if tables is None:
            prof = self.profile
            tables = [[FitTable(all_choices(prof, level, bcap), _slackfit_key,
                                lambda c, s=key: self.bucket_of(c.latency_ms, s))
                       for bcap in range(len(prof.batch_sizes))]
                      for level in range(len(prof.acc_levels))]
            self._tables[key] = tables
        return tables

    def reps_for(self, slo_ms: float) -> list[list[list[Choice | None]]]:
        """reps[level][bcap][k]: bucket k's representative (largest batch, then most accurate) or None if empty."""
        key = round(slo_ms, 6)
        reps = self._reps.get(key)
        if reps is None:
            prof = self.profile
            reps = []
            for level in range(len(prof.acc_levels)):
                row = []
                for bcap in range(len(prof.batch_sizes)):
                    best: list[Choice | None] = [None] * self.buckets
                    for c in all_choices(prof, level, bcap):
                        if c.latency_ms > self.bucket_edges_ms(key)[1] + 1e-9:
                            continue  # slower than the SLO allows: never a representative
                        k = self.bucket_of(c.latency_ms, key)
                        if best[k] is None or _slackfit_key(c) > _slackfit_key(best[k]):  # type: ignore[arg-type]
                            best[k] = c
                    row.append(best)
                reps.append(row)
            self._reps[key] = reps
        return reps

    def _paper_choice(self, slo_ms: float, level: int, bcap: int, slack_ms: float) -> Choice:
        lo, hi = self.bucket_edges_ms(slo_ms)
        width = (hi - lo) / self.buckets
        reps = self.reps_for(slo_ms)[level][bcap]
        # k* = the highest bucket whose upper bound fits the slack; none fits: bucket 0 (the head may then be late).
        k_star = -1 if width <= 0 else min(self.buckets - 1, int((slack_ms + 1e-9 - lo) / width) - 1)
        for k in range(max(k_star, 0), -1, -1):
            if reps[k] is not None:
                return reps[k]  # type: ignore[return-value]
        return next(r for r in reps if r is not None)  # nothing at or below k*: the lowest non-empty bucket

    # --- deciding -------------------------------------------------------------------------------------------------
    def _fastest_ms(self, req: Request) -> float | None:
        level = self.profile.level_index(req.min_accuracy)
        return None if level is None else self.profile.fastest1_ms[level] + self.overhead_ms

    def decide(self, snapshot: QueueSnapshot, now_s: float, worker: WorkerState,
               state: Any) -> tuple[Decision | None, Any]:
        infeasible, start = split_head(snapshot, now_s, self._fastest_ms)
        if start == len(snapshot.requests):
            return finish((), None, infeasible, 0.0), state
        head = snapshot.requests[start]
        prof = self.profile
        level = prof.level_index(head.min_accuracy)
        assert level is not None  # split_head only stops at a request some subnet can serve
        slack_ms = (head.deadline_s - now_s) * 1e3 - self.overhead_ms
        queued = snapshot.queue_len - len(infeasible)
        bcap = len(prof.batch_sizes) - 1 if math.isinf(self.queue_headroom) else \
            prof.bcap_index(math.ceil(queued * self.queue_headroom))
        if self.rule == "paper":
            choice = self._paper_choice(head.slo_ms, level, bcap, slack_ms)
        else:
            choice = self.tables_for(head.slo_ms)[level][bcap].lookup(slack_ms)
            assert choice is not None  # the head is feasible, so at least its fastest batch-of-one choice fits
        ids = take_batch(snapshot.requests, start, choice.batch_size, choice.accuracy)
        return finish(ids, prof.subnet_ids[choice.subnet_index], infeasible, choice.latency_ms), state


def _slackfit_key(c: Choice) -> tuple[int, float, float]:
    return (c.batch_size, c.accuracy, -c.latency_ms)


@register("slackfit")
def _make(zoo: Zoo, **params: Any) -> SlackFit:
    return SlackFit(zoo, **params)
