"""The one request sender of the project: open-loop replay of an arrival trace against any Open Inference Protocol
(OIP, KServe v2) gRPC endpoint (ours, Triton, Ray Serve behind the same protocol), plus the few other ways the
benchmarks load a server, all on the same prebuilt requests (tritonclient's generated stubs, no per-call set-up):
- `replay` (open loop, below) and `replay_in_subprocess` / `in_subprocess`: any of these helpers in a fresh process,
  so a Python client does not share the GIL and CPU of a server running in the caller's process;
- `saturate`: closed loop at a fixed concurrency, for throughput at saturation only (not for latency);
- `sequential`: one call at a time on one reused blocking channel, the light-load latency as the client sees it.
`inputs` (optional, all helpers): request tensors, one per row without the batch dimension (e.g. real images),
cycled; by default `spec.payloads` seeded random tensors of the endpoint's declared input.

Open loop: every send time comes from the trace, computed before the run, never from answers (no coordinated
omission). One asyncio loop (grpc.aio over tritonclient's generated stubs) sleeps until each scheduled time and starts
the call as its own task; answers are recorded whenever they come back. At most `max_in_flight` calls are
outstanding: a request due while the bound is reached is *not sent* and gets an explicit `client_overloaded` record,
so a client limit is never silently confused with server behaviour. After the last send the client waits at most
`drain_timeout_s` for outstanding answers; calls still open then are cancelled and recorded as `unanswered`.

Every request ends with exactly one `superserve.records.RequestRecord`, the schema the server and the simulator
write, on the client's clock (seconds from the replay's start):
- `arrival_s` = the *scheduled* send time (latency counts from when the request should have left, so client lag is
  charged, never hidden), `deadline_s` = arrival_s + slo;
- `dispatch_s` = when the call actually started on the client (None if never sent), so send lag = dispatch - arrival;
- `finish_s` = when the answer arrived (None unless served);
- `status`: ok / late by the client's receive time vs the deadline; `shed` for DEADLINE_EXCEEDED (we set no
  client-side gRPC deadline, so it is the server's answer); `rejected` for RESOURCE_EXHAUSTED / UNAVAILABLE and for
  requests the client never sent (`dispatch_s` None); `error` for other codes and unanswered calls;
- `subnet_id` / `accuracy` from the response parameters `subnet_id` / `subnet_accuracy` when present, else the
  caller's `subnet_label` / `accuracy` (a fixed-model endpoint such as Triton or Ray Serve) or None.

`ClientEvent`s (one per request, same ids) say why, in the client's words: outcome, gRPC code, message.

Example::

    arrivals = make_trace("gamma:4", rate_qps=200, duration_s=10, seed=0)
    report = replay(arrivals, ReplaySpec(url="127.0.0.1:8001", slo_ms=36))
    print(summarize(report.records).slo_attainment, report.send_lag_ms(99), report.client_bottleneck)
    report = replay_in_subprocess(arrivals, ReplaySpec(url=url, slo_ms=36), inputs=images)  # server in this process
    qps = in_subprocess(saturate, ReplaySpec(url=url, slo_ms=1e4), concurrency=64, duration_s=8)["throughput_qps"]
    p50_ms = np.median(in_subprocess(sequential, ReplaySpec(url=url, slo_ms=1e4), calls=300, inputs=images[:1]))
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from loadtest import traces
from superserve.records import ERROR, LATE, OK, REJECTED, SHED, RequestRecord

# Client-side outcomes (ClientEvent.outcome). The first two are served; the rest are not.
OUTCOMES = ("ok", "late", "server_shed", "server_rejected", "server_error", "client_overloaded", "unanswered")
_CODE_OUTCOME = {"DEADLINE_EXCEEDED": "server_shed", "RESOURCE_EXHAUSTED": "server_rejected",
                 "UNAVAILABLE": "server_rejected"}
_OUTCOME_STATUS = {"ok": OK, "late": LATE, "server_shed": SHED, "server_rejected": REJECTED,
                   "server_error": ERROR, "client_overloaded": REJECTED, "unanswered": ERROR}
_START_LEAD_S = 0.05  # the schedule starts this long after set-up, so the first sends are not late by construction


class ReplayError(RuntimeError):
    """Bad replay input, or an endpoint that cannot be reached or does not describe its model."""


# --- traces -------------------------------------------------------------------------------------------------------
def make_trace(spec: str, rate_qps: float, duration_s: float, seed: int) -> np.ndarray:
    """Arrival seconds for a trace spec: everything `loadtest.traces.named` knows (poisson, gamma:CV2,
    azure[:START:MINUTES], azure-day, file:PATH) plus `ramp:START_QPS:END_QPS[:CV2]`, a linear ramp over the middle
    80% of `duration_s` with 10% holds either side (`rate_qps` is ignored for a ramp and for file:).

    Example::

        make_trace("ramp:50:400", 0, 20, seed=1)  # 2 s at 50 q/s, 16 s ramp, 2 s at 400 q/s
    """
    kind, _, arg = spec.partition(":")
    rng = np.random.default_rng(seed)
    if kind == "ramp":
        parts = arg.split(":") if arg else []
        try:
            start, end, *rest = (float(x) for x in parts)
            cv2 = rest[0] if rest else 1.0
        except ValueError:
            raise traces.TraceError(f"trace {spec!r}: write ramp:START_QPS:END_QPS[:CV2], e.g. ramp:50:400") from None
        if len(parts) not in (2, 3):
            raise traces.TraceError(f"trace {spec!r}: write ramp:START_QPS:END_QPS[:CV2], e.g. ramp:50:400")
        if not duration_s > 0:
            raise traces.TraceError(f"duration must be > 0 s, got {duration_s}")
        hold, ramp_s = 0.1 * duration_s, 0.8 * duration_s
        accel = abs(end - start) / ramp_s if end != start else 1.0
        return traces.ramp(start, end, accel, rng, hold, hold if end != start else duration_s - hold, cv2)
    return traces.named(spec, rate_qps, duration_s, rng)


def per_second_rates(spec: str, rate_qps: float, duration_s: float, seed: int) -> tuple[float, ...]:
    """Requests in each whole second of the trace `make_trace(spec, ...)` (Locust's TraceShape follows these)."""
    arrivals = make_trace(spec, rate_qps, duration_s, seed)
    end_s = duration_s if not spec.startswith("file:") else float(arrivals[-1]) + 1e-9
    seconds = max(1, math.ceil(end_s))
    return tuple(np.bincount(arrivals.astype(np.int64), minlength=seconds)[:seconds].astype(float).tolist())


# --- what to send -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplaySpec:
    url: str  # host:port of the gRPC endpoint
    model: str = "superserve"  # OIP model name
    slo_ms: float = 100.0  # latency SLO, judged on the client's clock; also sent as the `slo_ms` hint
    min_accuracy: float = 0.0  # sent as the `min_accuracy` hint when > 0
    send_hints: bool = True  # False: send no request parameters (endpoints that reject unknown ones)
    max_in_flight: int = 1000  # outstanding calls at most; a request due beyond it is recorded client_overloaded
    drain_timeout_s: float = 10.0  # after the last send, wait this long for answers, then cancel the rest
    accuracy: float | None = None  # recorded for answers without `subnet_accuracy` (fixed-model endpoints)
    subnet_label: str | None = None  # recorded for answers without `subnet_id`
    input_name: str | None = None  # None: ask the endpoint's model metadata (first input)
    input_datatype: str | None = None  # FP32 or UINT8 (with input_name)
    input_shape: tuple[int, ...] | None = None  # full request shape incl. batch 1, e.g. (1, 1, 28, 28)
    payloads: int = 16  # distinct seeded random inputs, cycled
    channels: int = 1  # gRPC connections, round-robin
    max_lag_ms: float | None = None  # send-lag tolerance for the "client kept up" verdict; None = 10% of slo_ms
    connect_timeout_s: float = 5.0
    ready_timeout_s: float = 60.0  # then wait this long for ServerReady (endpoints without it are taken as ready)
    seed: int = 0  # seeds the payloads (the trace has its own seed)

    def __post_init__(self) -> None:
        if not self.slo_ms > 0:
            raise ReplayError(f"slo_ms must be > 0, got {self.slo_ms}")
        if self.max_in_flight < 1 or self.channels < 1 or self.payloads < 1:
            raise ReplayError("max_in_flight, channels and payloads must be >= 1")
        if self.drain_timeout_s < 0:
            raise ReplayError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.ready_timeout_s < 0:
            raise ReplayError(f"ready_timeout_s must be >= 0, got {self.ready_timeout_s}")
        if self.url.startswith(("http://", "https://", "grpc://")):
            raise ReplayError(f"url is host:port (gRPC, no scheme), got {self.url!r}")

    @property
    def lag_tolerance_ms(self) -> float:
        return 0.1 * self.slo_ms if self.max_lag_ms is None else self.max_lag_ms


@dataclass(frozen=True)
class ClientEvent:
    request_id: int
    scheduled_s: float  # when the trace said to send it (seconds from the replay start)
    sent_s: float | None  # when the call started; None = never sent
    recv_s: float | None  # when the answer or error arrived; None = none arrived
    outcome: str  # one of OUTCOMES
    grpc_code: str | None = None  # e.g. DEADLINE_EXCEEDED for an error answer
    message: str | None = None  # the error's details, truncated


@dataclass
class ReplayReport:
    spec: ReplaySpec
    records: list[RequestRecord]  # one per arrival, in arrival order, request_id = index
    events: list[ClientEvent]  # the same requests, from the client's side
    wall_s: float  # from the first scheduled send to the end of the drain
    client_cpu_fraction: float  # process CPU seconds / wall seconds (1.0 = one core busy)
    input_desc: str  # "INPUT FP32 [1, 1, 28, 28]"
    notes: list[str] = field(default_factory=list)

    def lags_ms(self) -> np.ndarray:
        return np.array([(e.sent_s - e.scheduled_s) * 1e3 for e in self.events if e.sent_s is not None])

    def send_lag_ms(self, q: float) -> float:
        lags = self.lags_ms()
        return float(np.percentile(lags, q)) if lags.size else float("nan")

    def count(self, outcome: str) -> int:
        return sum(e.outcome == outcome for e in self.events)

    @property
    def bottleneck_reasons(self) -> list[str]:
        """Why the numbers may describe the client rather than the server (empty: the client kept up)."""
        out = []
        n = len(self.events)
        over = self.count("client_overloaded")
        if over:
            out.append(f"{over} of {n} requests ({100 * over / n:.1f}%) were never sent: {self.spec.max_in_flight} "
                       f"calls were already outstanding (--max-in-flight); they count as misses")
        p99 = self.send_lag_ms(99)
        if p99 > self.spec.lag_tolerance_ms:
            out.append(f"send lag p99 {p99:.1f} ms > tolerance {self.spec.lag_tolerance_ms:.1f} ms: the client fell "
                       f"behind the schedule, so the server saw a smoother, later load than the trace")
        if self.client_cpu_fraction > 0.9:
            out.append(f"the client process used {100 * self.client_cpu_fraction:.0f}% of a core")
        return out

    @property
    def client_bottleneck(self) -> bool:
        return bool(self.bottleneck_reasons)

    def client_summary(self) -> dict[str, Any]:
        lags = self.lags_ms()
        return {"requests": len(self.events), **{f"{o}_count": self.count(o) for o in OUTCOMES},
                "send_lag_p50_ms": self.send_lag_ms(50), "send_lag_p99_ms": self.send_lag_ms(99),
                "send_lag_max_ms": float(lags.max()) if lags.size else float("nan"),
                "lag_tolerance_ms": self.spec.lag_tolerance_ms, "client_cpu_fraction": self.client_cpu_fraction,
                "wall_s": self.wall_s, "client_bottleneck": self.client_bottleneck,
                "bottleneck_reasons": self.bottleneck_reasons, "input": self.input_desc}

    def error_messages(self, limit: int = 3) -> list[str]:
        """The most frequent (code, message) pairs of failed calls, for a readable report."""
        counts: dict[str, int] = {}
        for e in self.events:
            if e.grpc_code is not None:
                key = f"{e.grpc_code}: {e.message}"
                counts[key] = counts.get(key, 0) + 1
        return [f"{c} x {k}" for k, c in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]]

    def error_counts(self) -> dict[str, int]:
        """Requests that got no answer, by gRPC code or client outcome (client_overloaded, unanswered)."""
        counts: dict[str, int] = {}
        for e in self.events:
            if e.outcome not in ("ok", "late"):
                key = e.grpc_code or e.outcome
                counts[key] = counts.get(key, 0) + 1
        return counts

    def write_events(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as fh:
            for e in self.events:
                fh.write(json.dumps(asdict(e), separators=(",", ":")) + "\n")


def events_path(records_path: str | os.PathLike[str]) -> Path:
    """Where the client-side events go next to a records file: records.jsonl -> records.client.jsonl."""
    p = Path(records_path)
    return p.with_name(p.stem + ".client.jsonl")


# --- the replay ---------------------------------------------------------------------------------------------------
def replay(arrivals_s: Sequence[float] | np.ndarray, spec: ReplaySpec,
           inputs: np.ndarray | None = None) -> ReplayReport:
    """Send one request per arrival (sorted seconds from 0) at its time; see the module docstring."""
    arrivals = traces.validate(np.asarray(arrivals_s, dtype=np.float64), "arrivals")
    if arrivals.size == 0:
        raise ReplayError("the trace has no arrivals")
    return asyncio.run(_replay(arrivals, spec, _check_inputs(inputs)))


def replay_in_subprocess(arrivals_s: Sequence[float] | np.ndarray, spec: ReplaySpec,
                         inputs: np.ndarray | None = None, *, cpus: set[int] | None = None) -> ReplayReport:
    """`replay` from a fresh process (see `in_subprocess`)."""
    return in_subprocess(replay, np.asarray(arrivals_s, dtype=np.float64), spec, inputs=inputs, cpus=cpus)


def in_subprocess(fn: Any, *args: Any, cpus: set[int] | None = None, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a fresh (spawned) process, its result pickled back: for any of this module's client
    functions when the server runs in the calling process (in one process a Python client and server would share the
    GIL and slow each other down, which blurs the measurement). `fn` must be importable (module level). `cpus`
    pins the client process to those CPUs (Linux), e.g. to keep it off a core the server was pinned to."""
    import multiprocessing as mp

    pin = (os.sched_setaffinity, (0, set(cpus))) if cpus is not None else (None, ())
    with mp.get_context("spawn").Pool(1, initializer=pin[0], initargs=pin[1]) as pool:
        return pool.apply(fn, args, kwargs)


def saturate(spec: ReplaySpec, concurrency: int, duration_s: float,
             inputs: np.ndarray | None = None) -> dict[str, float]:
    """Closed loop: `concurrency` calls always outstanding (a new one as soon as one returns) for `duration_s`,
    then wait for the last answers: the server's throughput at saturation. Only for throughput (a closed loop sends
    less when the server is slow): `replay` is what measures latency and SLO attainment honestly.
    Returns {"calls", "ok", "errors", "duration_s", "throughput_qps"} (throughput counts answered calls)."""
    if concurrency < 1 or not duration_s > 0:
        raise ReplayError(f"concurrency must be >= 1 and duration_s > 0, got {concurrency}, {duration_s}")
    return asyncio.run(_saturate(spec, concurrency, duration_s, _check_inputs(inputs)))


def sequential(spec: ReplaySpec, calls: int, inputs: np.ndarray | None = None, gap_s: float = 0.005) -> np.ndarray:
    """One call at a time with `gap_s` of idle between (light load: the server is idle when each call arrives):
    each call's latency in ms as the client saw it. A blocking call on one reused channel with prebuilt requests (no
    event loop, no thread per call), so the client adds as little as possible to what it measures. A failed call
    raises ReplayError (a light-load latency sample must be an answer)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    inputs = _check_inputs(inputs)
    channel = grpc.insecure_channel(spec.url, options=_CHANNEL_OPTIONS)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=spec.connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise _unreachable(spec, "FutureTimeoutError") from None
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if _needs_metadata(spec, inputs):
            try:
                meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=spec.model), timeout=spec.connect_timeout_s)
            except grpc.RpcError as exc:
                raise _no_metadata(spec, exc) from None
        else:
            meta = None
        name, datatype, shape = _input_desc(spec, meta, inputs)
        requests = _payloads(spec, pb, name, datatype, shape, inputs)
        infer, clock, sleep = stub.ModelInfer, time.perf_counter, time.sleep
        out = np.empty(calls)
        for k in range(calls):
            request = requests[k % len(requests)]
            t = clock()
            try:
                infer(request)
            except grpc.RpcError as exc:
                raise ReplayError(f"{spec.url}: sequential call {k} failed ({exc.code().name}: {exc.details()})") \
                    from None
            out[k] = (clock() - t) * 1e3
            if gap_s > 0:
                sleep(gap_s)
    finally:
        channel.close()
    return out


