"""The "at equal" comparison against the baseline frontier, capacity, and a tiny end-to-end trade-off run + CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_zoo
from superserve.cli import main
from superserve.experiments import (Point, TradeoffSetup, accuracy_at_attainment, attainment_at_accuracy,
                                    capacity_qps, compare, frontier, run_tradeoff, spread_indices)


def point(acc: float, att: float, name: str = "x") -> Point:
    return Point(name, name, "t", 1.0, 1.0, 10, att, acc, 0.0, 0.0)


def test_frontier_drops_dominated_points() -> None:
    pts = [(0.90, 1.0), (0.95, 0.8), (0.94, 0.7), (0.98, 0.2), (0.98, 0.1), (0.90, 0.9)]
    assert frontier(pts) == [(0.90, 1.0), (0.95, 0.8), (0.98, 0.2)]


def test_at_equal_interpolates_the_frontier() -> None:
    front = [(0.90, 1.0), (0.95, 0.8), (0.98, 0.2)]
    assert attainment_at_accuracy(front, 0.85) == 1.0  # a more accurate baseline point already attains 1.0
    assert attainment_at_accuracy(front, 0.965) == pytest.approx(0.5)  # halfway between 0.95 and 0.98
    assert attainment_at_accuracy(front, 0.99) is None  # no baseline is that accurate
    assert accuracy_at_attainment(front, 0.9) == pytest.approx(0.925)
    assert accuracy_at_attainment(front, 0.1) == 0.98
    assert accuracy_at_attainment(front, 1.01) is None


def test_compare_reports_both_gains() -> None:
    baselines = [point(0.90, 1.0), point(0.95, 0.8), point(0.98, 0.2)]
    c = compare(point(0.96, 0.9), baselines, attainment_tol=0.0, accuracy_tol=0.0)
    assert c["accuracy_gain_points"] == pytest.approx(100 * (0.96 - 0.925))
    assert c["attainment_gain_x"] == pytest.approx(0.9 / (0.8 - 0.6 * 0.01 / 0.03))
    assert compare(point(0.99, 0.1), baselines)["attainment_gain_x"] is None
    assert compare(point(0.96, 1.01), baselines)["accuracy_gain_points"] is None


def test_compare_ignores_noise_sized_attainment_differences() -> None:
    # A baseline as accurate and at 0.99995 attainment is "equal" to a target at 0.99998: no gain is conjured by
    # interpolating toward the 0.90 point at 1.0.
    baselines = [point(0.90, 1.0), point(0.9445, 0.99995)]
    c = compare(point(0.9435, 0.99998), baselines)
    assert c["accuracy_gain_points"] == pytest.approx(-0.1)
    assert c["attainment_gain_x"] == pytest.approx(1.0, abs=1e-4)


def test_capacity_uses_the_most_accurate_subnet_within_half_the_slo() -> None:
    zoo = make_zoo()  # big subnet: B=8 takes 11 ms (<= 18), B=16 takes 19 ms
    assert capacity_qps(zoo, 2, 36.0) == pytest.approx(2 * 8 / 11e-3)
    assert spread_indices(10, 4) == [0, 3, 6, 9] and spread_indices(3, 5) == [0, 1, 2]
    with pytest.raises(ValueError):
        capacity_qps(zoo, 1, 1.0)


def test_tiny_tradeoff_run_puts_slackfit_first() -> None:
    setup = TradeoffSetup(traces=("gamma:4",), loads=(0.5, 4.0), duration_s=0.3, workers=2, fixed_subnets=2)
    results = run_tradeoff(make_zoo(), setup)
    assert [(r["trace"], r["load"]) for r in results] == [("gamma:4", 0.5), ("gamma:4", 4.0)]
    for r in results:
        assert r["points"][0].family == "slackfit" and len(r["points"]) == 3 + 3 * 2
        assert {"accuracy_gain_points", "attainment_gain_x"} <= set(r["vs_all_interpolated"])
        for versus in ("vs_clipper", "vs_infaas"):  # measured: one SlackFit run per system configuration
            assert len(r[versus]["at_equal_accuracy"]) == 2


def test_cli_experiment_and_simulate_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "tradeoff", "--traces", "poisson", "--loads", "1", "--duration", "0.2",
                 "--workers", "2", "--fixed-subnets", "2", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out or "zoo.json" in out
    assert "GPU model a100-trt-fp16" in out and (tmp_path / "tradeoff_cpu.png").is_file()
    assert (tmp_path / "tradeoff_gpu_a100_trt_fp16.png").is_file() and (tmp_path / "tradeoff.json").is_file()
    assert main(["simulate", "--duration", "0.5", "--workers", "2", "--records", str(tmp_path / "r.jsonl")]) == 0
    assert "SLO attainment" in capsys.readouterr().out and (tmp_path / "r.jsonl").stat().st_size > 0
    assert main(["simulate", "--policy", "nope"]) == 2
    assert main(["simulate", "--gpu-profile", "h100-magic", "--duration", "0.1"]) == 2
    assert "unknown GPU profile 'h100-magic'; known profiles: a100-tf32, a100-trt-fp16, v100-trt-fp16" in \
        capsys.readouterr().err
    assert main(["simulate", "--zoo", "paper", "--gpu-profile", "v100-trt-fp16", "--duration", "0.2",
                 "--workers", "1"]) == 0
    assert "paper-like OFA-ResNet50 zoo (8 published points" in capsys.readouterr().out
    assert main(["trace", "gamma", "--rate", "100", "--cv2", "2", "--duration", "5",
                 "--out", str(tmp_path / "t.npy")]) == 0
    assert main(["trace", "info", str(tmp_path / "t.npy")]) == 0
    assert main(["trace", "info", str(tmp_path / "missing.csv")]) == 2


def test_experiment_switch_time_default_ships_with_the_package() -> None:
    """INFaaS's model-load time defaults to a number inside the package (an installed wheel has no benchmarks/
    results/), and --infaas-switch-ms overrides it."""
    import argparse

    from superserve.commands.experiment import add_arguments, setup_from_args
    from superserve.defaults import INFAAS_SWITCH_MS

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert setup_from_args(parser.parse_args(["tradeoff"])).infaas_switch_ms == INFAAS_SWITCH_MS
    assert setup_from_args(parser.parse_args(["tradeoff", "--infaas-switch-ms", "12.5"])).infaas_switch_ms == 12.5
