"""Online correction of the zoo's latency table from observed service times (beyond the paper).

The policy's slack arithmetic is only as true as the latency table it was built from, and tables drift: a noisy
neighbour takes a core, the CPU throttles, the table came from a sibling host. So every finished batch reports its
service time (dispatch to result, as the engine saw it: compute plus hand-off), and this module keeps, per subnet, an
exponentially weighted geometric mean of observed / profiled-median (the profiled median interpolated at the actual
batch size, as the simulator's service model does). Subnets rarely chosen borrow strength from the global factor:

    factor(subnet) = (n * local + k * global) / (n + k),   n = batches seen for the subnet, k = `prior_batches`

`corrected_zoo()` is the original zoo with each subnet's median and p99 scaled by its factor, or None when no factor
moved by more than `min_change` since the last zoo handed out (rebuilding a policy costs milliseconds: not per batch).
Pure arithmetic on values handed in: no clock, no threads; the engine serialises calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from superserve.zoo import LatencyStats, Zoo


@dataclass(frozen=True)
class CorrectionConfig:
    alpha: float = 0.1  # EWMA weight of one batch (about 10 batches of memory)
    prior_batches: float = 10.0  # k above: how many local batches before a subnet's own factor dominates
    min_change: float = 0.05  # relative change of any factor that triggers a new zoo
    floor: float = 0.3  # factors are clamped to [floor, ceiling]: a wild outlier cannot wreck the table
    ceiling: float = 10.0


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
        self._seen = 0  # batches observed, all subnets
        self._applied = {sid: 1.0 for sid in zoo.subnet_ids}

    def observe(self, subnet_id: str, batch_size: int, service_s: float) -> None:
        """Fold one finished batch in. Unknown subnets and non-positive times are ignored."""
        table = self._median_ms.get(subnet_id)
        if table is None or service_s <= 0 or not 1 <= batch_size <= len(table):
            return
        log_ratio = math.log(service_s * 1e3 / table[batch_size - 1])
        a = self.config.alpha
        n = self._count[subnet_id]
        # The first observation replaces the neutral prior instead of being averaged with it.
        self._log_local[subnet_id] = log_ratio if n == 0 else (1 - a) * self._log_local[subnet_id] + a * log_ratio
        self._count[subnet_id] = n + 1
        self._log_global = log_ratio if self._seen == 0 else (1 - a) * self._log_global + a * log_ratio
        self._seen += 1

    def factor(self, subnet_id: str) -> float:
        n, k = self._count[subnet_id], self.config.prior_batches
        log_f = (n * self._log_local[subnet_id] + k * self._log_global) / (n + k)
        return min(self.config.ceiling, max(self.config.floor, math.exp(log_f)))

    def factors(self) -> dict[str, float]:
        return {sid: self.factor(sid) for sid in self.zoo.subnet_ids}

    def corrected_zoo(self) -> Zoo | None:
        """A zoo with corrected latencies if any factor moved by more than `min_change`, else None."""
        current = self.factors()
        if all(abs(current[s] / self._applied[s] - 1) <= self.config.min_change for s in current):
            return None
        self._applied = current
        tables = {e.subnet_id: {b: LatencyStats(s.median_ms * current[e.subnet_id], s.p99_ms * current[e.subnet_id])
                                for b, s in e.latency_ms.items()}
                  for e in self.zoo.entries}
        return self.zoo.with_latencies(tables, self.zoo.host)
