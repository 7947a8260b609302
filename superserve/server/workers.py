"""Workers: run a batch through `net(x, subnet)` (SubNetAct) and report exactly one result row per request.

Two pools with one interface (`submit(worker_id, batch)`, results delivered to the `on_result` callback from a pool
thread, `close()`):
- `ThreadWorkerPool` (the embedded default): worker threads in the server process sharing one copy of the weights.
  That is safe because the supernet writes no state in forward; torch releases the GIL inside its kernels.
- `ProcessWorkerPool` (`--workers N`): N processes, each with its own copy of the supernet and its own torch
  intra-op threads, so N cores compute while the server process only does protocol and scheduling. Batches travel as
  numpy arrays through a multiprocessing queue per worker (a (64, 1, 28, 28) batch is 200 kB), results through a
  pipe per worker.

Devices (`device`, default cpu): the weights go to the device once per pool (per process: each spawned process
creates its own CUDA context), a batch goes there in `run_batch` and its probabilities come back to the CPU before
they leave it, with the device synchronised before the batch's time is read. Everything that crosses a queue or a
pipe is a CPU array.

Supervision (`ProcessWorkerPool`): one monitor thread waits on every worker's result pipe and process sentinel at
once, so a worker that dies (killed, out of memory, a crash in a native library) is noticed the moment it exits, not
by a timeout that steady load keeps postponing. The pool then tells the engine (`on_worker_down`: nothing more is
dispatched to it), reports its in-flight batch lost (`BatchResult.lost`: the engine answers those calls UNAVAILABLE,
which clients may retry), and starts a replacement with its own fresh queue and pipe (a process killed while holding a
shared queue's lock would wedge every other worker on it), telling the engine when it is ready (`on_worker_up`).
Replacements that die again at once back off exponentially, up to RESTART_BACKOFF_MAX_S.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supernet.config import SubnetConfig

log = logging.getLogger("superserve.workers")
CPU = torch.device("cpu")
RESTART_BACKOFF_S = 0.5  # first delay before replacing a worker that died soon after starting
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a worker up this long that dies is replaced at once (no backoff)


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
    lost: bool = False  # the worker died with it: not the requests' fault (answered UNAVAILABLE)


ResultCallback = Callable[[BatchResult], None]


def synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on `device` (CUDA runs them asynchronously; a clock read before this would time
    only the launches). A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batch(net: Any, configs: Mapping[str, SubnetConfig], batch_id: int, subnet_id: str, inputs: torch.Tensor,
              worker_id: int, device: torch.device = CPU) -> BatchResult:
    """The forward pass shared by both pools and the cluster worker; never raises (the engine must hear about every
    batch). `net` lives on `device`; `inputs` arrive on the CPU and go there, the probabilities come back as a CPU
    array. `compute_s` covers both copies and the forward, synchronised: what the batch cost this worker."""
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            logits = net(inputs.to(device), configs[subnet_id])  # (B, num_classes)
            probs = torch.softmax(logits, dim=1).cpu().numpy()
        synchronize(device)
        if probs.shape[0] != inputs.shape[0]:
            raise RuntimeError(f"model returned {probs.shape[0]} rows for a batch of {inputs.shape[0]}")
        if not np.isfinite(probs).all():  # never answer NaN probabilities (and class 0) as a success
            raise FloatingPointError("the model's output is not finite for this batch")
        return BatchResult(batch_id, worker_id, probs, None, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - reported per request, the worker keeps serving
        return BatchResult(batch_id, worker_id, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)


class ThreadWorkerPool:
    """`count` worker threads in this process sharing `net`, which lives on `device` (the threads then share its one
    CUDA context and stream: their kernels queue one after another)."""

    def __init__(self, net: Any, configs: Mapping[str, SubnetConfig], count: int, threads_per_worker: int,
                 on_result: ResultCallback, device: torch.device | str = CPU, **_supervision: Any) -> None:
        if count < 1:
            raise ValueError(f"need at least one worker, got {count}")
        torch.set_num_threads(threads_per_worker)  # process-wide: the intra-op pool all worker threads share
        self.size = count
        self.device = torch.device(device)
        self._net, self._configs, self._on_result = net, dict(configs), on_result
        self._inboxes: list[queue_mod.SimpleQueue[Batch | None]] = [queue_mod.SimpleQueue() for _ in range(count)]
        self._threads = [threading.Thread(target=self._loop, args=(w,), name=f"superserve-worker-{w}", daemon=True)
                         for w in range(count)]
        for t in self._threads:
            t.start()

    def warm_up(self, sample: torch.Tensor) -> None:
        """Run every subnet once so that the first real batch does not pay for allocator warm-up."""
        sample = sample.to(self.device)
        with torch.inference_mode():
            for cfg in self._configs.values():
                self._net(sample, cfg)
        synchronize(self.device)

    def submit(self, worker_id: int, batch: Batch) -> None:
        self._inboxes[worker_id].put(batch)

    def _loop(self, worker_id: int) -> None:
        inbox = self._inboxes[worker_id]
        while True:
            batch = inbox.get()
            if batch is None:
                return
            result = run_batch(self._net, self._configs, batch.batch_id, batch.subnet_id, batch.inputs, worker_id,
                               self.device)
            try:
                self._on_result(result)
            except Exception:
                log.exception("worker %d: handling the result of batch %d failed", worker_id, batch.batch_id)

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for t in self._threads:
            t.join(timeout=10)


def process_device(device: str) -> torch.device:
    """`device` checked in the process that will use it, with CUDA's index made explicit (`cuda` = the current GPU)."""
    from superserve.profiler import resolve_device

    dev = resolve_device(device)  # a clear error when CUDA is asked for and absent
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _process_main(worker_id: int, checkpoint: str, config_dicts: dict[str, dict], threads: int,
                  sample_shape: tuple[int, ...], device: str, inbox: Any, conn: Any) -> None:
    """Entry point of a worker process: load its own supernet copy onto `device` (once), then serve batches until
    None arrives. Batches arrive and results leave as CPU arrays; `run_batch` does the copies."""
    try:
        torch.set_num_threads(threads)
        from superserve.profiler import device_name

        from supernet.checkpoint import load_checkpoint

        dev = process_device(device)
        if dev.type == "cuda":  # this process's one CUDA context, on its GPU only (created here: spawned, not forked)
            torch.cuda.set_device(dev)
        net, _ = load_checkpoint(checkpoint, map_location=dev)
        configs = {sid: SubnetConfig.from_dict(d) for sid, d in config_dicts.items()}
        sample = torch.zeros(sample_shape, device=dev)
        with torch.inference_mode():
            for cfg in configs.values():
                net(sample, cfg)
        synchronize(dev)  # ready means warmed up, not kernels still queued
    except Exception:  # noqa: BLE001 - the parent reports it and stops
        conn.send(("failed", worker_id, traceback.format_exc()))
        return
    conn.send(("ready", worker_id, (os.getpid(), str(dev), device_name(dev))))
    while True:
        item = inbox.get()
        if item is None:
            return
        batch_id, subnet_id, array = item
        result = run_batch(net, configs, batch_id, subnet_id, torch.from_numpy(array), worker_id, dev)
        conn.send(("result", worker_id, result))


