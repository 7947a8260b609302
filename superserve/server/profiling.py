"""Measure a zoo's latency table on this host (used when the shipped table comes from other hardware).

Per (subnet, batch size): `warmup` untimed forward passes, then `repeats` timed ones; median and p99 of the batch's
wall time. Re-profiled zoos are cached per host under ~/.cache/superserve so the next start on this host is instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superserve.zoo import HostFingerprint, LatencyStats, Zoo


@torch.inference_mode()
def profile_zoo(net: Any, zoo: Zoo, host: HostFingerprint, repeats: int = 10, warmup: int = 2,
                progress: bool = True) -> Zoo:
    """The same zoo with latencies measured here (torch threads as currently set)."""
    space = zoo.space
    sample = torch.randn(zoo.batch_sizes[-1], space.in_channels, space.image_size, space.image_size)
    tables: dict[str, dict[int, LatencyStats]] = {}
    total = len(zoo.entries) * len(zoo.batch_sizes)
    done = 0
    started = time.perf_counter()
    for e in zoo.entries:
        tables[e.subnet_id] = {}
        for b in zoo.batch_sizes:
            x = sample[:b]
            for _ in range(warmup):
                net(x, e.config)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                net(x, e.config)
                times.append((time.perf_counter() - t) * 1e3)
            tables[e.subnet_id][b] = LatencyStats(float(np.median(times)), float(np.percentile(times, 99)))
            done += 1
            if progress:
                _bar(done, total, time.perf_counter() - started)
    if progress:
        print(file=sys.stderr)
    return zoo.with_latencies(tables, host)


def _bar(done: int, total: int, elapsed_s: float) -> None:
    width = 30
    filled = int(width * done / total)
    eta = elapsed_s / done * (total - done)
    print(f"\rprofiling the zoo on this host [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
          f"(subnet, batch) pairs, {eta:4.0f} s left", end="", file=sys.stderr, flush=True)


def cache_path(zoo_path: Path, host: HostFingerprint) -> Path:
    """Where the re-profiled copy of `zoo_path` for `host` lives."""
    digest = hashlib.sha256(zoo_path.read_bytes() + json.dumps(host.__dict__, sort_keys=True).encode()).hexdigest()
    root = Path(os.environ.get("SUPERSERVE_CACHE", Path.home() / ".cache" / "superserve"))
    return root / f"zoo-{digest[:16]}.json"
