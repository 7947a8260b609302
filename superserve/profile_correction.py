"""Online correction of the zoo's latency table from observed service times (beyond the paper).

The policy's slack arithmetic is only as true as the latency table it was built from, and tables drift: a noisy
neighbour takes a core, the CPU throttles, the table came from a sibling host. So every finished batch reports its
service time (dispatch to result, as the engine saw it: compute plus hand-off), and this module keeps, per subnet, an
exponentially weighted geometric mean of observed / profiled-median (the profiled median interpolated at the actual
batch size, as the simulator's service model does). Subnets rarely chosen borrow strength from the global factor:

    factor(subnet) = (n * local + k * global) / (n + k),   n = batches seen for the subnet, k = `prior_batches`

`corrected_zoo()` is the original zoo with each subnet's median scaled by its factor, or None when no factor moved by
more than `min_change` since the last zoo handed out (rebuilding a policy costs milliseconds: not per batch).

Tails are corrected too, not just scaled with the median: SLO decisions use the p99, and a drifted host (a noisy
neighbour preempting the worker) mostly widens the spread. So the corrector also keeps an EWMA of the squared
deviation of the log ratio, sigma (blended with the global one like the factor), and the corrected p99 is

    p99' = max(p99_table * factor, median_table * factor * exp(z * sigma)),   z = 2.33 (the normal's 99th percentile)

i.e. never below the table's own tail shape, and wider when observed service times are spread wider than the table
says. (Without this, a table profiled on a busier host than the serving one taught the correction fast medians, and
the scaled-down p99 then under-estimated the tail as soon as a neighbour arrived.)
Corrections relax back toward the table with time (`relax(elapsed_s)`, called by the engine's refresher): a
subnet the corrected table deems infeasible gets no traffic and so no new observations, and without relaxing, one
slow transient (start-up imports, a neighbour that has left) could leave it shed forever.

Pure arithmetic on values handed in: no clock, no threads; the engine serialises calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from superserve.zoo import LatencyStats, Zoo


CORRECTION_INTERVAL_S = 0.25  # how often a driver rebuilds its policy from corrected latencies, by default


@dataclass(frozen=True)
class CorrectionConfig:
    alpha: float = 0.1  # EWMA weight of one batch (about 10 batches of memory)
    prior_batches: float = 10.0  # k above: how many local batches before a subnet's own factor dominates
    min_change: float = 0.05  # relative change of any factor that triggers a new zoo
    floor: float = 0.3  # factors are clamped to [floor, ceiling]: a wild outlier cannot wreck the table
    ceiling: float = 10.0
    tail_z: float = 2.33  # p99 of a log-normal spread: median * exp(z * sigma)
    max_sigma: float = 0.75  # the observed log spread is capped (p99 at most exp(2.33 * 0.75) ~ 5.7x the median)
    relax_s: float = 5.0  # time constant of the relaxation toward the table when observations stop


class ProfileCorrector:
    def __init__(self, zoo: Zoo, config: CorrectionConfig = CorrectionConfig()) -> None:
        self.zoo = zoo
        self.config = config
        sizes = np.array(zoo.batch_sizes, dtype=float)
        self._batch = np.arange(1, zoo.batch_sizes[-1] + 1, dtype=float)
        self._median_ms = {e.subnet_id: np.interp(self._batch, sizes, [e.latency_ms[b].median_ms
                                                                      for b in zoo.batch_sizes])
                           for e in zoo.entries}
        self._log_local = {sid: 0.0 for sid in zoo.subnet_ids}
        self._count = {sid: 0 for sid in zoo.subnet_ids}
        self._log_global = 0.0
        self._var_local = {sid: 0.0 for sid in zoo.subnet_ids}  # EWMA of squared deviations of the log ratio
        self._var_global = 0.0
        self._seen = 0  # batches observed, all subnets
        self._applied = {sid: (1.0, 0.0) for sid in zoo.subnet_ids}  # (factor, sigma) of the last zoo handed out

    def observe(self, subnet_id: str, batch_size: int, service_s: float) -> None:
        """Fold one finished batch in. Unknown subnets and non-positive times are ignored."""
        table = self._median_ms.get(subnet_id)
        if table is None or service_s <= 0 or not 1 <= batch_size <= len(table):
            return
        log_ratio = math.log(service_s * 1e3 / table[batch_size - 1])
        a = self.config.alpha
        n = self._count[subnet_id]
        # The first observation replaces the neutral prior instead of being averaged with it.
        if n == 0:
            self._log_local[subnet_id] = log_ratio
        else:
            dev = log_ratio - self._log_local[subnet_id]
            self._var_local[subnet_id] = (1 - a) * self._var_local[subnet_id] + a * dev * dev
            self._log_local[subnet_id] += a * dev
        self._count[subnet_id] = n + 1
        if self._seen == 0:
            self._log_global = log_ratio
        else:
            dev = log_ratio - self._log_global
            self._var_global = (1 - a) * self._var_global + a * dev * dev
            self._log_global += a * dev
        self._seen += 1

    def factor(self, subnet_id: str) -> float:
        n, k = self._count[subnet_id], self.config.prior_batches
        log_f = (n * self._log_local[subnet_id] + k * self._log_global) / (n + k)
        return min(self.config.ceiling, max(self.config.floor, math.exp(log_f)))

    def relax(self, elapsed_s: float) -> None:
        """Shrink every correction toward the table by exp(-elapsed / relax_s). Steady traffic outweighs it (each batch
        moves the EWMA by alpha); a subnet that stopped getting traffic drifts back to its profile."""
        if elapsed_s <= 0:
            return
        keep = math.exp(-elapsed_s / self.config.relax_s)
        for sid in self._log_local:
            self._log_local[sid] *= keep
            self._var_local[sid] *= keep * keep  # sigma shrinks at the rate the log factor does
        self._log_global *= keep
        self._var_global *= keep * keep

    def sigma(self, subnet_id: str) -> float:
        """Observed spread of log(service / table median) for the subnet, blended with the global one."""
        n, k = self._count[subnet_id], self.config.prior_batches
        var = (n * self._var_local[subnet_id] + k * self._var_global) / (n + k)
        return min(self.config.max_sigma, math.sqrt(var))

    def factors(self) -> dict[str, float]:
        return {sid: self.factor(sid) for sid in self.zoo.subnet_ids}

    def corrected_zoo(self) -> Zoo | None:
        """A zoo with corrected latencies if any factor or tail moved by more than `min_change`, else None."""
        z, tol = self.config.tail_z, self.config.min_change
        current = {sid: (self.factor(sid), self.sigma(sid)) for sid in self.zoo.subnet_ids}
        if all(abs(f / self._applied[s][0] - 1) <= tol and abs(math.exp(z * (g - self._applied[s][1])) - 1) <= tol
               for s, (f, g) in current.items()):
            return None
        self._applied = current
        tables = {}
        for e in self.zoo.entries:
            f, tail = current[e.subnet_id][0], math.exp(z * current[e.subnet_id][1])
            tables[e.subnet_id] = {b: LatencyStats(s.median_ms * f, max(s.p99_ms * f, s.median_ms * f * tail))
                                   for b, s in e.latency_ms.items()}
        return self.zoo.with_latencies(tables, self.zoo.host)
