"""Metrics from raw per-request records (no bucketed histograms), shared by the simulator and the real system.

Definitions (every request in the table counts, whatever its status):
- SLO attainment = requests served by their deadline / all requests.
- Mean serving accuracy = mean profiled accuracy of the subnet that served each *served* request (on time or late);
  NaN when nothing was served.
- Goodput = requests served by their deadline / duration, where duration runs from the first arrival to the last
  arrival or finish, whichever is later (q/s).
- Latency percentiles = numpy's linear-interpolated percentiles of finish - arrival over served requests, ms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from superserve.records import LATE, REJECTED, SHED, RecordTable, RequestRecord


@dataclass(frozen=True)
class Summary:
    requests: int
    met: int  # served by the deadline
    late: int  # served after the deadline
    shed: int
    rejected: int
    slo_attainment: float  # met / requests, fraction
    mean_accuracy: float  # over served requests, fraction (NaN if none)
    goodput_qps: float  # met / duration_s
    p50_latency_ms: float  # over served requests (NaN if none)
    p99_latency_ms: float
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _table(records: RecordTable | Sequence[RequestRecord]) -> RecordTable:
    return records if isinstance(records, RecordTable) else RecordTable.from_records(records)


def summarize(records: RecordTable | Sequence[RequestRecord]) -> Summary:
    t = _table(records)
    n = len(t)
    if n == 0:
        raise ValueError("no records to summarise")
    met = t.met
    served = t.served
    n_met = int(met.sum())
    end_s = float(np.nanmax(np.concatenate([t.arrival_s, t.finish_s]))) if served.any() else float(t.arrival_s.max())
    duration_s = end_s - float(t.arrival_s.min())
    latency_ms = (t.finish_s[served] - t.arrival_s[served]) * 1e3
    nan = float("nan")
    return Summary(
        requests=n, met=n_met, late=int(t.status_is(LATE).sum()), shed=int(t.status_is(SHED).sum()),
        rejected=int(t.status_is(REJECTED).sum()),
        slo_attainment=n_met / n,
        mean_accuracy=float(t.accuracy[served].mean()) if served.any() else nan,
        goodput_qps=n_met / duration_s if duration_s > 0 else nan,
        p50_latency_ms=float(np.percentile(latency_ms, 50)) if latency_ms.size else nan,
        p99_latency_ms=float(np.percentile(latency_ms, 99)) if latency_ms.size else nan,
        duration_s=duration_s,
    )


@dataclass(frozen=True)
class TimeSeries:
    """Per `bin_s` window, starting at the first arrival. Arrays all have one entry per window."""

    start_s: np.ndarray  # window start, seconds on the run clock
    arrivals: np.ndarray  # requests that arrived in the window
    met: np.ndarray  # of those, served by their deadline
    slo_attainment: np.ndarray  # met / arrivals (NaN for an empty window)
    mean_accuracy: np.ndarray  # over served requests that arrived in the window (NaN if none)
    goodput_qps: np.ndarray  # requests finishing on time within the window, per second
    subnet_share: dict[str, np.ndarray]  # fraction of the window's served requests per subnet

    def rows(self) -> list[dict[str, Any]]:
        return [{"start_s": float(self.start_s[k]), "arrivals": int(self.arrivals[k]), "met": int(self.met[k]),
                 "slo_attainment": float(self.slo_attainment[k]), "mean_accuracy": float(self.mean_accuracy[k]),
                 "goodput_qps": float(self.goodput_qps[k])} for k in range(len(self.start_s))]


def time_series(records: RecordTable | Sequence[RequestRecord], bin_s: float = 1.0) -> TimeSeries:
    if bin_s <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    t = _table(records)
    if len(t) == 0:
        raise ValueError("no records")
    t0 = float(t.arrival_s.min())
    served, met = t.served, t.met
    end = float(np.nanmax(np.concatenate([t.arrival_s, t.finish_s]))) if served.any() else float(t.arrival_s.max())
    nbins = int((end - t0) // bin_s) + 1
    arr_bin = ((t.arrival_s - t0) // bin_s).astype(np.int64)
    arrivals = np.bincount(arr_bin, minlength=nbins)
    met_by_arrival = np.bincount(arr_bin[met], minlength=nbins)
    served_count = np.bincount(arr_bin[served], minlength=nbins)
    acc_sum = np.bincount(arr_bin[served], weights=t.accuracy[served], minlength=nbins)
    fin_bin = ((t.finish_s[met] - t0) // bin_s).astype(np.int64)
    on_time_finishes = np.bincount(fin_bin, minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        attainment = np.where(arrivals > 0, met_by_arrival / arrivals, np.nan)
        accuracy = np.where(served_count > 0, acc_sum / served_count, np.nan)
        share = {sid: np.where(served_count > 0, np.bincount(arr_bin[served & (t.subnet == k)], minlength=nbins)
                               / served_count, np.nan) for k, sid in enumerate(t.subnet_ids)}
    return TimeSeries(t0 + bin_s * np.arange(nbins), arrivals, met_by_arrival, attainment, accuracy,
                      on_time_finishes / bin_s, share)
