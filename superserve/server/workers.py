"""Workers: run a batch through `net(x, subnet)` (SubNetAct) and report exactly one result row per request.

Two pools with one interface (`submit(worker_id, batch)`, results delivered to the `on_result` callback from a pool
thread, `close()`):
- `ThreadWorkerPool` (the embedded default): worker threads in the server process sharing one copy of the weights.
  That is safe because the supernet writes no state in forward; torch releases the GIL inside its kernels.
- `ProcessWorkerPool` (`--workers N`): N processes, each with its own copy of the supernet and its own torch
  intra-op threads, so N cores compute while the server process only does protocol and scheduling. Batches travel as
  numpy arrays through multiprocessing queues (a (64, 1, 28, 28) batch is 200 kB).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from supernet.config import SubnetConfig


@dataclass(frozen=True, eq=False)
class Batch:
    """A batch the engine hands to one worker."""

    batch_id: int
    subnet_id: str
    request_ids: tuple[int, ...]  # engine request ids, one per row of `inputs`
    inputs: torch.Tensor  # (B, C, S, S) float32, normalised


@dataclass(frozen=True, eq=False)
class BatchResult:
    """What a worker reports for one batch: one probability row per request, or an error for all of them."""

    batch_id: int
    worker_id: int
    probabilities: np.ndarray | None  # (B, num_classes) float32; None when `error` is set
    error: str | None  # why the batch failed (every request in it fails with this message)
    compute_s: float  # time spent in the forward pass, seconds


ResultCallback = Callable[[BatchResult], None]


def run_batch(net: Any, configs: Mapping[str, SubnetConfig], batch_id: int, subnet_id: str, inputs: torch.Tensor,
              worker_id: int) -> BatchResult:
    """The forward pass shared by both pools; never raises (the engine must hear about every batch)."""
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            logits = net(inputs, configs[subnet_id])  # (B, num_classes)
            probs = torch.softmax(logits, dim=1).numpy()
        if probs.shape[0] != inputs.shape[0]:
            raise RuntimeError(f"model returned {probs.shape[0]} rows for a batch of {inputs.shape[0]}")
        return BatchResult(batch_id, worker_id, probs, None, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - reported per request, the worker keeps serving
        return BatchResult(batch_id, worker_id, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)


class ThreadWorkerPool:
    """`count` worker threads in this process sharing `net`."""

    def __init__(self, net: Any, configs: Mapping[str, SubnetConfig], count: int, threads_per_worker: int,
                 on_result: ResultCallback) -> None:
        if count < 1:
            raise ValueError(f"need at least one worker, got {count}")
        torch.set_num_threads(threads_per_worker)  # process-wide: the intra-op pool all worker threads share
        self.size = count
        self._net, self._configs, self._on_result = net, dict(configs), on_result
        self._inboxes: list[queue_mod.SimpleQueue[Batch | None]] = [queue_mod.SimpleQueue() for _ in range(count)]
        self._threads = [threading.Thread(target=self._loop, args=(w,), name=f"superserve-worker-{w}", daemon=True)
                         for w in range(count)]
        for t in self._threads:
            t.start()

    def warm_up(self, sample: torch.Tensor) -> None:
        """Run every subnet once so that the first real batch does not pay for allocator warm-up."""
        for cfg in self._configs.values():
            with torch.inference_mode():
                self._net(sample, cfg)

    def submit(self, worker_id: int, batch: Batch) -> None:
        self._inboxes[worker_id].put(batch)

    def _loop(self, worker_id: int) -> None:
        inbox = self._inboxes[worker_id]
        while True:
            batch = inbox.get()
            if batch is None:
                return
            self._on_result(run_batch(self._net, self._configs, batch.batch_id, batch.subnet_id, batch.inputs,
                                      worker_id))

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for t in self._threads:
            t.join(timeout=10)


def _process_main(worker_id: int, checkpoint: str, config_dicts: dict[str, dict], threads: int,
                  sample_shape: tuple[int, ...], inbox: Any, outbox: Any) -> None:
    """Entry point of a worker process: load its own supernet copy, then serve batches until None arrives."""
    try:
        torch.set_num_threads(threads)
        from supernet.checkpoint import load_checkpoint

        net, _ = load_checkpoint(checkpoint)
        configs = {sid: SubnetConfig.from_dict(d) for sid, d in config_dicts.items()}
        with torch.inference_mode():
            for cfg in configs.values():
                net(torch.zeros(sample_shape), cfg)
    except Exception:  # noqa: BLE001 - the parent reports it and stops
        outbox.put(("failed", worker_id, traceback.format_exc()))
        return
    outbox.put(("ready", worker_id, None))
    while True:
        item = inbox.get()
        if item is None:
            return
        batch_id, subnet_id, array = item
        result = run_batch(net, configs, batch_id, subnet_id, torch.from_numpy(array), worker_id)
        outbox.put(("result", worker_id, result))


class ProcessWorkerPool:
    """`count` worker processes, each holding one copy of the supernet loaded from `checkpoint`."""

    def __init__(self, checkpoint: Path, configs: Mapping[str, SubnetConfig], count: int, threads_per_worker: int,
                 on_result: ResultCallback, sample_shape: tuple[int, ...], start_timeout_s: float = 120.0) -> None:
        if count < 1:
            raise ValueError(f"need at least one worker process, got {count}")
        ctx = mp.get_context("spawn")  # fork would copy the parent's torch threads and gRPC state
        self.size = count
        self._on_result = on_result
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(count)]
        dicts = {sid: cfg.to_dict() for sid, cfg in configs.items()}
        self._procs = [ctx.Process(target=_process_main, name=f"superserve-worker-{w}", daemon=True,
                                   args=(w, str(checkpoint), dicts, threads_per_worker, sample_shape,
                                         self._inboxes[w], self._outbox))
                       for w in range(count)]
        for p in self._procs:
            p.start()
        ready = 0
        deadline = time.monotonic() + start_timeout_s
        while ready < count:
            try:
                kind, worker_id, detail = self._outbox.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue_mod.Empty:
                self.close()
                raise RuntimeError(f"worker processes did not start within {start_timeout_s:g} s") from None
            if kind == "failed":
                self.close()
                raise RuntimeError(f"worker process {worker_id} failed to start:\n{detail}")
            ready += 1
        # In-flight batches per worker (batch_id -> batch size), so that a worker process that dies still gets every
        # request of its batches answered (with an error).
        self._lock = threading.Lock()
        self._inflight: list[dict[int, int]] = [{} for _ in range(count)]
        self._dead: set[int] = set()
        self._reader = threading.Thread(target=self._read, name="superserve-worker-results", daemon=True)
        self._reader.start()

    def warm_up(self, sample: torch.Tensor) -> None:  # the processes warm up before reporting ready
        pass

    def submit(self, worker_id: int, batch: Batch) -> None:
        with self._lock:
            dead = worker_id in self._dead
            if not dead:
                self._inflight[worker_id][batch.batch_id] = len(batch.request_ids)
        if dead:
            self._on_result(BatchResult(batch.batch_id, worker_id, None, f"worker process {worker_id} died", 0.0))
            return
        self._inboxes[worker_id].put((batch.batch_id, batch.subnet_id, batch.inputs.numpy()))

    def _read(self) -> None:
        while True:
            try:
                item = self._outbox.get(timeout=0.5)
            except queue_mod.Empty:
                self._reap_dead()
                continue
            if item is None:
                return
            _, worker_id, result = item
            with self._lock:
                self._inflight[worker_id].pop(result.batch_id, None)
            self._on_result(result)

    def _reap_dead(self) -> None:
        for w, p in enumerate(self._procs):
            if w in self._dead or p.is_alive():
                continue
            with self._lock:
                self._dead.add(w)
                lost, self._inflight[w] = self._inflight[w], {}
            for batch_id in lost:
                self._on_result(BatchResult(batch_id, w, None, f"worker process {w} died (exit code "
                                                               f"{p.exitcode})", 0.0))

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        self._outbox.put(None)
