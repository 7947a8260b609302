"""`superserve experiment tradeoff`: every policy's (mean serving accuracy, SLO attainment) point, simulated, for
each trace and load, on the zoo and on the zoo's subnets under a GPU latency model (superserve.gpu_model); a table,
a JSON file and PNG plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from superserve.commands.simulate import add_zoo_arguments, zoo_from_args
from superserve.defaults import INFAAS_SWITCH_MS
from superserve.experiments import TradeoffSetup, capacity_qps, lineup, run_tradeoff
from superserve.gpu_model import DEFAULT_GPU_PROFILE, describe, gpu_profile, gpu_zoo
from superserve.synthetic import load_zoo
from superserve.zoo import Zoo, ZooError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = sub.add_parser("tradeoff", help="accuracy vs SLO attainment of every policy (SuperServe's trade-off plot)")
    add_zoo_arguments(p)
    d = TradeoffSetup()
    p.add_argument("--traces", default=",".join(d.traces), help=f"comma-separated trace specs (default {','.join(d.traces)})")
    p.add_argument("--loads", default=",".join(f"{x:g}" for x in d.loads),
                   help="comma-separated multiples of the most accurate subnet's sustainable rate (default "
                        f"{','.join(f'{x:g}' for x in d.loads)})")
    p.add_argument("--duration", type=float, default=d.duration_s,
                   help=f"trace seconds on the zoo (default {d.duration_s:g})")
    p.add_argument("--gpu-duration", type=float, default=5.0, help="trace seconds on a GPU-model zoo (default 5)")
    p.add_argument("--gpu-workers", type=int, default=1, help="simulated GPUs for a GPU-model zoo (default 1)")
    p.add_argument("--slo-ms", type=float, default=d.slo_ms, help=f"latency SLO (default {d.slo_ms:g} ms)")
    p.add_argument("--workers", type=int, default=d.workers, help=f"simulated workers (default {d.workers})")
    p.add_argument("--fixed-subnets", type=int, default=d.fixed_subnets,
                   help=f"subnets given a Clipper+/Clockwork/INFaaS instance (default {d.fixed_subnets})")
    p.add_argument("--infaas-switch-ms", type=float, default=INFAAS_SWITCH_MS,
                   help=f"INFaaS model-load time (default {INFAAS_SWITCH_MS:g} ms: benchmarks/actuation.py's median "
                        f"on the host that built the shipped zoo)")
    p.add_argument("--no-gpu", action="store_true",
                   help=f"skip the GPU-model zoo (default: also run the zoo under --gpu-profile, {DEFAULT_GPU_PROFILE} "
                        f"unless given)")
    p.add_argument("--no-match", action="store_true",
                   help="skip SlackFit's runs at each system configuration's accuracy (faster; no at-equal-accuracy "
                        "ratios)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the traces and the simulator (default %(default)s)")
    p.add_argument("--out-dir", default="tradeoff_results",
                   help="where the JSON and PNGs go (default ./tradeoff_results)")


def setup_from_args(args: argparse.Namespace) -> TradeoffSetup:
    try:
        loads = tuple(float(x) for x in args.loads.split(","))
    except ValueError:
        raise ValueError(f"--loads must be numbers separated by commas, got {args.loads!r}") from None
    return TradeoffSetup(tuple(t.strip() for t in args.traces.split(",") if t.strip()), loads, args.duration,
                         args.slo_ms, args.workers, args.fixed_subnets, args.infaas_switch_ms, args.seed,
                         match_accuracy=not args.no_match)


def zoos_from_args(args: argparse.Namespace, setup: TradeoffSetup) -> list[tuple[str, Zoo, str, TradeoffSetup]]:
    """(key, zoo, label, setup) for the zoo and, unless --no-gpu or --zoo paper, its subnets on the GPU model.
    GPU-model zoos run on --gpu-workers GPUs for --gpu-duration seconds."""
    gpu_setup = dataclasses.replace(setup, workers=args.gpu_workers, duration_s=args.gpu_duration)
    if args.zoo == "paper":
        zoo, label = zoo_from_args(args)
        return [(f"paper_{(args.gpu_profile or DEFAULT_GPU_PROFILE).replace('-', '_')}", zoo, label, gpu_setup)]
    zoo, label = load_zoo(args.zoo)
    out = [("cpu", zoo, label, setup)]
    if not args.no_gpu:
        name = args.gpu_profile or DEFAULT_GPU_PROFILE
        out.append((f"gpu_{name.replace('-', '_')}", gpu_zoo(zoo, name),
                    f"{label}; GPU model {describe(gpu_profile(name))}", gpu_setup))
    return out


def point_dicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in r.items() if k not in ("points", "matched")},
             "points": [dataclasses.asdict(p) for p in r["points"]],
             "matched": [dataclasses.asdict(p) for p in r.get("matched", [])]} for r in results]


def print_tables(key: str, label: str, zoo: Zoo, setup: TradeoffSetup, results: list[dict[str, Any]]) -> None:
    print(f"\n=== zoo [{key}]: {label}")
    switch = "5 ms (default)" if setup.infaas_switch_ms is None else f"{setup.infaas_switch_ms:g} ms"
    print(f"    capacity (load 1): {capacity_qps(zoo, setup.workers, setup.slo_ms):,.0f} q/s, "
          f"{setup.workers} workers, SLO {setup.slo_ms:g} ms, INFaaS model load {switch}")
    for trace in setup.traces:
        rows = [r for r in results if r["trace"] == trace]
        print(f"\n  trace {trace}: mean accuracy / SLO attainment per load")
        print("  " + f"{'policy':36s}" + "".join(f"{'load ' + format(r['load'], 'g'):>17s}" for r in rows))
        for k, p in enumerate(rows[0]["points"]):
            cells = "".join(f"{r['points'][k].mean_accuracy:>10.4f}/{r['points'][k].slo_attainment:.3f}"
                            for r in rows)
            print(f"  {p.policy:36s}{cells}")

        def fmt(x: float | None, spec: str) -> str:
            return "     n/a" if x is None else format(x, spec)

        for versus in ("clipper", "infaas"):
            print("  " + f"{'SlackFit vs ' + versus + ' (measured)':36s}" + "".join(
                f"{fmt(r['vs_' + versus]['accuracy_gain_points'], '+7.2f')}pt "
                f"{fmt(r['vs_' + versus]['attainment_gain_x'], '5.2f')}x" for r in rows))


def plot(key: str, label: str, setup: TradeoffSetup, results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"slackfit": ("*", "tab:red", 180), "maxacc": ("^", "tab:orange", 50), "maxbatch": ("v", "tab:brown", 50),
               "clipper+": ("o", "tab:blue", 40), "clockwork": ("s", "tab:green", 40), "infaas": ("D", "tab:purple", 35)}
    fig, axes = plt.subplots(len(setup.traces), len(setup.loads), figsize=(3.2 * len(setup.loads),
                             2.8 * len(setup.traces)), squeeze=False)
    for i, trace in enumerate(setup.traces):
        for j, load in enumerate(setup.loads):
            ax = axes[i][j]
            r = next((r for r in results if r["trace"] == trace and r["load"] == load), None)
            if r is None:  # not run for this trace (e.g. a real-pacing trace at fewer loads)
                ax.set_axis_off()
                continue
            for family, (m, c, s) in markers.items():
                pts = [p for p in r["points"] if p.family == family]
                if family == "slackfit":  # its runs at the systems' accuracies, hollow
                    hinted = r.get("matched", [])
                    ax.scatter([p.mean_accuracy * 100 for p in hinted], [p.slo_attainment for p in hinted],
                               marker="*", facecolors="none", edgecolors=c, s=70, linewidths=0.6, zorder=2,
                               label="slackfit at a system's accuracy")
                ax.scatter([p.mean_accuracy * 100 for p in pts], [p.slo_attainment for p in pts], marker=m, c=c, s=s,
                           label=family, edgecolors="k", linewidths=0.3, zorder=3 if family == "slackfit" else 2)
            ax.set_title(f"{trace}, load {load:g}", fontsize=9)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if i == len(setup.traces) - 1:
                ax.set_xlabel("mean serving accuracy (%)")
            if j == 0:
                ax.set_ylabel("SLO attainment")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(textwrap.fill(f"Policy trade-off [{key}] {label}", 90), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        setup = setup_from_args(args)
        zoos = zoos_from_args(args, setup)
    except (ValueError, FileNotFoundError, ZooError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(lineup(z, st.fixed_subnets)) for _, z, _, st in zoos) * len(setup.traces) * len(setup.loads)
    report: dict[str, Any] = {"setup": dataclasses.asdict(setup), "zoos": {}}
    # The total counts the fixed configurations; SlackFit's accuracy-matching runs come on top.
    with tqdm(total=total, desc="simulations", unit="run", file=sys.stderr, disable=None) as bar:
        for key, zoo, label, zsetup in zoos:
            results = run_tradeoff(zoo, zsetup, progress=bar.update)
            report["zoos"][key] = {"label": label, "setup": dataclasses.asdict(zsetup),
                                   "results": point_dicts(results)}
            bar.clear()
            print_tables(key, label, zoo, zsetup, results)
            png = out_dir / f"tradeoff_{key}.png"
            plot(key, label, zsetup, results, png)
            print(f"\n  plot: {png}")
    (out_dir / "tradeoff.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nall points: {out_dir / 'tradeoff.json'}")
    return 0
