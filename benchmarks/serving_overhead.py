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
   sends it) in the same runs: after each gRPC saturation block an HTTP one (httpx keep-alive connections) with its
   own in-process replay, and in each light-load round an HTTP block gapped and back to back (http.client on one
   keep-alive connection, prebuilt body). `http_minus_grpc_median_latency_ms` is what the HTTP door costs over the
   gRPC door at light load.
6. NVIDIA Triton side by side (issue 19): PyTriton's bundled Triton server (`benchmarks/peers_triton.py`, run by the
   Python of its own venv, `--triton-python`) serving the most accurate subnet exported (`supernet.export.export`)
   behind Triton's dynamic batcher (max batch = the zoo's largest, queue delay `--triton-queue-delay-us`, 0 = Triton's
   default), one torch thread like our worker, neither server pinned to CPUs (the client processes are not either).
   In every saturation round a Triton block with the same client, and a superserve block with every call pinned to
   the same subnet (min_accuracy hint) for the like-for-like throughput; in every light-load round Triton gapped and
   back to back with the same client. Triton's added latency is its client p50 minus the exported subnet's
   in-process p50 (what Triton runs); `added_latency_over_triton_ratio` = ours / Triton's (target < 1). Triton's
   in-process reference for throughput runs the exported subnet at Triton's mean batch size (its statistics API).

"In-process" (the direct forwards, the replays of the batches a server ran, our code run cold) runs in a process of
its own with 1 torch thread, never beside the server's threads: in the benchmark's own process the same forwards ran up
to 2x slower on this loaded host, which made the added latencies negative.

Every saturation block is driven by `--client-procs` client processes (spawned once, before anything is timed)
sharing `--concurrency` calls in flight, the same for gRPC, HTTP and Triton: one Python client process tops out near
100 HTTP calls/s here, which measured the client, not the server. Each block records its client processes' CPU use
(`client_cpu_per_proc`, CPU seconds per second: near 1.0 means that client was the bottleneck).

    nice python benchmarks/serving_overhead.py            # shipped zoo; Triton if its venv is found
    nice python benchmarks/serving_overhead.py --zoo Z --checkpoint C [--triton-python PY | --no-triton]
Writes benchmarks/results/serving_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
# Where `benchmarks/peers.py --venv-dir /work/peers-venv` (or by hand: python3.11 -m venv + pip install torch
# nvidia-pytriton numpy) makes the Triton venv; PyTriton is never installed into the project's venv.
DEFAULT_TRITON_PYTHON = Path("/work/peers-venv/triton/bin/python")

import multiprocessing as mp  # noqa: E402

from loadtest.replayer import ReplaySpec, saturate, sequential  # noqa: E402
from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO  # noqa: E402
from superserve.server.app import ServeConfig, Server  # noqa: E402
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
def run_in_process(net, zoo, mix: list[tuple[str, int]], sample: torch.Tensor) -> float:
    """Seconds to run `mix` directly (forward + softmax, the worker's work)."""
    configs = {e.subnet_id: e.config for e in zoo.entries}
    for cfg in configs.values():
        net(sample[:1], cfg)
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
            async def ModelInfer(self, request, context):
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

    def __init__(self, net, configs) -> None:
        self.net, self.configs, self.engine = net, configs, None

    def submit(self, worker_id: int, batch) -> None:
        from superserve.server.workers import run_batch

        self.engine.on_result(run_batch(self.net, self.configs, batch.batch_id, batch.subnet_id, batch.inputs,
                                        worker_id))


def pipeline_ms(net, zoo, spec, policy_factory, request_bytes: bytes, calls: int) -> np.ndarray:
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
def direct_latency_ms(net, cfg, x: torch.Tensor, calls: int, gap_s: float = 0.005) -> np.ndarray:
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


def _client_block(fn, *args) -> dict:
    """`fn(*args)` (a saturation client) in a client process, with that process's CPU seconds over the block."""
    cpu0 = time.process_time()
    out = fn(*args)
    out["client_cpu_s"] = time.process_time() - cpu0
    return out


def _ready(_k: int) -> bool:
    return True


