"""`superserve trace`: generate arrival traces, save them, and print their statistics."""

from __future__ import annotations

import argparse
import json

import numpy as np

from loadtest import traces


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trace_command", metavar="KIND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0, help="seed of the random generator (default 0)")
    common.add_argument("--out", help="write the trace here (.npy or .csv: one arrival time in seconds per line)")
    rated = argparse.ArgumentParser(add_help=False)
    rated.add_argument("--rate", type=float, required=True, help="mean rate, queries/s")
    p = sub.add_parser("poisson", parents=[common, rated], help="Poisson arrivals")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p = sub.add_parser("gamma", parents=[common, rated], help="gamma inter-arrivals (bursty when CV² > 1)")
    p.add_argument("--cv2", type=float, required=True, help="squared coefficient of variation of inter-arrivals")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p = sub.add_parser("ramp", parents=[common], help="rate ramping from --start-rate to --end-rate")
    p.add_argument("--start-rate", type=float, required=True, help="queries/s before the ramp")
    p.add_argument("--end-rate", type=float, required=True, help="queries/s after the ramp")
    p.add_argument("--accel", type=float, required=True, help="rate change during the ramp, queries/s²")
    p.add_argument("--hold-before", type=float, default=1.0, help="seconds at the start rate (default 1)")
    p.add_argument("--hold-after", type=float, default=1.0, help="seconds at the end rate (default 1)")
    p.add_argument("--cv2", type=float, default=1.0, help="burstiness on top of the rate (default 1: Poisson)")
    p = sub.add_parser("azure", parents=[common, rated], help="Azure Functions 2019 per-minute invocation shape")
    p.add_argument("--file", default=str(traces.DEFAULT_AZURE_PATH),
                   help="invocations file (default: the shipped per-minute sum of 1000 functions)")
    p.add_argument("--functions", type=int, default=None, help="use the N busiest functions (default: all rows)")
    p.add_argument("--start-minute", type=int, default=0, help="first trace minute to replay (0-based)")
    p.add_argument("--minutes", type=int, default=None, help="how many trace minutes (default: to the end)")
    p.add_argument("--minute-s", type=float, default=60.0,
                   help="seconds each trace minute lasts in the replay (default 60 = real time)")
    p = sub.add_parser("info", help="statistics of a saved trace")
    p.add_argument("path", help=".npy or .csv trace file")


def run(args: argparse.Namespace) -> int:
    try:
        if args.trace_command == "info":
            arrivals = traces.load(args.path)
        else:
            rng = np.random.default_rng(args.seed)
            if args.trace_command == "poisson":
                arrivals = traces.poisson(args.rate, args.duration, rng)
            elif args.trace_command == "gamma":
                arrivals = traces.gamma(args.rate, args.cv2, args.duration, rng)
            elif args.trace_command == "ramp":
                arrivals = traces.ramp(args.start_rate, args.end_rate, args.accel, rng, args.hold_before,
                                       args.hold_after, args.cv2)
            else:
                arrivals = traces.azure(traces.read_azure(args.file), args.rate, rng, args.functions,
                                        args.start_minute, args.minutes, args.minute_s)
            if args.out:
                traces.save(args.out, arrivals)
                print(f"wrote {len(arrivals)} arrivals to {args.out}")
        print(json.dumps(traces.stats(arrivals), indent=1))
    except traces.TraceError as exc:
        print(f"error: {exc}")
        return 2
    return 0
