"""SlackFit (SuperServe, NSDI'25): fit the execution latency into the earliest deadline's remaining slack.

Offline, every (subnet, batch size) choice of the zoo is bucketed by its profiled latency into `buckets` equal-width
buckets over [fastest, slowest]. Online, for the free worker:

1. walk the EDF head; requests no allowed subnet can finish alone before their deadline are reported infeasible;
2. slack = deadline of the first feasible request - now - overhead;
3. among the choices that fit the slack, allowed by that request's accuracy hint, and whose batch size is not larger
   than needed for the queue (the smallest profiled batch >= queued requests), take the highest-latency bucket that
   holds one; within it the largest batch, then the most accurate subnet;
4. batch = the first B queued requests (EDF) whose accuracy hint the chosen subnet meets.

Light load leaves the slack near the SLO and the queue short, so the top bucket holds large subnets at small batches;
under a burst the slack shrinks and the queue grows, so the chosen bucket drops to small subnets at large batches.

NOTE: the queue-length cap in step 3 is ours: the paper's representative per bucket is the largest batch regardless
of the queue, which would run one queued request on the smallest subnet at light load.
"""

from __future__ import annotations

from typing import Any

from policies.base import Choice, FitTable, PolicyBase, all_choices, finish, register, split_head, take_batch
from superserve.types import Decision, QueueSnapshot, Request, WorkerState
from superserve.zoo import LatencyStat, Zoo

DEFAULT_BUCKETS = 8  # chosen by the bucket sweep in benchmarks/tradeoff.py (see its "slackfit_defaults" detail)
DEFAULT_STAT: LatencyStat = "p99"


class SlackFit(PolicyBase):
    def __init__(self, zoo: Zoo, buckets: int = DEFAULT_BUCKETS, stat: LatencyStat = DEFAULT_STAT,
                 overhead_ms: float = 0.0, actuation_ms: float = 0.0) -> None:
        # Actuation is budgeted on every batch (conservative: it is only paid on a change of subnet).
        super().__init__(zoo, stat, overhead_ms + actuation_ms)
        if buckets < 1:
            raise ValueError(f"SlackFit needs at least one bucket, got {buckets}")
        self.buckets = buckets
        self.switch_ms = actuation_ms  # SubNetAct actuation: sub-millisecond, 0 unless measured
        self.name = "slackfit" if (buckets, stat) == (DEFAULT_BUCKETS, DEFAULT_STAT) else \
            f"slackfit[K={buckets},{stat}]"
        prof = self.profile
        lats = [x for row in prof.lat_ms for x in row]
        self.lat_lo_ms, lat_hi = min(lats), max(lats)
        self.bucket_width_ms = (lat_hi - self.lat_lo_ms) / buckets or 1.0
        # tables[level][bcap]: the choice for a request needing accuracy level `level` with `bcap` the batch index cap.
        # Within the highest fitting bucket: the largest batch, then the most accurate subnet.
        self.tables = [[FitTable(all_choices(prof, level, bcap), _slackfit_key, lambda c: self.bucket_of(c.latency_ms))
                        for bcap in range(len(prof.batch_sizes))]
                       for level in range(len(prof.acc_levels))]

    def bucket_of(self, latency_ms: float) -> int:
        return min(self.buckets - 1, int((latency_ms - self.lat_lo_ms) / self.bucket_width_ms))

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
        bcap = prof.bcap_index(snapshot.queue_len - len(infeasible))
        choice = self.tables[level][bcap].lookup(slack_ms)
        assert choice is not None  # the head is feasible, so at least its fastest batch-of-one choice fits
        ids = take_batch(snapshot.requests, start, choice.batch_size, choice.accuracy)
        return finish(ids, prof.subnet_ids[choice.subnet_index], infeasible, choice.latency_ms), state


def _slackfit_key(c: Choice) -> tuple[int, float, float]:
    return (c.batch_size, c.accuracy, -c.latency_ms)


@register("slackfit")
def _make(zoo: Zoo, **params: Any) -> SlackFit:
    return SlackFit(zoo, **params)
