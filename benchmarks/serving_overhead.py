"""What the server costs over running the model directly, measured side by side in one run.

1. Throughput at saturation: a client process keeps `--concurrency` single-image calls in flight against the real
   gRPC server (one embedded worker, SlackFit) for `--duration-s`; the server's per-request records give the exact
   sequence of (subnet, batch size) it ran. Then the same sequence runs in-process, `net(x, subnet)` + softmax, no
   server. Ratio = server images/s / in-process images/s (target >= 85%).
2. Added latency at light load: one call at a time from a client process, every request pinned to the most accurate
   subnet (min_accuracy hint), against the in-process batch-1 forward (+ softmax) of that subnet on the same input.
   The two alternate in `--rounds` blocks (server block, then in-process block, ...) so that load from other
   processes on this shared host hits both alike. Added median = client p50 - in-process p50 (target < 1 ms).
   Also reported, per call: client round trip minus the server's own dispatch-to-result time for that call (from its
   records), i.e. what gRPC, decoding, queueing and the hand-offs add; and an empty RPC (ServerLive) round trip, the
   protocol's floor on this host.

    nice python benchmarks/serving_overhead.py            # shipped zoo
    nice python benchmarks/serving_overhead.py --zoo Z --checkpoint C
Writes benchmarks/results/serving_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.replayer import ReplaySpec, in_subprocess, saturate, sequential  # noqa: E402

import multiprocessing as mp  # noqa: E402
from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO  # noqa: E402
from superserve.server.app import Server, ServeConfig  # noqa: E402
from superserve.server.engine import EngineConfig  # noqa: E402


def batch_mix(records_path: Path) -> list[tuple[str, int]]:
    """(subnet, batch size) of every batch the server ran, in order, from its records."""
    batches: dict[tuple[float, int], list] = {}
    for line in records_path.read_text().splitlines():
        r = json.loads(line)
        if r["dispatch_s"] is not None:
            batches.setdefault((r["dispatch_s"], r["worker_id"]), [r["subnet_id"], 0])[1] += 1
    return [(sid, n) for (_, _), (sid, n) in sorted(batches.items())]


@torch.inference_mode()
def run_in_process(net, zoo, mix: list[tuple[str, int]], sample: torch.Tensor) -> float:  # noqa: ANN001
    """Seconds to run `mix` directly (forward + softmax, the worker's work)."""
    configs = {e.subnet_id: e.config for e in zoo.entries}
    for sid in configs:
        net(sample[:1], configs[sid])
    start = time.perf_counter()
    for sid, b in mix:
        torch.softmax(net(sample[:b], configs[sid]), dim=1).numpy()
    return time.perf_counter() - start


def empty_rpc_ms(url: str, calls: int, gap_s: float = 0.005) -> np.ndarray:
    """Round trips of ServerLive (no payload, no model): the gRPC floor every inference call pays on this host."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request, out = pb.ServerLiveRequest(), []
        stub.ServerLive(request)
        for _ in range(calls):
            t = time.perf_counter()
            stub.ServerLive(request)
            out.append((time.perf_counter() - t) * 1e3)
            time.sleep(gap_s)
    return np.array(out)


def service_ms(records_path: Path) -> np.ndarray:
    """Dispatch-to-result time of every served request, in arrival order (ms)."""
    rows = [json.loads(line) for line in records_path.read_text().splitlines()]
    rows = [r for r in rows if r["dispatch_s"] is not None and r["finish_s"] is not None]
    rows.sort(key=lambda r: r["arrival_s"])
    return np.array([(r["finish_s"] - r["dispatch_s"]) * 1e3 for r in rows])


@torch.inference_mode()
def direct_latency_ms(net, cfg, x: torch.Tensor, calls: int) -> np.ndarray:  # noqa: ANN001
    out = []
    net(x, cfg)
    for _ in range(calls):
        t = time.perf_counter()
        torch.softmax(net(x, cfg), dim=1).numpy()
        out.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.005)
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--light-calls", type=int, default=300, help="light-load calls in all (split over --rounds)")
    p.add_argument("--rounds", type=int, default=5, help="alternating server / in-process blocks at light load")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_overhead.json")
    args = p.parse_args(argv)
    from supernet.checkpoint import load_checkpoint

    records = Path(tempfile.mkdtemp()) / "records.jsonl"
    srv = Server(ServeConfig(port=0, metrics_port=None, zoo_path=args.zoo, checkpoint_path=args.checkpoint,
                             quiet=True, records_path=records,
                             engine=EngineConfig(default_slo_ms=10_000.0, queue_capacity=4096))).start()
    zoo = srv.zoo
    url = f"127.0.0.1:{srv.port}"
    space = zoo.space
    images = np.random.default_rng(0).standard_normal((64, space.in_channels, space.image_size,
                                                       space.image_size)).astype(np.float32)
    top = max(zoo.entries, key=lambda e: e.accuracy)
    net, _ = load_checkpoint(args.checkpoint)  # the in-process side: its own copy, same weights
    per_round = max(1, args.light_calls // args.rounds)
    light, direct, empty = [], [], []
    try:
        spec = ReplaySpec(url=url, slo_ms=10_000.0)
        sat = in_subprocess(saturate, spec, args.concurrency, args.duration_s, images[:1])
        # One client process for every light-load block (spawned once: its start-up is not measured).
        with mp.get_context("spawn").Pool(1) as client:
            empty.append(client.apply(empty_rpc_ms, (url, per_round)))
            for _ in range(args.rounds):
                light.append(client.apply(sequential, (replace(spec, min_accuracy=top.accuracy), per_round,
                                                       images[:1])))
                direct.append(direct_latency_ms(net, top.config, torch.from_numpy(images[:1]), per_round))
    finally:
        srv.stop()
    light, direct, empty = np.concatenate(light), np.concatenate(direct), np.concatenate(empty)
    served = service_ms(records)[-len(light):]  # the light-load calls ran last (records are flushed on stop)
    paired = light - served if len(served) == len(light) else np.array([np.nan])
    mix = batch_mix(records)[:-len(light)]  # the light-load calls ran last, one batch of one each
    served_images = sum(b for _, b in mix)
    torch.set_num_threads(1)
    sample = torch.from_numpy(np.resize(images, (zoo.batch_sizes[-1], *images.shape[1:])))
    raw_s = run_in_process(net, zoo, mix, sample)
    raw_qps = served_images / raw_s
    headline = {
        "server_throughput_qps": round(sat["throughput_qps"], 1),
        "in_process_throughput_qps": round(raw_qps, 1),
        "throughput_ratio": round(sat["throughput_qps"] / raw_qps, 3),
        "mean_batch_size_at_saturation": round(served_images / max(1, len(mix)), 2),
        "light_load_server_p50_ms": round(float(np.median(light)), 3),
        "light_load_in_process_p50_ms": round(float(np.median(direct)), 3),
        "added_median_latency_ms": round(float(np.median(light) - np.median(direct)), 3),
        "added_median_latency_paired_ms": round(float(np.median(paired)), 3),
        "empty_rpc_round_trip_p50_ms": round(float(np.median(empty)), 3),
    }
    result = {
        "command": "nice python benchmarks/serving_overhead.py" + (" " + " ".join(argv) if argv else
                                                                   (" " + " ".join(sys.argv[1:]) if sys.argv[1:]
                                                                    else "")),
        "zoo": str(args.zoo), "host_load_avg_1min": os.getloadavg()[0],
        "setup": {"workers": "1 embedded thread, 1 torch thread", "policy": "slackfit",
                  "concurrency": args.concurrency, "duration_s": args.duration_s, "light_calls": len(light),
                  "rounds": args.rounds},
        "headline": headline,
        "saturation": sat,
        "targets": {"throughput_ratio_min": 0.85, "added_median_latency_ms_max": 1.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"saturation ({args.concurrency} in flight, {args.duration_s:g} s): server {headline['server_throughput_qps']}"
          f" img/s vs in-process {headline['in_process_throughput_qps']} img/s on the same subnet/batch mix "
          f"-> {headline['throughput_ratio'] * 100:.1f}% (target >= 85%)")
    print(f"light load ({args.light_calls} sequential calls, subnet {top.subnet_id}): server p50 "
          f"{headline['light_load_server_p50_ms']} ms vs in-process {headline['light_load_in_process_p50_ms']} ms "
          f"-> added {headline['added_median_latency_ms']} ms (target < 1 ms)")
    print(f"  per call, round trip minus the server's dispatch-to-result time: {headline['added_median_latency_paired_ms']}"
          f" ms; of which an empty RPC (ServerLive) round trip is {headline['empty_rpc_round_trip_p50_ms']} ms")
    print(f"load average during the run: {result['host_load_avg_1min']:.1f} on {os.cpu_count()} cores; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
