"""Fingerprinting + extraction attack vs the hint-noise defenses: attack accuracy/fidelity against goodput (issue 7).

    nice -n 10 /work/venv/bin/python benchmarks/extraction_defense.py            # 5 seeds, ~10 min on 2 busy cores
    nice -n 10 /work/venv/bin/python benchmarks/extraction_defense.py --quick    # 1 seed, smaller sweep, ~2 min

What runs (seeds in the JSON):
- Set-up: the shipped zoo + checkpoint (else the tiny test fixture, said so in the result). Victim = the (lower)
  middle of the front subnets (those an idle server can pick) whose step is >= 25% wide in batch-1 budget
  (`security.experiment.pinnable_victim`): d333-37584653 (91.8%) on both the shipped table and this host's
  re-profiled one; the attacker is told only its accuracy and targets the responder it measured nearest to it. Attacker data = the MNIST-5k validation split +
  the odd-numbered test images (1,000 raw UINT8 images, disjoint from the victim's training split) + 48 blended
  pairs as fingerprint candidates. Accuracy and fidelity are measured on the even-numbered test images (500; split
  seed 0), which the attacker never has.
- Simulator serving path (`security.oracles.SimOracle`): the real SlackFit policy and EDF queue on the zoo's latency
  table, 1 worker, 2 ms overhead, benign Poisson traffic at `--load` x the top subnet's batch-1 throughput (SLO
  LogUniform(1, 6) x its budget, half with an accuracy hint Uniform(lowest, highest accuracy)); the attacker's
  single-image calls injected into it; the defense applied to every request. Goodput = benign requests served by a
  subnet meeting their ORIGINAL hints / all benign requests.
  The attacker keeps one call in flight (calls spaced by their SLO), like a client waiting for each answer.
- Attacks: fingerprinted (staircase discovery, pin the victim and verify the pin, extract `--budget` images with
  consistency checks), naive (the same images without hints), naive with as many queries as the whole fingerprinted
  attack (capped at the 1,000-image pool), upper bound (the victim's own labels on the `--budget` images). One
  knockoff CNN per attack, seeded. A pin that lands elsewhere is scored against the victim all the same. The
  no-defense comparison is repeated at `--high-load` (default 0.8).
- Defenses swept: PSML noise (Gaussian, accuracy std s, SLO log-std 20 s), ours (Pareto neighbour, probability p;
  pinned -> fastest subnet; and with loose requests spread over the subnets their hints admit, q) and, against the
  strongest setting of each with goodput >= 80%, the adaptive attacker (3 votes per image at the same budget).
- Every point is run for each of `--seeds` (default 0-4): the attacker's probes and transfer order, the benign
  traffic, the defense's draws and the surrogate's training all follow the seed. Means and standard deviations.
- A short run against the real gRPC server (in-process, idle, shipped zoo, default start-up: this host's
  re-profiled table from the per-host cache, online latency correction on), subnet id hidden from the attacker
  (read for evaluation only) and, separately, shown to it; the server's table at the start and end of each run is
  recorded (the correction moves it during the attack).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, write_result  # noqa: E402

NOISE_SCALES = (0.0025, 0.005, 0.01, 0.02, 0.04)
PARETO_PS = (0.1, 0.2, 0.3, 0.45)
SPREAD_QS = (0.2, 0.5)  # with p = 0.3


def _assets() -> tuple[Path, Path, str]:
    from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO

    if DEFAULT_ZOO.is_file() and DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_ZOO, DEFAULT_CHECKPOINT, "shipped"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serving_fixture import build_serving_assets

    zoo, ckpt = build_serving_assets(Path(tempfile.mkdtemp(prefix="extraction_defense_")), repeats=5)
    return zoo, ckpt, "tiny untrained test fixture (no shipped zoo yet): accuracies are meaningless"


def _point(setting: Any, defense: Any, args: argparse.Namespace, seed: int, naive: bool,
           visible: bool = False, repeats: int = 1, naive_equal_total: bool = False,
           load: float | None = None) -> dict[str, Any]:
    from security.experiment import run_attack
    from security.oracles import BenignWorkload, SimOracle

    oracle = SimOracle(setting.zoo, setting.predictions, BenignWorkload(load=args.load if load is None else load),
                       defense, seed=seed, subnet_visible=visible)
    out = run_attack(setting, oracle, args.budget, seed, use_subnet_param=visible, naive=naive, epochs=args.epochs,
                     repeats=repeats, naive_equal_total=naive_equal_total,
                     target_accuracy=setting.zoo.entries[setting.victim].accuracy)
    out["goodput_pct"] = 100.0 * oracle.benign_goodput
    out["benign_accuracy_shortfall_points"] = oracle.benign_accuracy_shortfall_points
    out["benign_requests"] = len(oracle.benign_good)
    return out


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _std(xs: list[float]) -> float:
    import numpy as np

    xs = [x for x in xs if x == x]
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _row(defense: str, scale: float, seed: int, r: dict[str, Any]) -> dict[str, Any]:
    s = r["scores"]["fingerprinted"]
    return {"defense": defense, "scale": scale, "seed": seed, "goodput_pct": r["goodput_pct"],
            "fp_acc": s["accuracy_pct"], "fp_fid": s["fidelity_pct"], "victim_label_share_pct":
            s["victim_label_share_pct"], "pinned_is_victim": r["pinned_is_victim"], "pinned_subnet": r["pinned_subnet"],
            "responders_found": r["responders_found"], "fingerprint_queries": r["fingerprint_queries"],
            "total_queries": r["fingerprinted_total_queries"], "labels": s["labels"],
            "pin_consistency": r["pin"]["consistency"],
            "benign_accuracy_shortfall_points": r["benign_accuracy_shortfall_points"]}


def _aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (defense, scale): means and standard deviations over seeds."""
    keys = list(dict.fromkeys((r["defense"], r["scale"]) for r in rows))
    out = []
    for d, sc in keys:
        rs = [r for r in rows if (r["defense"], r["scale"]) == (d, sc)]
        agg: dict[str, Any] = {"defense": d, "scale": sc, "seeds": len(rs)}
        for k in ("goodput_pct", "fp_acc", "fp_fid", "victim_label_share_pct", "fingerprint_queries",
                  "total_queries", "labels", "pin_consistency", "benign_accuracy_shortfall_points"):
            agg[k] = _mean([float(r[k]) for r in rs])
            agg[k + "_std"] = _std([float(r[k]) for r in rs])
        agg["pinned_is_victim_pct"] = 100.0 * _mean([float(r["pinned_is_victim"]) for r in rs])
        out.append(agg)
    return out


