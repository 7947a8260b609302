"""Latency profiling of calibrated subnets on this host: batch sizes 1, 2, 4, ..., 64; median and p99 per cell.

Each (subnet, batch size) cell runs `warmup` untimed forwards, then timed forwards until `min_repeats` are done and
either `target_s` seconds have been spent or `max_repeats` are reached (cheap cells get many repeats, the max net at
batch 64 a few), split over `passes` rounds through all cells (a slow spell of a shared host then hits a share of
every cell's repeats, not all of a few cells'). Inference mode, eval mode (served statistics), a fixed random input; torch intra-op threads are set
for the measurement (1 by default: a serving worker owns one core) and restored afterwards.

It lives beside the zoo, not in training/: the server re-profiles with it at start-up and `superserve zoo build`
profiles with it, and the server does not import training/ (tests/test_layers.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from supernet.config import SubnetConfig
from supernet.contract import ServableSupernet
from superserve.zoo import HostFingerprint, LatencyStats

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ProfileConfig:
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: int = 1  # torch intra-op threads while profiling
    warmup: int = 2  # untimed forwards per cell
    min_repeats: int = 7  # timed forwards per cell, at least
    max_repeats: int = 60  # ... and at most
    target_s: float = 1.0  # stop repeating a cell after this much timed work (once min_repeats are done)
    seed: int = 0  # of the random input
    # The repeats (and target_s) of a cell are split over this many passes through all cells, so that a slow spell of a
    # shared host (seconds long) lands on a share of every cell's repeats instead of on all repeats of a few cells.
    # Each pass warms its cell up again (`warmup` forwards in the first, one after). A cell's statistics are over all
    # its passes.
    passes: int = 3

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        if self.threads < 1 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError("need threads >= 1 and 1 <= min_repeats <= max_repeats")
        if self.passes < 1:
            raise ValueError(f"need at least one pass, got {self.passes}")


def resolve_device(device: str) -> torch.device:
    """`device` as a torch device, refusing CUDA where there is none (at start, not at the first forward)."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this host (torch {torch.__version__}, "
                         f"built with CUDA {torch.version.cuda}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this host has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    return dev


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def host_fingerprint(device: torch.device, threads: int) -> HostFingerprint:
    return HostFingerprint.current(device=device_name(device), threads=threads)


def percentile_stats(times_ms: list[float]) -> LatencyStats:
    """Median and 99th percentile (linear interpolation) of timed repeats, milliseconds."""
    arr = np.asarray(times_ms, dtype=np.float64)
    return LatencyStats(float(np.median(arr)), float(np.percentile(arr, 99)))


@torch.inference_mode()
def _time_cell(net: ServableSupernet, subnet: SubnetConfig, batch_size: int, cfg: ProfileConfig, warmup: int,
               min_repeats: int, max_repeats: int, target_s: float) -> list[float]:
    """Milliseconds of timed forwards of one cell, after `warmup` untimed ones."""
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    sp = net.space
    x = torch.randn(batch_size, sp.in_channels, sp.image_size, sp.image_size, generator=generator).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        net(x, subnet)
    sync()
    times_ms: list[float] = []
    spent_s = 0.0
    while len(times_ms) < max_repeats and (len(times_ms) < min_repeats or spent_s < target_s):
        start = time.perf_counter()
        net(x, subnet)
        sync()
        elapsed = time.perf_counter() - start
        spent_s += elapsed
        times_ms.append(elapsed * 1e3)
    return times_ms


def profile_subnets(net: ServableSupernet, subnets: Iterable[SubnetConfig], cfg: ProfileConfig = ProfileConfig(),
                    progress: bool = True) -> dict[str, Mapping[int, LatencyStats]]:
    """subnet id -> {batch size -> LatencyStats}. Every subnet must be calibrated (eval mode needs its statistics).

    Cells are measured round-robin over subnets per batch size, so slow drift of a shared host (another process
    starting) spreads over all subnets instead of inflating only the ones measured last; and in `cfg.passes` passes
    through all cells, so that a slow spell of a few seconds inflates a share of every cell's repeats, which the median
    then discounts, rather than all of one cell's (on this project's shared 2-core host one pass gave a subnet 18.2 ms at
    batch 1 and 17.0 ms at batch 2, where it runs at 9-15 ms)."""
    subnets = list({s.subnet_id: s for s in subnets}.values())
    was_training, old_threads = net.training, torch.get_num_threads()
    net.eval()
    torch.set_num_threads(cfg.threads)
    times: dict[tuple[str, int], list[float]] = {(s.subnet_id, b): [] for b in cfg.batch_sizes for s in subnets}
    per_pass = (-(-cfg.min_repeats // cfg.passes), -(-cfg.max_repeats // cfg.passes), cfg.target_s / cfg.passes)
    try:
        with tqdm(total=len(subnets) * len(cfg.batch_sizes) * cfg.passes, desc="profile", unit="cell",
                  disable=not progress) as bar:
            for k in range(cfg.passes):
                for batch_size in cfg.batch_sizes:
                    for subnet in subnets:
                        times[(subnet.subnet_id, batch_size)] += _time_cell(
                            net, subnet, batch_size, cfg, cfg.warmup if k == 0 else min(cfg.warmup, 1), *per_pass)
                        bar.update(1)
                        bar.set_postfix(batch=batch_size, subnet=subnet.subnet_id, round=k + 1)
    finally:
        torch.set_num_threads(old_threads)
        net.train(was_training)
    return {s.subnet_id: {b: percentile_stats(times[(s.subnet_id, b)]) for b in cfg.batch_sizes} for s in subnets}


def monotone_violations(table: Mapping[int, LatencyStats], tolerance: float = 0.1) -> list[int]:
    """Batch sizes whose median is more than `tolerance` (fraction) below the next smaller batch size's median
    (a bigger batch should never be much faster; a violation means a noisy measurement)."""
    sizes = sorted(table)
    return [b for a, b in zip(sizes, sizes[1:]) if table[b].median_ms < (1.0 - tolerance) * table[a].median_ms]
