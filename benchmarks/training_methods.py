"""DεpS vs BigNAS vs OFA progressive shrinking at the same budget (full-model-equivalent epochs, FME).

Each method trains the same space on the same data split and seed(s) for the same FME budget (MACs of the subnets
actually run, relative to the max net; the trainer converts the budget into data epochs per method, see
training/steps.py). Then every method's supernet is scored on ONE fixed, common set of subnets (min, max and
`--common` seeded random subnets spread evenly in log-MACs), each calibrated on 2,000 train images: accuracy of the
smallest and largest subnets, mean over the common set, and mean over each method's own Pareto front within the
common set (front picked on validation accuracy, reported on test). Writes benchmarks/results/training_methods.json
(with the exact command and a flat `headline`) and training_methods.png.

    python benchmarks/training_methods.py --budget-fme 3 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from supernet.checkpoint import load_checkpoint, read_checkpoint
from supernet.config import SubnetConfig, SupernetSpace
from supernet.network import SuperNet
from superserve.zoo import pareto_front
from training.calibrate import calibrate_subnets
from training.data import load_dataset
from training.schedule import METHODS, TrainConfig
from training.steps import epochs_for_budget
from training.trainer import evaluate, train

RESULTS = Path(__file__).resolve().parent / "results"
# A narrower version of the default space (same depth/expand/kernel choices, ~1/4 of the MACs) so that three
# trainings fit in the CPU time we have; --space default uses the served space.
SMALL_SPACE = SupernetSpace(stem_width=16, stage_widths=(32, 48, 64), head_width=128)


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
    rows = []
    for s in subnets:
        rows.append({"subnet_id": s.subnet_id, "macs": net.count_params_and_macs(s)[1],
                     "val_acc": evaluate(net, s, splits.val_x, splits.val_y),
                     "test_acc": evaluate(net, s, splits.test_x, splits.test_y)})
    return rows


def summarise(rows: list[dict]) -> dict:
    front_ids = set(pareto_front((r["subnet_id"], r["macs"], r["val_acc"]) for r in rows))
    front = [r for r in rows if r["subnet_id"] in front_ids]
    return {"min_subnet_test_acc_pct": 100 * rows[0]["test_acc"], "max_subnet_test_acc_pct": 100 * rows[-1]["test_acc"],
            "common_mean_test_acc_pct": 100 * sum(r["test_acc"] for r in rows) / len(rows),
            "front_mean_test_acc_pct": 100 * sum(r["test_acc"] for r in front) / len(front),
            "front_size": len(front)}


def plot(results: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for k, (method, runs) in enumerate(results.items()):
        rows = runs[0]["subnets"]
        front_ids = set(pareto_front((r["subnet_id"], r["macs"], r["val_acc"]) for r in rows))
        ax.scatter([r["macs"] / 1e6 for r in rows], [100 * r["test_acc"] for r in rows], s=10, c=f"C{k}", alpha=0.4)
        front = [r for r in rows if r["subnet_id"] in front_ids]
        ax.plot([r["macs"] / 1e6 for r in front], [100 * r["test_acc"] for r in front], "o-", c=f"C{k}",
                label=f"{method} (front on val, test shown)")
    ax.set_xscale("log")
    ax.set_xlabel("MMACs per image (log)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("same-budget training methods, common subnet set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-fme", type=float, default=3.0, help="full-model-equivalent epochs per method")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--space", choices=("small", "default"), default="small")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--common", type=int, default=10, help="random subnets in the common set (plus min and max)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench_training"))
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    space = SMALL_SPACE if args.space == "small" else SupernetSpace()
    splits = load_dataset(args.data, seed=0, image_size=space.image_size)
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    subnets = common_subnets(SuperNet(space), args.common)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for method in methods:
        for seed in seeds:
            cfg = TrainConfig(method=method, batch_size=args.batch_size, lr=args.lr, seed=seed)
            epochs = epochs_for_budget(SuperNet(space), cfg, args.budget_fme)
            cfg = replace(cfg, epochs=round(epochs, 4))
            ckpt = args.work_dir / f"{method}_s{seed}.pt"
            done = ckpt.is_file() and read_checkpoint(ckpt)["extra"].get("step") == \
                read_checkpoint(ckpt)["meta"].get("total_steps")
            if not done:  # train (or resume an interrupted benchmark run exactly)
                torch.manual_seed(seed)
                net = SuperNet(space)
                start = time.perf_counter()
                res = train(net, splits, cfg, ckpt, resume_from=ckpt if ckpt.is_file() else None,
                            meta={"data": args.data, "data_seed": 0}, progress=True)
                print(f"{method} seed {seed}: {time.perf_counter() - start:.0f} s wall", file=sys.stderr)
            meta = read_checkpoint(ckpt)["meta"]
            rows = score(ckpt, subnets, splits)
            results[method].append({"seed": seed, "data_epochs": cfg.epochs, "fme_epochs": meta["fme_epochs"],
                                    "train_time_s": meta["train_time_s"], "history": meta["history"],
                                    "subnets": rows, **summarise(rows)})
            print(json.dumps({k: v for k, v in results[method][-1].items() if k not in ("subnets", "history")}),
                  file=sys.stderr)
    headline: dict[str, float] = {}
    for method, runs in results.items():
        for key in ("min_subnet_test_acc_pct", "max_subnet_test_acc_pct", "front_mean_test_acc_pct",
                    "common_mean_test_acc_pct", "train_time_s", "fme_epochs"):
            headline[f"{method}_{key}"] = round(sum(r[key] for r in runs) / len(runs), 3)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = {"command": "python benchmarks/training_methods.py " + " ".join(shlex.quote(a) for a in argv),
           "budget_fme": args.budget_fme, "space": space.to_dict(), "data": args.data, "seeds": seeds,
           "batch_size": args.batch_size, "lr": args.lr,
           "common_subnets": [s.to_dict() | {"subnet_id": s.subnet_id} for s in subnets],
           "notes": "train_time_s is the loop's wall time (validation excluded) on a 2-core CPU shared with other "
                    "jobs, so it is noisy; FME = full-model-equivalent epochs actually spent.",
           "headline": headline, "results": results}
    (args.out_dir / "training_methods.json").write_text(json.dumps(out, indent=1))
    plot(results, args.out_dir / "training_methods.png")
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
