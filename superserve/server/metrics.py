"""Observability: Prometheus metrics (Triton's `nv_inference_*` names where they mean the same) and JSONL records.

Triton-compatible (labels model, version): nv_inference_request_success / _failure (protocol calls),
nv_inference_count (images inferred), nv_inference_exec_count (batches run), nv_inference_request_duration_us,
nv_inference_queue_duration_us, nv_inference_compute_infer_duration_us (cumulative microseconds, as Triton's), and
nv_inference_pending_request_count (queued images).
SuperServe-specific: requests by outcome, SLO met/missed, end-to-end latency and batch-size histograms, the subnet
chosen, queue depth, and the online profile-correction factor per subnet.

Updates are deferred: the request path only appends a tuple to a deque, and a housekeeping thread applies them every
`flush_interval_s` (and any read of the registry applies them first, so a scrape is never stale). Applying them
inline cost each call ~10 us hot and far more cold, on the thread that held the GIL while the event loop waited to
send the answer.

Records: one `superserve.records.RequestRecord` per scheduled image, the schema the simulator writes, appended to a
JSONL file by a background thread that wakes every `flush_interval_s` (not per batch: a wake-up per batch took the GIL
from the answer path) so that the request path never waits on the disk.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from superserve.records import RequestRecord

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _ApplyPendingFirst:
    """A collector that yields nothing but applies the deferred updates: registered first, so every scrape (and
    `registry.get_sample_value`) sees every call answered before it."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        self._flush()
        return []