def _plot(agg: list[dict[str, Any]], base: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"psml_noise": ("PSML noise on hints (s)", "o-"), "pareto": ("ours: Pareto neighbour (p)", "s-"),
             "pareto_fastest": ("ours: pinned -> fastest (p)", "^-"),
             "pareto_spread": ("ours: p=0.3 + loose spread (q)", "D-")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)
    for ax, metric, label in ((axes[0], "fp_acc", "attack accuracy (%)"), (axes[1], "fp_fid", "attack fidelity (%)")):
        for name, (text, style) in names.items():
            pts = sorted((r["goodput_pct"], r[metric], r[metric + "_std"], r["scale"]) for r in agg
                         if r["defense"] in (name, "none"))
            if len(pts) < 2:
                continue
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, capsize=2,
                        label=text, ms=4)
            for g, v, _, sc in pts:
                if sc:
                    ax.annotate(f"{sc:g}", (g, v), textcoords="offset points", xytext=(3, 3), fontsize=7)
        key = "acc" if metric == "fp_acc" else "fid"
        ax.axhline(base[f"upper_{key}"], color="k", ls="--", lw=1, label="upper bound (victim alone)")
        ax.axhline(base[f"naive_{key}"], color="grey", ls=":", lw=1, label="naive attack (no hints)")
        ax.axvline(80, color="r", lw=0.8, alpha=0.5)
        ax.set_xlabel("goodput: benign requests served within their original hints (%)")
        ax.set_ylabel(label + f", mean of {int(base['seeds'])} seeds")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Fingerprinted extraction of the middle front subnet vs hint defenses (simulator serving path)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _best_at(agg: list[dict[str, Any]], name: str, base: dict[str, float], floor_pct: float) -> dict[str, Any]:
    """The setting of defense `name` cutting the mean attack accuracy most with mean goodput >= floor."""
    ok = [r for r in agg if r["defense"] == name and r["goodput_pct"] >= floor_pct]
    if not ok:
        return {"acc_drop": float("nan"), "fid_drop": float("nan"), "goodput": float("nan"), "scale": None}
    best = max(ok, key=lambda r: base["fp_acc"] - r["fp_acc"])
    return {"acc_drop": base["fp_acc"] - best["fp_acc"], "fid_drop": base["fp_fid"] - best["fp_fid"],
            "goodput": best["goodput_pct"], "scale": best["scale"], "acc_std": best["fp_acc_std"]}


