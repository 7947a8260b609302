"""Why SlackFit's gain over Clipper+ changes with load at real pacing: the paper-like zoo's paced Azure runs of
benchmarks/tradeoff.py replayed again, minute by minute, for SlackFit and the Clipper+ configurations.

Per load and trace minute: the arrival rate as a multiple of load 1 (what the most accurate subnet sustains), each
policy's SLO attainment and mean served accuracy, and SlackFit's share of requests served by the smallest subnet and
its mean batch size. Beside them, what each subnet can sustain within the SLO at its best profiled batch (the same
multiple): minutes above the smallest subnet's limit overload every policy; there is nothing left to trade.

    nice -n 10 python benchmarks/tradeoff_minutes.py [--loads 2,4,8] [--policies 'slackfit,clipper+[75.00%]']
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from superserve.experiments import arrivals_for, capacity_qps, lineup
from superserve.gpu_model import DEFAULT_GPU_PROFILE, PAPER_SLO_MS, ofa_resnet50_zoo
from superserve.metrics import summarize
from superserve.records import OK, RecordTable
from superserve.sim import SimConfig, simulate

RESULTS = Path(__file__).resolve().parent / "results"
TRACE = "azure-paced"


def per_minute(t: RecordTable, minutes: int, smallest: int) -> list[dict[str, float | None]]:
    minute = np.minimum((t.arrival_s // 60).astype(int), minutes - 1)
    met = t.status_is(OK)
    served = ~np.isnan(t.finish_s)
    out = []
    for m in range(minutes):
        sel = minute == m
        srv = sel & served
        # A batch = one (worker, dispatch time).
        batches = len(np.unique(np.column_stack((t.worker_id[srv].astype(float), t.dispatch_s[srv])), axis=0))
        out.append({"slo_attainment": round(float(met[sel].mean()), 4) if sel.any() else None,
                    "mean_accuracy": round(float(t.accuracy[srv].mean()), 5) if srv.any() else None,
                    "smallest_subnet_share": round(float((t.subnet[srv] == smallest).mean()), 4) if srv.any()
                    else None,
                    "mean_batch": round(int(srv.sum()) / batches, 1) if batches else None})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="2,4,8",
                        help="loads, multiples of capacity, comma-separated (default %(default)s)")
    parser.add_argument("--policies", default=None,
                        help="configuration names, comma-separated (default: SlackFit and every Clipper+)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tradeoff_minutes.json",
                        help="result JSON (default %(default)s)")
    args = parser.parse_args(argv)
    loads = [float(x) for x in args.loads.split(",")]
    zoo = ofa_resnet50_zoo(DEFAULT_GPU_PROFILE)
    cap = capacity_qps(zoo, 1, PAPER_SLO_MS)
    smallest = min(range(len(zoo.entries)), key=lambda i: zoo.entries[i].accuracy)
    sustain = {e.subnet_id: round(max(b / (s.median_ms * 1e-3) for b, s in e.latency_ms.items()
                                      if s.p99_ms <= PAPER_SLO_MS) / cap, 3) for e in zoo.entries}
    configs = [c for c in lineup(zoo) if c.policy.name.split("[")[0] in ("slackfit", "clipper+")]
    if args.policies:
        wanted = args.policies.split(",")
        unknown = set(wanted) - {c.name for c in configs}
        if unknown or "slackfit" not in wanted:
            raise SystemExit(f"--policies: need slackfit; unknown {sorted(unknown)}; known {[c.name for c in configs]}")
        configs = [c for c in configs if c.name in wanted]
    headline: dict[str, float] = {}
    detail: dict[str, object] = {}
    start = time.perf_counter()
    for load in loads:
        arrivals, rate = arrivals_for(zoo, TRACE, load, 1, PAPER_SLO_MS, 600.0, 0)
        minutes = int(np.ceil(arrivals[-1] / 60))
        rate_x = [round(float(((arrivals // 60) == m).sum()) / 60 / cap, 3) for m in range(minutes)]
        over = [m for m in range(minutes) if rate_x[m] > sustain[zoo.entries[smallest].subnet_id]]
        runs = {}
        for c in configs:
            t = simulate(arrivals, c.policy, PAPER_SLO_MS, config=SimConfig(workers=1, seed=0))
            s = summarize(t)
            runs[c.name] = {"slo_attainment": round(s.slo_attainment, 4), "mean_accuracy": round(s.mean_accuracy, 5),
                            "minutes": per_minute(t, minutes, smallest)}
            print(f"load {load:g} {c.name:20s} attainment {s.slo_attainment:.4f} accuracy {s.mean_accuracy:.4f}",
                  flush=True)
        sf = runs["slackfit"]
        n_per_min = [int(((arrivals // 60) == m).sum()) for m in range(minutes)]
        share_over = sum(n_per_min[m] for m in over) / len(arrivals)
        tag = f"load{load:g}"
        headline[f"requests_in_minutes_beyond_smallest_subnet_share_{tag}"] = round(share_over, 4)
        for name, r in runs.items():
            key = name.replace("clipper+[", "clipper_").replace("%]", "pct").replace(".", "_")
            headline[f"{key}_slo_attainment_{tag}"] = r["slo_attainment"]
            headline[f"{key}_mean_accuracy_{tag}"] = r["mean_accuracy"]
        headline[f"slackfit_smallest_subnet_share_{tag}"] = round(float(np.average(
            [m["smallest_subnet_share"] or 0 for m in sf["minutes"]], weights=n_per_min)), 4)
        detail[tag] = {"rate_qps": rate, "rate_x_per_minute": rate_x, "minutes_beyond_smallest_subnet": over,
                       "runs": runs}
    out = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
           "host": f"{platform.node()}: {platform.processor() or platform.machine()}, shared 2-core VM",
           "zoo": f"paper-like OFA-ResNet50 on {DEFAULT_GPU_PROFILE}, 1 GPU, SLO {PAPER_SLO_MS} ms",
           "sustainable_x_load1_per_subnet": sustain, "headline": headline,
           "wall_s": round(time.perf_counter() - start, 1), "detail": detail}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
