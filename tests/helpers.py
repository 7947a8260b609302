"""Shared builders for tests (no torch). Add your own below; keep each builder small and deterministic."""

from __future__ import annotations

from typing import Sequence

from supernet.config import SubnetConfig, SupernetSpace
from superserve.types import QueueSnapshot, Request
from superserve.zoo import HostFingerprint, LatencyStats, Zoo, ZooEntry

TEST_HOST = HostFingerprint("test", "test", "cpu", 1, "none")
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def distinct_configs(count: int, space: SupernetSpace | None = None) -> list[SubnetConfig]:
    space = space or SupernetSpace()
    out: dict[str, SubnetConfig] = {}
    seed = 0
    while len(out) < count:
        cfg = SubnetConfig.random(space, 1000 + seed)
        out.setdefault(cfg.subnet_id, cfg)
        seed += 1
    return list(out.values())


def make_zoo(accuracies: Sequence[float] = (0.90, 0.95, 0.98), lat1_ms: Sequence[float] = (1.0, 2.0, 4.0),
             growth: float = 0.25, p99_factor: float = 1.0, batch_sizes: Sequence[int] = BATCH_SIZES) -> Zoo:
    """A hand-built zoo: subnet i has latency lat1_ms[i] * (1 + growth * (B - 1)) at batch B (median), p99 =
    p99_factor x median. With the defaults: B=64 costs 16.75x B=1."""
    space = SupernetSpace()
    entries = []
    for cfg, acc, l1 in zip(distinct_configs(len(accuracies), space), accuracies, lat1_ms):
        table = {b: LatencyStats(l1 * (1 + growth * (b - 1)), p99_factor * l1 * (1 + growth * (b - 1)))
                 for b in batch_sizes}
        entries.append(ZooEntry(cfg, acc, params=1000, flops=1000, latency_ms=table))
    return Zoo(space, tuple(entries), TEST_HOST, dataset="test")


def make_request(request_id: int, arrival_s: float = 0.0, slo_ms: float = 36.0,
                 min_accuracy: float = 0.0) -> Request:
    return Request(request_id, arrival_s, arrival_s + slo_ms * 1e-3, min_accuracy)


def make_snapshot(count: int, arrival_s: float = 0.0, slo_ms: float = 36.0, min_accuracy: float = 0.0,
                  spacing_s: float = 0.0, limit: int | None = None) -> QueueSnapshot:
    """`count` requests arriving `spacing_s` apart from `arrival_s`, all with the same SLO, EDF order."""
    reqs = tuple(make_request(k, arrival_s + k * spacing_s, slo_ms, min_accuracy) for k in range(count))
    return QueueSnapshot(reqs[:limit] if limit else reqs, count)


def snapshot_of(requests: Sequence[Request]) -> QueueSnapshot:
    ordered = tuple(sorted(requests, key=lambda r: (r.deadline_s, r.request_id)))
    return QueueSnapshot(ordered, len(ordered))


def start_fixture_server(assets, **overrides):  # noqa: ANN001, ANN201 - (zoo, ckpt) paths -> a started Server
    """The real gRPC server on a free port over the small fixture assets (torch imported here, not at module load).
    Stop it with `.stop()`."""
    from superserve.server.app import Server, ServeConfig

    zoo, ckpt = assets
    settings = dict(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True, reprofile="never")
    server = Server(ServeConfig(**{**settings, **overrides})).start()
    server.wait_ready()  # the background warm-up (decoder import) done, as clients that honour readiness see it
    return server