def _np_dtype(datatype: str) -> Any:
    kinds = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
             "INT32": np.int32, "INT64": np.int64}
    if datatype not in kinds:
        raise ReplayError(f"input datatype {datatype} is not supported by the replayer (use {', '.join(kinds)})")
    return kinds[datatype]


_DATATYPE_OF = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.float64): "FP64",
                np.dtype(np.uint8): "UINT8", np.dtype(np.int8): "INT8", np.dtype(np.int32): "INT32",
                np.dtype(np.int64): "INT64"}


def _check_inputs(inputs: np.ndarray | None) -> np.ndarray | None:
    if inputs is None:
        return None
    arr = np.asarray(inputs)
    if arr.ndim < 1 or len(arr) == 0:
        raise ReplayError(f"inputs must be an array of one request tensor per row, got shape {arr.shape}")
    if arr.dtype not in _DATATYPE_OF:
        raise ReplayError(f"inputs dtype {arr.dtype} is not supported (use {', '.join(map(str, _DATATYPE_OF))})")
    return arr


def _needs_metadata(spec: ReplaySpec, inputs: np.ndarray | None) -> bool:
    """Ask the endpoint's model metadata unless the spec (and the inputs) say everything about the input."""
    return not (spec.input_name and (spec.input_datatype or inputs is not None)
                and (spec.input_shape or inputs is not None))


