"""How SlackFit's defaults were picked: its bucket count K, latency statistic and queue headroom, swept one at a time
around the defaults, each variant's (mean accuracy, SLO attainment) and its gains over the baselines' frontier, on a
bursty gamma trace (CV² 4) and the Azure-derived trace at loads from light (0.5) to overload (8).

    nice -n 10 python benchmarks/slackfit_defaults.py [--zoo PATH] [--duration 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from policies.base import make_policy
from policies.slackfit import DEFAULT_BUCKETS, DEFAULT_QUEUE_HEADROOM, DEFAULT_STAT
from superserve.experiments import compare, lineup, run_points
from superserve.synthetic import load_zoo

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--traces", default="gamma:4,azure")
    parser.add_argument("--loads", default="0.5,2,4,8")
    args = parser.parse_args(argv)
    zoo, label = load_zoo(args.zoo)
    d = {"buckets": DEFAULT_BUCKETS, "stat": DEFAULT_STAT, "queue_headroom": DEFAULT_QUEUE_HEADROOM}
    grid = [dict(d, buckets=k) for k in (1, 2, 4, 8, 16, 64)]
    grid += [dict(d, stat="median" if DEFAULT_STAT == "p99" else "p99")]
    grid += [dict(d, queue_headroom=h) for h in (1.0, 2.0, 4.0, 8.0, float("inf")) if h != DEFAULT_QUEUE_HEADROOM]
    variants = [make_policy("slackfit", zoo, **params) for params in grid]
    baselines = lineup(zoo)[1:]
    print(f"zoo: {label}\ndefaults: {d}")
    rows = []
    for trace in args.traces.split(","):
        for load in (float(x) for x in args.loads.split(",")):
            points = run_points(zoo, variants + baselines, trace, load, workers=8, slo_ms=36.0,
                                duration_s=args.duration, seed=0)
            print(f"\n  {trace} load {load:g}: accuracy / attainment (gain in points at equal attainment, "
                  f"x at equal accuracy)")
            for params, p in zip(grid, points[:len(variants)]):
                c = compare(p, points[len(variants):])
                rows.append({"trace": trace, "load": load, **params, "accuracy": p.mean_accuracy,
                             "attainment": p.slo_attainment, "accuracy_gain_points": c["accuracy_gain_points"],
                             "attainment_gain_x": c["attainment_gain_x"]})
                g1 = "n/a" if c["accuracy_gain_points"] is None else f"{c['accuracy_gain_points']:+.2f}"
                g2 = "n/a" if c["attainment_gain_x"] is None else f"{c['attainment_gain_x']:.2f}"
                print(f"    K={params['buckets']:<3} {params['stat']:6s} headroom={params['queue_headroom']:<4g} "
                      f"{p.mean_accuracy:.4f} / {p.slo_attainment:.3f}  ({g1}, {g2}x)")

    def mean_of(key: str, **match: object) -> float:
        vals = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
        return sum(vals) / len(vals)

    headline = {
        "default_buckets": DEFAULT_BUCKETS, "default_stat_is_p99": DEFAULT_STAT == "p99",
        "default_queue_headroom": DEFAULT_QUEUE_HEADROOM,
        "mean_attainment_default": round(mean_of("attainment", **d), 4),
        "mean_accuracy_default": round(mean_of("accuracy", **d), 4),
        "mean_attainment_buckets_16": round(mean_of("attainment", **dict(d, buckets=16)), 4),
        "mean_attainment_median_stat": round(mean_of("attainment", **dict(d, stat="median")), 4),
        "mean_accuracy_no_queue_cap": round(mean_of("accuracy", **dict(d, queue_headroom=float("inf"))), 4),
        "mean_attainment_no_queue_cap": round(mean_of("attainment", **dict(d, queue_headroom=float("inf"))), 4),
    }
    for r in rows:  # JSON has no infinity
        r["queue_headroom"] = "inf" if r["queue_headroom"] == float("inf") else r["queue_headroom"]
    out = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
           "zoo": label, "headline": headline, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slackfit_defaults.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