class _Slot:
    """One worker: its process, its own batch queue and result pipe, and its batches in flight."""

    __slots__ = ("conn", "down_told", "failures", "inbox", "inflight", "proc", "restart_at_s", "started_s", "up")

    def __init__(self) -> None:
        self.proc: Any = None
        self.inbox: Any = None
        self.conn: Any = None
        self.up = False
        self.inflight: dict[int, int] = {}  # batch_id -> batch size
        self.started_s = 0.0
        self.failures = 0  # deaths in a row shortly after starting
        self.restart_at_s: float | None = None
        self.down_told = False  # the engine knows it is down (lost batches may be reported)


class ProcessWorkerPool:
    """`count` worker processes, each holding one copy of the supernet loaded from `checkpoint` onto `device`,
    supervised. On a GPU every process has its own CUDA context and weights on that one device (N copies); without
    MPS the GPU time-slices between the processes' kernels rather than overlapping them."""

    def __init__(self, checkpoint: Path, configs: Mapping[str, SubnetConfig], count: int, threads_per_worker: int,
                 on_result: ResultCallback, sample_shape: tuple[int, ...], start_timeout_s: float = 120.0,
                 on_worker_down: Callable[[int], None] | None = None,
                 on_worker_up: Callable[[int], None] | None = None, device: str = "cpu") -> None:
        from superserve.profiler import resolve_device

        if count < 1:
            raise ValueError(f"need at least one worker process, got {count}")
        resolve_device(device)  # refuse CUDA without CUDA here, before any process starts (each checks again)
        # spawn, not fork: fork would copy the parent's torch threads and gRPC state, and a CUDA context cannot
        # cross a fork (the parent may hold one from its speed check); each child creates its own.
        self._ctx = mp.get_context("spawn")
        self.size = count
        self.device = device
        self.worker_devices: list[str | None] = [None] * count  # where each process says it loaded (cpu, cuda:0)
        self._on_result = on_result
        self._on_down = on_worker_down or (lambda w: None)
        self._on_up = on_worker_up or (lambda w: None)
        self._args = (str(checkpoint), {sid: cfg.to_dict() for sid, cfg in configs.items()}, threads_per_worker,
                      sample_shape, device)
        self._lock = threading.Lock()
        self._closing = False
        self.restarts = 0
        self._slots = [_Slot() for _ in range(count)]
        for w in range(count):
            self._spawn(w)
        deadline = time.monotonic() + start_timeout_s
        for w, slot in enumerate(self._slots):
            failure = None
            try:
                if slot.conn.poll(max(0.1, deadline - time.monotonic())):
                    kind, _, detail = slot.conn.recv()
                    if kind == "failed":
                        failure = f"worker process {w} failed to start: {detail.strip().splitlines()[-1]}\n{detail}"
                    else:
                        self.worker_devices[w] = detail[1]
                else:
                    failure = f"worker processes did not start within {start_timeout_s:g} s"
            except (EOFError, OSError):
                failure = f"worker process {w} exited while starting (exit code {slot.proc.exitcode})"
            if failure is not None:
                self.close()
                raise RuntimeError(failure)
            slot.up = True
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._monitor = threading.Thread(target=self._watch, name="superserve-worker-monitor", daemon=True)
        self._monitor.start()

    def _spawn(self, w: int) -> None:
        slot = self._slots[w]
        slot.inbox = self._ctx.Queue()
        slot.conn, child_conn = self._ctx.Pipe(duplex=False)
        slot.proc = self._ctx.Process(target=_process_main, name=f"superserve-worker-{w}", daemon=True,
                                      args=(w, *self._args, slot.inbox, child_conn))
        slot.proc.start()
        child_conn.close()  # the parent's copy: EOF on slot.conn once the child is gone
        slot.started_s = time.monotonic()
        slot.restart_at_s = None

    def warm_up(self, sample: torch.Tensor) -> None:  # the processes warm up before reporting ready
        pass

    @property
    def workers_up(self) -> int:
        return sum(slot.up for slot in self._slots)

    def pids(self) -> list[int | None]:
        """The worker processes' ids (None while one is being replaced)."""
        return [slot.proc.pid if slot.up else None for slot in self._slots]

    def submit(self, worker_id: int, batch: Batch) -> None:
        slot = self._slots[worker_id]
        with self._lock:
            slot.inflight[batch.batch_id] = len(batch.request_ids)
            up = slot.up
            if up:
                slot.inbox.put((batch.batch_id, batch.subnet_id, batch.inputs.numpy()))
        if not up:  # dispatched before the engine heard it is down: the monitor reports it lost
            self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"w")
        except OSError:
            pass

    # --- the monitor thread -----------------------------------------------------------------------------------
    def _watch(self) -> None:
        from multiprocessing.connection import wait as wait_any

        while not self._closing:
            watched: dict[Any, tuple[str, int]] = {self._wake_r: ("wake", -1)}
            for w, slot in enumerate(self._slots):
                if slot.proc is not None and slot.restart_at_s is None:
                    watched[slot.conn] = ("conn", w)
                    watched[slot.proc.sentinel] = ("exit", w)
            pending_restarts = [s.restart_at_s for s in self._slots if s.restart_at_s is not None]
            timeout = None if not pending_restarts else max(0.0, min(pending_restarts) - time.monotonic())
            for ready in wait_any(list(watched), timeout=timeout):
                kind, w = watched[ready]
                if kind == "wake":
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                elif kind == "conn":
                    self._receive(w)
                elif self._slots[w].restart_at_s is None:  # the process exited
                    self._died(w)
            if self._closing:
                return
            self._report_orphans()
            now = time.monotonic()
            for w, slot in enumerate(self._slots):
                if slot.restart_at_s is not None and slot.restart_at_s <= now:
                    self._spawn(w)

    def _receive(self, w: int) -> None:
        slot = self._slots[w]
        try:
            kind, _, payload = slot.conn.recv()
        except (EOFError, OSError):  # the child is gone, or died mid-message
            self._died(w)
            return
        if kind == "result":
            with self._lock:
                slot.inflight.pop(payload.batch_id, None)
            self._on_result(payload)
        elif kind == "ready":  # a replacement finished loading
            with self._lock:
                slot.up = True
                slot.down_told = False
            self.worker_devices[w] = payload[1]
            self.restarts += 1
            log.warning("worker %d replaced (pid %s, on %s: %s)", w, *payload)
            self._on_up(w)
        elif kind == "failed":
            log.error("replacement of worker %d failed to start:\n%s", w, payload)
            self._died(w)

    def _died(self, w: int) -> None:
        slot = self._slots[w]
        if slot.restart_at_s is not None or self._closing:
            return
        # Results the worker sent before it exited are complete messages in the pipe: deliver them first.
        while True:
            try:
                if not slot.conn.poll():
                    break
                kind, _, payload = slot.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "result":
                with self._lock:
                    slot.inflight.pop(payload.batch_id, None)
                self._on_result(payload)
        slot.proc.join(timeout=1.0)
        code = slot.proc.exitcode
        with self._lock:
            slot.up = False
        quick = time.monotonic() - slot.started_s < STABLE_AFTER_S
        slot.failures = slot.failures + 1 if quick else 0
        delay = 0.0 if not slot.failures else min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (slot.failures - 1))
        log.error("worker process %d died (exit code %s); replacing it in %.1f s", w, code, delay)
        slot.conn.close()
        slot.inbox.close()
        slot.inbox.cancel_join_thread()  # its reader is gone: do not wait to flush batches nobody will take
        slot.restart_at_s = time.monotonic() + delay
        self._on_down(w)
        slot.down_told = True
        self._lost(w, f"worker process {w} died (exit code {code}) while running this batch")

    def _lost(self, w: int, message: str) -> None:
        slot = self._slots[w]
        with self._lock:
            lost, slot.inflight = slot.inflight, {}
        for batch_id in lost:
            self._on_result(BatchResult(batch_id, w, None, message, 0.0, lost=True))

    def _report_orphans(self) -> None:
        for w, slot in enumerate(self._slots):
            if not slot.up and slot.down_told and slot.inflight:
                self._lost(w, f"worker process {w} is being replaced")

    def close(self) -> None:
        self._closing = True
        for slot in self._slots:
            if slot.inbox is not None and slot.proc is not None and slot.proc.is_alive():
                slot.inbox.put(None)
        for slot in self._slots:
            if slot.proc is None:
                continue
            slot.proc.join(timeout=10)
            if slot.proc.is_alive():
                slot.proc.terminate()
        if hasattr(self, "_wake_w"):
            self._wake()
            self._monitor.join(timeout=5)
