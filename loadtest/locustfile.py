"""Locust load test for any Open Inference Protocol gRPC endpoint (superserve, Triton, a Ray Serve OIP deployment).

Each `OipUser` holds one gRPC connection (tritonclient's generated OIP stubs) and calls ModelInfer with the SLO
hints `slo_ms` (and `min_accuracy`); every call is reported through `environment.events.request.fire(...)`
(request_type "grpc", name "ModelInfer"). An answer that arrives after `--slo-ms` is reported as a *failure*
("SLO miss"), so Locust's failure ratio counts SLO misses among the calls it made; the subnet that served it is in
the event's context.

`TraceShape` makes the user count follow a trace's rate: with `--trace gamma:4|poisson|azure|ramp:50:400|...`
(and `--trace-rate`, `--trace-duration`, `--trace-seed`) the rate of each second of the trace, divided by
`--user-qps` (each user's pace), is the user count; the test ends with the trace. Without `--trace` it keeps
`-u` users (spawn rate `-r`) until `-t`, like a plain Locust run. Every option is also an environment variable
(`LOCUST_TRACE`, `LOCUST_TRACE_RATE`, `LOCUST_SLO_MS`, ...) and shows in the web UI.

Headless (one command)::

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 30s --host 127.0.0.1:8001 --csv out/locust
    locust -f loadtest/locustfile.py --headless --host 127.0.0.1:8001 --trace gamma:4 --trace-rate 40 \\
        --trace-duration 60 --user-qps 2 --slo-ms 36

Web UI: `locust -f loadtest/locustfile.py --host 127.0.0.1:8001` and open http://127.0.0.1:8089.

**Locust is closed-loop: do not publish its SLO numbers.** A Locust user waits for each answer before its next
request, so when the server slows down the users send *less*: offered load drops exactly when the system is
overloaded, the queue the trace would have built never forms, and SLO misses are hidden (coordinated omission).
`TraceShape` only sets how many users exist, not when requests are sent. Its percentiles also come from Locust's
rounded histogram (about two significant digits). Use it for interactive exploration and smoke tests; for published
SLO attainment use the open-loop replayer (`superserve loadgen`), which sends each request at its scheduled time
whatever the answers and keeps raw per-request records.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists: make gRPC's blocking calls cooperate with gevent

import numpy as np  # noqa: E402
from locust import LoadTestShape, User, events, task  # noqa: E402


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:  # noqa: ANN001 - Locust's configargparse parser
    g = parser.add_argument_group("superserve OIP user")
    g.add_argument("--oip-model", default="superserve", env_var="LOCUST_OIP_MODEL", help="OIP model name")
    g.add_argument("--slo-ms", type=float, default=100.0, env_var="LOCUST_SLO_MS",
                   help="latency SLO: sent as the slo_ms hint; slower answers are reported as failures")
    g.add_argument("--min-accuracy", type=float, default=0.0, env_var="LOCUST_MIN_ACCURACY",
                   help="accuracy hint, fraction (0 = none)")
    g.add_argument("--no-hints", action="store_true", default=False, env_var="LOCUST_NO_HINTS",
                   help="send no request parameters")
    g.add_argument("--input-shape", default="1,1,28,28", env_var="LOCUST_INPUT_SHAPE",
                   help="FP32 input shape incl. batch")
    g.add_argument("--input-name", default="INPUT", env_var="LOCUST_INPUT_NAME", help="input tensor name")
    g.add_argument("--user-qps", type=float, default=5.0, env_var="LOCUST_USER_QPS",
                   help="each user's pace, requests/s (0 = back to back)")
    g.add_argument("--trace", default="", env_var="LOCUST_TRACE",
                   help="follow this trace's rate: poisson | gamma:CV2 | azure | ramp:START:END | file:PATH "
                        "(empty: constant -u users)")
    g.add_argument("--trace-rate", type=float, default=20.0, env_var="LOCUST_TRACE_RATE",
                   help="trace mean rate, requests/s")
    g.add_argument("--trace-duration", type=float, default=60.0, env_var="LOCUST_TRACE_DURATION",
                   help="trace seconds")
    g.add_argument("--trace-seed", type=int, default=0, env_var="LOCUST_TRACE_SEED", help="trace seed")


def _host_port(host: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if host.startswith(scheme):
            host = host[len(scheme):]
    return host.rstrip("/")


class OipUser(User):
    """One closed-loop client: a ModelInfer call, then a pause to keep `--user-qps`, and again."""

    host = "127.0.0.1:8001"

    def wait_time(self) -> float:
        qps = self.environment.parsed_options.user_qps if self.environment.parsed_options else 0.0
        if qps <= 0:
            return 0.0
        return max(0.0, 1.0 / qps - (time.perf_counter() - self._last_start))

    def on_start(self) -> None:
        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc

        opts = self._opts = self.environment.parsed_options
        # NOTE: tritonclient's InferenceServerClient closes its channel again in __del__; under gevent that second
        # close at interpreter exit hangs Locust. tritonclient's generated stubs on a channel we close once do not.
        self._channel = grpc.insecure_channel(_host_port(self.host))
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        shape = [int(x) for x in opts.input_shape.split(",")]
        rng = np.random.default_rng(id(self) % 2**32)
        self._request = pb.ModelInferRequest(model_name=opts.oip_model)
        self._request.inputs.add(name=opts.input_name, datatype="FP32", shape=shape)
        self._request.raw_input_contents.append(rng.standard_normal(shape).astype(np.float32).tobytes())
        if not opts.no_hints:
            self._request.parameters["slo_ms"].double_param = float(opts.slo_ms)
            if opts.min_accuracy > 0:
                self._request.parameters["min_accuracy"].double_param = float(opts.min_accuracy)
        self._last_start = time.perf_counter()

    def on_stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @task
    def infer(self) -> None:
        import grpc

        opts = self._opts
        self._last_start = start = time.perf_counter()
        context: dict[str, object] = {}
        exception: Exception | None = None
        length = 0
        try:
            response = self._stub.ModelInfer(self._request)
            length = response.ByteSize()
            if "subnet_id" in response.parameters:
                context["subnet_id"] = response.parameters["subnet_id"].string_param
                context["subnet_accuracy"] = response.parameters["subnet_accuracy"].double_param
        except grpc.RpcError as exc:
            exception = RuntimeError(f"{exc.code().name}: {exc.details()}")
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if exception is None and elapsed_ms > opts.slo_ms:
            exception = RuntimeError(f"SLO miss: answered after more than {opts.slo_ms:g} ms")
        self.environment.events.request.fire(request_type="grpc", name="ModelInfer", response_time=elapsed_ms,
                                             response_length=length, exception=exception, context=context)


@lru_cache(maxsize=8)
def _trace_rates(spec: str, rate_qps: float, duration_s: float, seed: int) -> tuple[float, ...]:
    from loadtest.replayer import per_second_rates

    return per_second_rates(spec, rate_qps, duration_s, seed)


class TraceShape(LoadTestShape):
    """Users = the trace's rate this second / --user-qps (at least 1); without --trace, -u users at -r until -t.
    Either way the test stops at -t if given."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        # NOTE: headless Locust joins the shape greenlet before arming -t, so the shape must honour -t itself.
        run_time_s = getattr(opts, "run_time", None)
        if run_time_s and self.get_run_time() >= run_time_s:
            return None
        if opts is None or not opts.trace:
            users = int(getattr(opts, "num_users", None) or 1)
            return users, float(getattr(opts, "spawn_rate", None) or users)
        rates = _trace_rates(opts.trace, opts.trace_rate, opts.trace_duration, opts.trace_seed)
        second = int(self.get_run_time())
        if second >= len(rates):
            return None
        per_user = opts.user_qps if opts.user_qps > 0 else 1.0
        users = max(1, math.ceil(rates[second] / per_user))
        return users, float(max(users, 1))
