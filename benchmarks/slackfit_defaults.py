"""How SlackFit's defaults were picked: its bucket count K, bucket range, latency statistic and queue headroom, swept
one at a time around the defaults, each variant's (mean accuracy, SLO attainment) and its gains over the baselines'
frontier, on a bursty gamma trace (CV² 4) and the Azure-derived trace at loads from light (0.5) to overload (8), on
the shipped CPU zoo, on the shipped zoo's subnets under each GPU latency profile (superserve.gpu_model), and on the
paper-like OFA-ResNet50 zoo under the default GPU profile.

    nice -n 10 python benchmarks/slackfit_defaults.py [--zoo PATH] [--duration 2] [--gpu-duration 0.5]

The GPU zoos run on `--gpu-workers` simulated GPUs (default 1) for `--gpu-duration` seconds (default 5).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from policies.base import make_policy
from policies.slackfit import DEFAULT_BUCKET_RANGE, DEFAULT_BUCKETS, DEFAULT_QUEUE_HEADROOM, DEFAULT_RULE, DEFAULT_STAT
from superserve.experiments import compare, lineup, run_points
from superserve.gpu_model import DEFAULT_GPU_PROFILE, GPU_PROFILES, gpu_zoo, ofa_resnet50_zoo
from superserve.synthetic import load_zoo

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET_COUNTS = (1, 2, 4, 6, 8, 12, 16)
RULES = ("fit", "paper")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None, help="zoo file (default: the shipped one)")
    parser.add_argument("--duration", type=float, default=2.0, help="trace seconds on the CPU zoo")
    parser.add_argument("--gpu-duration", type=float, default=5.0, help="trace seconds on the GPU zoos")
    parser.add_argument("--gpu-workers", type=int, default=1, help="simulated GPUs for the GPU zoos (default 1)")
    parser.add_argument("--traces", default="gamma:4,azure", help="trace specs, comma-separated (default %(default)s)")
    parser.add_argument("--loads", default="0.5,2,4,8",
                        help="loads, multiples of capacity, comma-separated (default %(default)s)")
    parser.add_argument("--gpu-profiles", default=",".join(GPU_PROFILES),
                        help="GPU latency profiles, comma-separated (default %(default)s)")
    args = parser.parse_args(argv)
    base, label = load_zoo(args.zoo)
    zoos = [("cpu", base, args.duration, 8)]
    zoos += [(f"gpu_{p.replace('-', '_')}", gpu_zoo(base, p), args.gpu_duration, args.gpu_workers)
             for p in args.gpu_profiles.split(",") if p]
    zoos += [(f"paper_ofa_resnet50_{DEFAULT_GPU_PROFILE.replace('-', '_')}", ofa_resnet50_zoo(DEFAULT_GPU_PROFILE),
              args.gpu_duration, args.gpu_workers)]
    d = {"buckets": DEFAULT_BUCKETS, "stat": DEFAULT_STAT, "queue_headroom": DEFAULT_QUEUE_HEADROOM,
         "bucket_range": DEFAULT_BUCKET_RANGE, "rule": DEFAULT_RULE}
    grid = [dict(d, buckets=k, rule=r) for r in RULES for k in BUCKET_COUNTS]
    grid += [dict(d, bucket_range="table")]
    grid += [dict(d, stat="median" if DEFAULT_STAT == "p99" else "p99")]
    grid += [dict(d, queue_headroom=h) for h in (1.0, 2.0, float("inf")) if h != DEFAULT_QUEUE_HEADROOM]
    traces = args.traces.split(",")
    loads = [float(x) for x in args.loads.split(",")]
    print(f"zoo: {label}\ndefaults: {d}")
    rows = []
    bar = tqdm(total=len(zoos) * len(traces) * len(loads), desc="(zoo, trace, load)", file=sys.stderr, disable=None)
    for key, zoo, duration, workers in zoos:
        variants = [make_policy("slackfit", zoo, **params) for params in grid]
        baselines = lineup(zoo)[1:]
        for trace in traces:
            for load in loads:
                points = run_points(zoo, variants + baselines, trace, load, workers=workers, slo_ms=36.0,
                                    duration_s=duration, seed=0)
                bar.update()
                print(f"\n  [{key}] {trace} load {load:g}: accuracy / attainment (gain in points at equal "
                      f"attainment, x at equal accuracy, vs the baselines' frontier)")
                for params, p in zip(grid, points[:len(variants)]):
                    c = compare(p, points[len(variants):])
                    rows.append({"zoo": key, "trace": trace, "load": load, **params, "accuracy": p.mean_accuracy,
                                 "attainment": p.slo_attainment, "accuracy_gain_points": c["accuracy_gain_points"],
                                 "attainment_gain_x": c["attainment_gain_x"]})
                    g1 = "n/a" if c["accuracy_gain_points"] is None else f"{c['accuracy_gain_points']:+.2f}"
                    g2 = "n/a" if c["attainment_gain_x"] is None else f"{c['attainment_gain_x']:.2f}"
                    print(f"    K={params['buckets']:<3} {params['rule']:5s} {params['bucket_range']:5s} "
                          f"{params['stat']:6s} "
                          f"headroom={params['queue_headroom']:<4g} {p.mean_accuracy:.4f} / {p.slo_attainment:.3f}"
                          f"  ({g1}, {g2}x)")
    bar.close()

    def mean_of(key: str, **match: object) -> float:
        vals = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
        return round(sum(vals) / len(vals), 4)

    headline: dict[str, object] = {
        "default_buckets": DEFAULT_BUCKETS, "default_stat_is_p99": DEFAULT_STAT == "p99",
        "default_queue_headroom": DEFAULT_QUEUE_HEADROOM, "default_bucket_range_is_slo": DEFAULT_BUCKET_RANGE == "slo"}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for key, *_ in zoos:
        summary[key] = {}
        for params in grid:
            tag = (f"K{params['buckets']}_{params['rule']}_{params['bucket_range']}_{params['stat']}_"
                   f"h{params['queue_headroom']:g}")
            m = {k: v for k, v in params.items()}
            summary[key][tag] = {"mean_accuracy": mean_of("accuracy", zoo=key, **m),
                                 "mean_attainment": mean_of("attainment", zoo=key, **m)}
        for r in RULES:
            for k in BUCKET_COUNTS:
                m = dict(d, buckets=k, rule=r)
                headline[f"mean_attainment_{key}_{r}_rule_buckets_{k}"] = mean_of("attainment", zoo=key, **m)
                headline[f"mean_accuracy_{key}_{r}_rule_buckets_{k}"] = mean_of("accuracy", zoo=key, **m)
        headline[f"mean_attainment_{key}_whole_table_range"] = mean_of(
            "attainment", zoo=key, **dict(d, bucket_range="table"))
        headline[f"mean_accuracy_{key}_whole_table_range"] = mean_of(
            "accuracy", zoo=key, **dict(d, bucket_range="table"))
    for r in rows:  # JSON has no infinity
        r["queue_headroom"] = "inf" if r["queue_headroom"] == float("inf") else r["queue_headroom"]
    out = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
           "host": f"{platform.node()} {platform.processor() or platform.machine()}",
           "zoo": label, "headline": headline, "summary": summary, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slackfit_defaults.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
