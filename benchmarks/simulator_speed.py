"""Simulator speed: simulated requests per second of wall time at 10^4, 10^5 and 10^6 requests (8 workers, SlackFit),
and how the time per request grows with the run length (linear scaling = a growth of 1.0x).

Two loads: light (0.5x the most accurate subnet's sustainable rate: batches of a few requests, the most decisions
per request) and heavy (4x: large batches, a long queue). The headline takes the slower of the two.

    nice -n 10 python benchmarks/simulator_speed.py [--zoo PATH] [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from loadtest import traces
from policies.base import make_policy
from superserve.experiments import capacity_qps
from superserve.sim import SimConfig, simulate
from superserve.synthetic import load_zoo

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None, help="zoo file (default: the shipped one)")
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="requests per run, comma-separated (default %(default)s)")
    parser.add_argument("--loads", default="0.5,4",
                        help="loads, multiples of the most accurate subnet's sustainable rate, comma-separated "
                             "(default %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="simulated workers (default %(default)s)")
    args = parser.parse_args(argv)
    zoo, label = load_zoo(args.zoo)
    sizes = [int(x) for x in args.sizes.split(",")]
    loads = [float(x) for x in args.loads.split(",")]
    policy = make_policy("slackfit", zoo)
    rows = []
    print(f"zoo: {label}\npolicy: {policy.name}, {args.workers} workers, SLO 36 ms, gamma CV² 4 arrivals")
    for load in loads:
        rate = load * capacity_qps(zoo, args.workers, 36.0)
        for n in sizes:
            arrivals = traces.gamma(rate, 4.0, 1.1 * n / rate, np.random.default_rng(0))[:n]
            start = time.perf_counter()
            table = simulate(arrivals, policy, 36.0, config=SimConfig(workers=args.workers))
            wall = time.perf_counter() - start
            rows.append({"load": load, "rate_qps": rate, "requests": len(table), "wall_s": wall,
                         "requests_per_wall_s": len(table) / wall, "us_per_request": wall / len(table) * 1e6})
            print(f"  load {load:g} ({rate:,.0f} q/s)  {len(table):>9,} requests  {wall:7.2f} s wall  "
                  f"{len(table) / wall:>9,.0f} requests/s")
    headline: dict[str, float | bool | str] = {}
    largest, smallest = max(sizes), min(sizes)
    worst = None
    for load in loads:
        mine = {r["requests"]: r for r in rows if r["load"] == load}
        big = max(mine.values(), key=lambda r: r["requests"])
        small = min(mine.values(), key=lambda r: r["requests"])
        growth = big["us_per_request"] / small["us_per_request"]
        print(f"  load {load:g}: time per request grows {growth:.2f}x from {small['requests']:,} to "
              f"{big['requests']:,} requests (1.0x = linear)")
        if worst is None or big["wall_s"] > worst[0]["wall_s"]:
            worst = (big, growth)
    assert worst is not None
    big, growth = worst
    exp = int(round(np.log10(largest)))
    headline[f"wall_s_for_1e{exp}_requests_8_workers"] = round(big["wall_s"], 2)
    headline["simulated_requests_per_wall_s"] = round(big["requests_per_wall_s"])
    headline[f"time_per_request_growth_x_1e{int(round(np.log10(smallest)))}_to_1e{exp}"] = round(growth, 3)
    headline["meets_target_1e6_under_60_s"] = bool(largest >= 1_000_000 and big["wall_s"] < 60)
    headline["headline_load"] = big["load"]
    out = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
           "zoo": label, "headline": headline, "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "simulator_speed.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