def _no_metadata(spec: ReplaySpec, exc: Any) -> ReplayError:
    return ReplayError(f"{spec.url}: cannot read metadata of model {spec.model!r} ({exc.code().name}: "
                       f"{exc.details()}); pass --input-name, --input-datatype and --input-shape")


def _input_desc(spec: ReplaySpec, meta: Any, inputs: np.ndarray | None) -> tuple[str, str, tuple[int, ...]]:
    """(name, datatype, request shape) from the spec, else the caller's inputs, else the model metadata `meta`."""
    first = None
    if meta is not None:
        if not meta.inputs:
            raise ReplayError(f"{spec.url}: model {spec.model!r} declares no inputs")
        first = meta.inputs[0]
    name = spec.input_name or first.name
    if inputs is not None:  # the caller's tensors, cast to the declared datatype
        datatype = spec.input_datatype or (first.datatype if first is not None else _DATATYPE_OF[inputs.dtype])
        return name, datatype, (1, *inputs.shape[1:])
    if spec.input_datatype and spec.input_shape:
        return name, spec.input_datatype, tuple(spec.input_shape)
    shape = tuple(1 if d < 0 else int(d) for d in first.shape)  # dynamic dims (the batch) -> 1
    return name, spec.input_datatype or first.datatype, spec.input_shape or shape


