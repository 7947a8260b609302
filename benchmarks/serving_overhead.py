"""What the server costs over running the model directly, measured side by side in one run.

1. Throughput at saturation: a client process keeps `--concurrency` single-image calls in flight against the real
   gRPC server (one embedded worker, SlackFit) for `--duration-s`, in `--sat-rounds` blocks; after each block the
   server's per-request records give the exact sequence of (subnet, batch size) it ran, and that sequence runs
   in-process, `net(x, subnet)` + softmax, no server. Ratio = server images/s / in-process images/s over all blocks
   (target >= 85%); each block's ratio is kept too.
2. Added latency at light load: one call at a time from a client process, every request pinned to the most accurate
   subnet (min_accuracy hint), against the in-process batch-1 forward (+ softmax) of that subnet on the same input.
   The two alternate in `--rounds` blocks (server block, then in-process block, ...) so that load from other
   processes on this shared host hits both alike. Added median = client p50 - in-process p50 (target < 1 ms).
   Also reported, per call: client round trip minus the server's own dispatch-to-result time for that call (from its
   records), i.e. what gRPC, decoding, queueing and the hand-offs add; and an empty RPC (ServerLive) round trip.
3. Where the added time goes, in the same rounds: (a) the gRPC floor: the same client and request against a grpc.aio
   servicer that answers ModelInfer at once with a canned answer of the real size (what any Python gRPC server pays
   here before running any code of its own); (b) our code run cold on one thread, no gRPC and no threads: decode the
   request, engine.submit (EDF queue + SlackFit), the forward, on_result, encode the answer, after the same idle gap.
   Added = floor + (our code, cold) + the rest (thread hand-offs and the GIL).
4. The same light load back to back: one call in flight, the next sent as soon as the answer is in (what Triton's
   perf_analyzer measures at concurrency 1), against the in-process forward run back to back, and the floor likewise.
   On a virtual machine whose idle vCPUs are descheduled, the 5 ms gap of (2) makes every step after it run cold
   (an empty RPC: 0.75 ms back to back, 1.8 ms after 5 ms idle, on a nested-virtualised host); (4) shows the cost
   without that penalty, (2) with it.
5. The HTTP/REST door (FastAPI on uvicorn, KServe v2 with Triton's binary tensor extension, as tritonclient.http
   sends it) in the same runs: after each gRPC saturation block an HTTP one (httpx, `--concurrency` keep-alive
   connections) with its own in-process replay, and in each light-load round an HTTP block gapped and back to back
   (http.client on one keep-alive connection, prebuilt body). `http_minus_grpc_median_latency_ms` is what the HTTP
   door costs over the gRPC door at light load.

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
from tqdm import tqdm

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


class _FloorServer:
    """A grpc.aio OIP servicer on the real server's event loop answering every ModelInfer at once with `answer` (a
    real answer's bytes): the protocol's cost with none of the server's own code on the path."""

    def __init__(self, srv: Server, answer: bytes) -> None:
        import asyncio

        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc

        from superserve.server.service import InferenceService

        canned = pb.ModelInferResponse.FromString(answer)

        class Floor(InferenceService):
            async def ModelInfer(self, request, context):  # noqa: ANN001, ANN202, N802
                return canned

        service = Floor(srv.service.spec, srv.engine, None, preload_decoder=False)

        async def start() -> tuple[object, int]:
            server = grpc.aio.server()
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self._loop = srv._loop
        self._server, self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=30)
        self._service = service

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(timeout=30)
        self._service.close()


