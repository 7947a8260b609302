"""A clearly labelled synthetic zoo, and loading the real one with a fallback to it (no torch here).

The simulator, the experiments and the tests need a latency/accuracy profile before (or without) a trained zoo. The
synthetic one is shaped like a CPU zoo: batch-1 latency from 0.5 ms to 6 ms, a batch of 64 costing 20x (small subnets)
to 10x (large ones) a batch of 1, accuracies from 0.90 to 0.985 with diminishing returns, p99 = 1.2 x median.
Anything measured on it says so: its host fingerprint reads "synthetic" and `load_zoo` returns a label.
"""

from __future__ import annotations

import math
from pathlib import Path

from supernet.config import SubnetConfig, SupernetSpace
from superserve.zoo import HostFingerprint, LatencyStats, Zoo, ZooEntry

DEFAULT_ZOO_PATH = Path(__file__).resolve().parent / "assets" / "zoo.json"
SYNTHETIC_HOST = HostFingerprint("synthetic", "synthetic", "cpu", 1, "none")
SYNTHETIC_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def synthetic_zoo(num_subnets: int = 10, batch_sizes: tuple[int, ...] = SYNTHETIC_BATCH_SIZES,
                  space: SupernetSpace | None = None) -> Zoo:
    """A deterministic CPU-like zoo of `num_subnets` Pareto subnets, fastest first."""
    if num_subnets < 2:
        raise ValueError("a synthetic zoo needs at least 2 subnets")
    space = space or SupernetSpace()
    configs: list[SubnetConfig] = []
    seen: set[str] = set()
    seed = 0
    while len(configs) < num_subnets:  # distinct configs; their shapes do not matter for a synthetic profile
        cfg = SubnetConfig.random(space, seed)
        seed += 1
        if cfg.subnet_id not in seen:
            seen.add(cfg.subnet_id)
            configs.append(cfg)
    entries = []
    for i, cfg in enumerate(configs):
        t = i / (num_subnets - 1)  # 0 = smallest subnet, 1 = largest
        lat1_ms = 0.5 * (6.0 / 0.5) ** t  # geometric from 0.5 ms to 6 ms
        growth = 0.30 - 0.15 * t  # per extra image: batch 64 costs ~20x batch 1 for small, ~10x for large subnets
        accuracy = 0.90 + 0.085 * (1 - math.exp(-3 * t)) / (1 - math.exp(-3))
        table = {b: LatencyStats(lat1_ms * (1 + growth * (b - 1)), 1.2 * lat1_ms * (1 + growth * (b - 1)))
                 for b in batch_sizes}
        entries.append(ZooEntry(cfg, round(accuracy, 4), params=int(1e5 * (1 + 9 * t)),
                                flops=int(2e6 * (1 + 11 * t)), latency_ms=table))
    return Zoo(space, tuple(entries), SYNTHETIC_HOST, dataset="synthetic")


def load_zoo(path: str | Path | None = None, num_synthetic: int = 10) -> tuple[Zoo, str]:
    """The zoo at `path` (default: the shipped `superserve/assets/zoo.json`) and a label saying what it is.

    A missing default zoo falls back to the synthetic one (label says so); a missing explicit path is an error.
    """
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_ZOO_PATH
    if path.is_file():
        zoo = Zoo.load(path)
        return zoo, f"{path} ({len(zoo.entries)} subnets, dataset {zoo.dataset}, device {zoo.host.device})"
    if explicit:
        raise FileNotFoundError(f"zoo file {path} does not exist")
    return synthetic_zoo(num_synthetic), (f"SYNTHETIC zoo ({num_synthetic} subnets, CPU-like latencies): "
                                          f"{DEFAULT_ZOO_PATH} not found")
