"""A GPU latency model from published ResNet-50 v1.5 inference tables, and the zoos built on it (no torch here).

The simulator needs (subnet, batch) latencies on a GPU, and this project has none. A CPU table scaled by a constant
keeps the CPU's batch curve (batch 64 buys 1.4-2x throughput on the shipped zoo) and the CPU's tail; on a GPU,
batching is what SlackFit exploits. So a GPU zoo's table comes from NVIDIA's published ResNet-50 v1.5 inference
measurements, one named profile per (GPU, runtime):

- `a100-trt-fp16`: NVIDIA DGX A100 (1x A100 80GB), ONNX Runtime with the TensorRT accelerator, FP16, offline (static
  batching) table: NVIDIA DeepLearningExamples, `PyTorch/Classification/ConvNets/triton/resnet50/README.md`,
  section "Offline: NVIDIA DGX A100 (1x A100 80GB), ONNX Runtime TensorRT with FP16" (columns Avg and P99 Latency).
- `v100-trt-fp16`: the same file, section "Offline: NVIDIA DGX-1 (1x V100 32GB), ONNX Runtime TensorRT with FP16".
- `a100-tf32`: NVIDIA DeepLearningExamples, `TensorFlow/Classification/ConvNets/resnet50v1.5/README.md`, section
  "Inference performance: NVIDIA DGX A100 (1x A100 40GB)", table "TF32 Inference Latency" (Avg and 99% Latency).

These are the tables the project could read offline. Issue 18 quotes other figures (A100 TensorRT FP16 0.89 ms at
batch 1 to 4.45 ms at 64); we could not find their source, so we do not use them. The tables above are measured
through a serving stack (Triton client for the TensorRT ones, TensorFlow for TF32), so their batch-1 latency carries
1-5 ms of fixed overhead and their batching gain (batch 1 to 32: 6.1x on A100 TensorRT, 5.8x on V100, 8.4x on A100
TF32) is smaller than a bare engine's. At batch 64 the two TensorRT tables lose throughput against batch 32; that is
what was measured, and it stays.

Model for a subnet with `r` = its MACs / ResNet-50's MACs (4.1 G), per profiled batch size b:

    median(b) = a + (avg(b) - a) * r,     p99(b) = median(b) * p99(b) / avg(b) of the source row

`a` is the fixed per-batch cost, the intercept of a least-squares line through (b, avg(b)) for b <= 16 (where the
tables are linear), clipped to [0, avg(1)]. So a subnet of ResNet-50's size gets the published row exactly, and
compute scales with MACs. DEVIATION: MACs are an imperfect proxy for GPU time (depth and width do not cost the same
per MAC); the paper profiles every subnet on the GPU, which we cannot. The table's "Avg" stands in for the median.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from supernet.config import SubnetConfig, SupernetSpace
from superserve.zoo import HostFingerprint, LatencyStats, Zoo, ZooEntry

RESNET50_MACS = 4.1e9  # multiply-accumulates of ResNet-50 at 224x224 (the OFA table's "4.1B" for the full net)


@dataclass(frozen=True)
class GpuProfile:
    """Published ResNet-50 v1.5 inference latency of one GPU and runtime, per batch size."""

    name: str
    device: str  # as a HostFingerprint device string
    source: str  # where the numbers come from (file and section)
    avg_ms: dict[int, float]  # batch size -> average latency of the batch, ms
    p99_ms: dict[int, float]  # batch size -> 99th percentile latency of the batch, ms

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.avg_ms))

    @property
    def fixed_ms(self) -> float:
        """The per-batch cost that does not grow with the model (least-squares intercept over b <= 16)."""
        bs = [b for b in self.batch_sizes if b <= 16]
        _slope, intercept = np.polyfit(bs, [self.avg_ms[b] for b in bs], 1)
        return float(min(max(intercept, 0.0), self.avg_ms[self.batch_sizes[0]]))

    def latency(self, macs: float, batch_size: int) -> LatencyStats:
        """Modelled median and p99 of one batch of a model with `macs` multiply-accumulates per image."""
        if batch_size not in self.avg_ms:
            raise ValueError(f"profile {self.name} has no batch size {batch_size} (has {self.batch_sizes})")
        if not macs > 0:
            raise ValueError(f"MACs must be > 0, got {macs}")
        a, avg = self.fixed_ms, self.avg_ms[batch_size]
        median = a + (avg - a) * (macs / RESNET50_MACS)
        return LatencyStats(median, median * self.p99_ms[batch_size] / avg)


_TRITON_README = "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/triton/resnet50/README.md"
_TF_README = "NVIDIA DeepLearningExamples TensorFlow/Classification/ConvNets/resnet50v1.5/README.md"
_BATCHES = (1, 2, 4, 8, 16, 32, 64)

GPU_PROFILES: dict[str, GpuProfile] = {p.name: p for p in (
    GpuProfile("a100-trt-fp16", "cuda:A100-80GB (modelled)",
               f"{_TRITON_README}, 'Offline: NVIDIA DGX A100 (1x A100 80GB), ONNX Runtime TensorRT with FP16'",
               dict(zip(_BATCHES, (2.128, 2.194, 2.759, 3.895, 5.793, 11.193, 25.244), strict=True)),
               dict(zip(_BATCHES, (2.272, 2.357, 3.354, 4.287, 6.348, 11.962, 29.744), strict=True))),
    GpuProfile("v100-trt-fp16", "cuda:V100-32GB (modelled)",
               f"{_TRITON_README}, 'Offline: NVIDIA DGX-1 (1x V100 32GB), ONNX Runtime TensorRT with FP16'",
               dict(zip(_BATCHES, (2.838, 3.35, 4.191, 5.979, 9.266, 15.664, 38.412), strict=True)),
               dict(zip(_BATCHES, (3.143, 3.627, 4.45, 6.581, 10.904, 16.438, 40.773), strict=True))),
    GpuProfile("a100-tf32", "cuda:A100-40GB (modelled)",
               f"{_TF_README}, 'Inference performance: NVIDIA DGX A100 (1x A100 40GB)', 'TF32 Inference Latency'",
               dict(zip(_BATCHES, (5.26, 5.34, 6.65, 8.31, 11.82, 19.99, 35.82), strict=True)),
               dict(zip(_BATCHES, (5.42, 5.56, 7.05, 9.17, 12.44, 21.36, 37.84), strict=True))),
)}
DEFAULT_GPU_PROFILE = "a100-trt-fp16"


def gpu_profile(name: str) -> GpuProfile:
    """The named profile; an unknown name raises ValueError listing the known ones."""
    try:
        return GPU_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown GPU profile {name!r}; known profiles: {', '.join(sorted(GPU_PROFILES))}") from None


def _host(profile: GpuProfile) -> HostFingerprint:
    return HostFingerprint("modelled", f"gpu-model:{profile.name}", profile.device, 1, "none")


def gpu_zoo(zoo: Zoo, profile: str | GpuProfile, largest_as_resnet50: bool = True) -> Zoo:
    """`zoo`'s subnets and accuracies with latencies from the GPU model, at the profile's batch sizes.

    The shipped zoo's subnets are MNIST-sized (a few M MACs), far below ResNet-50, where the model would give every
    subnet the fixed cost. With `largest_as_resnet50` (the default) each subnet's MAC ratio is taken relative to the
    zoo's largest, which is costed as a ResNet-50: the zoo's relative sizes on a ResNet-50-class GPU workload. With
    False the subnets' own MACs are used (the paper-like zoo, whose MACs are real ImageNet MACs).
    """
    prof = gpu_profile(profile) if isinstance(profile, str) else profile
    top = max(e.flops for e in zoo.entries)
    entries = []
    for e in zoo.entries:
        macs = e.flops / top * RESNET50_MACS if largest_as_resnet50 else float(e.flops)
        entries.append(replace(e, latency_ms={b: prof.latency(macs, b) for b in prof.batch_sizes}))
    entries.sort(key=lambda e: (e.latency_ms[prof.batch_sizes[0]].median_ms, e.accuracy))
    return replace(zoo, entries=tuple(entries), host=_host(prof))


# OFA-ResNet50 specialised subnets (Cai et al., "Once for All", ICLR 2020): MACs and ImageNet top-1 as published in the
# once-for-all repository's README table "OFA Specialized Sub-nets / ResNet50 Design Space" (net ids
# resnet50D_MAC@<MACs>_top1@<acc>; the 0.6-1.2 B ones fine-tuned 25 epochs). SuperServe serves OFA-ResNet50 subnets
# on the Pareto front (its paper's range is about 74-80% top-1); these eight are the published points of that front.
OFA_RESNET50_POINTS: tuple[tuple[str, float, float], ...] = (
    ("resnet50D_MAC@0.6B", 0.6e9, 0.750),
    ("resnet50D_MAC@0.9B", 0.9e9, 0.763),
    ("resnet50D_MAC@1.2B", 1.2e9, 0.771),
    ("resnet50D_MAC@1.8B", 1.8e9, 0.783),
    ("resnet50D_MAC@2.4B", 2.4e9, 0.790),
    ("resnet50D_MAC@3.0B", 3.0e9, 0.793),
    ("resnet50D_MAC@3.7B", 3.7e9, 0.797),
    ("resnet50D_MAC@4.1B", 4.1e9, 0.798),
)
PAPER_SLO_MS = 36.0  # papers.md: "SLO values of tens of ms. 36 ms is a plausible value, not re-verified"


def ofa_resnet50_zoo(profile: str | GpuProfile = DEFAULT_GPU_PROFILE) -> Zoo:
    """A paper-like zoo: the published OFA-ResNet50 (MACs, top-1) points, latencies from the GPU model.

    The supernet configs are placeholders from this project's space (the simulator only reads ids, accuracies and
    latencies); the OFA net id of each entry is kept in `OFA_RESNET50_POINTS`, in the same order as the zoo.
    """
    prof = gpu_profile(profile) if isinstance(profile, str) else profile
    space = SupernetSpace()
    configs: list[SubnetConfig] = []
    seen: set[str] = set()
    seed = 1000
    while len(configs) < len(OFA_RESNET50_POINTS):
        cfg = SubnetConfig.random(space, seed)
        seed += 1
        if cfg.subnet_id not in seen:
            seen.add(cfg.subnet_id)
            configs.append(cfg)
    entries = tuple(ZooEntry(cfg, acc, params=0, flops=int(macs),
                             latency_ms={b: prof.latency(macs, b) for b in prof.batch_sizes})
                    for cfg, (_name, macs, acc) in zip(configs, OFA_RESNET50_POINTS, strict=True))
    return Zoo(space, entries, _host(prof), dataset="imagenet (published OFA-ResNet50 points)")


def batching_gain(zoo: Zoo, subnet_index: int = -1, batch_size: int | None = None) -> float:
    """Throughput at `batch_size` (default the largest) over throughput at batch 1, for one subnet."""
    e = zoo.entries[subnet_index]
    b = batch_size or zoo.batch_sizes[-1]
    return (b / e.latency_ms[b].median_ms) / (1 / e.latency_ms[zoo.batch_sizes[0]].median_ms)


def describe(profile: GpuProfile) -> str:
    """One line: name, batch-1 and largest-batch latency, fixed cost, source."""
    b0, b1 = profile.batch_sizes[0], profile.batch_sizes[-1]
    return (f"{profile.name}: ResNet-50 {profile.avg_ms[b0]:g} ms at batch {b0}, {profile.avg_ms[b1]:g} ms at "
            f"{b1}, fixed {profile.fixed_ms:.2f} ms/batch (source: {profile.source})")


__all__ = ["DEFAULT_GPU_PROFILE", "GPU_PROFILES", "OFA_RESNET50_POINTS", "PAPER_SLO_MS", "RESNET50_MACS", "GpuProfile",
           "batching_gain", "describe", "gpu_profile", "gpu_zoo", "ofa_resnet50_zoo"]
