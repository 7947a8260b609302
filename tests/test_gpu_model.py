"""The GPU latency model (published ResNet-50 tables scaled by MACs) and the zoos built on it."""

from __future__ import annotations

import pytest

from superserve.gpu_model import (
    GPU_PROFILES,
    OFA_RESNET50_POINTS,
    RESNET50_MACS,
    batching_gain,
    gpu_profile,
    gpu_zoo,
    ofa_resnet50_zoo,
)
from superserve.synthetic import synthetic_zoo


@pytest.mark.parametrize("name", sorted(GPU_PROFILES))
def test_a_resnet50_sized_model_gets_the_published_row(name: str) -> None:
    prof = gpu_profile(name)
    for b in prof.batch_sizes:
        s = prof.latency(RESNET50_MACS, b)
        assert s.median_ms == pytest.approx(prof.avg_ms[b]) and s.p99_ms == pytest.approx(prof.p99_ms[b])
    # Smaller models are faster at every batch size but never below the fixed per-batch cost.
    assert 0 < prof.fixed_ms <= prof.avg_ms[1]
    for b in prof.batch_sizes:
        half = prof.latency(RESNET50_MACS / 2, b)
        assert prof.fixed_ms <= half.median_ms < prof.avg_ms[b]
        assert half.p99_ms / half.median_ms == pytest.approx(prof.p99_ms[b] / prof.avg_ms[b])


def test_gpu_tail_is_tight_and_batching_pays() -> None:
    # What makes a GPU zoo different from the scaled CPU one: p99 within ~20% of the median (the CPU zoo's reached
    # 4.8x), and batch 32 buys ~6x throughput on ResNet-50 (more on smaller models, whose fixed cost dominates).
    for prof in GPU_PROFILES.values():
        assert max(prof.p99_ms[b] / prof.avg_ms[b] for b in prof.batch_sizes) < 1.25
    zoo = ofa_resnet50_zoo("a100-trt-fp16")
    assert batching_gain(zoo, -1, 32) == pytest.approx(32 * 2.128 / 11.193)
    assert batching_gain(zoo, 0, 64) > 10


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown GPU profile 'tpu'; known profiles: a100-tf32, a100-trt-fp16"):
        gpu_profile("tpu")
    with pytest.raises(ValueError):
        gpu_profile("a100-trt-fp16").latency(RESNET50_MACS, 3)  # not a profiled batch size


def test_paper_zoo_is_the_published_ofa_points_fastest_first() -> None:
    zoo = ofa_resnet50_zoo()
    assert [e.accuracy for e in zoo.entries] == [a for _, _, a in OFA_RESNET50_POINTS]
    assert [e.flops for e in zoo.entries] == [int(m) for _, m, _ in OFA_RESNET50_POINTS]
    b1 = [e.latency_ms[1].median_ms for e in zoo.entries]
    assert b1 == sorted(b1) and zoo.host.device.startswith("cuda:A100")


def test_gpu_zoo_costs_the_largest_subnet_as_resnet50() -> None:
    base = synthetic_zoo(5)
    zoo = gpu_zoo(base, "v100-trt-fp16")
    prof = gpu_profile("v100-trt-fp16")
    largest = max(zoo.entries, key=lambda e: e.flops)
    assert largest.latency_ms[64].median_ms == pytest.approx(prof.avg_ms[64])
    assert {e.subnet_id for e in zoo.entries} == {e.subnet_id for e in base.entries}
    assert zoo.batch_sizes == prof.batch_sizes and "gpu-model:v100-trt-fp16" in zoo.host.processor
