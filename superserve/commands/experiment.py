"""`superserve experiment tradeoff`: every policy's (mean serving accuracy, SLO attainment) point, simulated, for
each trace and load, on the zoo and on a GPU-like (latency-scaled) copy of it; a table, a JSON file and PNG plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from superserve.commands.simulate import add_zoo_arguments
from superserve.experiments import TradeoffSetup, capacity_qps, lineup, measured_model_load_ms, run_tradeoff
from superserve.synthetic import load_zoo
from superserve.zoo import Zoo, ZooError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = sub.add_parser("tradeoff", help="accuracy vs SLO attainment of every policy (SuperServe's trade-off plot)")
    add_zoo_arguments(p)
    d = TradeoffSetup()
    p.set_defaults(gpu_scale=0.2)
    p.add_argument("--traces", default=",".join(d.traces), help=f"comma-separated trace specs (default {','.join(d.traces)})")
    p.add_argument("--loads", default=",".join(f"{x:g}" for x in d.loads),
                   help="comma-separated multiples of the most accurate subnet's sustainable rate (default "
                        f"{','.join(f'{x:g}' for x in d.loads)})")
    p.add_argument("--duration", type=float, default=d.duration_s, help=f"trace seconds on the zoo (default "
                   f"{d.duration_s:g}; the GPU-like zoo runs duration x scale)")
    p.add_argument("--slo-ms", type=float, default=d.slo_ms, help=f"latency SLO (default {d.slo_ms:g} ms)")
    p.add_argument("--workers", type=int, default=d.workers, help=f"simulated workers (default {d.workers})")
    p.add_argument("--fixed-subnets", type=int, default=d.fixed_subnets,
                   help=f"subnets given a Clipper+/Clockwork/INFaaS instance (default {d.fixed_subnets})")
    p.add_argument("--infaas-switch-ms", type=float, default=None,
                   help="INFaaS model-load time (default: the actuation benchmark's measured median if "
                        "benchmarks/results/actuation.json exists, else 5 ms)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU-like zoo (default: also run --gpu-scale 0.2)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out-dir", default="tradeoff_results", help="where the JSON and PNGs go (default ./tradeoff_results)")


def setup_from_args(args: argparse.Namespace) -> TradeoffSetup:
    try:
        loads = tuple(float(x) for x in args.loads.split(","))
    except ValueError:
        raise ValueError(f"--loads must be numbers separated by commas, got {args.loads!r}") from None
    switch_ms = args.infaas_switch_ms if args.infaas_switch_ms is not None else measured_model_load_ms()
    return TradeoffSetup(tuple(t.strip() for t in args.traces.split(",") if t.strip()), loads, args.duration,
                         args.slo_ms, args.workers, args.fixed_subnets, switch_ms, args.seed)


def zoos_from_args(args: argparse.Namespace) -> list[tuple[str, Zoo, str, float]]:
    """(key, zoo, label, time scale) for the zoo and, unless --no-gpu, its GPU-like copy."""
    zoo, label = load_zoo(args.zoo)
    out = [("cpu", zoo, label, 1.0)]
    if not args.no_gpu:
        if not args.gpu_scale > 0:
            raise ValueError("--gpu-scale must be > 0")
        out.append(("gpu_like", zoo.scaled(args.gpu_scale), f"{label}; GPU-like: every latency x {args.gpu_scale:g}",
                    args.gpu_scale))
    return out


def point_dicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in r.items() if k != "points"},
             "points": [dataclasses.asdict(p) for p in r["points"]]} for r in results]


def print_tables(key: str, label: str, zoo: Zoo, setup: TradeoffSetup, results: list[dict[str, Any]]) -> None:
    print(f"\n=== zoo [{key}]: {label}")
    switch = "5 ms (default)" if setup.infaas_switch_ms is None else f"{setup.infaas_switch_ms:g} ms"
    print(f"    capacity (load 1): {capacity_qps(zoo, setup.workers, setup.slo_ms):,.0f} q/s, "
          f"{setup.workers} workers, SLO {setup.slo_ms:g} ms, INFaaS model load {switch}")
    for trace in setup.traces:
        rows = [r for r in results if r["trace"] == trace]
        print(f"\n  trace {trace}: mean accuracy / SLO attainment per load")
        print("  " + f"{'policy':24s}" + "".join(f"{'load ' + format(r['load'], 'g'):>17s}" for r in rows))
        for k, p in enumerate(rows[0]["points"]):
            cells = "".join(f"{r['points'][k].mean_accuracy:>10.4f}/{r['points'][k].slo_attainment:.3f}"
                            for r in rows)
            print(f"  {p.policy:24s}{cells}")

        def fmt(x: float | None, spec: str) -> str:
            return "     n/a" if x is None else format(x, spec)

        print("  " + f"{'SlackFit vs best baseline':24s}" + "".join(
            f"{fmt(r['vs_all']['accuracy_gain_points'], '+7.2f')}pt {fmt(r['vs_all']['attainment_gain_x'], '5.2f')}x"
            for r in rows))


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
            r = next(r for r in results if r["trace"] == trace and r["load"] == load)
            for family, (m, c, s) in markers.items():
                pts = [p for p in r["points"] if p.family == family]
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
        zoos = zoos_from_args(args)
    except (ValueError, FileNotFoundError, ZooError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(lineup(z, setup.fixed_subnets)) for _, z, _, _ in zoos) * len(setup.traces) * len(setup.loads)
    report: dict[str, Any] = {"setup": dataclasses.asdict(setup), "zoos": {}}
    with tqdm(total=total, desc="simulations", unit="run", file=sys.stderr, disable=None) as bar:
        for key, zoo, label, scale in zoos:
            results = run_tradeoff(zoo, setup, scale, progress=bar.update)
            report["zoos"][key] = {"label": label, "time_scale": scale, "results": point_dicts(results)}
            bar.clear()
            print_tables(key, label, zoo, setup, results)
            png = out_dir / f"tradeoff_{key}.png"
            plot(key, label, setup, results, png)
            print(f"\n  plot: {png}")
    (out_dir / "tradeoff.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nall points: {out_dir / 'tradeoff.json'}")
    return 0