class _Ticker:
    """A daemon thread calling `fn` every `interval_s` until `stop()` (which calls it one last time)."""

    def __init__(self, fn: Callable[[], None], interval_s: float, name: str) -> None:
        self._fn, self._interval_s, self._stop = fn, interval_s, threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._fn()
        self._fn()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class ServerMetrics:
    def __init__(self, model: str, version: str, flush_interval_s: float = 0.1) -> None:
        self.registry = CollectorRegistry()
        self._pending: deque[tuple[Any, ...]] = deque()  # deferred updates; append/popleft are thread-safe
        self._depth: int | None = None  # the latest queue depth not yet applied
        self._apply_lock = threading.Lock()
        self.registry.register(_ApplyPendingFirst(self.flush))
        r, mv = self.registry, ("model", "version")
        self._labels = {"model": model, "version": version}
        self.success = Counter("nv_inference_request_success", "Successful inference calls", mv, registry=r)
        self.failure = Counter("nv_inference_request_failure", "Failed inference calls", mv + ("reason",), registry=r)
        self.count = Counter("nv_inference_count", "Images inferred (batch rows)", mv, registry=r)
        self.exec_count = Counter("nv_inference_exec_count", "Batches executed", mv, registry=r)
        self.request_us = Counter("nv_inference_request_duration_us", "Cumulative end-to-end call time, us", mv,
                                  registry=r)
        self.queue_us = Counter("nv_inference_queue_duration_us", "Cumulative time images waited in the queue, us",
                                mv, registry=r)
        self.compute_us = Counter("nv_inference_compute_infer_duration_us", "Cumulative forward-pass time, us", mv,
                                  registry=r)
        self.pending = Gauge("nv_inference_pending_request_count", "Images queued", mv, registry=r)
        self.outcomes = Counter("superserve_requests", "Calls by outcome (ok, late, shed, rejected, invalid, error)",
                                ("outcome",), registry=r)
        self.slo = Counter("superserve_slo", "Served images by whether they met their SLO", ("result",), registry=r)
        self.latency = Histogram("superserve_request_latency_seconds", "End-to-end call latency inside the server",
                                 buckets=_LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("superserve_batch_size", "Images per executed batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.subnet = Counter("superserve_subnet_images", "Images served per subnet", ("subnet", "accuracy"),
                              registry=r)
        self.queue_depth = Gauge("superserve_queue_depth", "Images in the EDF queue", registry=r)
        self.workers_up = Gauge("superserve_workers_up", "Workers able to take a batch (a dead worker process is "
                                "down until its replacement is ready)", registry=r)
        self.worker_restarts = Counter("superserve_worker_restarts", "Worker processes replaced after dying",
                                       registry=r)
        self.latency_table = Gauge("superserve_latency_table", "The latency table the scheduler uses (1 = live): "
                                   "file, cached, scaled (while re-profiling in the background) or reprofiled",
                                   ("kind", "source"), registry=r)
        self.table_scale = Gauge("superserve_latency_table_scale", "Factor the live latency table was scaled by at "
                                 "start (the spot check's measured ratio; 1 = measured or matching)", registry=r)
        self.table_swaps = Counter("superserve_latency_table_swaps", "Background re-profiles swapped in",
                                   registry=r)
        self.correction = Gauge("superserve_profile_correction_factor",
                                "Observed / profiled latency per subnet (online correction)", ("subnet",), registry=r)
        # Label lookups cost microseconds each; the per-call and per-batch paths use pre-bound children.
        lab = self._labels
        self._success, self._request_us = self.success.labels(**lab), self.request_us.labels(**lab)
        self._exec, self._count = self.exec_count.labels(**lab), self.count.labels(**lab)
        self._compute_us, self._queue_us = self.compute_us.labels(**lab), self.queue_us.labels(**lab)
        self._pending_gauge = self.pending.labels(**lab)
        self._met, self._missed = self.slo.labels("met"), self.slo.labels("missed")
        self._outcome = {o: self.outcomes.labels(o) for o in ("ok", "late", "shed", "rejected", "invalid", "error")}
        self._ticker = _Ticker(self.flush, flush_interval_s, "superserve-metrics")

    # --- the request path: record and return ----------------------------------------------------------------------
    def call_done(self, outcome: str, latency_s: float) -> None:
        """One protocol call answered (outcome ok/late = success, anything else = failure)."""
        self._pending.append((self._apply_call, outcome, latency_s))

    def batch_done(self, subnet_id: str, accuracy: float, batch_size: int, compute_s: float, queue_s: float,
                   met: int) -> None:
        self._pending.append((self._apply_batch, subnet_id, accuracy, batch_size, compute_s, queue_s, met))

    def set_queue_depth(self, images: int) -> None:
        self._depth = images

    def set_workers_up(self, count: int) -> None:
        self.workers_up.set(count)  # rare (a worker died or came back): applied at once

    def worker_restarted(self) -> None:
        self.worker_restarts.inc()

    # --- the housekeeping thread, or a reader of the registry -----------------------------------------------------
    def flush(self) -> None:
        """Apply every deferred update (in order)."""
        with self._apply_lock:
            pending = self._pending
            while pending:
                fn, *args = pending.popleft()
                fn(*args)
            depth, self._depth = self._depth, None
            if depth is not None:
                self.queue_depth.set(depth)
                self._pending_gauge.set(depth)

    def close(self) -> None:
        """Stop the housekeeping thread after applying what is pending."""
        self._ticker.stop()

    def _apply_call(self, outcome: str, latency_s: float) -> None:
        (self._outcome.get(outcome) or self.outcomes.labels(outcome)).inc()
        if outcome in ("ok", "late"):
            self._success.inc()
            self.latency.observe(latency_s)
            self._request_us.inc(latency_s * 1e6)
        else:
            self.failure.labels(reason=outcome, **self._labels).inc()

    def _apply_batch(self, subnet_id: str, accuracy: float, batch_size: int, compute_s: float, queue_s: float,
                     met: int) -> None:
        self._exec.inc()
        self._count.inc(batch_size)
        self._compute_us.inc(compute_s * 1e6)
        self._queue_us.inc(queue_s * 1e6)
        self.batch_size.observe(batch_size)
        self.subnet.labels(subnet_id, f"{accuracy:.4f}").inc(batch_size)
        if met:
            self._met.inc(met)
        if batch_size - met:
            self._missed.inc(batch_size - met)

    def set_latency_table(self, kind: str, source: str, scale: float, swapped: bool = False) -> None:
        """Which latency table is live (app.LiveTable): one labelled series at 1, and the factor it was scaled by."""
        self.latency_table.clear()
        self.latency_table.labels(kind, source).set(1)
        self.table_scale.set(scale)
        if swapped:
            self.table_swaps.inc()

    def set_correction(self, factors: dict[str, float]) -> None:
        for sid, f in factors.items():
            self.correction.labels(sid).set(f)


class RecordWriter:
    """Appends RequestRecords to a JSONL file from a background thread; `close()` flushes everything."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.1) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w")
        self._pending: deque[list[RequestRecord]] = deque()
        self._ticker = _Ticker(self._drain, flush_interval_s, "superserve-records")
        self._closed = False

    def write(self, records: list[RequestRecord]) -> None:
        if records:
            self._pending.append(records)

    def _drain(self) -> None:
        lines = []
        while self._pending:
            lines.extend(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in self._pending.popleft())
        if lines:
            self._fh.write("".join(lines))
            self._fh.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ticker.stop()  # drains one last time
            self._fh.close()
