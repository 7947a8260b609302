"""The extraction attack against a zoo that mixes, and the hint defenses with intervals (issues 7 and 22).

    nice -n 15 python benchmarks/extraction_defense.py                 # 10 seeds, 4 loads, the defense sweep
    nice -n 15 python benchmarks/extraction_defense.py --quick         # 2 seeds, 2 loads, 2 settings, smaller budget

What runs (seeds in the JSON):
- Set-up: the shipped zoo + checkpoint (else the tiny test fixture, said so in the result). Victim = the (lower)
  middle of the front subnets an idle server can pick whose step is >= 25% wide in batch-1 budget
  (`security.experiment.pinnable_victim`); the attacker is told only its accuracy and targets the responder it
  measured nearest to it. Attacker data = the MNIST-5k validation split + the odd-numbered test images (raw UINT8,
  disjoint from the victim's training split) + 48 blended pairs as fingerprint candidates. Accuracy and fidelity
  are measured on the even-numbered test images (500; split seed 0), which the attacker never has.
- Simulator serving path (`security.oracles.SimOracle`): the real SlackFit policy and EDF queue on the zoo's latency
  table, 1 worker, 2 ms overhead, benign Poisson traffic at a load of L x the top subnet's batch-1 throughput (SLO
  LogUniform(1, 6) x its budget, half with an accuracy hint Uniform(lowest, highest accuracy)); the attacker's
  single-image calls injected into it, one in flight at a time; a defense applied to every request. Goodput =
  benign requests served by a subnet meeting their ORIGINAL hints / all benign requests.
- The load sweep (`--loads`, default 0.3, 1, 2, 4), no defense: at a low load SlackFit answers a hint-less call with
  its most accurate subnet, so a "naive" attacker (the same images, no hints) is really extracting that one model;
  as the load rises SlackFit serves faster subnets and the naive labels become a MIXTURE. At each load: the naive
  attacker's label purity (share of its labels the victim produced; evaluation only) and accuracy / fidelity
  against the fingerprinted attacker's (which pins the victim with hints), per seed and as a mean with a 95%
  t-interval over the seed-paired differences. PSML's claim is that fingerprinting beats naive extraction of a
  mixing zoo; this is where that can show.
- The defenses (at `--load`, default 0.3, where the attack is cleanest): PSML noise (Gaussian, accuracy std s, SLO
  log-std 20 s), ours (Pareto neighbour, probability p; pinned -> fastest subnet; p = 0.3 with loose requests spread
  over the subnets their hints admit, q). Per setting: the drop of the fingerprinted attacker's accuracy and
  fidelity against the undefended attack of the same seed, and the goodput it costs, each with a 95% t-interval over
  seeds. Per defense, the setting with the largest mean accuracy drop at mean goodput >= 80%; the defenses are then
  compared pairwise on seed-paired drop differences, and the result says which wins where the interval excludes 0
  and says "not separated" where it does not.
- Also per seed: the attack with the served subnet id shown, the victim-alone upper bound, and a naive attacker
  spending as many queries as the whole fingerprinted attack. `--adaptive` adds the 3-vote attacker against each
  defense's chosen setting.
- A short run against the real gRPC server (in-process, idle, shipped zoo, default start-up: this host's
  re-profiled table, online latency correction on), subnet id hidden from the attacker (read for evaluation only)
  and, separately, shown to it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, write_result  # noqa: E402

NOISE_SCALES = (0.0025, 0.005, 0.01, 0.02)
PARETO_PS = (0.1, 0.3, 0.45)
FASTEST_PS = (0.3, 0.45)
SPREAD_QS = (0.5,)  # with p = 0.3
LOADS = (0.3, 1.0, 2.0, 4.0)


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


def _table(zoo: Any) -> list[dict[str, Any]]:
    """The serving table as the policy sees it (evaluation only): batch-1 p99 + 2 ms overhead, front membership."""
    from superserve.hint_defense import ZooView

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


def _ci95(xs: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of xs (NaNs dropped; nan with fewer than 2 values)."""
    from scipy.stats import t

    xs = [x for x in xs if x == x]
    return float(t.ppf(0.975, len(xs) - 1) * _std(xs) / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")


def _stat(xs: list[float]) -> dict[str, float]:
    return {"mean": _mean(xs), "ci95": _ci95(xs), "n": len([x for x in xs if x == x])}


def _separated(a: dict[str, float]) -> bool:
    return a["ci95"] == a["ci95"] and abs(a["mean"]) > a["ci95"]


def _attack_row(r: dict[str, Any], load: float, seed: int) -> dict[str, Any]:
    s = r["scores"]
    return {"load": load, "seed": seed, "goodput_pct": r["goodput_pct"],
            "fp_acc": s["fingerprinted"]["accuracy_pct"], "fp_fid": s["fingerprinted"]["fidelity_pct"],
            "fp_purity_pct": s["fingerprinted"]["victim_label_share_pct"],
            "naive_acc": s["naive"]["accuracy_pct"], "naive_fid": s["naive"]["fidelity_pct"],
            "naive_purity_pct": s["naive"]["victim_label_share_pct"],
            "naive_served_by": r["naive_collect"]["served_by"], "fp_served_by": r["fingerprinted_collect"]["served_by"],
            "pinned_is_victim": r["pinned_is_victim"], "fingerprint_queries": r["fingerprint_queries"],
            "fp_labels": s["fingerprinted"]["labels"], "naive_labels": s["naive"]["labels"]}


def _defense_row(name: str, value: float, seed: int, r: dict[str, Any]) -> dict[str, Any]:
    s = r["scores"]["fingerprinted"]
    return {"defense": name, "scale": value, "seed": seed, "goodput_pct": r["goodput_pct"], "fp_acc": s["accuracy_pct"],
            "fp_fid": s["fidelity_pct"], "victim_label_share_pct": s["victim_label_share_pct"],
            "pinned_is_victim": r["pinned_is_victim"], "pinned_subnet": r["pinned_subnet"],
            "fingerprint_queries": r["fingerprint_queries"], "labels": s["labels"],
            "benign_accuracy_shortfall_points": r["benign_accuracy_shortfall_points"]}


def _plot(loads: list[dict[str, Any]], defenses: list[dict[str, Any]], seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    xs = [r["load"] for r in loads]
    ax = axes[0]
    for key, text, style in (("naive_purity_pct", "naive: share of labels from the victim", "o-"),
                             ("fp_purity_pct", "fingerprinted: share from the victim", "s-")):
        ax.errorbar(xs, [r[key]["mean"] for r in loads], yerr=[r[key]["ci95"] for r in loads], fmt=style, capsize=3,
                    label=text)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
    ax.set_xlabel("benign load (x the top subnet's batch-1 throughput)")
    ax.set_ylabel(f"label purity (%), mean and 95% CI of {seeds} seeds")
    ax.set_title("who answers the attacker's calls")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, text, style in (("naive_acc", "naive accuracy", "o-"), ("fp_acc", "fingerprinted accuracy", "s-"),
                             ("naive_fid", "naive fidelity", "o:"), ("fp_fid", "fingerprinted fidelity", "s:")):
        ax.errorbar(xs, [r[key]["mean"] for r in loads], yerr=[r[key]["ci95"] for r in loads], fmt=style, capsize=3,
                    label=text)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
    ax.set_xlabel("benign load (x the top subnet's batch-1 throughput)")
    ax.set_ylabel(f"surrogate vs the victim (%), 95% CI of {seeds} seeds")
    ax.set_title("naive vs fingerprinted extraction of the victim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[2]
    styles = {"psml_noise": "o-", "pareto": "s-", "pareto_fastest": "^-", "pareto_spread": "D-"}
    for name, style in styles.items():
        pts = sorted((r for r in defenses if r["defense"] == name), key=lambda r: r["scale"])
        if not pts:
            continue
        ax.errorbar([100 - r["goodput_pct"]["mean"] for r in pts], [r["acc_drop_points"]["mean"] for r in pts],
                    xerr=[r["goodput_pct"]["ci95"] for r in pts], yerr=[r["acc_drop_points"]["ci95"] for r in pts],
                    fmt=style, capsize=2, ms=4, label=name)
        for r in pts:
            ax.annotate(f"{r['scale']:g}", (100 - r["goodput_pct"]["mean"], r["acc_drop_points"]["mean"]),
                        textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("goodput lost (% of benign requests not served within their hints)")
    ax.set_ylabel("attack accuracy drop (points), 95% CI over seeds")
    ax.set_title("defenses: protection vs what they cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task_key(t: dict[str, Any], common: dict[str, Any]) -> str:
    what = {"upper": "upper", "shown": "shown", "load": f"load{t.get('load', 0):g}",
            "defense": f"{t.get('name')}_{t.get('value', 0):g}"}[t["kind"]]
    extra = "_eq" if t.get("base") else ""
    return f"s{t['seed']}_{what}{extra}_b{common['budget']}_e{common['epochs']}_l{common['load']:g}"


def _defense_maker(name: str, view: Any) -> Any:
    from superserve.hint_defense import MetricNoise, ParetoDefense

    return {"psml_noise": lambda v: MetricNoise(v, 20 * v, "gaussian"),
            "pareto": lambda v: ParetoDefense(view, v),
            "pareto_fastest": lambda v: ParetoDefense(view, v, move_to="fastest"),
            "pareto_spread": lambda v: ParetoDefense(view, 0.3, v)}[name]


_WORKER: dict[str, Any] = {}


def _init_worker(zoo_path: str, ckpt_path: str) -> None:
    import torch

    from superserve.hint_defense import ZooView
    from security.experiment import Setting

    torch.set_num_threads(1)
    _WORKER["setting"] = Setting.load(Path(zoo_path), Path(ckpt_path))
    _WORKER["view"] = ZooView.from_zoo(_WORKER["setting"].zoo, 2.0)


def _run_task(t: dict[str, Any], work_dir: str) -> str:
    """One attack in a worker process; its result is written to work_dir/<key>.json (atomically)."""
    from dataclasses import asdict

    from security.experiment import upper_bound

    setting, args, seed = _WORKER["setting"], argparse.Namespace(**t["common"]), t["seed"]
    if t["kind"] == "upper":
        r: dict[str, Any] = asdict(upper_bound(setting, args.budget, seed, args.epochs))
        line = f"upper bound acc {r['accuracy_pct']:.1f}"
    elif t["kind"] == "shown":
        r = _point(setting, None, args, seed, naive=False, visible=True)
        line = f"id shown: acc {r['scores']['fingerprinted']['accuracy_pct']:.1f}"
    elif t["kind"] == "load":
        r = _point(setting, None, args, seed, naive=True, naive_equal_total=t["base"], load=t["load"])
        sc = r["scores"]
        line = (f"naive purity {sc['naive']['victim_label_share_pct']:.0f}% acc {sc['naive']['accuracy_pct']:.1f}, "
                f"fingerprinted purity {sc['fingerprinted']['victim_label_share_pct']:.0f}% acc "
                f"{sc['fingerprinted']['accuracy_pct']:.1f} (pin on victim {r['pinned_is_victim']}), goodput "
                f"{r['goodput_pct']:.1f}%")
    else:
        r = _point(setting, _defense_maker(t["name"], _WORKER["view"])(t["value"]), args, seed, naive=False)
        line = (f"goodput {r['goodput_pct']:.1f}% attack acc {r['scores']['fingerprinted']['accuracy_pct']:.1f} "
                f"(pin on victim {r['pinned_is_victim']})")
    out = Path(work_dir) / f"{t['key']}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, default=str))
    tmp.replace(out)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--budget", type=int, default=800, help="extraction queries per attack (simulator)")
    parser.add_argument("--server-budget", type=int, default=300, help="extraction queries against the server")
    parser.add_argument("--load", type=float, default=0.3, help="benign load of the defense sweep")
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS),
                        help="benign loads of the naive vs fingerprinted sweep (x top subnet batch-1 throughput)")
    parser.add_argument("--epochs", type=int, default=15, help="surrogate training epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)),
                        help="seeds; each seeds one attack, trace and surrogate per setting (default 0..9)")
    parser.add_argument("--noise-scales", type=float, nargs="*", default=list(NOISE_SCALES),
                        help="PSML noise settings: accuracy std s (default %(default)s)")
    parser.add_argument("--pareto-ps", type=float, nargs="*", default=list(PARETO_PS),
                        help="Pareto-neighbour defense settings: probability p (default %(default)s)")
    parser.add_argument("--fastest-ps", type=float, nargs="*", default=list(FASTEST_PS),
                        help="pinned-to-fastest defense settings: probability p (default %(default)s)")
    parser.add_argument("--spread-qs", type=float, nargs="*", default=list(SPREAD_QS),
                        help="spread defense settings (p = 0.3): share q of loose requests spread (default "
                             "%(default)s)")
    parser.add_argument("--goodput-floor", type=float, default=80.0, help="pick defense settings above this goodput")
    parser.add_argument("--adaptive", action="store_true", help="also the 3-vote attacker vs each chosen setting")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 loads, 2 settings per defense, budget 400")
    parser.add_argument("--no-server", action="store_true", help="skip the real-server run")
    parser.add_argument("--load-seeds", type=int, default=0,
                        help="run the load sweep on the first N seeds only (0: all); the rest get the base load")
    parser.add_argument("--shown-seeds", type=int, default=2, help="seeds of the attack with the subnet id shown")
    parser.add_argument("--cached-only", action="store_true",
                        help="run nothing: aggregate the attacks already in --work-dir (whole seeds only)")
    parser.add_argument("--jobs", type=int, default=2, help="attacks run in parallel (processes, 1 thread each)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/extraction_defense"),
                        help="per-attack results (a rerun with the same budget/epochs/load reuses them)")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.server_budget, args.epochs = min(args.budget, 400), min(args.server_budget, 150), 10
        args.seeds, args.loads = args.seeds[:2], [args.loads[0], args.loads[-1]]
        args.noise_scales, args.pareto_ps = args.noise_scales[1:3], args.pareto_ps[1:2]
        args.fastest_ps, args.spread_qs = args.fastest_ps[:1], args.spread_qs[:1]
    import torch
    from tqdm import tqdm

    from superserve.hint_defense import ZooView
    from security.experiment import Setting

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    zoo_path, ckpt_path, source = _assets()
    setting = Setting.load(zoo_path, ckpt_path)  # also fills the per-checkpoint prediction cache for the workers
    print(f"zoo: {source} ({len(setting.zoo.entries)} subnets), victim {setting.victim_id} "
          f"(index {setting.victim}, the middle of the front), setup {time.perf_counter() - t0:.0f} s", flush=True)
    view = ZooView.from_zoo(setting.zoo, 2.0)
    families = {"psml_noise": (args.noise_scales, None), "pareto": (args.pareto_ps, None),
                "pareto_fastest": (args.fastest_ps, None), "pareto_spread": (args.spread_qs, None)}
    loads = sorted(set(args.loads) | {args.load})
    load_seeds = args.seeds[:args.load_seeds] if args.load_seeds else args.seeds
    # One task per attack, cached under --work-dir (a rerun reuses what is done); seeds interleaved so that a run cut
    # short still holds whole seeds.
    tasks: list[dict[str, Any]] = []
    for seed in load_seeds:  # first the load sweep (its base-load attack is also the undefended one)
        tasks.extend({"kind": "load", "seed": seed, "load": load, "base": load == args.load} for load in loads)
    for seed in args.seeds:  # then, seed by seed, the defenses
        tasks.append({"kind": "upper", "seed": seed})
        if seed not in load_seeds:
            tasks.append({"kind": "load", "seed": seed, "load": args.load, "base": True})
        if seed in args.seeds[:args.shown_seeds]:
            tasks.append({"kind": "shown", "seed": seed})
        for name, (values, _) in families.items():
            tasks.extend({"kind": "defense", "seed": seed, "name": name, "value": v} for v in values)
    common = {k: getattr(args, k) for k in ("budget", "epochs", "load")}
    for t in tasks:
        t["key"] = _task_key(t, common)
        t["common"] = common
    args.work_dir.mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not (args.work_dir / f"{t['key']}.json").is_file()]
    print(f"{len(tasks)} attacks, {len(tasks) - len(todo)} cached in {args.work_dir}", flush=True)
    missing: list[str] = []
    if args.cached_only:  # report what a cut-short run finished: whole seeds only
        missing = [t["key"] for t in todo]
        incomplete = {t["seed"] for t in todo if t["kind"] != "load" or t["base"]}
        args.seeds = [s for s in args.seeds if s not in incomplete]
        partial_loads = {t["seed"] for t in todo if t["kind"] == "load"}
        load_seeds = [s for s in load_seeds if s not in partial_loads]
        tasks = [t for t in tasks if t["seed"] in args.seeds or (t["kind"] == "load" and t["seed"] in load_seeds)]
        tasks = [t for t in tasks if (args.work_dir / f"{t['key']}.json").is_file()]
        per_seed_seeds = sorted({t["seed"] for t in tasks if t["kind"] != "load" or t["base"]})
        args.seeds = [s for s in args.seeds if s in per_seed_seeds]
        todo = []
        print(f"--cached-only: {len(missing)} attacks not run; whole seeds {args.seeds}, load-sweep seeds "
              f"{load_seeds}", flush=True)
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init_worker,
                             initargs=(str(zoo_path), str(ckpt_path))) as pool:
        futures = {pool.submit(_run_task, t, str(args.work_dir)): t for t in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="attacks", unit="attack"):
            t, line = futures[fut], fut.result()
            tqdm.write(f"{t['key']}: {line} ({time.perf_counter() - t0:.0f} s)")
    done = {t["key"]: json.loads((args.work_dir / f"{t['key']}.json").read_text()) for t in tasks}
    attack_rows: list[dict[str, Any]] = []
    defense_rows: list[dict[str, Any]] = []
    per_seed: dict[int, dict[str, Any]] = {s: {} for s in sorted({t["seed"] for t in tasks})}
    details: dict[str, Any] = {}
    for t in tasks:
        r, seed = done[t["key"]], t["seed"]
        if t["kind"] == "upper":
            per_seed[seed].update({"upper_acc": r["accuracy_pct"], "upper_fid": r["fidelity_pct"]})
        elif t["kind"] == "shown":
            per_seed[seed].update({"shown_acc": r["scores"]["fingerprinted"]["accuracy_pct"],
                                   "shown_fid": r["scores"]["fingerprinted"]["fidelity_pct"],
                                   "shown_pinned_is_victim": r["pinned_is_victim"],
                                   "fp_queries_shown": r["fingerprint_queries"]})
            details[f"shown_seed{seed}"] = r
        elif t["kind"] == "load":
            attack_rows.append(_attack_row(r, t["load"], seed))
            details[f"load{t['load']:g}_seed{seed}"] = r
            if t["base"]:
                defense_rows.append(_defense_row("none", 0.0, seed, r))
                per_seed[seed].update({"naive_eq_acc": r["scores"]["naive_equal_total"]["accuracy_pct"],
                                       "naive_eq_fid": r["scores"]["naive_equal_total"]["fidelity_pct"],
                                       "responders_found": r["responders_found"],
                                       "total_queries_hidden": r["fingerprinted_total_queries"]})
        else:
            defense_rows.append(_defense_row(t["name"], t["value"], seed, r))
    families = {name: (values, _defense_maker(name, view)) for name, (values, _) in families.items()}

    # --- the load sweep -------------------------------------------------------------------------------------------
    load_summary = []
    for load in loads:
        rs = [r for r in attack_rows if r["load"] == load and r["seed"] in load_seeds]  # the same seeds at each load
        row: dict[str, Any] = {"load": load, "seeds": [r["seed"] for r in rs]}
        for k in ("naive_purity_pct", "fp_purity_pct", "naive_acc", "naive_fid", "fp_acc", "fp_fid", "goodput_pct"):
            row[k] = _stat([float(r[k]) for r in rs])
        row["fp_minus_naive_acc_points"] = _stat([r["fp_acc"] - r["naive_acc"] for r in rs])
        row["fp_minus_naive_fid_points"] = _stat([r["fp_fid"] - r["naive_fid"] for r in rs])
        row["pin_on_victim_pct"] = 100.0 * _mean([float(r["pinned_is_victim"]) for r in rs])
        served: dict[str, int] = {}
        for r in rs:
            for sid, n in r["naive_served_by"].items():
                served[sid] = served.get(sid, 0) + n
        row["naive_served_by_all_seeds"] = dict(sorted(served.items(), key=lambda kv: -kv[1]))
        load_summary.append(row)

    # --- the defenses ---------------------------------------------------------------------------------------------
    none = {r["seed"]: r for r in defense_rows if r["defense"] == "none"}
    defense_summary = []
    for name, (values, _) in families.items():
        for v in values:
            rs = [r for r in defense_rows if r["defense"] == name and r["scale"] == v]
            defense_summary.append({
                "defense": name, "scale": v, "seeds": len(rs),
                "acc_drop_points": _stat([none[r["seed"]]["fp_acc"] - r["fp_acc"] for r in rs]),
                "fid_drop_points": _stat([none[r["seed"]]["fp_fid"] - r["fp_fid"] for r in rs]),
                "goodput_pct": _stat([r["goodput_pct"] for r in rs]),
                "goodput_cost_points": _stat([none[r["seed"]]["goodput_pct"] - r["goodput_pct"] for r in rs]),
                "attack_acc_pct": _stat([r["fp_acc"] for r in rs]),
                "pin_on_victim_pct": 100.0 * _mean([float(r["pinned_is_victim"]) for r in rs]),
                "benign_accuracy_shortfall_points": _stat([r["benign_accuracy_shortfall_points"] for r in rs])})
    chosen: dict[str, dict[str, Any]] = {}
    for name in families:
        ok = [d for d in defense_summary if d["defense"] == name and d["goodput_pct"]["mean"] >= args.goodput_floor]
        if ok:
            chosen[name] = max(ok, key=lambda d: d["acc_drop_points"]["mean"])
    comparisons = []
    names = sorted(chosen, key=lambda n: -chosen[n]["acc_drop_points"]["mean"])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            da = {r["seed"]: none[r["seed"]]["fp_acc"] - r["fp_acc"] for r in defense_rows
                  if r["defense"] == a and r["scale"] == chosen[a]["scale"]}
            db = {r["seed"]: none[r["seed"]]["fp_acc"] - r["fp_acc"] for r in defense_rows
                  if r["defense"] == b and r["scale"] == chosen[b]["scale"]}
            diff = _stat([da[s] - db[s] for s in sorted(set(da) & set(db))])
            verdict = (f"{a} ({chosen[a]['scale']:g}) beats {b} ({chosen[b]['scale']:g})" if _separated(diff)
                       and diff["mean"] > 0 else f"{b} ({chosen[b]['scale']:g}) beats {a} ({chosen[a]['scale']:g})"
                       if _separated(diff) else f"{a} vs {b}: not separated")
            comparisons.append({"a": a, "b": b, "a_minus_b_acc_drop_points": diff, "verdict": verdict})

    adaptive: dict[str, Any] = {}
    if args.adaptive:
        for name, d in chosen.items():
            make = families[name][1]
            got = [_point(setting, make(d["scale"]), args, seed, naive=False, repeats=3) for seed in args.seeds]
            adaptive[name] = {"scale": d["scale"], "acc_drop_points": _stat(
                [none[s]["fp_acc"] - g["scores"]["fingerprinted"]["accuracy_pct"] for s, g in zip(args.seeds, got)])}

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
    _plot(load_summary, defense_summary, len(load_seeds), png)
    base_row = next(r for r in load_summary if r["load"] == args.load)
    ps = per_seed.values()
    headline: dict[str, Any] = {
        "zoo": source, "victim_subnet": setting.victim_id, "load_sweep_seeds": len(load_seeds),
        "attacks_planned_not_run": len(missing), "zoo_subnets": len(setting.zoo.entries),
        "front_subnets": int(view.front.sum()), "seeds": len(args.seeds), "extraction_budget_queries": args.budget,
        "benign_load_x_top_throughput": args.load,
        "fingerprinted_attack_acc_pct": base_row["fp_acc"]["mean"],
        "fingerprinted_attack_acc_ci95_points": base_row["fp_acc"]["ci95"],
        "fingerprinted_attack_fidelity_pct": base_row["fp_fid"]["mean"],
        "fingerprinted_shown_id_attack_acc_pct": _mean([b.get("shown_acc", math.nan) for b in ps if "shown_acc" in b]),
        "shown_id_seeds": len([b for b in ps if "shown_acc" in b]),
        "naive_attack_acc_pct": base_row["naive_acc"]["mean"],
        "naive_equal_total_queries_attack_acc_pct": _mean([b.get("naive_eq_acc", math.nan) for b in ps]),
        "upper_bound_acc_pct": _mean([b.get("upper_acc", math.nan) for b in ps]),
        "upper_bound_fidelity_pct": _mean([b.get("upper_fid", math.nan) for b in ps]),
        "pin_on_victim_pct_of_seeds": base_row["pin_on_victim_pct"],
        "shown_id_pin_on_victim_pct_of_seeds": 100.0 * _mean([float(b["shown_pinned_is_victim"]) for b in ps
                                                                if "shown_acc" in b]),
        "responders_found_mean": _mean([b.get("responders_found", math.nan) for b in ps]),
        "fingerprint_queries_subnet_shown": _mean([b.get("fp_queries_shown", math.nan) for b in ps]),
        "fingerprinted_total_queries_subnet_hidden": _mean([b.get("total_queries_hidden", math.nan) for b in ps]),
        "goodput_no_defense_pct": base_row["goodput_pct"]["mean"],
    }
    for row in load_summary:
        tag = f"{row['load']:g}"
        headline[f"naive_label_purity_pct_at_load_{tag}"] = row["naive_purity_pct"]["mean"]
        headline[f"naive_label_purity_ci95_points_at_load_{tag}"] = row["naive_purity_pct"]["ci95"]
        headline[f"fingerprinted_label_purity_pct_at_load_{tag}"] = row["fp_purity_pct"]["mean"]
        headline[f"naive_attack_acc_pct_at_load_{tag}"] = row["naive_acc"]["mean"]
        headline[f"fingerprinted_attack_acc_pct_at_load_{tag}"] = row["fp_acc"]["mean"]
        headline[f"fingerprinted_minus_naive_acc_points_at_load_{tag}"] = row["fp_minus_naive_acc_points"]["mean"]
        headline[f"fingerprinted_minus_naive_acc_ci95_points_at_load_{tag}"] = row["fp_minus_naive_acc_points"]["ci95"]
        headline[f"fingerprinted_minus_naive_fidelity_points_at_load_{tag}"] = row["fp_minus_naive_fid_points"]["mean"]
        headline[f"fingerprinted_minus_naive_fidelity_ci95_points_at_load_{tag}"] = \
            row["fp_minus_naive_fid_points"]["ci95"]
        headline[f"pin_on_victim_pct_of_seeds_at_load_{tag}"] = row["pin_on_victim_pct"]
        headline[f"goodput_no_defense_pct_at_load_{tag}"] = row["goodput_pct"]["mean"]
    for d in defense_summary:
        tag = f"{d['defense']}_{d['scale']:g}"
        headline[f"{tag}_attack_acc_drop_points"] = d["acc_drop_points"]["mean"]
        headline[f"{tag}_attack_acc_drop_ci95_points"] = d["acc_drop_points"]["ci95"]
        headline[f"{tag}_goodput_cost_points"] = d["goodput_cost_points"]["mean"]
        headline[f"{tag}_goodput_cost_ci95_points"] = d["goodput_cost_points"]["ci95"]
    for name, d in chosen.items():
        pre = f"{name}_defense_at_goodput_{args.goodput_floor:g}pct"
        headline[f"{pre}_setting"] = d["scale"]
        headline[f"{pre}_attack_acc_drop_points"] = d["acc_drop_points"]["mean"]
        headline[f"{pre}_attack_acc_drop_ci95_points"] = d["acc_drop_points"]["ci95"]
        headline[f"{pre}_attack_fidelity_drop_points"] = d["fid_drop_points"]["mean"]
        headline[f"{pre}_goodput_pct"] = d["goodput_pct"]["mean"]
    headline["defense_comparisons"] = "; ".join(c["verdict"] for c in comparisons) or "none"
    for name, a in adaptive.items():
        headline[f"{name}_defense_vs_adaptive_3vote_attack_acc_drop_points"] = a["acc_drop_points"]["mean"]
    for k, r in server.items():
        headline.update({f"server_{k}_id_victim_subnet": r["victim_subnet"],
                         f"server_{k}_id_pinned_is_victim": r["pinned_is_victim"],
                         f"server_{k}_id_fingerprint_queries": r["fingerprint_queries"],
                         f"server_{k}_id_attack_acc_pct": r["scores"]["fingerprinted"]["accuracy_pct"],
                         f"server_{k}_id_attack_fidelity_pct": r["scores"]["fingerprinted"]["fidelity_pct"]})
        if "naive" in r["scores"]:
            headline["server_naive_attack_acc_pct"] = r["scores"]["naive"]["accuracy_pct"]
    if server:
        headline["server_extraction_budget_queries"] = args.server_budget
    headline["wall_time_s"] = time.perf_counter() - t0
    path = write_result("extraction_defense", headline,
                        {"host": f"{platform.node()} ({platform.machine()}), 1 torch thread, CPU shared with others",
                         "seeds": args.seeds, "loads": loads, "load_sweep": load_summary,
                         "defenses": defense_summary, "chosen_at_goodput_floor": chosen, "comparisons": comparisons,
                         "per_seed": per_seed, "attack_rows": attack_rows, "defense_rows": defense_rows,
                         "adaptive_3vote": adaptive, "plot": png.name,
                         "details": json.loads(json.dumps(details, default=str)),
                         "server": json.loads(json.dumps(server, default=str)) if server else None})
    print(json.dumps(headline, indent=1))
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
