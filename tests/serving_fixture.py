"""A small real serving fixture: a tiny supernet with calibrated subnets, profiled on this host, saved as a checkpoint
and zoo (torch needed). Tests and smoke scripts use it instead of the shipped assets, which take minutes to train."""

from __future__ import annotations

from pathlib import Path

import torch

from supernet.checkpoint import file_sha256, save_checkpoint
from supernet.config import SubnetConfig, SupernetSpace
from supernet.network import SuperNet
from training.calibrate import calibrate_subnets
from superserve.zoo import HostFingerprint, LatencyStats, Zoo, ZooEntry

FIXTURE_SPACE = SupernetSpace(stem_width=8, stem_stride=2, stage_widths=(16, 24), stage_strides=(1, 2),
                              depth_choices=(1, 2), expand_choices=(0.5, 1.0), kernel_choices=(3, 5), head_width=32)
FIXTURE_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
FIXTURE_NORMALIZATION = {"mean": [0.1307], "std": [0.3081], "raw_max": 255.0}
# Made-up accuracies (the weights are random): only their order matters to the scheduler.
FIXTURE_ACCURACIES = (0.90, 0.95, 0.98)


def fixture_subnets(space: SupernetSpace = FIXTURE_SPACE) -> list[SubnetConfig]:
    mid = SubnetConfig(((0.5, 1.0), (1.0,)), ((3, 3), (5,)))
    return [SubnetConfig.min(space), mid.validate(space), SubnetConfig.max(space)]


@torch.inference_mode()
def _profile(net: SuperNet, cfg: SubnetConfig, batch: int, repeats: int) -> LatencyStats:
    import time

    x = torch.randn(batch, 1, 28, 28)
    net(x, cfg)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        net(x, cfg)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return LatencyStats(times[len(times) // 2], times[-1])


def build_serving_assets(directory: Path, repeats: int = 5, seed: int = 0,
                         latency_scale: float = 1.0) -> tuple[Path, Path]:
    """Write (zoo.json, supernet.pt) into `directory`; latencies measured here (x `latency_scale`)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    net = SuperNet(FIXTURE_SPACE)
    subnets = fixture_subnets()
    calibrate_subnets(net, subnets, torch.randn(256, 1, 28, 28), batch_size=128)
    net.eval()
    ckpt = directory / "supernet.pt"
    save_checkpoint(net, ckpt, meta={"dataset": "mnist5k", "normalization": FIXTURE_NORMALIZATION})
    entries = []
    for cfg, acc in zip(subnets, FIXTURE_ACCURACIES):
        params, macs = net.count_params_and_macs(cfg)
        table = {b: _profile(net, cfg, b, repeats) for b in FIXTURE_BATCH_SIZES}
        # Keep the table monotone in batch size and accuracy order fastest-first (noise on a shared CPU).
        table = {b: LatencyStats(s.median_ms * latency_scale, max(s.p99_ms, s.median_ms) * latency_scale)
                 for b, s in table.items()}
        entries.append(ZooEntry(cfg, acc, params, macs, table))
    zoo = Zoo(FIXTURE_SPACE, tuple(entries), HostFingerprint.current(threads=1), dataset="fixture",
              checkpoint_sha256=file_sha256(ckpt))
    zoo_path = directory / "zoo.json"
    zoo.save(zoo_path)
    return zoo_path, ckpt
