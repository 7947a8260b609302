"""The statistics the issue-22 benchmarks report: the flat-budget finder and the DεpS-minus-best-baseline deltas
(training_methods.py), and the defense verdicts' interval test (extraction_defense.py). Synthetic runs, no training."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(method, seed, budget, smallest, largest=90.0, front=80.0, schedule="equal"):
    return {"method": method, "seed": seed, "budget": budget, "schedule": schedule,
            "min_subnet_val_acc_pct": smallest, "min_subnet_test_acc_pct": smallest,
            "max_subnet_test_acc_pct": largest, "front_mean_test_acc_pct": front}


def test_flat_budget_is_where_the_best_smallest_curve_stops_gaining():
    tm = _load("training_methods")
    runs = [_run(m, s, b, acc + (1 if m == "deps" else 0)) for s in (0, 1) for m in ("deps", "bignas")
            for b, acc in ((4, 50.0), (8, 70.0), (16, 75.0), (32, 75.5))]
    assert tm.flat_budget(runs, [4, 8, 16, 32], ["deps", "bignas"], 1.0) == (16, True)
    assert tm.flat_budget(runs, [4, 8, 16, 32], ["deps", "bignas"], 0.1) == (32, False)  # never flat: largest


def test_deltas_pair_seeds_against_the_best_baseline():
    tm = _load("training_methods")
    runs = [_run("deps", 0, 8, 80.0), _run("deps", 1, 8, 84.0), _run("deps", 2, 8, 82.0),
            _run("bignas", 0, 8, 78.0), _run("bignas", 1, 8, 80.0), _run("bignas", 2, 8, 79.0),
            _run("ofa", 0, 8, 60.0), _run("ofa", 1, 8, 61.0), _run("ofa", 2, 8, 62.0)]
    d = tm.deltas(runs, ["deps", "bignas", "ofa"], "equal", 8)
    assert d["smallest_best_baseline"] == "bignas"
    assert d["smallest_points"] == pytest.approx(3.0)  # seed-paired deps - bignas: 2, 4, 3
    from scipy.stats import t

    assert d["smallest_ci95_points"] == pytest.approx(t.ppf(0.975, 2) * 1.0 / math.sqrt(3), abs=1e-3)
    assert d["largest_points"] == pytest.approx(0.0) and d["largest_ci95_points"] == pytest.approx(0.0)
    assert tm.deltas(runs, ["bignas", "ofa"], "equal", 8) == {}  # no DεpS: nothing to compare
    # the papers' schedules: baselines' own runs against DεpS's equal-budget run (its own schedule)
    paper = [_run("deps", s, 8, 80.0 + s) for s in (0, 1, 2)] + \
        [_run("bignas", s, 8, 70.0 + 2 * s, schedule="paper") for s in (0, 1, 2)] + \
        [_run("ofa", s, 8, 60.0, schedule="paper") for s in (0, 1, 2)] + [_run("bignas", 0, 8, 99.0)]
    d = tm.deltas(paper, ["deps", "bignas", "ofa"], "paper", 8)
    assert d["smallest_best_baseline"] == "bignas" and d["smallest_points"] == pytest.approx(9.0)


def test_defense_verdict_needs_the_interval_to_exclude_zero():
    ed = _load("extraction_defense")
    assert ed._separated(ed._stat([5.0, 6.0, 7.0, 5.5]))
    assert not ed._separated(ed._stat([5.0, -4.0, 30.0, -20.0]))  # bimodal: not separated
    assert not ed._separated(ed._stat([3.0]))  # one seed: no interval
    assert ed._stat([1.0, float("nan"), 3.0])["n"] == 2


def test_mnist5k_image_size_applies_to_mnist5k_only():
    import argparse

    tm = _load("training_methods")
    args = argparse.Namespace(mnist5k_image_size=14)
    assert tm.image_size_for("mnist5k", args) == 14
    assert tm.image_size_for("digits", args) is None
    assert tm.image_size_for("mnist5k", argparse.Namespace()) is None  # jobs pickled before the option existed


def test_scores_are_reused_while_the_checkpoint_and_subnet_set_are_unchanged(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    tm = _load("training_methods")
    calls = []
    monkeypatch.setattr(tm, "score", lambda ckpt, subnets, splits: calls.append(1) or [{"n": len(calls)}])
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(b"weights")
    a, b = SimpleNamespace(subnet_id="a"), SimpleNamespace(subnet_id="b")
    assert tm.cached_score(ckpt, [a, b], None) == [{"n": 1}]
    assert tm.cached_score(ckpt, [a, b], None) == [{"n": 1}] and len(calls) == 1  # reused
    assert tm.cached_score(ckpt, [a], None) == [{"n": 2}]  # another subnet set: scored again
    later = ckpt.with_suffix(".scores.json").stat().st_mtime + 10
    os.utime(ckpt, (later, later))  # the checkpoint changed after its scores: scored again
    assert tm.cached_score(ckpt, [a], None) == [{"n": 3}]


def test_reuse_takes_an_earlier_reports_runs_only_when_the_setup_matches():
    tm = _load("training_methods")
    space, common = {"depth_choices": [2, 3, 4], "image_size": 8}, [{"subnet_id": "a"}]
    run = {"data": "digits", "method": "deps", "schedule": "equal", "budget": 64.0, "seed": 1}
    prior = {"batch_size": 64, "lr": 0.1, "space": {"digits": space}, "common_subnets": {"digits": common},
             "runs": [run, {**run, "data": "mnist5k"}]}
    assert tm.reusable(prior, "digits", dict(space), list(common), 64, 0.1) == {("deps", "equal", 64.0, 1): run}
    assert tm.reusable(prior, "digits", {**space, "image_size": 14}, common, 64, 0.1) == {}  # another space
    assert tm.reusable(prior, "digits", space, [{"subnet_id": "b"}], 64, 0.1) == {}  # other common subnets
    assert tm.reusable(prior, "digits", space, common, 32, 0.1) == {}  # another batch size
    assert tm.reusable(prior, "digits", space, common, 64, 0.05) == {}  # another learning rate
    assert tm.reusable(None, "digits", space, common, 64, 0.1) == {}
