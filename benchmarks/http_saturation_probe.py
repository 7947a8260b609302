"""Where the HTTP door's saturation shortfall goes: gRPC and HTTP blocks alternating against one in-process server
(one embedded worker, SlackFit, the shipped zoo with its table as given), the same client processes for both
(`serving_overhead.Clients`), and per block what the server did: images/s, the server process's CPU seconds per second
and per call (its worker included: clients run in their own processes), how much of the wall time the worker spent in
forwards (nv_inference_compute_infer_duration_us), and the EDF queue's depth sampled every 50 ms. Each round runs the
pair once per GIL switch interval in `--switch-intervals-ms`.

    nice python benchmarks/http_saturation_probe.py [--rounds 3] [--block-s 8] [--switch-intervals-ms 5,0.5]
Writes benchmarks/results/http_saturation_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import serving_overhead as so  # noqa: E402
from _common import nice_prefix  # noqa: E402

from loadtest.replayer import ReplaySpec, saturate  # noqa: E402
from superserve.server.app import ServeConfig, Server  # noqa: E402
from superserve.server.engine import EngineConfig  # noqa: E402


def block(srv: Server, clients: so.Clients, door: str, concurrency: int, block_s: float, images: np.ndarray) -> dict:
    reg = srv.metrics.registry
    mv = {"model": srv.service.spec.name, "version": srv.service.spec.version}

    def busy_us() -> float:
        return reg.get_sample_value("nv_inference_compute_infer_duration_us_total", mv) or 0.0
    depths: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            depths.append(reg.get_sample_value("superserve_queue_depth") or 0.0)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0, busy0 = time.process_time(), busy_us()
    if door == "grpc":
        r = clients.saturate(saturate, concurrency, block_s, ReplaySpec(url=f"127.0.0.1:{srv.port}", slo_ms=10_000.0),
                             images)
    else:
        r = clients.saturate(so.http_saturate, concurrency, block_s, srv.http_port, images)
    cpu, busy = time.process_time() - cpu0, busy_us() - busy0
    stop.set()
    sampler.join()
    d = np.array(depths or [0.0])
    return {"door": door, "images_per_s": round(r["throughput_qps"], 2), "errors": r["errors"],
            "server_cpu_s_per_s": round(cpu / r["duration_s"], 3), "server_cpu_ms_per_call": round(cpu / r["ok"] * 1e3, 2),
            "worker_busy_fraction": round(busy / 1e6 / r["duration_s"], 3), "queue_depth_mean": round(float(d.mean()), 1),
            "queue_empty_share": round(float(np.mean(d == 0)), 3), "client_cpu_per_proc": r["client_cpu_per_proc"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3,
                   help="gRPC/HTTP block pairs per switch interval (default %(default)s)")
    p.add_argument("--block-s", type=float, default=8.0, help="seconds per block (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="calls in flight, over all client processes (default %(default)s)")
    p.add_argument("--client-procs", type=int, default=4, help="client processes (default %(default)s)")
    p.add_argument("--switch-intervals-ms", default="5,0.5",
                   help="GIL switch intervals to try, ms, comma-separated (default %(default)s)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "http_saturation_probe.json",
                   help="result JSON (default %(default)s)")
    args = p.parse_args(argv)
    intervals = [float(v) for v in args.switch_intervals_ms.split(",")]
    load_at_start = os.getloadavg()[0]
    clients = so.Clients(args.client_procs)
    srv = Server(ServeConfig(port=0, http_port=0, metrics_port=None, quiet=True, reprofile="never",
                             engine=EngineConfig(default_slo_ms=10_000.0, queue_capacity=4096))).start()
    images = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    blocks = []
    try:
        for _ in range(args.rounds):
            for ms in intervals:
                sys.setswitchinterval(ms / 1e3)
                for door in ("grpc", "http"):
                    blocks.append({"switch_interval_ms": ms, **block(srv, clients, door, args.concurrency,
                                                                      args.block_s, images)})
                    print(blocks[-1], flush=True)
    finally:
        clients.close()
        srv.stop()

    def med(door: str, key: str) -> float:
        return round(float(np.median([b[key] for b in blocks if b["door"] == door])), 3)
    headline = {f"{door}_{key}_median": med(door, key) for door in ("grpc", "http")
                for key in ("images_per_s", "server_cpu_s_per_s", "server_cpu_ms_per_call", "worker_busy_fraction",
                            "queue_depth_mean")}
    headline["http_over_grpc_images_per_s"] = round(headline["http_images_per_s_median"]
                                                    / headline["grpc_images_per_s_median"], 3)
    result = {"command": nice_prefix() + "python benchmarks/http_saturation_probe.py" + "".join(" " + a for a in
                                                                                    (argv or sys.argv[1:])),
              "host_load_avg_1min": os.getloadavg()[0], "host_load_avg_1min_at_start": load_at_start,
              "host_cpus": os.cpu_count(), "headline": headline, "blocks": blocks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