def _table(zoo: Any) -> list[dict[str, Any]]:
    """The serving table as the policy sees it (evaluation only): batch-1 p99 + 2 ms overhead, front membership."""
    from security.defense import ZooView

    view = ZooView.from_zoo(zoo, 2.0)
    return [{"subnet": e.subnet_id, "accuracy": e.accuracy, "budget_ms": round(view.budget_ms[i], 3),
             "front": bool(view.front[i])} for i, e in enumerate(zoo.entries)]


def _server_run(zoo: Path, ckpt: Path, setting: Any, args: argparse.Namespace, shown: bool) -> dict[str, Any]:
    """One attack on a fresh in-process server (default start-up: the latency table re-profiled for this host,
    from the per-host cache when there is one; online correction on). The victim is chosen on the table the server
    actually starts with (`pinnable_victim`: for the shipped zoo on this host the same subnet as on the
    simulator's table); the attacker is told only its accuracy."""
    from security.experiment import pinnable_victim, run_attack
    from security.oracles import ServerOracle
    from superserve.server.app import Server, ServeConfig

    srv = Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True)).start()
    oracle = ServerOracle(f"127.0.0.1:{srv.port}", setting.data)
    try:
        live = srv.engine.policy.zoo
        start = _table(live)
        victim_id = live.entries[pinnable_victim(live)].subnet_id
        here = setting.with_victim(setting.zoo.subnet_ids.index(victim_id))
        # the response shows subnet_id (kept for evaluation); the attacker reads it only when `shown`
        out = run_attack(here, oracle, args.server_budget, args.seeds[0], use_subnet_param=shown,
                         naive=not shown, epochs=args.epochs, target_accuracy=here.zoo.entries[here.victim].accuracy)
        out["victim_subnet"] = victim_id
        out["table_start"], out["table_end"] = start, _table(srv.engine.policy.zoo)
    finally:
        oracle.close()
        srv.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=800, help="extraction queries per attack (simulator)")
    parser.add_argument("--server-budget", type=int, default=300, help="extraction queries against the server")
    parser.add_argument("--load", type=float, default=0.3, help="benign load (x top subnet batch-1 throughput)")
    parser.add_argument("--epochs", type=int, default=15, help="surrogate training epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--high-load", type=float, default=0.8,
                        help="second benign load for the naive vs fingerprinted comparison (no defense)")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer sweep points, a smaller budget")
    parser.add_argument("--no-server", action="store_true", help="skip the real-server run")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.server_budget, args.epochs = min(args.budget, 600), min(args.server_budget, 150), 10
        args.seeds = args.seeds[:1]
    import torch

    from security.defense import MetricNoise, ParetoDefense, ZooView
    from security.experiment import Setting, upper_bound

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    zoo_path, ckpt_path, source = _assets()
    setting = Setting.load(zoo_path, ckpt_path)
    print(f"zoo: {source} ({len(setting.zoo.entries)} subnets), victim {setting.victim_id} "
          f"(index {setting.victim}, the middle of the front), setup {time.perf_counter() - t0:.0f} s", flush=True)
    view = ZooView.from_zoo(setting.zoo, 2.0)
    scales = NOISE_SCALES[1::2] if args.quick else NOISE_SCALES
    ps = PARETO_PS[1::2] if args.quick else PARETO_PS
    qs = SPREAD_QS[-1:] if args.quick else SPREAD_QS
    families = {"psml_noise": (scales, lambda v: MetricNoise(v, 20 * v, "gaussian")),
                "pareto": (ps, lambda v: ParetoDefense(view, v)),
                "pareto_fastest": (ps, lambda v: ParetoDefense(view, v, move_to="fastest")),
                "pareto_spread": (qs, lambda v: ParetoDefense(view, 0.3, v))}
    rows: list[dict[str, Any]] = []
    per_seed: dict[int, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    for seed in args.seeds:
        plain = _point(setting, None, args, seed, naive=True, naive_equal_total=True)
        upper = upper_bound(setting, args.budget, seed, args.epochs)
        shown = _point(setting, None, args, seed, naive=False, visible=True)
        sc = plain["scores"]
        per_seed[seed] = {
            "fp_acc": sc["fingerprinted"]["accuracy_pct"], "fp_fid": sc["fingerprinted"]["fidelity_pct"],
            "shown_acc": shown["scores"]["fingerprinted"]["accuracy_pct"],
            "shown_fid": shown["scores"]["fingerprinted"]["fidelity_pct"],
            "naive_acc": sc["naive"]["accuracy_pct"], "naive_fid": sc["naive"]["fidelity_pct"],
            "naive_eq_acc": sc["naive_equal_total"]["accuracy_pct"],
            "naive_eq_fid": sc["naive_equal_total"]["fidelity_pct"],
            "upper_acc": upper.accuracy_pct, "upper_fid": upper.fidelity_pct,
            "fp_queries_hidden": plain["fingerprint_queries"], "fp_queries_shown": shown["fingerprint_queries"],
            "total_queries_hidden": plain["fingerprinted_total_queries"],
            "total_queries_shown": shown["fingerprinted_total_queries"],
            "labels": sc["fingerprinted"]["labels"], "pinned_is_victim": plain["pinned_is_victim"],
            "shown_pinned_is_victim": shown["pinned_is_victim"], "responders_found": plain["responders_found"],
            "shown_responders_found": shown["responders_found"], "victim_label_share_pct":
            sc["fingerprinted"]["victim_label_share_pct"], "goodput_pct": plain["goodput_pct"]}
        b = per_seed[seed]
        print(f"seed {seed}: {b['responders_found']} responders (front {plain['front_size']}), pin on the victim: "
              f"{b['pinned_is_victim']}, {b['fp_queries_hidden']} fingerprint queries ({b['fp_queries_shown']} with "
              f"the id shown); acc/fid: fingerprinted {b['fp_acc']:.1f}/{b['fp_fid']:.1f}, shown-id "
              f"{b['shown_acc']:.1f}/{b['shown_fid']:.1f}, naive {b['naive_acc']:.1f}/{b['naive_fid']:.1f}, naive at "
              f"equal total queries {b['naive_eq_acc']:.1f}/{b['naive_eq_fid']:.1f}, upper bound "
              f"{b['upper_acc']:.1f}/{b['upper_fid']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.high_load:
            hl = _point(setting, None, args, seed, naive=True, naive_equal_total=True, load=args.high_load)
            hs = hl["scores"]
            per_seed[seed].update({
                "hl_fp_acc": hs["fingerprinted"]["accuracy_pct"], "hl_fp_fid": hs["fingerprinted"]["fidelity_pct"],
                "hl_naive_acc": hs["naive"]["accuracy_pct"], "hl_naive_fid": hs["naive"]["fidelity_pct"],
                "hl_naive_eq_acc": hs["naive_equal_total"]["accuracy_pct"],
                "hl_naive_eq_fid": hs["naive_equal_total"]["fidelity_pct"],
                "hl_pinned_is_victim": hl["pinned_is_victim"], "hl_labels": hs["fingerprinted"]["labels"],
                "hl_goodput_pct": hl["goodput_pct"], "hl_naive_served_by": hl["naive_collect"]["served_by"]})
            details[f"high_load_seed{seed}"] = hl
            print(f"  load {args.high_load:g}: pin on the victim {hl['pinned_is_victim']}, acc/fid fingerprinted "
                  f"{b['hl_fp_acc']:.1f}/{b['hl_fp_fid']:.1f}, naive {b['hl_naive_acc']:.1f}/{b['hl_naive_fid']:.1f} "
                  f"(served by {hl['naive_collect']['served_by']}), naive equal total {b['hl_naive_eq_acc']:.1f}/"
                  f"{b['hl_naive_eq_fid']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append(_row("none", 0.0, seed, plain))
        details[f"none_seed{seed}"] = plain
        details[f"shown_seed{seed}"] = shown
        for name, (values, make) in families.items():
            for v in values:
                r = _point(setting, make(v), args, seed, naive=False)
                rows.append(_row(name, v, seed, r))
                x = rows[-1]
                print(f"  {name:15s} {v:<6g} goodput {x['goodput_pct']:5.1f}%  attack acc {x['fp_acc']:5.1f}% fid "
                      f"{x['fp_fid']:5.1f}%  victim labels {x['victim_label_share_pct']:5.1f}%  pin on victim "
                      f"{x['pinned_is_victim']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = {k: _mean([float(b[k]) for b in per_seed.values()]) for k, v in next(iter(per_seed.values())).items()
            if not isinstance(v, dict)}
    base["seeds"] = len(args.seeds)
    agg = _aggregate(rows)
    # The adaptive attacker against per-request randomness: 3 votes per image at the same total budget, against
    # each defense's strongest setting with mean goodput >= 80%, every seed.
    adaptive: dict[str, Any] = {}
    for name, (_, make) in families.items():
        best = _best_at(agg, name, base, 80.0)
        if best["scale"] is None:
            continue
        got = [_point(setting, make(best["scale"]), args, seed, naive=False, repeats=3) for seed in args.seeds]
        adaptive[name] = {"scale": best["scale"],
                          "acc_pct": _mean([r["scores"]["fingerprinted"]["accuracy_pct"] for r in got]),
                          "fid_pct": _mean([r["scores"]["fingerprinted"]["fidelity_pct"] for r in got]),
                          "goodput_pct": _mean([r["goodput_pct"] for r in got])}
        print(f"  adaptive (3 votes) vs {name} {best['scale']:g}: acc {adaptive[name]['acc_pct']:.1f}% fid "
              f"{adaptive[name]['fid_pct']:.1f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    server: dict[str, Any] = {}
    if not args.no_server:
        for shown_flag in (False, True):
            r = _server_run(zoo_path, ckpt_path, setting, args, shown_flag)
            server["shown" if shown_flag else "hidden"] = r
            print(f"real server (id {'shown' if shown_flag else 'hidden'}): {r['responders_found']} responders, "
                  f"pinned {r['pinned_subnet']} (victim: {r['pinned_is_victim']}), fingerprint queries "
                  f"{r['fingerprint_queries']}, attack acc/fid {r['scores']['fingerprinted']['accuracy_pct']:.1f}/"
                  f"{r['scores']['fingerprinted']['fidelity_pct']:.1f}%"
                  + (f", naive {r['scores']['naive']['accuracy_pct']:.1f}/{r['scores']['naive']['fidelity_pct']:.1f}%"
                     if "naive" in r["scores"] else "") + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    png = RESULTS_DIR / "extraction_defense.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    _plot(agg, base, png)
    best = {name: _best_at(agg, name, base, 80.0) for name in families}
    none = next(r for r in agg if r["defense"] == "none")
    headline: dict[str, Any] = {
        "zoo": source, "victim_subnet": setting.victim_id, "zoo_subnets": len(setting.zoo.entries),
        "front_subnets": int(view.front.sum()), "seeds": len(args.seeds),
        "extraction_budget_queries": args.budget, "benign_load_x_top_throughput": args.load,
        "fingerprinted_attack_acc_pct": base["fp_acc"], "fingerprinted_attack_fidelity_pct": base["fp_fid"],
        "fingerprinted_attack_acc_std_points": _std([b["fp_acc"] for b in per_seed.values()]),
        "fingerprinted_shown_id_attack_acc_pct": base["shown_acc"],
        "fingerprinted_shown_id_attack_fidelity_pct": base["shown_fid"],
        "naive_attack_acc_pct": base["naive_acc"], "naive_attack_fidelity_pct": base["naive_fid"],
        "naive_equal_total_queries_attack_acc_pct": base["naive_eq_acc"],
        "naive_equal_total_queries_attack_fidelity_pct": base["naive_eq_fid"],
        "upper_bound_acc_pct": base["upper_acc"], "upper_bound_fidelity_pct": base["upper_fid"],
        "fingerprinted_minus_upper_bound_acc_points": base["fp_acc"] - base["upper_acc"],
        "fingerprinted_minus_upper_bound_fidelity_points": base["fp_fid"] - base["upper_fid"],
        "fingerprinted_minus_naive_acc_points": base["fp_acc"] - base["naive_acc"],
        "fingerprinted_minus_naive_fidelity_points": base["fp_fid"] - base["naive_fid"],
        "pin_on_victim_pct_of_seeds": 100.0 * _mean([float(b["pinned_is_victim"]) for b in per_seed.values()]),
        "shown_id_pin_on_victim_pct_of_seeds": 100.0 * _mean([float(b["shown_pinned_is_victim"])
                                                                for b in per_seed.values()]),
        "responders_found_mean": base["responders_found"],
        "victim_label_share_pct": base["victim_label_share_pct"],
        "fingerprint_queries_subnet_hidden": base["fp_queries_hidden"],
        "fingerprint_queries_subnet_shown": base["fp_queries_shown"],
        "fingerprinted_total_queries_subnet_hidden": base["total_queries_hidden"],
        "fingerprinted_labels_kept": base["labels"],
        "goodput_no_defense_pct": none["goodput_pct"],
        "pin_on_victim_per_seed": [bool(b["pinned_is_victim"]) for b in per_seed.values()],
        "shown_id_pin_on_victim_per_seed": [bool(b["shown_pinned_is_victim"]) for b in per_seed.values()],
    }
    if args.high_load:
        headline.update({
            "high_benign_load_x_top_throughput": args.high_load,
            "high_load_fingerprinted_attack_acc_pct": base["hl_fp_acc"],
            "high_load_fingerprinted_attack_fidelity_pct": base["hl_fp_fid"],
            "high_load_naive_attack_acc_pct": base["hl_naive_acc"],
            "high_load_naive_attack_fidelity_pct": base["hl_naive_fid"],
            "high_load_naive_equal_total_queries_attack_acc_pct": base["hl_naive_eq_acc"],
            "high_load_naive_equal_total_queries_attack_fidelity_pct": base["hl_naive_eq_fid"],
            "high_load_fingerprinted_minus_naive_acc_points": base["hl_fp_acc"] - base["hl_naive_acc"],
            "high_load_fingerprinted_minus_naive_fidelity_points": base["hl_fp_fid"] - base["hl_naive_fid"],
            "high_load_pin_on_victim_per_seed": [bool(b["hl_pinned_is_victim"]) for b in per_seed.values()],
            "high_load_fingerprinted_labels_kept": base["hl_labels"],
            "high_load_goodput_no_defense_pct": base["hl_goodput_pct"]})
    for name, bst in best.items():
        headline[f"{name}_defense_attack_acc_drop_points_at_goodput_80pct"] = bst["acc_drop"]
        headline[f"{name}_defense_attack_fidelity_drop_points_at_goodput_80pct"] = bst["fid_drop"]
        headline[f"{name}_defense_goodput_pct_at_that_point"] = bst["goodput"]
        headline[f"{name}_defense_setting_at_that_point"] = bst["scale"]
    for name, a in adaptive.items():
        headline[f"{name}_defense_vs_adaptive_3vote_attack_acc_drop_points"] = base["fp_acc"] - a["acc_pct"]
    for k, r in server.items():
        headline.update({f"server_{k}_id_victim_subnet": r["victim_subnet"],
                         f"server_{k}_id_responders_found": r["responders_found"],
                         f"server_{k}_id_pinned_is_victim": r["pinned_is_victim"],
                         f"server_{k}_id_fingerprint_queries": r["fingerprint_queries"],
                         f"server_{k}_id_attack_acc_pct": r["scores"]["fingerprinted"]["accuracy_pct"],
                         f"server_{k}_id_attack_fidelity_pct": r["scores"]["fingerprinted"]["fidelity_pct"]})
        if "naive" in r["scores"]:
            headline[f"server_naive_attack_acc_pct"] = r["scores"]["naive"]["accuracy_pct"]
            headline[f"server_naive_attack_fidelity_pct"] = r["scores"]["naive"]["fidelity_pct"]
    if server:
        headline["server_extraction_budget_queries"] = args.server_budget
    headline["wall_time_s"] = time.perf_counter() - t0
    path = write_result("extraction_defense", headline,
                        {"seeds": args.seeds, "per_seed_no_defense": per_seed, "aggregated": agg, "rows": rows,
                         "best_at_goodput_80pct": best, "plot": png.name, "adaptive_3vote": adaptive,
                         "details": json.loads(json.dumps(details, default=str)),
                         "server": json.loads(json.dumps(server, default=str)) if server else None})
    print(json.dumps(headline, indent=1))
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