async def _describe_input(stub: Any, pb: Any, spec: ReplaySpec,
                          inputs: np.ndarray | None = None) -> tuple[str, str, tuple[int, ...]]:
    meta = None
    if _needs_metadata(spec, inputs):
        import grpc

        try:
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=spec.model), timeout=spec.connect_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _no_metadata(spec, exc) from None
    return _input_desc(spec, meta, inputs)


def _payloads(spec: ReplaySpec, pb: Any, name: str, datatype: str, shape: tuple[int, ...],
              inputs: np.ndarray | None = None) -> list[Any]:
    """The prebuilt ModelInferRequests, cycled by every sender: the caller's `inputs` (one per row) or
    `spec.payloads` seeded random tensors of `shape`."""
    rng = np.random.default_rng(spec.seed)
    dtype = _np_dtype(datatype)
    params: dict[str, float] = {}
    if spec.send_hints:
        params["slo_ms"] = float(spec.slo_ms)
        if spec.min_accuracy > 0:
            params["min_accuracy"] = float(spec.min_accuracy)
    out = []
    for k in range(spec.payloads if inputs is None else len(inputs)):
        if inputs is not None:
            data = np.ascontiguousarray(inputs[k:k + 1], dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            data = rng.integers(0, 128, size=shape).astype(dtype)
        else:
            data = rng.standard_normal(shape).astype(dtype)
        req = pb.ModelInferRequest(model_name=spec.model)
        req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        req.raw_input_contents.append(data.tobytes())
        for key, value in params.items():
            req.parameters[key].double_param = value
        out.append(req)
    return out


_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _unreachable(spec: ReplaySpec, why: str) -> ReplayError:
    return ReplayError(f"cannot reach an OIP gRPC endpoint at {spec.url} within {spec.connect_timeout_s:g} s "
                       f"({why}); is the server running and is the port its gRPC port?")


async def _connect(spec: ReplaySpec) -> list[Any]:
    import grpc

    # NOTE: one channel per connection: grpc merges identical channels into one subchannel unless told apart.
    channels = [grpc.aio.insecure_channel(spec.url, options=_CHANNEL_OPTIONS + [("grpc.channel_id", k)])
                for k in range(spec.channels)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), spec.connect_timeout_s)
    except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - report any connection failure the same way
        for c in channels:
            await c.close()
        raise _unreachable(spec, type(exc).__name__) from None
    try:
        await _await_ready(channels[0], spec)
    except BaseException:
        for c in channels:
            await c.close()
        raise
    return channels


