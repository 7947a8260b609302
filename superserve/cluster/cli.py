"""`superserve worker --backend redis://HOST:PORT`: a worker process of the Redis cluster, on any host.

It waits for a front end (`superserve serve --backend redis://...`) to publish the zoo and policy, loads its own copy
of the supernet, fits the published latency table to its own device (`--reprofile auto`: a spot check, then the table
scaled by the measured factor when it was profiled elsewhere), registers with a heartbeat, and serves until
SIGTERM/SIGINT (finishing the batch in hand).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from superserve.defaults import DEFAULT_CHECKPOINT
from superserve.profile_correction import CORRECTION_INTERVAL_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", required=True, help="Redis URL, redis://HOST:PORT[/DB]")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="supernet checkpoint (the one the front ends serve; default: the shipped one)")
    parser.add_argument("--namespace", default="superserve",
                        help="key prefix in Redis; front ends and workers of one cluster share it (default: "
                             "%(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu",
                        help="where this worker runs the model: cpu, cuda or cuda:N (its own copy of the weights "
                             "and its own CUDA context there; without CUDA it is an error at start; default: "
                             "%(default)s)")
    parser.add_argument("--heartbeat-ttl-s", type=int, default=3,
                        help="a worker silent this long is declared dead and its requests re-queued "
                             "(default: %(default)s)")
    parser.add_argument("--no-correction", action="store_true",
                        help="do not correct the latency table online from this worker's execution times")
    parser.add_argument("--reprofile", choices=("auto", "never"), default="auto",
                        help="auto: at start, spot-check the latency table the front end published on this worker's "
                             "device (every subnet at batch 1) and, when it was profiled on other hardware or runs "
                             "at another speed here, scale it by the measured factor before taking work (online "
                             "correction refines it); never: take the published table as it is (default: "
                             "%(default)s)")


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys

    from superserve.cluster.redis_queue import BackendError, parse_backend

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        url = parse_backend(args.backend)
    except BackendError as exc:
        print(f"superserve worker: {exc}", file=sys.stderr)
        return 2
    if not Path(args.checkpoint).is_file():
        print(f"superserve worker: checkpoint {args.checkpoint} does not exist (pass --checkpoint)", file=sys.stderr)
        return 2
    from superserve.profiler import resolve_device

    try:
        resolve_device(args.device)  # before waiting for a front end: a wrong --device must not wait to be told
    except ValueError as exc:
        print(f"superserve worker: {exc}", file=sys.stderr)
        return 2
    if args.threads < 1 or args.heartbeat_ttl_s < 1:
        print("superserve worker: --threads and --heartbeat-ttl-s must be >= 1", file=sys.stderr)
        return 2
    from superserve.cluster.worker import ClusterWorker, WorkerConfig

    config = WorkerConfig(Path(args.checkpoint), args.namespace, args.threads, args.heartbeat_ttl_s,
                          correction_interval_s=None if args.no_correction else CORRECTION_INTERVAL_S, device=args.device,
                          reprofile=args.reprofile)
    try:
        worker = ClusterWorker(url, config)
    except BackendError as exc:
        print(f"superserve worker: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    try:
        worker.load(worker.wait_for_config(say=lambda s: print(s, file=sys.stderr, flush=True)))
    except InterruptedError:
        return 0
    except (ValueError, OSError) as exc:
        print(f"superserve worker: {exc}", file=sys.stderr)
        return 2
    worker.register()
    print(f"superserve worker {worker.worker_id}: serving {len(worker.zoo.entries)} subnets (policy "
          f"{worker.published.policy}) from {url.display} on {worker.host.device}", flush=True)
    worker.serve()
    print(f"superserve worker {worker.worker_id}: stopped after {worker.batches} batches", file=sys.stderr,
          flush=True)
    return 0