class Clients:
    """`procs` client processes, spawned once (their start-up and imports are not measured), that drive each
    saturation block together: `concurrency` calls in flight split evenly over them."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.pool = mp.get_context("spawn").Pool(procs)
        self.pool.map(_ready, range(procs), chunksize=1)

    def saturate(self, fn, concurrency: int, duration_s: float, *args) -> dict:
        """`fn(*args, concurrency / procs, duration_s, ...)` in every process at once; the blocks' sums."""
        per_proc = math.ceil(concurrency / self.procs)
        jobs = [self.pool.apply_async(_client_block, (fn, *args[:1], per_proc, duration_s, *args[1:]))
                for _ in range(self.procs)]
        parts = [j.get() for j in jobs]
        out = {k: sum(q[k] for q in parts) for k in ("calls", "ok", "errors")}
        out["duration_s"] = max(q["duration_s"] for q in parts)  # the slowest process's span: conservative
        out["throughput_qps"] = out["ok"] / out["duration_s"]
        out["client_procs"], out["concurrency"] = self.procs, per_proc * self.procs
        out["client_cpu_per_proc"] = [round(q["client_cpu_s"] / q["duration_s"], 2) for q in parts]
        return out

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonPeer:
    """PyTriton's Triton server (`peers_triton.py`, in its own venv) serving one exported subnet as model "subnet"
    over gRPC, started in a session of its own (stopped with its whole process group)."""

    MODEL = "subnet"

    def __init__(self, python: Path, zoo: Path, checkpoint: Path, subnet_id: str, max_batch: int,
                 queue_delay_us: int, log: Path, timeout_s: float = 300.0) -> None:
        ports = [free_port() for _ in range(3)]
        cmd = [str(python), str(HERE / "peers_triton.py"), "--zoo", str(zoo), "--checkpoint", str(checkpoint),
               "--subnet-id", subnet_id, "--model-name", self.MODEL, "--grpc-port", str(ports[0]), "--http-port",
               str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", str(max_batch), "--threads", "1",
               "--queue-delay-us", str(queue_delay_us)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.log, self.url, self.metrics_port = log, f"127.0.0.1:{ports[0]}", ports[2]
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(log.parent),
                                         start_new_session=True)
        t0 = time.perf_counter()
        self.started_after_s = None
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.close()
            raise
        self.started_after_s = time.perf_counter() - t0

    def _wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as tc

        deadline = time.perf_counter() + timeout_s
        client = tc.InferenceServerClient(self.url)
        try:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Triton exited with {self.proc.returncode}: "
                                       + " | ".join(self.log.read_text().splitlines()[-8:]))
                with contextlib.suppress(Exception):  # not listening yet
                    if client.is_model_ready(self.MODEL):
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"Triton not ready after {timeout_s:g} s: " + " | ".join(self.log.read_text().splitlines()[-8:]))

    def metrics(self) -> dict[str, float]:
        """Triton's cumulative per-model counters (nv_inference_*: counts, and durations in us) of model "subnet"
        (PyTriton restricts the statistics extension to its own access token; the metrics endpoint is open)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("nv_inference_") and f'model="{self.MODEL}"' in line:
                found[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
        return found

    def counts(self) -> tuple[int, int]:
        """(images inferred, batches executed) so far."""
        m = self.metrics()
        return int(m["nv_inference_count"]), int(m["nv_inference_exec_count"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)


def compute_per_call_ms(before: dict[str, float], after: dict[str, float]) -> float:
    """Triton's mean model-execution time per call between two metrics snapshots (compute_infer: the Python model's
    execute, the stub round trip included)."""
    calls = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    return (after["nv_inference_compute_infer_duration_us"] - before["nv_inference_compute_infer_duration_us"]) / 1e3 \
        / max(1.0, calls)


@torch.inference_mode()
def run_exported(model, images: int, batch: int, sample: torch.Tensor) -> float:
    """Seconds to run `images` images through the exported subnet in batches of `batch` (forward + softmax)."""
    x = sample[:batch]
    torch.softmax(model(x), dim=1).numpy()
    start = time.perf_counter()
    for _ in range(max(1, round(images / batch))):
        torch.softmax(model(x), dim=1).numpy()
    return time.perf_counter() - start


@torch.inference_mode()
def exported_latency_ms(model, x: torch.Tensor, calls: int, gap_s: float = 0.005) -> np.ndarray:
    """`direct_latency_ms` for the exported subnet (what Triton runs): batch-1 forward + softmax."""
    out = []
    model(x)
    for _ in range(calls):
        t = time.perf_counter()
        torch.softmax(model(x), dim=1).numpy()
        out.append((time.perf_counter() - t) * 1e3)
        if gap_s > 0:
            time.sleep(gap_s)
    return np.array(out)


_D: dict = {}  # the in-process side's state, in its own process (see Direct)


def _direct_init(checkpoint: Path, zoo, spec, images: np.ndarray, top_id: str) -> None:  # noqa: ANN001
    from policies.base import make_policy
    from supernet.checkpoint import load_checkpoint
    from supernet.export import export

    torch.set_num_threads(1)
    net, _ = load_checkpoint(checkpoint)
    top = zoo.entry(top_id)
    overhead_ms = ServeConfig().rpc_overhead_ms  # the server runs with the defaults
    _D.update(net=net, zoo=zoo, spec=spec, top=top, exported=export(net, top.config).eval(),
              sample=torch.from_numpy(np.resize(images, (zoo.batch_sizes[-1], *images.shape[1:]))),
              x1=torch.from_numpy(images[:1]),
              policy=lambda z: make_policy("slackfit", z, overhead_ms=overhead_ms))


def _direct(what: str, *args):  # noqa: ANN002, ANN202
    d = _D
    if what == "mix":  # the batches a server ran: seconds
        return run_in_process(d["net"], d["zoo"], *args, d["sample"])
    if what == "exported_mix":  # (images, batch size): seconds
        return run_exported(d["exported"], *args, d["sample"])
    if what == "light":  # (calls, gap_s): ms per call, the most accurate subnet at batch 1
        return direct_latency_ms(d["net"], d["top"].config, d["x1"], *args)
    if what == "exported_light":
        return exported_latency_ms(d["exported"], d["x1"], *args)
    if what == "pipeline":  # (request bytes, calls)
        return pipeline_ms(d["net"], d["zoo"], d["spec"], d["policy"], *args)
    raise ValueError(what)


class Direct:
    """The in-process side (the model run directly, no server) in a process of its own: in the benchmark's own
    process, beside the idle server's threads, the same forwards ran up to 2x slower on this loaded host (measured
    89-98 ms vs the servers' 32-51 ms for one batch-1 forward), which made the added latency negative."""

    def __init__(self, checkpoint: Path, zoo, spec, images: np.ndarray, top_id: str) -> None:  # noqa: ANN001
        self.pool = mp.get_context("spawn").Pool(1, initializer=_direct_init,
                                                 initargs=(checkpoint, zoo, spec, images, top_id))

    def __call__(self, what: str, *args):  # noqa: ANN002, ANN204
        return self.pool.apply(_direct, (what, *args))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="supernet checkpoint (default: the shipped one)")
    p.add_argument("--duration-s", type=float, default=8.0, help="saturation seconds per system (gRPC, HTTP, ...)")
    p.add_argument("--sat-rounds", type=int, default=4,
                   help="saturation rounds (each: a block per system, each followed by its in-process replay) "
                        "sharing --duration-s")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight at saturation, over all clients")
    p.add_argument("--client-procs", type=int, default=4, help="client processes driving each saturation block")
    p.add_argument("--light-calls", type=int, default=300, help="light-load calls in all (split over --rounds)")
    p.add_argument("--rounds", type=int, default=5, help="alternating server / in-process blocks at light load")
    p.add_argument("--triton-python", type=Path, default=DEFAULT_TRITON_PYTHON,
                   help="python of the venv with nvidia-pytriton (default: %(default)s)")
    p.add_argument("--triton-queue-delay-us", type=int, default=0,
                   help="Triton's dynamic batcher max_queue_delay (default 0, Triton's own default)")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton side-by-side")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_overhead.json",
                   help="result JSON (default %(default)s)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="serving_overhead_"))
    records = work / "records.jsonl"
    with_triton = not args.no_triton
    if with_triton and not args.triton_python.is_file():
        raise SystemExit(f"no Triton venv at {args.triton_python} (make one: python3.11 -m venv DIR; DIR/bin/pip "
                         f"install torch nvidia-pytriton numpy; then --triton-python DIR/bin/python), or --no-triton")
    clients = Clients(args.client_procs)  # spawned before the server: their imports do not load it
    srv = Server(ServeConfig(port=0, http_port=0, metrics_port=None, zoo_path=args.zoo, checkpoint_path=args.checkpoint,
                             quiet=True, records_path=records,
                             engine=EngineConfig(default_slo_ms=10_000.0, queue_capacity=4096))).start()
    zoo = srv.zoo
    url = f"127.0.0.1:{srv.port}"
    space = zoo.space
    images = np.random.default_rng(0).standard_normal((64, space.in_channels, space.image_size,
                                                       space.image_size)).astype(np.float32)
    top = max(zoo.entries, key=lambda e: e.accuracy)
    # The in-process side, in its own process: the supernet (its own copy, same weights) and the exported subnet
    # (what Triton runs).
    direct_run = Direct(args.checkpoint, zoo, srv.service.spec, images, top.subnet_id)
    triton = None
    per_round = max(1, args.light_calls // args.rounds)
    light, direct, empty, floor, ours = [], [], [], [], []
    b2b, b2b_direct, b2b_floor = [], [], []  # back to back: the next call as soon as the answer is in
    http_light, http_b2b = [], []  # the HTTP door, same rounds
    tri_light, tri_b2b, tri_direct, tri_b2b_direct = [], [], [], []  # Triton and the exported subnet in-process
    tri_compute = []  # per gapped Triton block: its mean compute_infer (model execution) per call, from its metrics
    floor_srv = None
    block_s = args.duration_s / args.sat_rounds
    try:
        if with_triton:
            triton = TritonPeer(args.triton_python, args.zoo, args.checkpoint, top.subnet_id, zoo.batch_sizes[-1],
                                args.triton_queue_delay_us, work / "triton.log")
        spec = ReplaySpec(url=url, slo_ms=10_000.0)
        pinned_spec = replace(spec, min_accuracy=top.accuracy)
        triton_spec = (ReplaySpec(url=triton.url, model=TritonPeer.MODEL, slo_ms=10_000.0, send_hints=False)
                       if triton else None)
        # Saturation in --sat-rounds rounds; in each, every system's block is followed by the in-process replay of
        # exactly the batches it ran, so that drift in this shared host's speed hits all sides alike.
        seen = 0
        sat = {"grpc": [], "http": [], "pinned": [], "triton": []}
        raw = {k: [0.0, 0] for k in sat}  # in-process seconds and images of each system's blocks
        mixes = {"grpc": [], "http": [], "pinned": []}

        def replay_server_block(kind: str) -> None:
            nonlocal seen
            time.sleep(0.5)  # the server writes its records every 0.1 s
            ran = batch_mix(records)[seen:]
            seen += len(ran)
            mixes[kind] += ran
            t_raw = direct_run("mix", ran)
            n = sum(b for _, b in ran)
            raw[kind][0] += t_raw
            raw[kind][1] += n
            sat[kind][-1]["ratio"] = sat[kind][-1]["ok"] / sat[kind][-1]["duration_s"] / (n / t_raw)
            sat[kind][-1]["mean_batch"] = n / max(1, len(ran))

        for _ in tqdm(range(args.sat_rounds), desc="saturation rounds (gRPC, HTTP, pinned, Triton)", unit="round"):
            sat["grpc"].append(clients.saturate(saturate, args.concurrency, block_s, spec, images[:1]))
            replay_server_block("grpc")
            sat["http"].append(clients.saturate(http_saturate, args.concurrency, block_s, srv.http_port, images[:1]))
            replay_server_block("http")
            sat["pinned"].append(clients.saturate(saturate, args.concurrency, block_s, pinned_spec, images[:1]))
            replay_server_block("pinned")
            if triton is not None:
                n0, b0 = triton.counts()
                sat["triton"].append(clients.saturate(saturate, args.concurrency, block_s, triton_spec, images[:1]))
                n1, b1 = triton.counts()
                mean_batch = (n1 - n0) / max(1, b1 - b0)
                t_raw = direct_run("exported_mix", n1 - n0, max(1, round(mean_batch)))
                raw["triton"][0] += t_raw
                raw["triton"][1] += n1 - n0
                sat["triton"][-1]["ratio"] = sat["triton"][-1]["ok"] / sat["triton"][-1]["duration_s"] / (
                    (n1 - n0) / t_raw)
                sat["triton"][-1]["mean_batch"] = mean_batch
        light_spec = pinned_spec
        request_bytes = _light_request(images[:1], top.accuracy)
        floor_srv = _FloorServer(srv, answer_bytes(url, request_bytes))
        floor_spec = replace(light_spec, url=f"127.0.0.1:{floor_srv.port}")
        # One client process for every light-load block (spawned once: its start-up is not measured).
        with mp.get_context("spawn").Pool(1) as client:
            empty.append(client.apply(empty_rpc_ms, (url, per_round)))
            for _ in tqdm(range(args.rounds), desc="light-load rounds", unit="round"):
                light.append(client.apply(sequential, (light_spec, per_round, images[:1])))
                direct.append(direct_run("light", per_round))
                floor.append(client.apply(sequential, (floor_spec, per_round, images[:1])))
                ours.append(direct_run("pipeline", request_bytes, per_round))
                b2b.append(client.apply(sequential, (light_spec, per_round, images[:1], 0.0)))
                b2b_direct.append(direct_run("light", per_round, 0.0))
                b2b_floor.append(client.apply(sequential, (floor_spec, per_round, images[:1], 0.0)))
                http_light.append(client.apply(http_sequential, (srv.http_port, per_round, images[:1],
                                                                 top.accuracy)))
                http_b2b.append(client.apply(http_sequential, (srv.http_port, per_round, images[:1], top.accuracy,
                                                               0.0)))
                if triton is not None:
                    before = triton.metrics()
                    tri_light.append(client.apply(sequential, (triton_spec, per_round, images[:1])))
                    tri_compute.append(compute_per_call_ms(before, triton.metrics()))
                    tri_direct.append(direct_run("exported_light", per_round))
                    tri_b2b.append(client.apply(sequential, (triton_spec, per_round, images[:1], 0.0)))
                    tri_b2b_direct.append(direct_run("exported_light", per_round, 0.0))
    finally:
        if floor_srv is not None:
            floor_srv.close()
        if triton is not None:
            triton.close()
        clients.close()
        direct_run.close()
        srv.stop()
    # The server's records of the light-load calls, in the order they ran (flushed on stop).
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

    def total(blocks: list[dict]) -> dict:
        out = {k: sum(r[k] for r in blocks) for k in ("calls", "ok", "errors", "duration_s")}
        out["throughput_qps"] = out["ok"] / out["duration_s"]
        out["rounds"] = blocks
        return out
    sats = {k: total(v) for k, v in sat.items() if v}
    raw_qps = {k: n / t for k, (t, n) in raw.items() if n}
    served_images = sum(b for _, b in mixes["grpc"])
    def med(a: np.ndarray) -> float:
        return float(np.median(a))
    headline = {
        "server_throughput_qps": round(sats["grpc"]["throughput_qps"], 1),
        "in_process_throughput_qps": round(raw_qps["grpc"], 1),
        "throughput_ratio": round(sats["grpc"]["throughput_qps"] / raw_qps["grpc"], 3),
        "mean_batch_size_at_saturation": round(served_images / max(1, len(mixes["grpc"])), 2),
        "light_load_server_p50_ms": round(med(light), 3),
        "light_load_in_process_p50_ms": round(med(direct), 3),
        "added_median_latency_ms": round(med(light) - med(direct), 3),
        "added_median_latency_paired_ms": round(float(np.median(paired)), 3),
        "empty_rpc_round_trip_p50_ms": round(med(empty), 3),
        "grpc_floor_round_trip_p50_ms": round(med(floor), 3),
        "added_above_grpc_floor_ms": round(med(light) - med(direct) - med(floor), 3),
        "our_code_cold_one_thread_ms": round(med(ours) - med(direct), 3),
        "hand_offs_and_gil_ms": round(med(light) - med(floor) - med(ours), 3),
        "back_to_back_server_p50_ms": round(med(b2b), 3),
        "back_to_back_in_process_p50_ms": round(med(b2b_direct), 3),
        "added_median_latency_back_to_back_ms": round(med(b2b) - med(b2b_direct), 3),
        "added_median_latency_back_to_back_paired_ms": round(float(np.median(b2b_paired)), 3),
        "grpc_floor_back_to_back_p50_ms": round(med(b2b_floor), 3),
        # Every call pinned to the most accurate subnet (the one Triton serves): the like-for-like throughput.
        "pinned_server_throughput_qps": round(sats["pinned"]["throughput_qps"], 1),
        "pinned_throughput_ratio": round(sats["pinned"]["throughput_qps"] / raw_qps["pinned"], 3),
        # The HTTP/REST door (FastAPI on uvicorn, binary tensor extension), in the same rounds and blocks.
        "http_server_throughput_qps": round(sats["http"]["throughput_qps"], 1),
        "http_throughput_ratio": round(sats["http"]["throughput_qps"] / raw_qps["http"], 3),
        "http_light_load_server_p50_ms": round(med(http_light), 3),
        "http_added_median_latency_ms": round(med(http_light) - med(direct), 3),
        "http_added_median_latency_paired_ms": round(float(np.median(http_paired)), 3),
        "http_minus_grpc_median_latency_ms": round(med(http_light) - med(light), 3),
        "http_back_to_back_server_p50_ms": round(med(http_b2b), 3),
        "http_added_median_latency_back_to_back_ms": round(med(http_b2b) - med(b2b_direct), 3),
        "client_procs": args.client_procs,
    }
    if tri_light:
        tri_light, tri_b2b = np.concatenate(tri_light), np.concatenate(tri_b2b)
        tri_direct, tri_b2b_direct = np.concatenate(tri_direct), np.concatenate(tri_b2b_direct)
        tri_added = med(tri_light) - med(tri_direct)
        # Round trip minus the server's own model-execution time, as means (Triton's metrics give sums, not
        # per-call times): per call from our records; per block from Triton's compute_infer counters.
        ours_paired_mean = float(np.mean(paired))
        tri_paired_mean = float(np.mean([blk.mean() - c for blk, c in
                                         zip(np.split(tri_light, len(tri_compute)), tri_compute)]))
        headline.update({
            "added_mean_latency_paired_ms": round(ours_paired_mean, 3),
            "triton_added_mean_latency_paired_ms": round(tri_paired_mean, 3),
            "added_paired_over_triton_ratio": round(ours_paired_mean / tri_paired_mean, 3),
            "triton_compute_per_call_mean_ms": round(float(np.mean(tri_compute)), 3),
            "triton_light_load_p50_ms": round(med(tri_light), 3),
            "triton_in_process_exported_p50_ms": round(med(tri_direct), 3),
            "triton_added_median_latency_ms": round(tri_added, 3),
            # None when either difference is not positive: on a loaded host the in-process side can be the slower
            # one, and a ratio of two negative numbers says nothing.
            "added_latency_over_triton_ratio": (round((med(light) - med(direct)) / tri_added, 3)
                                                if tri_added > 0 and med(light) > med(direct) else None),
            "triton_added_median_latency_back_to_back_ms": round(med(tri_b2b) - med(tri_b2b_direct), 3),
            "added_back_to_back_over_triton_ratio": (round((med(b2b) - med(b2b_direct))
                                                           / (med(tri_b2b) - med(tri_b2b_direct)), 3)
                                                     if med(b2b) > med(b2b_direct) and med(tri_b2b) > med(tri_b2b_direct)
                                                     else None),
            "triton_server_throughput_qps": round(sats["triton"]["throughput_qps"], 1),
            "triton_throughput_ratio": round(sats["triton"]["throughput_qps"] / raw_qps["triton"], 3),
            "pinned_throughput_over_triton": round(sats["pinned"]["throughput_qps"]
                                                   / sats["triton"]["throughput_qps"], 3),
            "triton_start_s": round(triton.started_after_s, 1),
        })
    result = {
        "command": "nice python benchmarks/serving_overhead.py" + (" " + " ".join(argv) if argv else
                                                                   (" " + " ".join(sys.argv[1:]) if sys.argv[1:]
                                                                    else "")),
        "zoo": str(args.zoo), "host_load_avg_1min": os.getloadavg()[0], "host_cpus": os.cpu_count(),
        "setup": {"workers": "1 embedded thread, 1 torch thread", "policy": "slackfit",
                  "concurrency": args.concurrency, "client_procs": args.client_procs, "duration_s": args.duration_s,
                  "sat_rounds": args.sat_rounds, "light_calls": len(light), "rounds": args.rounds,
                  "top_subnet": top.subnet_id,
                  "triton": None if triton is None else {
                      "server": "PyTriton's bundled tritonserver, Python model, dynamic batcher",
                      "max_batch": zoo.batch_sizes[-1], "queue_delay_us": args.triton_queue_delay_us,
                      "torch_threads": 1, "python": str(args.triton_python)}},
        "headline": headline,
        "saturation": sats["grpc"],
        "http_saturation": sats["http"],
        "pinned_saturation": sats["pinned"],
        "triton_saturation": sats.get("triton"),
        "targets": {"throughput_ratio_min": 0.85, "added_median_latency_ms_max": 1.0,
                    "added_latency_over_triton_ratio_max": 1.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    h = headline
    print(f"saturation ({args.concurrency} in flight from {args.client_procs} client processes, {args.duration_s:g} s "
          f"per system): server {h['server_throughput_qps']} img/s vs in-process {h['in_process_throughput_qps']} "
          f"img/s on the same subnet/batch mix -> {h['throughput_ratio'] * 100:.1f}% (target >= 85%); pinned to "
          f"subnet {top.subnet_id}: {h['pinned_server_throughput_qps']} img/s -> "
          f"{h['pinned_throughput_ratio'] * 100:.1f}%")
    print(f"light load ({len(light)} sequential calls, subnet {top.subnet_id}): server p50 "
          f"{h['light_load_server_p50_ms']} ms vs in-process {h['light_load_in_process_p50_ms']} ms "
          f"-> added {h['added_median_latency_ms']} ms (target < 1 ms); paired {h['added_median_latency_paired_ms']} "
          f"ms; empty RPC {h['empty_rpc_round_trip_p50_ms']} ms")
    print(f"  where it goes: gRPC floor {h['grpc_floor_round_trip_p50_ms']} ms, our code cold on one thread "
          f"{h['our_code_cold_one_thread_ms']} ms, hand-offs and GIL {h['hand_offs_and_gil_ms']} ms")
    print(f"back to back: server p50 {h['back_to_back_server_p50_ms']} ms vs in-process "
          f"{h['back_to_back_in_process_p50_ms']} ms -> added {h['added_median_latency_back_to_back_ms']} ms (paired "
          f"{h['added_median_latency_back_to_back_paired_ms']} ms; gRPC floor {h['grpc_floor_back_to_back_p50_ms']} ms)")
    print(f"HTTP/REST door: saturation {h['http_server_throughput_qps']} img/s -> "
          f"{h['http_throughput_ratio'] * 100:.1f}% of in-process (gRPC {h['throughput_ratio'] * 100:.1f}%); light "
          f"load p50 {h['http_light_load_server_p50_ms']} ms -> added {h['http_added_median_latency_ms']} ms (HTTP - "
          f"gRPC {h['http_minus_grpc_median_latency_ms']} ms); back to back added "
          f"{h['http_added_median_latency_back_to_back_ms']} ms")
    if "triton_added_median_latency_ms" in h:
        print(f"Triton (PyTriton, exported subnet {top.subnet_id}): light load p50 {h['triton_light_load_p50_ms']} ms "
              f"vs in-process exported {h['triton_in_process_exported_p50_ms']} ms -> added "
              f"{h['triton_added_median_latency_ms']} ms; ours / Triton's = {h['added_latency_over_triton_ratio']} "
              f"(target < 1; back to back {h['added_back_to_back_over_triton_ratio']}); round trip minus the server's "
              f"own model time (means): ours {h['added_mean_latency_paired_ms']} ms, Triton's "
              f"{h['triton_added_mean_latency_paired_ms']} ms -> {h['added_paired_over_triton_ratio']}; saturation "
              f"{h['triton_server_throughput_qps']} img/s -> {h['triton_throughput_ratio'] * 100:.1f}% of in-process; "
              f"superserve pinned / Triton = {h['pinned_throughput_over_triton']}")
    print(f"load average during the run: {result['host_load_avg_1min']:.1f} on {os.cpu_count()} cores; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
