"""Scale-out over Redis: what going through Redis costs, what a second worker process buys, and how SlackFit holds
up as the cluster grows (simulator).

serve  (benchmarks/results/scaleout.json): the real server three ways on this host: embedded (one worker thread, the
       default), and a Redis front end with 1 and with 2 `superserve worker` processes (own redis-server on a free
       port). Per mode, a client in its own process measures: throughput at saturation (closed loop, `--concurrency`
       calls in flight), SLO attainment and accuracy of an open-loop gamma trace (CV^2 = 2) at `--load` x the embedded
       saturation throughput, and the median latency of one call at a time (added median = Redis p50 - embedded p50).
sim    (benchmarks/results/scaleout_sim.json): SlackFit in the simulator with 1, 2, 4, ..., 32 workers on the same
       gamma trace scaled in proportion (rate = workers x per-worker rate): attainment and accuracy as N grows.

    nice -n 10 python benchmarks/scaleout.py                 # both parts, the shipped zoo
    nice -n 10 python benchmarks/scaleout.py --part sim
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import free_port, redis_server_binary, start_redis, stop_processes, write_result  # noqa: E402
from loadtest import traces  # noqa: E402
from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO  # noqa: E402


# --- simulator ------------------------------------------------------------------------------------------------------
def run_sim(args: argparse.Namespace, zoo_path: Path) -> None:
    from policies.base import make_policy
    from superserve.metrics import summarize
    from superserve.sim import SimConfig, simulate
    from superserve.zoo import Zoo

    zoo = Zoo.load(zoo_path)
    policy = make_policy("slackfit", zoo)
    rows = []
    for n in (1, 2, 4, 8, 16, 32):
        rng = np.random.default_rng(args.seed)
        arrivals = traces.gamma(args.sim_rate_per_worker * n, 2.0, args.sim_duration_s, rng)
        t = time.perf_counter()
        s = summarize(simulate(arrivals, policy, args.slo_ms, config=SimConfig(workers=n, seed=args.seed)))
        rows.append({"workers": n, "rate_qps": args.sim_rate_per_worker * n, "requests": s.requests,
                     "slo_attainment": s.slo_attainment, "mean_accuracy": s.mean_accuracy,
                     "p99_latency_ms": s.p99_latency_ms, "wall_s": time.perf_counter() - t})
        print(f"sim {n:2d} workers: {s.requests} requests, attainment {s.slo_attainment:.4f}, "
              f"accuracy {s.mean_accuracy:.4f}", flush=True)
    att = [r["slo_attainment"] for r in rows]
    acc = [r["mean_accuracy"] for r in rows]
    headline = {f"attainment_{r['workers']}w": round(r["slo_attainment"], 4) for r in rows}
    headline.update({f"accuracy_{r['workers']}w": round(r["mean_accuracy"], 4) for r in rows})
    headline.update({"attainment_min_minus_1w": round(min(att) - att[0], 4),
                     "accuracy_32w_minus_1w": round(acc[-1] - acc[0], 4),
                     "rate_per_worker_qps": args.sim_rate_per_worker, "slo_ms": args.slo_ms,
                     "trace_duration_s": args.sim_duration_s, "zoo": str(zoo_path)})
    path = write_result("scaleout_sim", headline, {"rows": rows, "trace": "gamma CV^2=2, rate = workers x "
                                                   "per-worker rate", "policy": policy.name})
    print(f"wrote {path}")


# --- real serving ---------------------------------------------------------------------------------------------------
def measure(url: str, images: np.ndarray, args: argparse.Namespace, rate_qps: float | None,
            latency_only: bool = False) -> dict:
    from loadtest.replayer import ReplaySpec, in_subprocess, replay_in_subprocess, saturate, sequential
    from superserve.metrics import summarize

    spec = ReplaySpec(url=url, slo_ms=args.slo_ms)
    if latency_only:  # a relaxed SLO: a stall of this busy host must not turn a latency sample into an error
        lat = in_subprocess(sequential, replace(spec, slo_ms=5000.0), args.sequential_calls, images[:1])
        return {"sequential_p50_ms": float(np.median(lat)), "sequential_p99_ms": float(np.percentile(lat, 99))}

    sat = in_subprocess(saturate, spec, args.concurrency, args.duration_s, images[:1])
    out = {"throughput_qps": sat["throughput_qps"], "saturate_errors": sat["errors"]}
    rate = rate_qps or args.load * sat["throughput_qps"]
    arrivals = traces.gamma(rate, 2.0, args.duration_s, np.random.default_rng(args.seed))
    rep = replay_in_subprocess(arrivals, spec, images)
    s = summarize(rep.records)
    out.update({"trace_rate_qps": rate, "trace_requests": s.requests, "slo_attainment": s.slo_attainment,
                "mean_accuracy": s.mean_accuracy, "p99_latency_ms": s.p99_latency_ms, "errors": rep.error_counts(),
                "max_send_lag_ms": rep.send_lag_ms(100), "client_bottleneck": rep.bottleneck_reasons})
    time.sleep(0.5)
    lat = in_subprocess(sequential, spec, args.sequential_calls, images[:1])
    out["sequential_p50_ms"] = float(np.median(lat))
    return out


def run_serve(args: argparse.Namespace, zoo_path: Path, ckpt: Path) -> None:
    from superserve.cluster.server import ClusterServer
    from superserve.server.app import Server, ServeConfig
    from superserve.server.engine import EngineConfig

    redis_server_binary()  # fail before the embedded runs when it is missing
    images = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    slackfit = ServeConfig(port=0, metrics_port=None, zoo_path=zoo_path, checkpoint_path=ckpt, quiet=True,
                           reprofile="never", engine=EngineConfig(default_slo_ms=args.slo_ms))
    # The added latency is measured on the fastest subnet alone (fixed-subnet policy): with SlackFit an idle server
    # picks the most accurate subnet that fits, and its compute time (tens of ms, noisy here) would hide the overhead.
    fixed = replace(slackfit, policy="clockwork", policy_params={"subnet": 0})
    results: dict[str, dict] = {}
    for name, config, latency_only in (("embedded", slackfit, False), ("embedded_fixed", fixed, True)):
        server = Server(config).start()
        try:
            results[name] = measure(f"127.0.0.1:{server.port}", images, args,
                                    None if name == "embedded" else 1.0, latency_only)
        finally:
            server.stop()
        print(name, results[name], flush=True)
    rate = results["embedded"]["trace_rate_qps"]  # the same trace for every mode
    port = free_port()
    redis_proc = start_redis(port)
    url = f"redis://127.0.0.1:{port}"
    try:
        for n, config, name in ((1, slackfit, "redis_1w"), (2, slackfit, "redis_2w"), (1, fixed, "redis_1w_fixed")):
            server = ClusterServer(config, url).start()
            workers = [subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "superserve.cli", "worker",
                                         "--backend", url, "--checkpoint", str(ckpt)], cwd=ROOT,
                                        stdout=subprocess.DEVNULL) for _ in range(n)]
            try:
                import redis

                r = redis.Redis(port=port)
                deadline = time.monotonic() + 120
                while r.scard("superserve:workers") < n and time.monotonic() < deadline:
                    time.sleep(0.2)
                results[name] = measure(f"127.0.0.1:{server.port}", images, args, rate, name.endswith("fixed"))
            finally:
                stop_processes(workers, timeout_s=30)
                server.stop()
            print(name, results[name], flush=True)
    finally:
        stop_processes([redis_proc])
    e, r1, r2 = results["embedded"], results["redis_1w"], results["redis_2w"]
    headline = {
        "embedded_throughput_qps": round(e["throughput_qps"], 1),
        "redis_1w_throughput_qps": round(r1["throughput_qps"], 1),
        "redis_2w_throughput_qps": round(r2["throughput_qps"], 1),
        "redis_2w_over_1w_throughput": round(r2["throughput_qps"] / r1["throughput_qps"], 3),
        "embedded_slo_attainment": round(e["slo_attainment"], 4),
        "redis_1w_slo_attainment": round(r1["slo_attainment"], 4),
        "redis_2w_slo_attainment": round(r2["slo_attainment"], 4),
        "trace_rate_qps": round(rate, 1),
        "embedded_fastest_subnet_p50_ms": round(results["embedded_fixed"]["sequential_p50_ms"], 3),
        "redis_1w_fastest_subnet_p50_ms": round(results["redis_1w_fixed"]["sequential_p50_ms"], 3),
        "added_median_latency_ms": round(results["redis_1w_fixed"]["sequential_p50_ms"]
                                         - results["embedded_fixed"]["sequential_p50_ms"], 3),
        "embedded_mean_accuracy": round(e["mean_accuracy"], 4),
        "redis_1w_mean_accuracy": round(r1["mean_accuracy"], 4),
        "redis_2w_mean_accuracy": round(r2["mean_accuracy"], 4),
        "slo_ms": args.slo_ms,
        "zoo": str(zoo_path),
    }
    path = write_result("scaleout", headline, {"modes": results, "note": "2 shared cores, a training job running; "
                                               "the client, front end and workers share them"})
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("serve", "sim", "all"), default="all",
                   help="serve: the real server over Redis; sim: the simulator; all: both (default %(default)s)")
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="supernet checkpoint (default: the shipped one)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="SLO every request carries, ms (default %(default)s)")
    p.add_argument("--duration-s", type=float, default=6.0, help="per measurement (serve)")
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight at saturation (default %(default)s)")
    p.add_argument("--load", type=float, default=0.8, help="trace rate / embedded saturation throughput")
    p.add_argument("--sequential-calls", type=int, default=100,
                   help="calls, one at a time, for the median latency (default %(default)s)")
    p.add_argument("--sim-rate-per-worker", type=float, default=300.0,
                   help="simulator: trace rate per worker, q/s (default %(default)s)")
    p.add_argument("--sim-duration-s", type=float, default=20.0, help="simulator: trace seconds (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the traces (default %(default)s)")
    args = p.parse_args(argv)
    if args.part in ("sim", "all"):
        run_sim(args, args.zoo)
    if args.part in ("serve", "all"):
        run_serve(args, args.zoo, args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