def answer_bytes(url: str, request_bytes: bytes) -> bytes:
    """The server's real answer to the light-load request, serialised (the floor server replays it)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(pb.ModelInferRequest.FromString(request_bytes)).SerializeToString()


class _InlinePool:
    """One worker slot whose batches run on the submitting thread: the engine without any thread hand-off."""

    size = 1

    def __init__(self, net, configs) -> None:  # noqa: ANN001
        self.net, self.configs, self.engine = net, configs, None

    def submit(self, worker_id: int, batch) -> None:  # noqa: ANN001
        from superserve.server.workers import run_batch

        self.engine.on_result(run_batch(self.net, self.configs, batch.batch_id, batch.subnet_id, batch.inputs,
                                        worker_id))


def pipeline_ms(net, zoo, spec, policy_factory, request_bytes: bytes, calls: int) -> np.ndarray:  # noqa: ANN001
    """Our code for one call, on one thread, after the same idle gap as every light-load call: parse and decode the
    request, engine.submit (EDF queue, policy), the forward + softmax, on_result, build and serialise the answer."""
    from tritonclient.grpc import service_pb2 as pb

    from superserve.server.codec import decode_request
    from superserve.server.engine import Engine, EngineConfig
    from superserve.server.service import build_response

    pool = _InlinePool(net, {e.subnet_id: e.config for e in zoo.entries})
    engine = Engine(zoo, policy_factory, EngineConfig(default_slo_ms=10_000.0, correction_interval_s=None))
    pool.engine = engine
    engine.start(pool)
    results: list = []
    out = []
    for k in range(calls + 1):
        t = time.perf_counter()
        request = pb.ModelInferRequest.FromString(request_bytes)
        decoded = decode_request(request, spec)
        engine.submit(decoded.images, decoded.hints.slo_ms, decoded.hints.min_accuracy, results.append)
        build_response(spec, request.id, decoded.outputs, results.pop()).SerializeToString()
        if k:  # the first call warms up
            out.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.005)
    return np.array(out)


def _light_request(image: np.ndarray, min_accuracy: float) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="superserve")
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(image.shape))
    request.raw_input_contents.append(image.astype(np.float32).tobytes())
    request.parameters["min_accuracy"].double_param = min_accuracy
    return request.SerializeToString()


def service_ms(records_path: Path) -> np.ndarray:
    """Dispatch-to-result time of every served request, in arrival order (ms)."""
    rows = [json.loads(line) for line in records_path.read_text().splitlines()]
    rows = [r for r in rows if r["dispatch_s"] is not None and r["finish_s"] is not None]
    rows.sort(key=lambda r: r["arrival_s"])
    return np.array([(r["finish_s"] - r["dispatch_s"]) * 1e3 for r in rows])


@torch.inference_mode()
def direct_latency_ms(net, cfg, x: torch.Tensor, calls: int, gap_s: float = 0.005) -> np.ndarray:  # noqa: ANN001
    out = []
    net(x, cfg)
    for _ in range(calls):
        t = time.perf_counter()
        torch.softmax(net(x, cfg), dim=1).numpy()
        out.append((time.perf_counter() - t) * 1e3)
        if gap_s > 0:
            time.sleep(gap_s)
    return np.array(out)


def http_body(image: np.ndarray, min_accuracy: float | None, slo_ms: float) -> tuple[bytes, int]:
    """An HTTP/REST inference body as tritonclient.http sends it (binary tensor extension in and out) and its JSON
    header length."""
    params: dict = {"slo_ms": slo_ms, "binary_data_output": True}
    if min_accuracy is not None:
        params["min_accuracy"] = min_accuracy
    raw = image.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": list(image.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": params}).encode()
    return header + raw, len(header)


def http_sequential(port: int, calls: int, image: np.ndarray, min_accuracy: float, gap_s: float = 0.005
                    ) -> np.ndarray:
    """`loadtest.replayer.sequential` for the HTTP door: one call at a time on one keep-alive connection with a prebuilt
    body (http.client: the least client code in the measured path, as the gRPC side uses a bare stub)."""
    import http.client

    body, header_length = http_body(image, min_accuracy, 10_000.0)
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = np.empty(calls)
    for k in range(calls + 1):
        t = time.perf_counter()
        conn.request("POST", "/v2/models/superserve/infer", body, headers)
        response = conn.getresponse()
        response_body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response_body[:200]!r}")
        if k:  # the first call opens the connection
            out[k - 1] = (time.perf_counter() - t) * 1e3
        if gap_s > 0:
            time.sleep(gap_s)
    conn.close()
    return out


def http_saturate(port: int, concurrency: int, duration_s: float, image: np.ndarray) -> dict:
    """`loadtest.replayer.saturate` for the HTTP door: `concurrency` calls always outstanding (httpx, one keep-alive
    connection each) for `duration_s`."""
    import asyncio

    import httpx

    body, header_length = http_body(image, None, 10_000.0)
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}

    async def run() -> dict:
        counts = {"calls": 0, "ok": 0, "errors": 0}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
            start = time.perf_counter()
            end = start + duration_s

            async def loop() -> None:
                while time.perf_counter() < end:
                    counts["calls"] += 1
                    r = await client.post("/v2/models/superserve/infer", content=body, headers=headers)
                    counts["ok" if r.status_code == 200 else "errors"] += 1
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            counts["duration_s"] = time.perf_counter() - start
        counts["throughput_qps"] = counts["ok"] / counts["duration_s"]
        return counts
    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--sat-rounds", type=int, default=4,
                   help="saturation blocks (each followed by its in-process replay) sharing --duration-s")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--light-calls", type=int, default=300, help="light-load calls in all (split over --rounds)")
    p.add_argument("--rounds", type=int, default=5, help="alternating server / in-process blocks at light load")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_overhead.json")
    args = p.parse_args(argv)
    from supernet.checkpoint import load_checkpoint

    records = Path(tempfile.mkdtemp()) / "records.jsonl"
    srv = Server(ServeConfig(port=0, http_port=0, metrics_port=None, zoo_path=args.zoo, checkpoint_path=args.checkpoint,
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
    light, direct, empty, floor, ours = [], [], [], [], []
    b2b, b2b_direct, b2b_floor = [], [], []  # back to back: the next call as soon as the answer is in
    http_light, http_b2b = [], []  # the HTTP door, same rounds
    floor_srv = None
    try:
        spec = ReplaySpec(url=url, slo_ms=10_000.0)
        # Saturation in --sat-rounds blocks, each followed by the in-process replay of exactly the batches the server
        # ran in it, so that drift in this shared host's speed hits both sides alike.
        torch.set_num_threads(1)
        sample = torch.from_numpy(np.resize(images, (zoo.batch_sizes[-1], *images.shape[1:])))
        sats, raw_s, mix, seen = [], 0.0, [], 0
        http_sats, http_raw_s, http_mix = [], 0.0, []
        for _ in tqdm(range(args.sat_rounds), desc="saturation rounds (gRPC, then HTTP)", unit="round"):
            sats.append(in_subprocess(saturate, spec, args.concurrency, args.duration_s / args.sat_rounds,
                                      images[:1]))
            time.sleep(0.5)  # the server writes its records every 0.1 s
            ran = batch_mix(records)[seen:]
            seen += len(ran)
            mix += ran
            t_raw = run_in_process(net, zoo, ran, sample)
            raw_s += t_raw
            sats[-1]["ratio"] = sats[-1]["ok"] / sats[-1]["duration_s"] / (sum(b for _, b in ran) / t_raw)
            # The same block through the HTTP door, and the in-process replay of the batches it ran.
            http_sats.append(in_subprocess(http_saturate, srv.http_port, args.concurrency,
                                           args.duration_s / args.sat_rounds, images[:1]))
            time.sleep(0.5)
            ran = batch_mix(records)[seen:]
            seen += len(ran)
            http_mix += ran
            t_raw = run_in_process(net, zoo, ran, sample)
            http_raw_s += t_raw
            http_sats[-1]["ratio"] = (http_sats[-1]["ok"] / http_sats[-1]["duration_s"]
                                      / (sum(b for _, b in ran) / t_raw))
        light_spec = replace(spec, min_accuracy=top.accuracy)
        request_bytes = _light_request(images[:1], top.accuracy)
        floor_srv = _FloorServer(srv, answer_bytes(url, request_bytes))
        floor_spec = replace(light_spec, url=f"127.0.0.1:{floor_srv.port}")
        policy = srv.engine._policy_factory
        # One client process for every light-load block (spawned once: its start-up is not measured).
        with mp.get_context("spawn").Pool(1) as client:
            empty.append(client.apply(empty_rpc_ms, (url, per_round)))
            for _ in tqdm(range(args.rounds), desc="light-load rounds", unit="round"):
                light.append(client.apply(sequential, (light_spec, per_round, images[:1])))
                direct.append(direct_latency_ms(net, top.config, torch.from_numpy(images[:1]), per_round))
                floor.append(client.apply(sequential, (floor_spec, per_round, images[:1])))
                ours.append(pipeline_ms(net, zoo, srv.service.spec, policy, request_bytes, per_round))
                b2b.append(client.apply(sequential, (light_spec, per_round, images[:1], 0.0)))
                b2b_direct.append(direct_latency_ms(net, top.config, torch.from_numpy(images[:1]), per_round, 0.0))
                b2b_floor.append(client.apply(sequential, (floor_spec, per_round, images[:1], 0.0)))
                http_light.append(client.apply(http_sequential, (srv.http_port, per_round, images[:1],
                                                                 top.accuracy)))
                http_b2b.append(client.apply(http_sequential, (srv.http_port, per_round, images[:1], top.accuracy,
                                                               0.0)))
    finally:
        if floor_srv is not None:
            floor_srv.close()
        srv.stop()
    # The server's records of the light-load calls, in the order they ran (flushed on stop): per round, the gapped
    # block then the back-to-back block.
    # Per round: gRPC gapped, gRPC back to back, HTTP gapped (+1 connection-opening call), HTTP back to back (+1).
    served = service_ms(records)[-(len(light) * (4 * per_round + 2)):]
    rounds = np.split(served, len(light)) if len(served) == len(light) * (4 * per_round + 2) else None
    paired = (np.concatenate([g - r[:per_round] for g, r in zip(light, rounds)]) if rounds
              else np.array([np.nan]))
    b2b_paired = (np.concatenate([g - r[per_round:2 * per_round] for g, r in zip(b2b, rounds)]) if rounds
                  else np.array([np.nan]))
    http_paired = (np.concatenate([g - r[2 * per_round + 1:3 * per_round + 1] for g, r in zip(http_light, rounds)])
                   if rounds else np.array([np.nan]))
    light, direct, empty = np.concatenate(light), np.concatenate(direct), np.concatenate(empty)
    floor, ours = np.concatenate(floor), np.concatenate(ours)
    b2b, b2b_direct, b2b_floor = np.concatenate(b2b), np.concatenate(b2b_direct), np.concatenate(b2b_floor)
    http_light, http_b2b = np.concatenate(http_light), np.concatenate(http_b2b)
    http_sat = {"calls": sum(r["calls"] for r in http_sats), "ok": sum(r["ok"] for r in http_sats),
                "errors": sum(r["errors"] for r in http_sats), "duration_s": sum(r["duration_s"] for r in http_sats),
                "rounds": http_sats}
    http_sat["throughput_qps"] = http_sat["ok"] / http_sat["duration_s"]
    http_raw_qps = sum(b for _, b in http_mix) / http_raw_s
    served_images = sum(b for _, b in mix)
    raw_qps = served_images / raw_s
    sat = {"calls": sum(r["calls"] for r in sats), "ok": sum(r["ok"] for r in sats),
           "errors": sum(r["errors"] for r in sats), "duration_s": sum(r["duration_s"] for r in sats),
           "rounds": sats}
    sat["throughput_qps"] = sat["ok"] / sat["duration_s"]
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
        "grpc_floor_round_trip_p50_ms": round(float(np.median(floor)), 3),
        "added_above_grpc_floor_ms": round(float(np.median(light) - np.median(direct) - np.median(floor)), 3),
        "our_code_cold_one_thread_ms": round(float(np.median(ours) - np.median(direct)), 3),
        "hand_offs_and_gil_ms": round(float(np.median(light) - np.median(floor) - np.median(ours)), 3),
        "back_to_back_server_p50_ms": round(float(np.median(b2b)), 3),
        "back_to_back_in_process_p50_ms": round(float(np.median(b2b_direct)), 3),
        "added_median_latency_back_to_back_ms": round(float(np.median(b2b) - np.median(b2b_direct)), 3),
        "added_median_latency_back_to_back_paired_ms": round(float(np.median(b2b_paired)), 3),
        "grpc_floor_back_to_back_p50_ms": round(float(np.median(b2b_floor)), 3),
        # The HTTP/REST door (FastAPI on uvicorn, binary tensor extension), in the same rounds and blocks.
        "http_server_throughput_qps": round(http_sat["throughput_qps"], 1),
        "http_throughput_ratio": round(http_sat["throughput_qps"] / http_raw_qps, 3),
        "http_light_load_server_p50_ms": round(float(np.median(http_light)), 3),
        "http_added_median_latency_ms": round(float(np.median(http_light) - np.median(direct)), 3),
        "http_added_median_latency_paired_ms": round(float(np.median(http_paired)), 3),
        "http_minus_grpc_median_latency_ms": round(float(np.median(http_light) - np.median(light)), 3),
        "http_back_to_back_server_p50_ms": round(float(np.median(http_b2b)), 3),
        "http_added_median_latency_back_to_back_ms": round(float(np.median(http_b2b) - np.median(b2b_direct)), 3),
    }
    result = {
        "command": "nice python benchmarks/serving_overhead.py" + (" " + " ".join(argv) if argv else
                                                                   (" " + " ".join(sys.argv[1:]) if sys.argv[1:]
                                                                    else "")),
        "zoo": str(args.zoo), "host_load_avg_1min": os.getloadavg()[0],
        "setup": {"workers": "1 embedded thread, 1 torch thread", "policy": "slackfit",
                  "concurrency": args.concurrency, "duration_s": args.duration_s,
                  "sat_rounds": args.sat_rounds, "light_calls": len(light),
                  "rounds": args.rounds},
        "headline": headline,
        "saturation": sat,
        "http_saturation": http_sat,
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
    print(f"  where it goes: gRPC floor (canned answer, same client) {headline['grpc_floor_round_trip_p50_ms']} ms, our "
          f"code cold on one thread {headline['our_code_cold_one_thread_ms']} ms, thread hand-offs and GIL "
          f"{headline['hand_offs_and_gil_ms']} ms; added above the floor {headline['added_above_grpc_floor_ms']} ms")
    print(f"back to back (one call in flight, the next sent as soon as the answer is in, as perf_analyzer's concurrency "
          f"1): server p50 {headline['back_to_back_server_p50_ms']} ms vs in-process "
          f"{headline['back_to_back_in_process_p50_ms']} ms -> added "
          f"{headline['added_median_latency_back_to_back_ms']} ms (paired "
          f"{headline['added_median_latency_back_to_back_paired_ms']} ms; gRPC floor "
          f"{headline['grpc_floor_back_to_back_p50_ms']} ms)")
    print(f"HTTP/REST door: saturation {headline['http_server_throughput_qps']} img/s -> "
          f"{headline['http_throughput_ratio'] * 100:.1f}% of in-process (gRPC {headline['throughput_ratio'] * 100:.1f}%);"
          f" light load p50 {headline['http_light_load_server_p50_ms']} ms -> added "
          f"{headline['http_added_median_latency_ms']} ms (gRPC {headline['added_median_latency_ms']} ms; HTTP - gRPC "
          f"{headline['http_minus_grpc_median_latency_ms']} ms); back to back added "
          f"{headline['http_added_median_latency_back_to_back_ms']} ms")
    print(f"load average during the run: {result['host_load_avg_1min']:.1f} on {os.cpu_count()} cores; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