async def _await_ready(channel: Any, spec: ReplaySpec) -> None:
    """Hold the schedule until the endpoint says it is ready, as a load balancer would: a server still warming up
    (superserve imports its image decoder in the background for seconds) serves calls, but slowly, and a trace
    started into that measures the start-up, not the serving. Endpoints that do not implement ServerReady (a bare
    ModelInfer ingress) are taken as ready."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + spec.ready_timeout_s
    while True:
        try:
            if (await stub.ServerReady(pb.ServerReadyRequest(), timeout=spec.connect_timeout_s)).ready:
                return
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return
            if loop.time() > deadline:
                raise ReplayError(f"{spec.url} did not answer ServerReady within {spec.ready_timeout_s:g} s: "
                                  f"{exc.code().name} {exc.details()}") from None
        if loop.time() > deadline:
            raise ReplayError(f"{spec.url} is reachable but did not report ready within {spec.ready_timeout_s:g} s")
        await asyncio.sleep(0.05)


async def _saturate(spec: ReplaySpec, concurrency: int, duration_s: float,
                    inputs: np.ndarray | None) -> dict[str, float]:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    channels = await _connect(spec)
    try:
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
        requests = _payloads(spec, pb, *await _describe_input(stubs[0], pb, spec, inputs), inputs)
        counts = {"calls": 0, "ok": 0, "errors": 0}
        clock = time.perf_counter
        call_timeout_s = duration_s + 60  # a wedged server ends the run as errors, never hangs it

        async def closed_loop(k: int) -> None:
            while clock() < stop_at:
                counts["calls"] += 1
                try:
                    await stubs[k % len(stubs)].ModelInfer(requests[k % len(requests)], timeout=call_timeout_s)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                else:
                    counts["ok"] += 1
                k += concurrency

        start = clock()
        stop_at = start + duration_s
        await asyncio.gather(*(closed_loop(k) for k in range(concurrency)))
        elapsed = clock() - start
    finally:
        for c in channels:
            await c.close()
    return {**counts, "duration_s": elapsed, "throughput_qps": counts["ok"] / elapsed}


async def _replay(arrivals: np.ndarray, spec: ReplaySpec, inputs: np.ndarray | None = None) -> ReplayReport:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    channels = await _connect(spec)
    try:
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
        name, datatype, shape = await _describe_input(stubs[0], pb, spec, inputs)
        requests = _payloads(spec, pb, name, datatype, shape, inputs)
        n = len(arrivals)
        slo_s = spec.slo_ms * 1e-3
        sent = [math.nan] * n
        recv = [math.nan] * n
        outcome: list[str | None] = [None] * n
        code: list[str | None] = [None] * n
        message: list[str | None] = [None] * n
        subnet: list[str | None] = [None] * n
        accuracy: list[float | None] = [None] * n
        in_flight: set[asyncio.Task[None]] = set()
        clock = time.perf_counter
        t0 = clock() + _START_LEAD_S
        cpu0 = time.process_time()

        async def one(k: int) -> None:
            sent[k] = clock() - t0
            try:
                response = await stubs[k % len(stubs)].ModelInfer(requests[k % len(requests)])
            except grpc.aio.AioRpcError as exc:
                recv[k] = clock() - t0
                code[k] = exc.code().name
                message[k] = (exc.details() or "")[:200]
                outcome[k] = _CODE_OUTCOME.get(code[k], "server_error")
                return
            recv[k] = t = clock() - t0
            params = response.parameters
            subnet[k] = params["subnet_id"].string_param if "subnet_id" in params else spec.subnet_label
            accuracy[k] = params["subnet_accuracy"].double_param if "subnet_accuracy" in params else spec.accuracy
            outcome[k] = "ok" if t <= arrivals[k] + slo_s else "late"

        for k in range(n):
            delay = arrivals[k] - (clock() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= spec.max_in_flight:
                outcome[k] = "client_overloaded"
                continue
            task = asyncio.get_running_loop().create_task(one(k))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        last_send = clock()
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=spec.drain_timeout_s)
        for task in list(in_flight):  # still open after the drain
            task.cancel()
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=1.0)
        wall = clock() - t0
        cpu = time.process_time() - cpu0
    finally:
        for c in channels:
            await c.close()

    records, events = [], []
    for k in range(n):
        o = outcome[k] or "unanswered"  # cancelled at the end of the drain
        s = None if math.isnan(sent[k]) else sent[k]
        r = None if math.isnan(recv[k]) else recv[k]
        served = o in ("ok", "late")
        events.append(ClientEvent(k, float(arrivals[k]), s, r, o, code[k], message[k]))
        records.append(RequestRecord(k, float(arrivals[k]), float(arrivals[k]) + slo_s, _OUTCOME_STATUS[o], s,
                                     r if served else None, subnet[k] if served else None,
                                     accuracy[k] if served else None, spec.min_accuracy, None))
    notes = []
    if clock() - last_send > spec.drain_timeout_s and any(e.outcome == "unanswered" for e in events):
        notes.append(f"drain timeout ({spec.drain_timeout_s:g} s) reached; open calls were cancelled")
    return ReplayReport(spec, records, events, max(wall, 1e-9), cpu / max(wall, 1e-9),
                        f"{name} {datatype} {list(shape)}", notes)
