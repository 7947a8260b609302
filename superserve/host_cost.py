"""How much a serving host adds to the latency table: a per-batch cost and a per-arrival stall, fitted from a server's
per-request records (`superserve serve --records`), for the simulator's `SimConfig.host_ms_per_*`.

On a CPU host the process that runs the model also receives, decodes and answers calls, under one interpreter lock
and on the same cores as the workers (and, in a benchmark, as the client). A batch then takes longer than the table
says, by roughly a fixed cost plus a stall for every call that arrives while it runs. Fitted by least squares over the
batches of a run:

    observed - table median (subnet, size)  =  ms_per_batch + ms_per_request x (arrivals during the batch)

The slope is Theil-Sen's (the median of pairwise slopes, scipy.stats.theilslopes), not least squares: a few batches
stalled by something else (a page fault, the client's collector) would otherwise tilt it; on five 10-20 s
calibration runs here least squares gave 1.08-1.76 ms per arrival and Theil-Sen 1.08-1.65. Both are clipped at 0.
The fit is only as good as the run it comes from: calibrate on a run that covers light and heavy moments (20 s of a
ramp gave 1.20 and 1.35 in two runs), and not on the runs the simulator is then compared with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from superserve.records import LATE, OK, RequestRecord
from superserve.zoo import Zoo


@dataclass(frozen=True)
class HostCost:
    ms_per_batch: float
    ms_per_request: float
    batches: int  # batches the fit used
    mean_arrivals_per_batch: float
    residual_ms: float  # root mean square of the fit's residuals


def batch_excess(records: Iterable[RequestRecord], zoo: Zoo) -> tuple[np.ndarray, np.ndarray]:
    """Per served batch: (arrivals while it ran, observed minus the table's median ms). A batch is the requests one
    worker started at one instant on one subnet."""
    recs = list(records)
    arrivals = np.sort(np.array([r.arrival_s for r in recs], dtype=float))
    batches: dict[tuple[int | None, float, str], list[RequestRecord]] = defaultdict(list)
    for r in recs:
        if r.status in (OK, LATE) and r.dispatch_s is not None and r.finish_s is not None and r.subnet_id:
            batches[(r.worker_id, r.dispatch_s, r.subnet_id)].append(r)
    by_id = {e.subnet_id: e for e in zoo.entries}
    sizes = np.array(zoo.batch_sizes, dtype=float)
    during, excess = [], []
    for (_, start, sid), rs in batches.items():
        entry = by_id.get(sid)
        if entry is None:
            continue
        finish = max(r.finish_s for r in rs)  # type: ignore[type-var]
        table_ms = float(np.interp(len(rs), sizes, [entry.latency_ms[b].median_ms for b in zoo.batch_sizes]))
        during.append(np.searchsorted(arrivals, finish, "left") - np.searchsorted(arrivals, start, "right"))
        excess.append((finish - start) * 1e3 - table_ms)
    return np.array(during, dtype=float), np.array(excess, dtype=float)


def fit_host_cost(records: Iterable[RequestRecord], zoo: Zoo) -> HostCost:
    during, excess = batch_excess(records, zoo)
    if len(during) < 2:
        raise ValueError(f"need at least 2 served batches to fit a host cost, got {len(during)}")
    from scipy import stats  # 0.7 s to import: only when fitting

    if np.ptp(during) == 0:  # no spread in arrivals: only the per-batch cost is identifiable
        a, c = float(np.median(excess)), 0.0
    else:
        c, a = (float(x) for x in stats.theilslopes(excess, during)[:2])
        if c < 0:  # more arrivals never make a batch faster: refit the constant alone
            a, c = float(np.median(excess)), 0.0
    a, c = max(float(a), 0.0), max(float(c), 0.0)
    residual = float(np.sqrt(np.mean((excess - a - c * during) ** 2)))
    return HostCost(a, c, len(during), float(np.mean(during)), residual)
