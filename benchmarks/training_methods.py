"""DεpS vs BigNAS vs OFA progressive shrinking over a grid of budgets, several seeds, two datasets (issue 22).

What runs, per dataset (`--data`, default digits then mnist5k) and seed (`--seeds`, default 0,1,2):
- equal budget: every method trains the same space on the same split for each budget in `--budgets`, counted in
  full-model-equivalent epochs (FME: MACs of the subnets actually run / max-net MACs; the trainer converts the
  budget into data epochs per method, see training/steps.py);
- the papers' own schedules (`--paper-budget`, default the largest budget): DεpS gets that FME budget and the
  baselines get the data epochs their papers train for, relative to DεpS's: BigNAS 400 / 270 and OFA 605 / 270 of
  DεpS's data epochs (the DεpS paper's Table 1 epochs), whatever FME that costs them.
Every trained supernet is scored on ONE fixed, common set of subnets (min, max and `--common` seeded random subnets
spread evenly in log-MACs), each calibrated on up to 2,000 train images: test accuracy of the smallest and largest
subnets, and the mean over the method's own Pareto front within the common set (front picked on validation
accuracy, reported on test). The per-epoch validation of the smallest / largest subnet during the longest runs is
the learning curve; the "flat" budget is the smallest one after which the smallest subnet's mean validation
accuracy (best method) gains less than `--flat-points` to the next budget; the same per method says which curves
are still climbing there.
Headline, per dataset and schedule: DεpS minus the best baseline (best = highest seed mean) on the smallest subnet,
the largest and the front mean, with a 95% t-interval over the seed-paired differences, at the flat budget and
(`..._largest_budget_...`) at the grid's largest budget, where a baseline still climbing at the flat one has caught up
or not. Runs go `--jobs` at a time
in separate processes (1 torch thread each); finished runs are reused from `--work-dir` (resumed if interrupted).

    nice -n 15 python benchmarks/training_methods.py --data digits --budgets 4,8,16,32 --seeds 0,1,2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supernet.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from supernet.config import SubnetConfig, SupernetSpace  # noqa: E402
from supernet.network import SuperNet  # noqa: E402
from superserve.zoo import pareto_front  # noqa: E402
from training.calibrate import calibrate_subnets  # noqa: E402
from superserve.data import load_dataset  # noqa: E402
from training.schedule import METHODS, TrainConfig  # noqa: E402
from training.steps import epochs_for_budget  # noqa: E402
from training.trainer import evaluate, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Narrower than the served space (~1/4 of the MACs) so that the grid fits the CPU time we have.
NARROW = dict(stem_width=16, stage_widths=(32, 48, 64), head_width=128)
SPACES = {"small": SupernetSpace(**NARROW), "deps-code": SupernetSpace.deps_code_shaped(**NARROW),
          "default": SupernetSpace()}
# Data epochs of each method's own schedule in the DεpS paper's Table 1 (ImageNet-1k, MBv3), relative to DεpS.
PAPER_EPOCHS = {"deps": 270, "bignas": 400, "ofa": 605}


def space_for(name: str, data: str, image_size: int | None = None) -> SupernetSpace:
    """The named space for `data` at `image_size` (None: the dataset's native size)."""
    probe = load_dataset(data, seed=0, image_size=image_size)
    return replace(SPACES[name], in_channels=probe.in_channels, image_size=probe.image_size,
                   num_classes=probe.num_classes)


def image_size_for(data: str, args) -> int | None:
    """`--mnist5k-image-size` for mnist5k (a cheaper, downscaled variant), else the native size."""
    return getattr(args, "mnist5k_image_size", None) if data == "mnist5k" else None


def common_subnets(net: SuperNet, count: int, seed: int = 0) -> list[SubnetConfig]:
    """min, max and `count` random subnets whose MACs are spread evenly in log scale (seeded, method-independent)."""
    space = net.space
    rng = random.Random(seed)
    pool = {c.subnet_id: c for c in (SubnetConfig.random(space, rng) for _ in range(400))}
    lo, hi = SubnetConfig.min(space), SubnetConfig.max(space)
    macs = {sid: net.count_params_and_macs(c)[1] for sid, c in pool.items()}
    lmin, lmax = math.log(net.count_params_and_macs(lo)[1]), math.log(net.count_params_and_macs(hi)[1])
    chosen = {lo.subnet_id: lo, hi.subnet_id: hi}
    for k in range(1, count + 1):
        target = lmin + (lmax - lmin) * k / (count + 1)
        sid = min((s for s in pool if s not in chosen), key=lambda s: abs(math.log(macs[s]) - target))
        chosen[sid] = pool[sid]
    return sorted(chosen.values(), key=lambda c: net.count_params_and_macs(c)[1])


def score(ckpt: Path, subnets: list[SubnetConfig], splits) -> list[dict]:
    net, _ = load_checkpoint(ckpt)
    images, _ = splits.calibration_subset(2000, seed=0)
    calibrate_subnets(net, subnets, images)
    return [{"subnet_id": s.subnet_id, "macs": net.count_params_and_macs(s)[1],
             "val_acc": evaluate(net, s, splits.val_x, splits.val_y),
             "test_acc": evaluate(net, s, splits.test_x, splits.test_y)} for s in subnets]


def cached_score(ckpt: Path, subnets: list[SubnetConfig], splits) -> list[dict]:
    """`score`, kept beside the checkpoint (NAME.scores.json) and reused while the checkpoint is unchanged and the
    subnet set is the same: scoring is deterministic (fixed calibration subset) and costs ~0.5 min a run here."""
    cache = ckpt.with_suffix(".scores.json")
    ids = [s.subnet_id for s in subnets]
    if cache.is_file() and cache.stat().st_mtime >= ckpt.stat().st_mtime:
        stored = json.loads(cache.read_text())
        if stored.get("subnet_ids") == ids:
            return stored["rows"]
    rows = score(ckpt, subnets, splits)
    cache.write_text(json.dumps({"subnet_ids": ids, "rows": rows}))
    return rows


def summarise(rows: list[dict]) -> dict:
    front_ids = set(pareto_front((r["subnet_id"], r["macs"], r["val_acc"]) for r in rows))
    front = [r for r in rows if r["subnet_id"] in front_ids]
    return {"min_subnet_test_acc_pct": 100 * rows[0]["test_acc"], "max_subnet_test_acc_pct": 100 * rows[-1]["test_acc"],
            "min_subnet_val_acc_pct": 100 * rows[0]["val_acc"],
            "common_mean_test_acc_pct": 100 * sum(r["test_acc"] for r in rows) / len(rows),
            "front_mean_test_acc_pct": 100 * sum(r["test_acc"] for r in front) / len(front),
            "front_size": len(front)}


def job_config(method: str, seed: int, budget: float, schedule: str, space: SupernetSpace, args) -> TrainConfig:
    cfg = TrainConfig(method=method, batch_size=args.batch_size, lr=args.lr, seed=seed)
    if schedule == "equal":
        epochs = epochs_for_budget(SuperNet(space), cfg, budget)
    else:  # the paper's epochs, relative to DεpS's data epochs at this FME budget
        deps_epochs = epochs_for_budget(SuperNet(space), replace(cfg, method="deps"), budget)
        epochs = deps_epochs * PAPER_EPOCHS[method] / PAPER_EPOCHS["deps"]
    return replace(cfg, epochs=round(epochs, 4))


def _finished(ckpt: Path) -> bool:
    if not ckpt.is_file():
        return False
    stored = read_checkpoint(ckpt)
    return stored["extra"].get("step") == stored["meta"].get("total_steps")


def reusable(prior: dict | None, data: str, space: dict, common: list, batch_size: int, lr: float) -> dict:
    """The runs of an earlier report (its training_methods.json) that this grid may take instead of training them
    again, keyed by (method, schedule, budget, seed): only when the dataset's space, its common subnets, the batch size
    and the learning rate are the same (the training code is trusted to be: say so when it changed)."""
    def norm(x):
        return json.loads(json.dumps(x))

    if not prior or prior.get("batch_size") != batch_size or prior.get("lr") != lr or \
            norm(prior.get("space", {}).get(data)) != norm(space) or \
            norm(prior.get("common_subnets", {}).get(data)) != norm(common):
        return {}
    return {(r["method"], r["schedule"], float(r["budget"]), int(r["seed"])): r for r in prior.get("runs", [])
            if r.get("data") == data}


def run_job(job: dict) -> dict:
    """Train (or reuse / resume) one run and score it; runs in a worker process."""
    torch.set_num_threads(1)
    args = argparse.Namespace(**job["args"])
    space = SupernetSpace.from_dict(job["space"])
    splits = load_dataset(job["data"], seed=0, image_size=space.image_size)
    cfg = job_config(job["method"], job["seed"], job["budget"], job["schedule"], space, args)
    ckpt = Path(job["ckpt"])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not _finished(ckpt):
        torch.manual_seed(job["seed"])
        train(SuperNet(space), splits, cfg, ckpt, resume_from=ckpt if ckpt.is_file() else None,
              meta={"data": job["data"], "data_seed": 0}, progress=False)
    meta = read_checkpoint(ckpt)["meta"]
    subnets = [SubnetConfig.from_dict(s) for s in job["subnets"]]
    rows = cached_score(ckpt, subnets, splits)
    return {**{k: job[k] for k in ("data", "method", "seed", "budget", "schedule")}, "data_epochs": cfg.epochs,
            "fme_epochs": meta["fme_epochs"], "train_time_s": meta["train_time_s"], "history": meta["history"],
            "wall_s": time.perf_counter() - start, "subnets": rows, **summarise(rows)}


def ci95(xs: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (nan with fewer than 2 values)."""
    if len(xs) < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)))


def flat_budget(runs: list[dict], budgets: list[float], methods: list[str], points: float) -> tuple[float, bool]:
    """Smallest budget after which the best method's smallest-subnet validation accuracy gains < `points`."""
    def best(b: float) -> float:
        return max(statistics.mean(r["min_subnet_val_acc_pct"] for r in runs
                                   if r["budget"] == b and r["method"] == m and r["schedule"] == "equal")
                   for m in methods)

    for lo, hi in zip(budgets, budgets[1:]):
        if best(hi) - best(lo) < points:
            return lo, True
    return budgets[-1], False


def deltas(runs: list[dict], methods: list[str], schedule: str, budget: float) -> dict[str, float]:
    """DεpS minus the best baseline (by seed mean) per metric, with a t-interval over seed-paired differences."""
    out: dict[str, float] = {}
    # DεpS's own schedule at this budget is its equal-budget run (no separate "paper" run is trained for it)
    pick = [r for r in runs if r["budget"] == budget and
            (r["schedule"] == schedule or (r["method"] == "deps" and r["schedule"] == "equal"))]
    baselines = [m for m in methods if m != "deps"]
    if "deps" not in methods or not baselines:
        return out
    for metric, name in (("min_subnet_test_acc_pct", "smallest"), ("max_subnet_test_acc_pct", "largest"),
                         ("front_mean_test_acc_pct", "front")):
        by = {m: {r["seed"]: r[metric] for r in pick if r["method"] == m} for m in methods}
        if not by["deps"] or not all(by[m] for m in baselines):
            continue
        best = max(baselines, key=lambda m: statistics.mean(by[m].values()))
        seeds = sorted(set(by["deps"]) & set(by[best]))
        diffs = [by["deps"][s] - by[best][s] for s in seeds]
        out[f"{name}_points"] = round(statistics.mean(diffs), 3)
        out[f"{name}_ci95_points"] = round(ci95(diffs), 3)
        out[f"{name}_best_baseline"] = best
    return out


def plot(runs: list[dict], datasets: list[str], methods: list[str], flats: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("min_subnet_test_acc_pct", "smallest subnet"), ("max_subnet_test_acc_pct", "largest subnet"),
              ("front_mean_test_acc_pct", "front mean"))
    fig, axes = plt.subplots(len(datasets), 4, figsize=(17, 4.2 * len(datasets)), squeeze=False)
    for row, data in zip(axes, datasets):
        for ax, (metric, title) in zip(row, panels):
            for k, m in enumerate(methods):
                mine = [r for r in runs if r["data"] == data and r["method"] == m and r["schedule"] == "equal"]
                budgets = sorted({r["budget"] for r in mine})
                if not budgets:
                    continue
                vals = [[r[metric] for r in mine if r["budget"] == b] for b in budgets]
                mean = [statistics.mean(v) for v in vals]
                ax.plot(budgets, mean, "o-", c=f"C{k}", label=f"{m} (mean, min-max of {len(vals[0])} seeds)")
                ax.fill_between(budgets, [min(v) for v in vals], [max(v) for v in vals], color=f"C{k}", alpha=0.2)
                paper = [r[metric] for r in runs if r["data"] == data and r["method"] == m
                         and r["schedule"] == "paper"]
                if paper:
                    fme = statistics.mean(r["fme_epochs"] for r in runs if r["data"] == data and r["method"] == m
                                          and r["schedule"] == "paper")
                    ax.errorbar([fme], [statistics.mean(paper)], yerr=[[statistics.mean(paper) - min(paper)],
                                [max(paper) - statistics.mean(paper)]], fmt="*", c=f"C{k}", ms=10, capsize=3)
            if data in flats:
                ax.axvline(flats[data], color="k", ls=":", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("FME budget (stars: papers' epochs, at their FME)")
            ax.set_ylabel("test top-1 (%)")
            ax.set_title(f"{data}: {title}")
            ax.grid(alpha=0.3)
        ax = row[3]  # learning curves of the longest equal-budget runs
        for k, m in enumerate(methods):
            mine = [r for r in runs if r["data"] == data and r["method"] == m and r["schedule"] == "equal"]
            if not mine:
                continue
            top = max(r["budget"] for r in mine)
            for j, r in enumerate(x for x in mine if x["budget"] == top):
                hist = r["history"]
                ax.plot([h["fme_epochs"] for h in hist], [100 * h["val_acc_min"] for h in hist], "-", c=f"C{k}",
                        alpha=0.7, label=f"{m} smallest" if j == 0 else None)
                ax.plot([h["fme_epochs"] for h in hist], [100 * h["val_acc_max"] for h in hist], "--", c=f"C{k}",
                        alpha=0.4, label=f"{m} largest" if j == 0 else None)
        ax.set_xlabel("FME epochs spent (longest runs, every seed)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(f"{data}: learning curves during training")
        ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits,mnist5k", help="comma-separated datasets, run in this order")
    p.add_argument("--budgets", default="4,8,16,32", help="comma-separated FME budgets (equal-budget grid)")
    p.add_argument("--budgets-mnist5k", default=None, help="a smaller grid for mnist5k (default: --budgets)")
    p.add_argument("--mnist5k-image-size", type=int, default=None,
                   help="downscale mnist5k to this side (default: native 28; e.g. 14 costs about 1/4 per FME epoch)")
    p.add_argument("--paper-budget", type=float, default=None,
                   help="DεpS FME budget of the paper-schedule runs (default: the largest budget; 0: skip them)")
    p.add_argument("--paper-budget-mnist5k", type=float, default=None,
                   help="the same for mnist5k (default: --paper-budget; 0: skip them)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="training methods, comma-separated (default %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--space", choices=tuple(SPACES), default="deps-code",
                   help="deps-code: one kernel, depth 2-4, expand 0.5-1 (shaped like the DεpS code's space); "
                        "small: our served space's choices (kernel 3/5, depth 1-4, expand 0.25-1); both narrow")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default %(default)s)")
    p.add_argument("--common", type=int, default=10, help="random subnets in the common set (plus min and max)")
    p.add_argument("--flat-points", type=float, default=1.0, help="gain below which the curve counts as flat")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes, 1 thread each)")
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: score the runs in --work-dir that finished; budgets missing a method are "
                        "dropped and the unfinished runs listed")
    p.add_argument("--reuse", type=Path, default=None,
                   help="an earlier training_methods.json: take its runs where dataset, space, common subnets, batch "
                        "size and learning rate match, train only the rest (extends a grid across sessions; the "
                        "checkpoints of --work-dir do not outlive a session's machine)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench_training_grid"),
                   help="where the runs' checkpoints go (default %(default)s)")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and PNG go (default %(default)s)")
    args = p.parse_args(argv)
    datasets, methods = args.data.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    runs: list[dict] = []
    grids: dict[str, list[float]] = {}
    unfinished: dict[str, list[str]] = {}
    common: dict[str, list] = {}
    papers: dict[str, float] = {}  # the DεpS budget of the papers'-schedule runs, per dataset (0: none)
    plain = {k: v for k, v in vars(args).items() if not isinstance(v, Path)}
    prior = json.loads(args.reuse.read_text()) if args.reuse else None
    reused: dict[str, int] = {}
    for data in datasets:
        size = image_size_for(data, args)
        space = space_for(args.space, data, size)
        grid = args.budgets_mnist5k if data == "mnist5k" and args.budgets_mnist5k else args.budgets
        budgets = sorted(float(b) for b in grid.split(","))
        grids[data] = budgets
        subnets = common_subnets(SuperNet(space), args.common)
        common[data] = [s.to_dict() | {"subnet_id": s.subnet_id} for s in subnets]
        chosen = args.paper_budget_mnist5k if data == "mnist5k" and args.paper_budget_mnist5k is not None \
            else args.paper_budget
        paper_budget = papers[data] = budgets[-1] if chosen is None else chosen
        jobs = []
        for schedule, bs in (("equal", budgets), ("paper", [paper_budget] if paper_budget else [])):
            for b in bs:
                for m in methods:
                    if schedule == "paper" and m == "deps":
                        continue  # DεpS's own schedule at this budget is its equal-budget run
                    for seed in seeds:
                        tag = f"{data}{size or ''}_{args.space}_{m}_{schedule}_b{b:g}_s{seed}"
                        jobs.append({"data": data, "method": m, "seed": seed, "budget": b, "schedule": schedule,
                                     "space": space.to_dict(), "args": plain, "subnets": [s.to_dict() for s in subnets],
                                     "ckpt": str(args.work_dir / f"{tag}.pt")})
        jobs.sort(key=lambda j: -j["budget"])  # longest first: better packing on the workers
        taken = reusable(prior, data, space.to_dict(), common[data], args.batch_size, args.lr)
        fresh = []
        for j in jobs:
            r = taken.get((j["method"], j["schedule"], float(j["budget"]), int(j["seed"])))
            if r is None:
                fresh.append(j)
            else:
                runs.append(r)
                reused[data] = reused.get(data, 0) + 1
        jobs = fresh
        if args.reuse:
            print(f"{data}: {reused.get(data, 0)} runs taken from {args.reuse}, {len(jobs)} to train", flush=True)
        if args.cached_only:  # only the runs that finished (a grid cut short by the clock); say what is missing
            finished = [j for j in jobs if _finished(Path(j["ckpt"]))]
            unfinished[data] = sorted(Path(j["ckpt"]).stem for j in jobs if j not in finished)
            jobs = finished
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_job, j) for j in jobs]
            for fut in tqdm(as_completed(futures), total=len(futures), desc=f"{data} runs", unit="run"):
                r = fut.result()
                runs.append(r)
                tqdm.write(f"{data} {r['method']:6s} {r['schedule']:5s} b{r['budget']:g} s{r['seed']}: smallest "
                           f"{r['min_subnet_test_acc_pct']:.1f} largest {r['max_subnet_test_acc_pct']:.1f} front "
                           f"{r['front_mean_test_acc_pct']:.1f} ({r['fme_epochs']:.1f} FME, {r['wall_s']:.0f} s)")
    partial: list[dict] = []  # finished runs at budgets where some method did not finish (not compared)
    for data in datasets:  # a budget counts only where every method has a run (else it is listed as missing)
        full = [b for b in grids[data] if all(any(r["data"] == data and r["method"] == m and r["budget"] == b and
                                                  r["schedule"] == "equal" for r in runs) for m in methods)]
        keep = [r for r in runs if r["data"] != data or r["schedule"] == "paper" or r["budget"] in full]
        partial.extend({k: v for k, v in r.items() if k not in ("history", "subnets")} for r in runs if r not in keep)
        runs = keep
        grids[data] = full
    headline: dict[str, float | int | str] = {"seeds": len(seeds), "space": args.space}
    for data, names in unfinished.items():
        headline[f"{data}_runs_not_finished"] = len(names)
    flats: dict[str, float] = {}
    summary: dict[str, dict] = {}
    by_budget: dict[str, dict] = {}
    for data in datasets:
        mine = [r for r in runs if r["data"] == data]
        if not grids[data]:  # --cached-only and no budget where every method finished: nothing to compare
            headline[f"{data}_budgets_with_every_method"] = 0
            continue
        flat, found = flat_budget(mine, grids[data], methods, args.flat_points)
        flats[data] = flat
        headline[f"{data}_flat_budget_fme"] = flat
        headline[f"{data}_flat_found_within_grid"] = found
        for m in methods:  # each method's own smallest-subnet curve: has it flattened too, or is it still climbing?
            own, own_found = flat_budget(mine, grids[data], [m], args.flat_points)
            headline[f"{data}_flat_budget_fme_{m}"] = own
            headline[f"{data}_flat_found_within_grid_{m}"] = own_found
        # compare where the curve is flat (or at the largest budget when it never flattens within the grid)
        # and at the grid's largest budget: the flat rule follows the best method, a baseline may still be climbing
        headline[f"{data}_largest_budget_fme"] = grids[data][-1]
        where = {"equal": flat, "paper": papers[data], "largest_budget": grids[data][-1]}
        for schedule, budget in where.items():
            d = deltas(mine, methods, "equal" if schedule == "largest_budget" else schedule, budget)
            for key, value in d.items():
                head, _, tail = key.partition("_")  # smallest / largest / front, then points / ci95_points
                headline[f"deps_minus_best_baseline_{head}_{data}_{schedule}_{tail}"] = value
        table: dict[str, dict] = {}
        for schedule in ("equal", "paper"):
            for b in sorted({r["budget"] for r in mine if r["schedule"] == schedule}):
                for m in methods:
                    rs = [r for r in mine if r["schedule"] == schedule and r["budget"] == b and r["method"] == m]
                    if not rs:
                        continue
                    row = {"seeds": len(rs), "fme_epochs": statistics.mean(r["fme_epochs"] for r in rs),
                           "data_epochs": rs[0]["data_epochs"]}
                    for k in ("min_subnet_test_acc_pct", "max_subnet_test_acc_pct", "front_mean_test_acc_pct",
                              "common_mean_test_acc_pct", "min_subnet_val_acc_pct", "train_time_s"):
                        vals = [r[k] for r in rs]
                        row[k] = round(statistics.mean(vals), 3)
                        row[k + "_ci95"] = round(ci95(vals), 3)
                    table[f"{schedule}_b{b:g}_{m}"] = row
        summary[data] = table
        # the same deltas at every budget of the grid (how the gap moves as training gets longer)
        by_budget[data] = {f"{schedule}_b{b:g}": deltas(mine, methods, schedule, b)
                           for schedule in ("equal", "paper")
                           for b in sorted({r["budget"] for r in mine if r["schedule"] == schedule})}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    png = args.out_dir / "training_methods.png"
    plot(runs, [d for d in datasets if grids[d]] or datasets, methods, flats, png)  # datasets with a complete budget
    headline["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out = {"command": "python benchmarks/training_methods.py " + " ".join(shlex.quote(a) for a in argv),
           "host": f"{platform.node()} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                   f"torch threads available, runs 1 thread each, {args.jobs} at a time, CPU shared with others)",
           "budgets_fme": grids, "space": {d: space_for(args.space, d, image_size_for(d, args)).to_dict() for d in datasets},
           "seeds": seeds, "batch_size": args.batch_size, "lr": args.lr, "paper_epochs": PAPER_EPOCHS,
           "common_subnets": common,
           "notes": "FME = full-model-equivalent epochs actually spent; test accuracy on the split's test part; "
                    "the front is picked on validation. ci95 = half-width of the 95% t-interval over seeds (for "
                    "the deltas: over seed-paired differences DεpS - best baseline). train_time_s is loop wall "
                    "time on a shared 2-core CPU, noisy.",
           "reused_runs": {"from": str(args.reuse), **reused} if args.reuse else {},
           "unfinished_runs": unfinished, "headline": headline, "summary": summary,
           "deps_minus_best_baseline_by_budget": by_budget, "runs": runs,
           "runs_at_budgets_missing_a_method": partial}
    (args.out_dir / "training_methods.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
