"""SlackFit (SuperServe, NSDI'25): fit the execution latency into the earliest deadline's remaining slack.

Offline, every (subnet, batch size) choice of the zoo is bucketed by its profiled latency into `buckets` equal-width
buckets. Online, for the free worker:

1. walk the EDF head; requests no allowed subnet can finish alone before their deadline are reported infeasible;
2. slack = deadline of the first feasible request - now - overhead;
3. among the choices that fit the slack, allowed by that request's accuracy hint, and whose batch size is at most
   the smallest profiled batch >= `queue_headroom` x the queued requests, take the highest-latency bucket that holds
   one; within it the largest batch, then the most accurate subnet;
4. batch = the first B queued requests (EDF) whose accuracy hint the chosen subnet meets.

Light load leaves the slack near the SLO and the queue short, so the top bucket holds large subnets at small batches;
under a burst the slack shrinks and the queue grows, so the chosen bucket drops to small subnets at large batches.

Bucket range (`bucket_range`). The paper's notes give the latency axis as [min, max] of the profile table "or [0,
SLO]". Over the whole table (`"table"`) the buckets are useless when the table reaches far beyond the SLO: on the
shipped CPU zoo (0.9 to 392 ms, SLO 36 ms) every choice that can meet the SLO falls in bucket 0, so "the highest
bucket that fits" never chooses and the policy is MaxBatch with a queue cap. The default (`"slo"`) buckets the
latencies that can meet a deadline: [the fastest choice, the SLO - overhead], equal width, per SLO class (the head
request's `slo_ms`; the edges are computed once per distinct SLO and memoised, so a decision is still a few
bisections). Choices slower than the SLO can never fit and sit in the top bucket. DEVIATION: [fastest, SLO] rather
than [0, SLO], so that no bucket is empty by construction.

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

# Defaults chosen by benchmarks/slackfit_defaults.py (results/slackfit_defaults.json: the shipped CPU zoo and the GPU
# zoos, 8 workers, SLO 36 ms, gamma CV² 4 and Azure, loads 0.5-8; see that file's docstring for the figures).
DEFAULT_BUCKETS = 4
DEFAULT_STAT: LatencyStat = "p99"
DEFAULT_QUEUE_HEADROOM = 1.0
DEFAULT_BUCKET_RANGE: BucketRange = "slo"


class SlackFit(PolicyBase):
    def __init__(self, zoo: Zoo, buckets: int = DEFAULT_BUCKETS, stat: LatencyStat = DEFAULT_STAT,
                 overhead_ms: float = 0.0, actuation_ms: float = 0.0,
                 queue_headroom: float = DEFAULT_QUEUE_HEADROOM, bucket_range: BucketRange = DEFAULT_BUCKET_RANGE) -> None:
        # Actuation is budgeted on every batch (conservative: it is only paid on a change of subnet).
        super().__init__(zoo, stat, overhead_ms + actuation_ms)
        if buckets < 1:
            raise ValueError(f"SlackFit needs at least one bucket, got {buckets}")
        if not queue_headroom >= 1:
            raise ValueError(f"queue_headroom must be >= 1 (inf = no cap), got {queue_headroom}")
        if bucket_range not in ("slo", "table"):
            raise ValueError(f"bucket_range must be 'slo' or 'table', got {bucket_range!r}")
        self.buckets = buckets
        self.queue_headroom = queue_headroom
        self.bucket_range = bucket_range
        self.switch_ms = actuation_ms  # SubNetAct actuation: sub-millisecond, 0 unless measured
        defaults = (buckets, stat, queue_headroom, bucket_range) == (
            DEFAULT_BUCKETS, DEFAULT_STAT, DEFAULT_QUEUE_HEADROOM, DEFAULT_BUCKET_RANGE)
        range_tag = "" if bucket_range == DEFAULT_BUCKET_RANGE else f",{bucket_range}"
        self.name = "slackfit" if defaults else f"slackfit[K={buckets},{stat},h={queue_headroom:g}{range_tag}]"
        lats = [x for row in self.profile.lat_ms for x in row]
        self.lat_lo_ms, self.lat_hi_ms = min(lats), max(lats)
        # tables[level][bcap] per SLO class: the choice for a request needing accuracy level `level` with `bcap` the
        # batch index cap. A memo of a pure function of (zoo, slo_ms): decide stays a pure function of its inputs.
        self._tables: dict[float, list[list[FitTable]]] = {}

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
        choice = self.tables_for(head.slo_ms)[level][bcap].lookup(slack_ms)
        assert choice is not None  # the head is feasible, so at least its fastest batch-of-one choice fits
        ids = take_batch(snapshot.requests, start, choice.batch_size, choice.accuracy)
        return finish(ids, prof.subnet_ids[choice.subnet_index], infeasible, choice.latency_ms), state


def _slackfit_key(c: Choice) -> tuple[int, float, float]:
    return (c.batch_size, c.accuracy, -c.latency_ms)


@register("slackfit")
def _make(zoo: Zoo, **params: Any) -> SlackFit:
    return SlackFit(zoo, **params)
