"""`superserve simulate`: replay a trace through one policy in the discrete-event simulator and print its metrics."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from typing import Any

import numpy as np

from loadtest import traces
from policies.base import available, make_policy
from superserve.experiments import capacity_qps
from superserve.gpu_model import DEFAULT_GPU_PROFILE, GPU_PROFILES, describe, gpu_profile, gpu_zoo, ofa_resnet50_zoo
from superserve.metrics import summarize, time_series
from superserve.host_cost import fit_client_path, fit_host_cost, sim_fields
from superserve.profile_correction import CORRECTION_INTERVAL_S
from superserve.records import RecordError, read_jsonl, write_jsonl
from superserve.sim import SimConfig, simulate
from superserve.synthetic import DEFAULT_ZOO_PATH, load_zoo
from superserve.zoo import Zoo, ZooError


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with value read as int, float (incl. inf) or string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"policy parameter {text!r} is not key=value")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(raw)
        except ValueError:
            pass
    return key.replace("-", "_"), raw


def add_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zoo", default=None,
                        help=f"zoo JSON (default {DEFAULT_ZOO_PATH}; a labelled synthetic zoo if that is missing), or "
                             "'paper': the published OFA-ResNet50 (MACs, top-1) points on the GPU latency model")
    parser.add_argument("--gpu-profile", default=None, metavar="NAME",
                        help="model latencies on a GPU from published ResNet-50 v1.5 measurements: "
                             f"{', '.join(GPU_PROFILES)} (the zoo's largest subnet costed as ResNet-50, the others by "
                             f"their MACs; default for --zoo paper: {DEFAULT_GPU_PROFILE})")


def zoo_from_args(args: argparse.Namespace) -> tuple[Zoo, str]:
    """The zoo the arguments name and a label saying what it is. An unknown GPU profile raises ValueError."""
    if args.zoo == "paper":
        name = args.gpu_profile or DEFAULT_GPU_PROFILE
        zoo = ofa_resnet50_zoo(name)
        return zoo, (f"paper-like OFA-ResNet50 zoo ({len(zoo.entries)} published points, top-1 "
                     f"{zoo.entries[0].accuracy:.1%}-{zoo.entries[-1].accuracy:.1%}) on GPU model "
                     f"{describe(gpu_profile(name))}")
    zoo, label = load_zoo(args.zoo)
    if args.gpu_profile is not None:
        zoo = gpu_zoo(zoo, args.gpu_profile)
        label += f"; GPU model {describe(gpu_profile(args.gpu_profile))}"
    return zoo, label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_zoo_arguments(parser)
    parser.add_argument("--policy", default="slackfit", help=f"one of {', '.join(available())} (default slackfit)")
    parser.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                        help="policy parameter, repeatable (e.g. buckets=8, stat=median, subnet=3, switch_ms=20)")
    parser.add_argument("--trace", default="gamma:4",
                        help="poisson | gamma:CV2 | azure[:START:MINUTES] | azure-paced[:START:MINUTES] (real minute "
                             "pacing, --duration ignored) | azure-day | file:PATH (default gamma:4)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="mean arrival rate, queries/s")
    rate.add_argument("--load", type=float, default=2.0,
                      help="rate as a multiple of what the most accurate subnet sustains (default 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="trace seconds (default 10)")
    parser.add_argument("--slo-ms", type=float, default=36.0, help="latency SLO of every request (default 36 ms)")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="accuracy hint of every request (default none)")
    parser.add_argument("--workers", type=int, default=8, help="simulated workers (default 8)")
    parser.add_argument("--late", choices=("shed", "serve"), default="shed",
                        help="requests that cannot meet their deadline: shed them, or serve them late (default shed)")
    parser.add_argument("--no-noise", action="store_true", help="service time = the median table exactly")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trace and of the service-time noise")
    host = parser.add_argument_group("predicting a server on a CPU host (superserve.host_cost)")
    host.add_argument("--host-cost-from", metavar="RECORDS",
                      help="fit the host cost from a server's per-request records (superserve serve --records) on "
                           "this zoo; prints the fit")
    host.add_argument("--host-ms-per-batch", type=float, default=None,
                      help="the host's cost per batch over the table, ms (default 0: an ideal host)")
    host.add_argument("--host-ms-per-request", type=float, default=None,
                      help="how long each arriving call stalls the running batches, ms (default 0)")
    host.add_argument("--client-records", metavar="RECORDS",
                      help="with --host-cost-from: the client's records of the same run (loadtest.replayer); also "
                           "fits the call's path outside the scheduler (taking calls in, answering, the network), so "
                           "that latencies and SLO attainment are the client's")
    host.add_argument("--host-ms-per-receive", type=float, default=None,
                      help="host work to take in one call before the scheduler sees it, ms (default 0)")
    host.add_argument("--host-ms-per-answer", type=float, default=None,
                      help="host work to send one answer; a batch's answers leave one after another, ms (default 0)")
    host.add_argument("--network-ms", type=float, default=None,
                      help="fixed client-server transport, both ways together, ms (default 0)")
    host.add_argument("--server-clock", action=argparse.BooleanOptionalAction, default=True,
                      help="with --client-records: calls reach the simulated server after the client's fitted send "
                           "lag and half the network, and its deadlines count from there, as a real server's do "
                           "(default on)")
    host.add_argument("--host-spread", action="store_true",
                      help="with --host-cost-from: batch times spread around the fitted line as the host's did, with "
                           "its stalls, instead of the table's log-normal noise")
    host.add_argument("--correct-online", action="store_true",
                      help="correct the policy's table from the simulated service times every 0.25 s, as the server "
                           "does by default")
    parser.add_argument("--records", help="write per-request records here (JSONL)")
    parser.add_argument("--timeseries", help="write per-second metrics here (CSV)")


def run(args: argparse.Namespace) -> int:
    try:
        zoo, label = zoo_from_args(args)
        policy = make_policy(args.policy, zoo, **dict(args.param))
        rate = args.rate if args.rate is not None else args.load * capacity_qps(zoo, args.workers, args.slo_ms)
        arrivals = traces.named(args.trace, rate, args.duration, np.random.default_rng(args.seed))
        manual = {k: v for k, v in (("host_ms_per_batch", args.host_ms_per_batch),
                                    ("host_ms_per_request", args.host_ms_per_request),
                                    ("host_ms_per_receive", args.host_ms_per_receive),
                                    ("host_ms_per_answer", args.host_ms_per_answer),
                                    ("network_ms", args.network_ms)) if v is not None}
        fitted, path, fields = None, None, {"noise": not args.no_noise}
        if args.host_cost_from:
            if {"host_ms_per_batch", "host_ms_per_request"} & manual.keys():
                raise ValueError("give --host-cost-from or --host-ms-per-batch/--host-ms-per-request, not both")
            server_records = read_jsonl(args.host_cost_from)
            fitted = fit_host_cost(server_records, zoo)
            if args.client_records:
                if manual:
                    raise ValueError("give --client-records or --host-ms-per-receive/--host-ms-per-answer/"
                                     "--network-ms, not both")
                path = fit_client_path(server_records, read_jsonl(args.client_records))
            fields |= sim_fields(fitted, path, args.host_spread, args.server_clock)
        elif args.client_records:
            raise ValueError("--client-records needs --host-cost-from (the server's records of the same run)")
        elif args.host_spread:
            raise ValueError("--host-spread needs --host-cost-from (the spread is the fit's)")
        config = SimConfig(workers=args.workers, late=args.late, seed=args.seed, **fields, **manual,
                           correction_interval_s=CORRECTION_INTERVAL_S if args.correct_online else None)
    except (ValueError, OSError, ZooError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"zoo: {label}")
    if fitted is not None:
        print(f"host cost fitted from {args.host_cost_from}: {fitted.ms_per_batch:.2f} ms per batch + "
              f"{fitted.ms_per_request:.2f} ms per arriving call ({fitted.batches} batches, residual "
              f"{fitted.residual_ms:.1f} ms)")
    if path is not None:
        print(f"client path fitted from {args.client_records}: {path.ms_per_receive:.1f} ms to take in a call, "
              f"{path.ms_per_answer:.1f} ms per answer, network {path.network_ms:.2f} ms ({path.requests} calls, mean "
              f"error {path.residual_ms:.1f} ms; each answer's delay drawn around the network's from the fitted spread, "
              f"{path.jitter_ms[0]:+.1f} to {path.jitter_ms[-1]:+.1f} ms)")
    if config.host_ms_per_batch or config.host_ms_per_request or config.correction_interval_s:
        print(f"host: {config.host_ms_per_batch:g} ms per batch, {config.host_ms_per_request:g} ms per arriving call, "
              f"online correction {'on' if config.correction_interval_s else 'off'}")
    if config.client_path:
        print(f"client path: {config.host_ms_per_receive:g} ms per call taken in, {config.host_ms_per_answer:g} ms per "
              f"answer, network {config.network_ms:g} ms; latencies and attainment are the client's")
    if config.network_in_ms or config.client_send_lag_ms:
        lag = config.client_send_lag_ms
        print(f"server clock: calls reach the server {config.network_in_ms:g} ms after they leave, plus the client's send "
              f"lag (fitted, median {lag[len(lag) // 2] if lag else 0:.1f} ms); its deadlines count from there")
    print(f"policy: {policy.name}  workers: {args.workers}  SLO: {args.slo_ms:g} ms  late requests: {args.late}")
    print(f"trace: {args.trace}, {json.dumps({k: round(v, 3) for k, v in traces.stats(arrivals).items()})}")
    start = time.perf_counter()
    params = dict(args.param)
    table = simulate(arrivals, policy, args.slo_ms, args.min_accuracy, config,
                     policy_factory=lambda z: make_policy(args.policy, z, **params))
    wall = time.perf_counter() - start
    s = summarize(table)
    print(f"simulated {s.requests} requests in {wall:.2f} s wall ({s.requests / wall:,.0f} requests/s)")
    print(f"SLO attainment   {s.slo_attainment:.4f}   (met {s.met}, late {s.late}, shed {s.shed}, rejected {s.rejected})")
    print(f"mean accuracy    {s.mean_accuracy:.4f}   (over served requests)")
    print(f"goodput          {s.goodput_qps:,.1f} q/s")
    print(f"latency p50/p99  {s.p50_latency_ms:.2f} / {s.p99_latency_ms:.2f} ms")
    if args.records:
        write_jsonl(args.records, table.to_records())
        print(f"records: {args.records}")
    if args.timeseries:
        rows = time_series(table).rows()
        with open(args.timeseries, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"time series: {args.timeseries}")
    return 0
