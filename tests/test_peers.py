"""benchmarks/peers.py (running the peers) and peers_report.py (reporting them) without the peers: which subnets and
batch sizes the peers get, the 'at equal' comparison and headline, the table, the [peers] extra, and the model the
peer servers run (export of a zoo subnet, torch only).
Nothing here needs PyTriton or Ray; the tests that would use them skip when they are absent."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from helpers import make_zoo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402
import peers_report  # noqa: E402


def row(config: str, system: str, att: float, acc: float | None, trace: str = "gamma:8", **kw) -> dict:
    return {"config": config, "system": system, "trace": trace, "requests": 100, "slo_attainment": att,
            "mean_accuracy": float("nan") if acc is None else acc, "p99_latency_ms": 50.0, "shed": 1, "rejected": 2,
            **kw}


def test_lineup_reads_the_subnets_from_the_zoo() -> None:
    zoo = make_zoo(accuracies=(0.80, 0.85, 0.90, 0.95, 0.99), lat1_ms=(1, 2, 4, 8, 16))
    picks = dict(peers.pick_subnets(zoo))
    by_acc = sorted(zoo.entries, key=lambda e: e.accuracy)
    assert picks["most accurate"].subnet_id == by_acc[-1].subnet_id
    assert picks["mid"].subnet_id == by_acc[2].subnet_id
    configs = peers.lineup(zoo, slo_ms=100)
    assert [c.system for c in configs] == ["superserve"] * 3 + ["triton", "triton", "ray"] * 2
    # superserve plain, then at each peer subnet's accuracy (every request hinted with it)
    assert [(c.role, c.min_accuracy) for c in configs[:3]] == [("slackfit", 0.0), ("slackfit@most accurate", 0.99),
                                                               ("slackfit@mid", 0.90)]
    assert configs[1].label == "superserve[slackfit,acc>=99.0%]"
    assert [c.system for c in peers.lineup(zoo, slo_ms=100, floors=())][:2] == ["superserve", "triton"]
    levels = peers.lineup(zoo, slo_ms=100, systems=("superserve",), floors=peers.parse_floors("peers,0.85,0.9"))
    assert [(c.role, c.min_accuracy) for c in levels] == [("slackfit", 0.0), ("slackfit@most accurate", 0.99),
                                                          ("slackfit@mid", 0.90), ("slackfit@hint", 0.85)]
    for bad in ("91.8", "0", "mid"):
        with pytest.raises(SystemExit, match="--floors"):
            peers.parse_floors(bad)
    configs = [c for c in configs if c.min_accuracy == 0]
    top = [c for c in configs if c.subnet_id == by_acc[-1].subnet_id]
    assert {c.accuracy for c in top} == {0.99} and all(c.role == "most accurate" for c in top)
    assert [c.queue_timeout_ms for c in configs if c.system == "triton"] == [0.0, 100.0, 0.0, 100.0]
    assert len({c.label for c in configs}) == len(configs)
    only_ray = peers.lineup(zoo, slo_ms=100, systems=("ray",), batches=(4,), triton_timeout=False)
    assert [c.label.split("[")[0] for c in only_ray] == ["ray", "ray"] and {c.max_batch for c in only_ray} == {4}
    two = peers.lineup(zoo, slo_ms=100, systems=("triton", "ray"), batches=("auto", 16, 4))
    auto_top = peers.max_batch_within(picks["most accurate"], 100)
    assert [c.max_batch for c in two if c.system == "ray" and c.role == "most accurate"] == \
        list(dict.fromkeys([auto_top, 16, 4]))
    assert len(two) == 3 * len(peers.peer_batches(picks["mid"], 100, ("auto", 16, 4))) + \
        3 * len(dict.fromkeys([auto_top, 16, 4]))


def test_extra_subnets_join_the_lineup_once_and_unknown_ids_are_refused() -> None:
    zoo = make_zoo(accuracies=(0.80, 0.85, 0.90, 0.95, 0.99), lat1_ms=(1, 2, 4, 8, 16))
    by_acc = sorted(zoo.entries, key=lambda e: e.accuracy)
    low, mid = by_acc[0].subnet_id, by_acc[2].subnet_id
    picks = peers.pick_subnets(zoo, [low, mid])  # the mid subnet is already a pick: not added twice
    assert [role for role, _ in picks] == ["most accurate", "mid", "extra"] and picks[2][1].subnet_id == low
    configs = peers.lineup(zoo, slo_ms=100, systems=("triton",), batches=(4,), triton_timeout=False, extra=[low])
    assert [(c.role, c.subnet_id) for c in configs][-1] == ("extra", low) and len(configs) == 3
    with pytest.raises(SystemExit, match="not in the zoo"):
        peers.pick_subnets(zoo, ["d999-nope"])


def test_max_batch_is_the_largest_batch_within_half_the_slo() -> None:
    zoo = make_zoo(accuracies=(0.9,), lat1_ms=(4.0,), growth=0.25)  # B: 4 * (1 + 0.25 (B-1)) ms
    entry = zoo.entries[0]
    assert peers.max_batch_within(entry, slo_ms=100) == 32  # 35 ms <= 50 < 67 ms at 64
    assert peers.max_batch_within(entry, slo_ms=20) == 4  # 7 ms <= 10 < 11 ms at 8
    assert peers.max_batch_within(entry, slo_ms=1) == 1  # nothing fits: batch 1 anyway


def test_comparison_and_headline_at_equal_accuracy_and_attainment() -> None:
    rows = [row("superserve[slackfit]", "superserve", 0.90, 0.93),
            row("triton[top,b4]", "triton", 0.20, 0.976, role="most accurate"),
            row("triton[mid,b8,timeout]", "triton", 0.40, 0.926, role="mid"),
            row("ray[mid,b8]", "ray", 0.10, 0.926, role="mid"),
            row("superserve[slackfit]", "superserve", 0.99, 0.95, trace="azure"),
            row("ray[top,b4]", "ray", 0.995, 0.976, trace="azure")]
    c = peers_report.trace_comparison(rows, "gamma:8")
    assert c["best_peer_config"] == "triton[mid,b8,timeout]"
    # Peers at accuracy >= 0.93 - 0.0005: between (0.926, 0.40) and (0.976, 0.20), linearly.
    expect = 0.40 + (0.20 - 0.40) * (0.9295 - 0.926) / (0.976 - 0.926)
    assert c["peer_attainment_at_equal_accuracy"] == pytest.approx(expect)
    assert c["attainment_gain_x_at_equal_accuracy"] == pytest.approx(0.90 / expect)
    assert c["accuracy_gain_points_at_equal_attainment"] is None  # no peer attains 0.9
    h = peers_report.headline(rows, ["gamma:8", "azure"], {"superserve[slackfit]": 1.2, "triton[top,b4]": 5.0,
                                                   "triton[mid,b8,timeout]": 4.0, "ray[top,b4]": 11.0}, "gamma:8")
    assert h["superserve_slo_attainment_frac_gamma_cv2_8"] == 0.9
    assert h["best_peer_most_accurate_subnet_slo_attainment_frac_gamma_cv2_8"] == 0.2
    assert h["best_peer_mid_subnet_slo_attainment_frac_gamma_cv2_8"] == 0.4
    assert h["attainment_gain_x_at_equal_accuracy_gamma_cv2_8"] == round(0.90 / expect, 3)
    assert h["target_attainment_2x_at_equal_accuracy_met_gamma_cv2_8"] == "yes"
    assert h["target_higher_accuracy_at_equal_attainment_met_gamma_cv2_8"] == "yes"
    assert "target_attainment_2x_at_equal_accuracy_met_azure" not in h  # judged on the burstiest trace only
    # azure: the peer attains more and is more accurate: superserve loses on both sides, and it says so.
    assert h["attainment_gain_x_at_equal_accuracy_azure"] == round(0.99 / 0.995, 3)
    assert h["accuracy_gain_points_at_equal_attainment_azure"] == round(100 * (0.95 - 0.976), 2)
    h2 = peers_report.headline(rows, ["gamma:8", "azure"], {}, "azure")
    assert h2["target_attainment_2x_at_equal_accuracy_met_azure"] == "no"
    assert h2["target_higher_accuracy_at_equal_attainment_met_azure"] == "no"
    assert h["startup_s_triton_median"] == 5.0 and h["startup_s_ray_median"] == 11.0
    assert all(isinstance(v, (int, float, str)) or v is None for v in h.values())  # flat
    assert peers_report.trace_comparison(rows, "poisson") is None


def test_superserve_at_each_peer_subnet_accuracy() -> None:
    """The floor runs (requests hinted with a peer subnet's accuracy) set superserve's attainment at that accuracy;
    plain SlackFit counts too when it is as accurate; the plain-SlackFit comparison ignores the floor runs."""
    rows = [row("superserve[slackfit]", "superserve", 0.95, 0.90, role="slackfit"),
            row("superserve[slackfit,acc>=97.6%]", "superserve", 0.50, 0.976, role="slackfit@most accurate"),
            row("superserve[slackfit,acc>=92.6%]", "superserve", 0.70, 0.93, role="slackfit@mid"),
            row("triton[top,b4]", "triton", 0.10, 0.976, role="most accurate"),
            row("triton[mid,b8]", "triton", 0.40, 0.926, role="mid"),
            row("ray[mid,b8]", "ray", 0.20, 0.926, role="mid"),
            row("triton[low,b8]", "triton", 0.98, 0.85, role="extra")]
    c = peers_report.trace_comparison(rows, "gamma:8")
    assert c["superserve_slo_attainment"] == 0.95  # plain SlackFit, not a floor run
    ap = c["at_peer_accuracy"]
    assert ap["most accurate"]["superserve_config"] == "superserve[slackfit,acc>=97.6%]"
    assert ap["most accurate"]["attainment_gain_x"] == pytest.approx(5.0)
    assert ap["mid"]["peer_config"] == "triton[mid,b8]" and ap["mid"]["attainment_gain_x"] == pytest.approx(1.75)
    # the extra peer (85%) is less accurate than every superserve run: the best of them, plain SlackFit, counts
    assert ap["extra"]["superserve_config"] == "superserve[slackfit]"
    assert ap["extra"]["attainment_gain_x"] == pytest.approx(0.95 / 0.98)
    h = peers_report.headline(rows, ["gamma:8"], {}, "gamma:8")
    assert h["attainment_gain_x_at_most_accurate_subnet_accuracy_gamma_cv2_8"] == 5.0
    assert h["superserve_slo_attainment_frac_at_mid_subnet_accuracy_gamma_cv2_8"] == 0.7
    assert h["superserve_mean_accuracy_pct_at_mid_subnet_accuracy_gamma_cv2_8"] == 93.0
    assert h["attainment_gain_x_at_each_peer_subnet_accuracy_min_gamma_cv2_8"] == round(0.95 / 0.98, 3)
    assert h["target_attainment_2x_at_each_peer_subnet_accuracy_met_gamma_cv2_8"] == "no"
    # without the extra peer the least gain is the mid subnet's 1.75x: still short of 2x
    h2 = peers_report.headline(rows[:-1], ["gamma:8"], {}, "gamma:8")
    assert h2["attainment_gain_x_at_each_peer_subnet_accuracy_min_gamma_cv2_8"] == 1.75
    # a peer that attains nothing: an infinite gain, written "inf" in the flat headline
    zero = [r if r["config"] != "triton[mid,b8]" else {**r, "slo_attainment": 0.0} for r in rows[:-2]]
    h3 = peers_report.headline(zero, ["gamma:8"], {}, "gamma:8")
    assert h3["attainment_gain_x_at_mid_subnet_accuracy_gamma_cv2_8"] == "inf"
    assert h3["target_attainment_2x_at_each_peer_subnet_accuracy_met_gamma_cv2_8"] == "yes"  # 5x and inf
    # no superserve run as accurate as the peer: no gain at that accuracy, and no verdict on it
    h4 = peers_report.headline([r for r in rows if r["config"] != "superserve[slackfit,acc>=97.6%]"], ["gamma:8"], {},
                        "gamma:8")
    assert "attainment_gain_x_at_most_accurate_subnet_accuracy_gamma_cv2_8" not in h4
    assert "attainment_gain_x_at_each_peer_subnet_accuracy_min_gamma_cv2_8" not in h4
    assert "target_attainment_2x_at_each_peer_subnet_accuracy_met_gamma_cv2_8" not in h4


def test_runs_are_trace_at_load() -> None:
    assert peers_report.run_name("gamma:8", 2.0) == "gamma:8@2" and peers_report.trace_of("gamma:8@2") == "gamma:8"
    assert peers_report.run_key("gamma:8@1.5") == "gamma_cv2_8_load_1p5" and peers_report.run_key("azure") == "azure"
    rows = [row("superserve[slackfit]", "superserve", 0.9, 0.93, run="gamma:8@2"),
            row("ray[top,b4]", "ray", 0.3, 0.976, run="gamma:8@2"),
            row("superserve[slackfit]", "superserve", 1.0, 0.97, run="gamma:8@1"),
            row("ray[top,b4]", "ray", 0.9, 0.976, run="gamma:8@1")]
    h = peers_report.headline(rows, ["gamma:8@1", "gamma:8@2"], {}, "gamma:8")
    assert h["attainment_gain_x_at_equal_accuracy_gamma_cv2_8_load_2"] == 3.0
    assert h["target_attainment_2x_at_equal_accuracy_met_gamma_cv2_8_load_2"] == "yes"
    assert h["target_attainment_2x_at_equal_accuracy_met_gamma_cv2_8_load_1"] == "no"  # 1.11x
    assert peers_report.trace_comparison(rows, "gamma:8@1")["best_peer_config"] == "ray[top,b4]"


def test_printed_comparison_names_superserve_the_best_peer_and_the_gains(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row("superserve[slackfit]", "superserve", 0.9, 0.93, run="gamma:8@2"),
            row("ray[top,b4]", "ray", 0.3, 0.976, run="gamma:8@2", role="most accurate"),
            row("superserve[slackfit,acc>=97.6%]", "superserve", 0.6, 0.977, run="gamma:8@2",
                role=peers_report.FLOOR_PREFIX + "most accurate", min_accuracy=0.976)]
    peers_report.print_comparisons(rows, ["gamma:8@2", "azure@1"])  # azure@1 has no rows: nothing printed for it
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gamma:8@2: superserve 90.0% at 93.00%; best peer ray[top,b4] 30.0%")
    assert out[1] == ("  at the most accurate subnet's accuracy (97.60%): superserve[slackfit,acc>=97.6%] 60.0% at "
                      "97.70% vs ray[top,b4] 30.0%: 2.00x")
    assert len(out) == 2


def test_table_lists_every_row_and_handles_nothing_served() -> None:
    rows = [row("superserve[slackfit]", "superserve", 0.9, 0.93, saturation_qps=812.4),
            row("ray[top,b4]", "ray", 0.0, None)]
    text = peers_report.format_table(rows, {"superserve[slackfit]": 1.3})
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].split()[1] == "superserve[slackfit]" and lines[2].endswith("1.3 s      812")
    fields = lines[3].split()
    assert fields[1] == "ray[top,b4]" and fields[2] == "0.0%" and fields[3] == "-" and fields[-2:] == ["-", "-"]


def test_peer_venv_packages_come_from_the_peers_extra() -> None:
    assert peers.peer_packages("triton")[0].startswith("nvidia-pytriton")
    assert peers.peer_packages("ray")[0].replace(" ", "").startswith("ray[serve]")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "peers" not in ci  # CI never installs them


def test_peer_model_is_the_exported_subnet(serving_assets) -> None:  # noqa: ANN001 - the conftest fixture
    import torch
    import numpy as np

    from peers_model import FixedSubnet
    from supernet.checkpoint import load_checkpoint
    from superserve.zoo import Zoo

    zoo_path, ckpt = serving_assets
    zoo = Zoo.load(zoo_path)
    entry = max(zoo.entries, key=lambda e: e.accuracy)
    model = FixedSubnet(str(zoo_path), str(ckpt), entry.subnet_id, threads=1)
    assert model.accuracy == entry.accuracy and model.input_shape == (1, 28, 28)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    probs, cls = model(x)
    net, _ = load_checkpoint(ckpt)
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(x), entry.config), dim=1).numpy()
    assert probs.shape == (3, 10) and cls.shape == (3, 1) and cls.dtype == np.int64
    assert np.allclose(probs, want, atol=1e-5)
    assert math.isclose(float(probs.sum(axis=1).mean()), 1.0, rel_tol=1e-5)


def test_ray_app_builds_when_ray_is_installed() -> None:
    pytest.importorskip("ray.serve")
    import argparse

    import peers_ray

    args = argparse.Namespace(zoo="z", checkpoint="c", subnet_id="s", threads=1, model_name="subnet", max_batch=4,
                              batch_wait_ms=2.0, max_ongoing=64)
    assert peers_ray.build_app(args) is not None


def test_timed_superserve_runs_use_the_table_settled_before_them() -> None:
    """Only the untimed preparation start may re-profile; a timed run re-profiling would be charged to its start-up
    and would hand later runs another table."""
    import argparse

    args = argparse.Namespace(checkpoint=Path("ckpt.pt"), threads=1, slo_ms=100.0, venv_dir=Path("/tmp/none"),
                              batch_wait_ms=2.0)

    def reprofile_flag(cfg: "peers.Config") -> str:
        argv, model = peers.server_command(cfg, args, Path("zoo.json"), [1, 2, 3])
        assert model == "superserve"
        return argv[argv.index("--reprofile") + 1]

    assert reprofile_flag(peers.Config("superserve[reprofile]", "superserve", role="reprofile")) == "auto"
    assert reprofile_flag(peers.Config("superserve[slackfit]", "superserve", role="slackfit")) == "never"
    assert reprofile_flag(peers.Config("superserve[slackfit,acc>=92.6%]", "superserve", role="slackfit@mid",
                                       min_accuracy=0.926)) == "never"
