"""Grade the simulator again on real server runs kept by `e2e_tradeoff.py --keep-records DIR`, without replaying them.

A full e2e run takes about an hour on a shared 2-core host and the server disagrees with itself by 3-5 points from
one run to the next, so two simulator models are best compared on the *same* real runs. Each kept run (the server's
and the client's records, and the frozen zoo) is fitted on its own (`fit_host_cost`, `fit_client_path`); each
policy's runs are then simulated with the mean fit of the *other* policies' runs (cross-calibration, as
`e2e_tradeoff.py` does by default), once per simulator model, side by side:

- `server_clock`: calls reach the simulated server after the client's send lag and half the measured transport, and
  its deadlines count from there, as the real server's do (`SimConfig.network_in_ms`, `client_send_lag_ms`);
- `client_clock`: the model before it, the server's clock starting at the scheduled arrival.

The real attainment is the client's (its records, as in `e2e_tradeoff.py`). Records kept before the manifest
(`runs.json`) existed are matched to the lineup by their order; pass that run's `--duration` and `--seed`.

    python benchmarks/e2e_rescore.py DIR [--out benchmarks/results/e2e_rescore.json]

Writes the JSON (+ .png: each run's real against simulated attainment, per model).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RESULTS_DIR, command_line  # noqa: E402
from e2e_tradeoff import lineup, make_trace, mean_fit, policy_factory, sim_config  # noqa: E402
from superserve.experiments import capacity_qps  # noqa: E402
from superserve.host_cost import fit_client_path, fit_host_cost  # noqa: E402
from superserve.metrics import summarize  # noqa: E402
from superserve.records import read_jsonl  # noqa: E402
from superserve.sim import simulate  # noqa: E402
from superserve.zoo import Zoo  # noqa: E402

MODELS = {"server_clock": True, "client_clock": False}  # name -> sim_config(server_clock=...)
_TRACES = {"azure": "azure", "gamma_cv2_2": "gamma:2", "gamma_cv2_4": "gamma:4", "gamma_cv2_8": "gamma:8"}
_STEM = re.compile(r"(\d+)_([a-z+]+)_(.+)_load_([\d.]+)$")


def manifest(records: Path, zoo: Zoo, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The kept runs: `runs.json`, or (older records) each file's run matched to the lineup by its order."""
    listed = records / "runs.json"
    if listed.is_file():
        return json.loads(listed.read_text())
    stems = sorted(p.name[:-len("_server.jsonl")] for p in records.glob("*_server.jsonl"))
    policies = lineup(zoo)
    if not stems or len(stems) % len(policies):
        raise SystemExit(f"{records}: {len(stems)} kept runs do not split over the {len(policies)} policies of the "
                         "lineup, and there is no runs.json")
    per, capacity = len(stems) // len(policies), capacity_qps(zoo, 1, args.slo_ms)
    out = []
    for k, stem in enumerate(stems):
        m = _STEM.match(stem)
        if m is None or m.group(3) not in _TRACES:
            raise SystemExit(f"{records}: cannot read the run from the file name {stem}")
        label, family, params = policies[k // per]
        if family != m.group(2):
            raise SystemExit(f"{records}: {stem} is not a {family} run: the lineup order does not match")
        load = float(m.group(4))
        out.append({"stem": stem, "policy": label, "family": family, "params": params, "trace": _TRACES[m.group(3)],
                    "load": load, "rate_qps": min(load * capacity, args.max_rate), "duration_s": args.duration,
                    "seed": args.seed, "slo_ms": args.slo_ms})
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(5 * len(MODELS), 4.8), sharey=True)
    families = sorted({r["family"] for r in rows})
    for ax, model in zip(axes, MODELS):
        for fam, marker in zip(families, "osD^v<>"):
            pts = [(r["real_attainment"], r[model]["slo_attainment"]) for r in rows if r["family"] == fam]
            ax.scatter(*zip(*pts), marker=marker, label=fam, alpha=0.75)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        mad = 100 * np.mean([abs(r["real_attainment"] - r[model]["slo_attainment"]) for r in rows])
        ax.set_title(f"{model}: mean |real - sim| {mad:.2f} points")
        ax.set_xlabel("real SLO attainment (client)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("simulated SLO attainment")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path, help="a directory written by e2e_tradeoff.py --keep-records")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run, for records without runs.json")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed, for records without runs.json")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="for records without runs.json")
    parser.add_argument("--max-rate", type=float, default=400.0, help="for records without runs.json")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "e2e_rescore.json",
                        help="result JSON; the PNG goes beside it (default %(default)s)")
    args = parser.parse_args(argv)
    zoo = Zoo.load(args.records / "zoo.json")
    runs = manifest(args.records, zoo, args)
    for run in runs:
        server = read_jsonl(args.records / f"{run['stem']}_server.jsonl")
        client = read_jsonl(args.records / f"{run['stem']}_client.jsonl")
        run["fit"] = (fit_host_cost(server, zoo), fit_client_path(server, client))
        run["real"] = summarize(client)
    if len({r["policy"] for r in runs}) < 2:
        raise SystemExit("cross-calibration needs kept runs of at least two policies")
    rows = []
    for run in runs:
        others = [r["fit"] for r in runs if r["policy"] != run["policy"]]
        cost, path = mean_fit([c for c, _ in others], [p for _, p in others])
        arrivals = make_trace(run["trace"], run["rate_qps"], run["duration_s"], run["seed"])
        factory = policy_factory(run["family"], run["params"])
        row = {k: run[k] for k in ("stem", "policy", "family", "trace", "load", "rate_qps")}
        row["real_attainment"] = run["real"].slo_attainment
        row["real_accuracy"] = run["real"].mean_accuracy
        for model, server_clock in MODELS.items():
            sim = summarize(simulate(arrivals, factory(zoo), run["slo_ms"], policy_factory=factory,
                                     config=sim_config(cost, path, run["seed"], False, server_clock)))
            row[model] = {"slo_attainment": sim.slo_attainment, "mean_accuracy": sim.mean_accuracy}
        rows.append(row)
        print(f"  {row['policy']:26s} {row['trace']:8s} load {row['load']:<4g}: real {row['real_attainment']:.3f} | "
              + " | ".join(f"{m} {row[m]['slo_attainment']:.3f}" for m in MODELS), flush=True)
    headline: dict[str, Any] = {"runs": len(rows)}
    for model in MODELS:
        d = [abs(r["real_attainment"] - r[model]["slo_attainment"]) for r in rows]
        headline[f"real_vs_sim_{model}_mean_abs_attainment_diff_points"] = round(100 * float(np.mean(d)), 2)
        headline[f"real_vs_sim_{model}_max_abs_attainment_diff_points"] = round(100 * max(d), 2)
        bias = [r[model]["slo_attainment"] - r["real_attainment"] for r in rows]
        headline[f"sim_minus_real_{model}_mean_attainment_points"] = round(100 * float(np.mean(bias)), 2)
        for fam in sorted({r["family"] for r in rows}):
            f = [abs(r["real_attainment"] - r[model]["slo_attainment"]) for r in rows if r["family"] == fam]
            headline[f"real_vs_sim_{model}_{fam.replace('+', 'plus')}_mean_abs_attainment_diff_points"] = \
                round(100 * float(np.mean(f)), 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(rows, png, f"Simulator vs the kept server runs of {args.records.name} ({len(rows)} runs), cross-calibrated")
    args.out.write_text(json.dumps({"command": command_line(), "headline": headline, "records": str(args.records),
                                    "zoo_host": zoo.host.__dict__, "rows": rows}, indent=1, default=str) + "\n")
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
