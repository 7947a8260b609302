"""The open-loop replayer (loadtest/replayer.py) and `superserve loadgen`: sends stay on schedule against a slow fake
OIP server, every request is recorded exactly once, the in-flight bound and the drain produce explicit records,
server error codes map to the record statuses, and the metrics equal a hand computation from the raw events. The
benchmarks' other helpers on the same requests: closed-loop `saturate`, one-at-a-time `sequential`, caller-supplied
inputs, and running any of them in a subprocess."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from helpers import start_fixture_server
from loadtest.replayer import (ReplayError, ReplaySpec, events_path, in_subprocess, make_trace, replay,
                               replay_in_subprocess, saturate, sequential)
from loadtest.traces import TraceError
from superserve.cli import main as cli_main
from superserve.metrics import summarize
from superserve.records import ERROR, LATE, OK, REJECTED, SHED, read_jsonl


class FakeOip(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer after `delay_s` (asyncio.sleep: unlimited concurrency); `codes` cycles the answer of the
    k-th call received (None = success, else that gRPC status). No response parameters unless `params`."""

    def __init__(self, delay_s: float, codes=(None,), params: bool = False) -> None:
        self.delay_s, self.codes, self.params = delay_s, codes, params
        self.received = 0
        self.concurrent = self.max_concurrent = 0
        self.payloads: list[bytes] = []  # raw input bytes of every call, in arrival order

    async def ModelMetadata(self, request, context):
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="fake",
                                        inputs=[tensor(name="X", datatype="FP32", shape=[-1, 4])])

    async def ModelInfer(self, request, context):
        k = self.received
        self.received += 1
        self.payloads.append(request.raw_input_contents[0])
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.concurrent -= 1
        code = self.codes[k % len(self.codes)]
        if code is not None:
            await context.abort(code, f"fake {code.name}")
        assert request.inputs[0].name == "X" and list(request.inputs[0].shape) == [1, 4]
        assert request.parameters["slo_ms"].double_param > 0
        response = pb.ModelInferResponse(model_name=request.model_name)
        if self.params:
            response.parameters["subnet_id"].string_param = "s1"
            response.parameters["subnet_accuracy"].double_param = 0.75
        return response


class FakeServer:
    def __init__(self, servicer: FakeOip) -> None:
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def fake(delay_s: float, **kw):
    return FakeServer(FakeOip(delay_s, **kw))


def assert_one_record_each(report, n: int) -> None:
    assert [r.request_id for r in report.records] == list(range(n))
    assert [e.request_id for e in report.events] == list(range(n))


def test_sends_follow_the_schedule_not_the_answers():
    """Answers take 150 ms, requests are due every ~10 ms: an open-loop client keeps sending on time (a closed-loop
    one would have one call outstanding and send ~7/s, so its k-th send would lag k x 150 ms). The lag bounds are
    one answer time: far above what an open-loop client lags on a busy host, far below a closed loop's seconds."""
    server = fake(0.15)
    try:
        arrivals = make_trace("poisson", 100, 1.5, seed=1)
        report = replay(arrivals, ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=100, accuracy=0.8))
    finally:
        server.stop()
    n = len(arrivals)
    assert_one_record_each(report, n)
    assert server.servicer.received == n  # every request sent exactly once
    assert server.servicer.max_concurrent >= 8
    sent = np.array([e.sent_s for e in report.events])
    lag_ms = (sent - arrivals) * 1e3
    assert lag_ms.min() >= 0
    assert np.median(lag_ms) < 150 and report.send_lag_ms(50) == pytest.approx(np.median(lag_ms))
    assert sent[-1] - sent[0] == pytest.approx(arrivals[-1] - arrivals[0], abs=0.15)  # vs ~20 s closed-loop
    assert {r.status for r in report.records} == {LATE}  # 150 ms > 100 ms SLO, all served
    assert all(r.finish_s - r.arrival_s >= 0.15 for r in report.records)
    assert {r.accuracy for r in report.records} == {0.8}  # no params in the answers: the caller's accuracy
    assert report.input_desc == "X FP32 [1, 4]"  # from the model metadata


def test_in_flight_bound_gives_explicit_client_overloaded_records():
    """40 requests due within 0.2 s, 5 in flight at most, answers after 2 s: the first 5 are sent and the other 35
    are recorded client_overloaded, as long as the client does not stall for 1.8 s mid-schedule (answers 10x the
    schedule's length, so a busy host does not free a slot before the last request is due)."""
    server = fake(2.0, params=True)
    try:
        arrivals = np.linspace(0.0, 0.2, 40)
        report = replay(arrivals, ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=5000,
                                             max_in_flight=5))
    finally:
        server.stop()
    assert_one_record_each(report, 40)
    over = [e for e in report.events if e.outcome == "client_overloaded"]
    assert len(over) == 35 and server.servicer.received == 5
    for e in over:
        r = report.records[e.request_id]
        assert r.status == REJECTED and r.dispatch_s is None and r.finish_s is None and e.sent_s is None
    assert {r.status for r in report.records if r.dispatch_s is not None} == {OK}
    assert {(r.subnet_id, r.accuracy) for r in report.records if r.status == OK} == {("s1", 0.75)}
    assert report.client_bottleneck
    assert any("never sent" in reason for reason in report.bottleneck_reasons)


def test_error_codes_map_to_statuses_and_drain_timeout_records_unanswered():
    codes = (None, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
    server = fake(0.0, codes=codes)
    try:
        report = replay(np.arange(20) * 0.01, ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=1000))
    finally:
        server.stop()
    assert_one_record_each(report, 20)
    statuses = [r.status for r in report.records]
    assert {s: statuses.count(s) for s in set(statuses)} == {OK: 5, SHED: 5, REJECTED: 5, ERROR: 5}
    assert {e.grpc_code for e in report.events} == {None, "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL"}
    assert all(r.accuracy is None for r in report.records)  # nothing told us an accuracy

    slow = fake(30.0)
    t = time.perf_counter()
    try:
        report = replay([0.0, 0.01, 0.02], ReplaySpec(url=f"127.0.0.1:{slow.port}", model="m", slo_ms=50,
                                                      drain_timeout_s=0.3))
    finally:
        slow.stop()
    assert time.perf_counter() - t < 15  # it gave up after the drain timeout, not the 30 s answers (half: generous)
    assert [e.outcome for e in report.events] == ["unanswered"] * 3
    assert [r.status for r in report.records] == [ERROR] * 3
    assert all(r.dispatch_s is not None and r.finish_s is None for r in report.records)


def test_metrics_from_records_match_hand_computation(tmp_path: Path):
    server = fake(0.02, params=True, codes=(None, None, grpc.StatusCode.DEADLINE_EXCEEDED))
    try:
        arrivals = make_trace("gamma:4", 80, 1.0, seed=3)
        report = replay(arrivals, ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=30))
    finally:
        server.stop()
    from superserve.records import write_jsonl

    write_jsonl(tmp_path / "r.jsonl", report.records)
    report.write_events(events_path(tmp_path / "r.jsonl"))
    s = summarize(read_jsonl(tmp_path / "r.jsonl"))
    events = [json.loads(line) for line in (tmp_path / "r.client.jsonl").read_text().splitlines()]
    n = len(events)
    assert n == len(arrivals)
    served = [e for e in events if e["outcome"] in ("ok", "late")]
    on_time = [e for e in served if e["recv_s"] <= e["scheduled_s"] + 0.030]
    latency = sorted((e["recv_s"] - e["scheduled_s"]) * 1e3 for e in served)

    def percentile(values: list[float], q: float) -> float:  # numpy's default: linear between closest ranks
        pos = (len(values) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    end = max(max(e["scheduled_s"] for e in events), max(e["recv_s"] for e in served))
    duration = end - min(e["scheduled_s"] for e in events)
    assert s.requests == n and s.met == len(on_time) and s.late == len(served) - len(on_time)
    assert s.shed == sum(e["outcome"] == "server_shed" for e in events) > 0
    assert s.slo_attainment == pytest.approx(len(on_time) / n)
    assert s.mean_accuracy == pytest.approx(0.75)
    assert s.goodput_qps == pytest.approx(len(on_time) / duration)
    assert s.p50_latency_ms == pytest.approx(percentile(latency, 50))
    assert s.p99_latency_ms == pytest.approx(percentile(latency, 99))


def test_bad_input_gives_clear_errors(capsys):
    with pytest.raises(ReplayError, match="cannot reach"):
        replay([0.0], ReplaySpec(url="127.0.0.1:1", connect_timeout_s=0.5))
    with pytest.raises(ReplayError, match="host:port"):
        ReplaySpec(url="http://127.0.0.1:8001")
    with pytest.raises(TraceError, match="ramp:START_QPS:END_QPS"):
        make_trace("ramp:10", 1, 5, 0)
    with pytest.raises(TraceError, match="unknown trace"):
        make_trace("zipf", 1, 5, 0)
    assert cli_main(["loadgen", "--trace", "gamma:x", "--rate", "5"]) == 2
    assert "gamma:CV2" in capsys.readouterr().err
    assert cli_main(["loadgen", "--trace", "poisson"]) == 2
    assert "--rate is required" in capsys.readouterr().err


def test_ramp_trace_rises():
    a = make_trace("ramp:20:200", 0, 10, seed=0)
    per_second = np.bincount(a.astype(int), minlength=10)
    assert per_second[:2].sum() < 60 and per_second[-2:].sum() > 300
    assert a.max() < 10 and np.all(np.diff(a) >= 0)


def test_loadgen_cli_against_the_real_server(serving_assets, tmp_path: Path, capsys):
    from superserve.server.engine import EngineConfig

    server = start_fixture_server(serving_assets, engine=EngineConfig(default_slo_ms=5000.0))
    try:
        out, plot, summary = tmp_path / "r.jsonl", tmp_path / "ts.png", tmp_path / "s.json"
        rc = cli_main(["loadgen", "--trace", "gamma:2", "--rate", "30", "--duration", "2", "--url",
                       f"127.0.0.1:{server.port}", "--slo-ms", "2000", "--min-accuracy", "0.5", "--out", str(out),
                       "--plot", str(plot), "--summary-json", str(summary), "--seed", "4"])
    finally:
        server.stop()
    text = capsys.readouterr().out
    assert rc == 0
    records = read_jsonl(out)
    n = len(make_trace("gamma:2", 30, 2, 4))
    assert len(records) == n and len({r.request_id for r in records}) == n
    assert all(r.status == OK and r.subnet_id in server.zoo.subnet_ids for r in records)
    assert all(r.min_accuracy == 0.5 for r in records)
    assert "SLO attainment  100.00%" in text and "send lag" in text and "VERDICT" in text
    assert plot.stat().st_size > 10_000
    data = json.loads(summary.read_text())
    assert data["metrics"]["requests"] == n and data["client"]["requests"] == n
    assert len(events_path(out).read_text().splitlines()) == n


def test_saturate_keeps_exactly_concurrency_calls_outstanding():
    server = fake(0.05)
    try:
        out = saturate(ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=1000), concurrency=4,
                       duration_s=0.6)
    finally:
        server.stop()
    assert server.servicer.max_concurrent == 4  # closed loop: never more, a new call as soon as one returns
    assert out["calls"] == out["ok"] == server.servicer.received and out["errors"] == 0
    assert out["duration_s"] >= 0.6  # it ran the whole window (and then stopped: the test returned)
    assert out["calls"] > 4  # closed loop: new calls once the first four returned
    assert out["throughput_qps"] <= 80  # 4 in flight / 50 ms = 80/s at most, whatever the host's speed
    assert out["throughput_qps"] == pytest.approx(out["ok"] / out["duration_s"])


def test_sequential_sends_one_at_a_time_with_the_callers_inputs():
    server = fake(0.02)
    inputs = np.arange(8, dtype=np.float64).reshape(2, 4)  # cast to the declared FP32, cycled
    try:
        spec = ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=1000)
        lat = sequential(spec, 5, inputs, gap_s=0.0)
    finally:
        server.stop()
    assert lat.shape == (5,) and lat.min() >= 20
    assert server.servicer.received == 5 and server.servicer.max_concurrent == 1
    rows = [inputs[k % 2].astype(np.float32).tobytes() for k in range(5)]
    assert server.servicer.payloads == rows

    failing = fake(0.0, codes=(grpc.StatusCode.INTERNAL,))
    try:
        with pytest.raises(ReplayError, match="sequential call 0 failed.*INTERNAL"):
            sequential(ReplaySpec(url=f"127.0.0.1:{failing.port}", model="m"), 3)
    finally:
        failing.stop()
    with pytest.raises(ReplayError, match="cannot reach"):
        sequential(ReplaySpec(url="127.0.0.1:1", connect_timeout_s=0.3), 1)


def test_replay_in_a_subprocess_with_real_inputs_records_every_request_once():
    """The client of the demo and the benchmarks: a spawned process (its own GIL), the caller's images cycled."""
    server = fake(0.03, params=True)
    inputs = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    try:
        arrivals = make_trace("gamma:2", 60, 0.8, seed=2)
        spec = ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=500)
        report = replay_in_subprocess(arrivals, spec, inputs)
        assert in_subprocess(sequential, spec, 2, inputs[:1], gap_s=0.0).shape == (2,)
    finally:
        server.stop()
    n = len(arrivals)
    assert_one_record_each(report, n)
    assert {r.status for r in report.records} == {OK} and report.error_counts() == {}
    assert sorted(server.servicer.payloads[:n]) == sorted(inputs[k % 3].tobytes() for k in range(n))
    assert server.servicer.payloads[n:] == [inputs[0].tobytes()] * 2
    assert report.send_lag_ms(100) >= 0  # sends never early (how late is the other tests' subject)


class WarmingFake(FakeOip):
    """Reports not ready until `ready_at` (monotonic), like superserve while its decoder import runs."""

    def __init__(self, ready_after_s: float) -> None:
        super().__init__(0.0)
        self.ready_at = time.monotonic() + ready_after_s
        self.first_call_at: float | None = None
        self.ready_probes = 0

    async def ServerReady(self, request, context):
        self.ready_probes += 1
        return pb.ServerReadyResponse(ready=time.monotonic() >= self.ready_at)

    async def ModelInfer(self, request, context):
        if self.first_call_at is None:
            self.first_call_at = time.monotonic()
        return await super().ModelInfer(request, context)


def test_replay_holds_the_schedule_until_the_endpoint_is_ready():
    server = FakeServer(WarmingFake(0.5))
    try:
        arrivals = make_trace("poisson", 50, 0.5, seed=2)
        report = replay(arrivals, ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=1000))
    finally:
        server.stop()
    fake_ = server.servicer
    assert fake_.ready_probes > 1 and fake_.first_call_at >= fake_.ready_at
    assert_one_record_each(report, len(arrivals))
    assert {r.status for r in report.records} == {OK}


def test_replay_against_an_endpoint_that_never_gets_ready_says_so(capsys):
    server = FakeServer(WarmingFake(3600.0))
    try:
        with pytest.raises(ReplayError, match="did not report ready within 0.3 s"):
            replay(np.array([0.0]), ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", ready_timeout_s=0.3))
        rc = cli_main(["loadgen", "--trace", "poisson", "--rate", "5", "--duration", "1", "--url",
                       f"127.0.0.1:{server.port}", "--model", "m", "--ready-timeout", "0.2"])
    finally:
        server.stop()
    assert rc == 2 and "did not report ready within 0.2 s" in capsys.readouterr().err
    assert server.servicer.received == 0
    with pytest.raises(ReplayError, match="ready_timeout_s must be >= 0"):
        ReplaySpec(url="127.0.0.1:1", ready_timeout_s=-1)


class WireRecorder(FakeOip):
    """Records what each call carried on the wire: its parameters, its input, and the client connection (peer)."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.metadata_calls = 0
        self.calls: list[tuple[dict, str, str, list[int], str]] = []

    async def ModelMetadata(self, request, context):
        self.metadata_calls += 1
        return await super().ModelMetadata(request, context)

    async def ModelInfer(self, request, context):
        inp = request.inputs[0]
        self.calls.append(({k: v for k, v in request.parameters.items()}, inp.name, inp.datatype, list(inp.shape),
                           context.peer()))
        self.received += 1
        return pb.ModelInferResponse(model_name=request.model_name)


def test_loadgen_flags_reach_the_wire(tmp_path: Path, capsys):
    """`--no-hints`: no request parameters; `--input-name/--input-datatype/--input-shape`: that input, without asking
    the model metadata; `--channels 3`: three client connections; `--max-lag-ms`: the verdict's tolerance;
    `--accuracy` / `--subnet-label`: recorded for an endpoint that reports neither."""
    server = FakeServer(WireRecorder())
    summary, out = tmp_path / "s.json", tmp_path / "r.jsonl"
    try:
        rc = cli_main(["loadgen", "--trace", "poisson", "--rate", "60", "--duration", "1", "--url",
                       f"127.0.0.1:{server.port}", "--model", "m", "--no-hints", "--input-name", "X",
                       "--input-datatype", "FP32", "--input-shape", "1,4", "--channels", "3", "--max-lag-ms", "5000",
                       "--accuracy", "0.8", "--subnet-label", "fixed", "--slo-ms", "1000", "--out", str(out),
                       "--summary-json", str(summary)])
    finally:
        server.stop()
    text = capsys.readouterr().out
    assert rc == 0, text
    fake_ = server.servicer
    n = len(make_trace("poisson", 60, 1, 0))
    assert len(fake_.calls) == n and fake_.metadata_calls == 0
    assert all(params == {} for params, *_ in fake_.calls)  # --no-hints
    assert {(name, dtype, tuple(shape)) for _, name, dtype, shape, _ in fake_.calls} == {("X", "FP32", (1, 4))}
    assert len({peer for *_, peer in fake_.calls}) == 3  # --channels 3, round-robin over all of them
    data = json.loads(summary.read_text())
    assert data["client"]["lag_tolerance_ms"] == 5000 and "VERDICT: the client kept up" in text
    assert "<= 5000.0 ms" in text
    assert {(r.accuracy, r.subnet_id) for r in read_jsonl(out)} == {(0.8, "fixed")}


def test_loadgen_hints_are_sent_by_default():
    server = FakeServer(WireRecorder())
    try:
        replay([0.0, 0.01], ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=36, min_accuracy=0.9))
    finally:
        server.stop()
    fake_ = server.servicer
    assert fake_.metadata_calls == 1  # the input described by the model metadata
    for params, name, dtype, shape, _ in fake_.calls:
        assert params["slo_ms"].double_param == 36 and params["min_accuracy"].double_param == 0.9
        assert (name, dtype, shape) == ("X", "FP32", [1, 4])
    assert len({peer for *_, peer in fake_.calls}) == 1


def test_loadgen_max_lag_sets_the_verdict():
    """The verdict's tolerance is --max-lag-ms (default 10% of the SLO): a tolerance no real client meets (1 us)
    makes the same run CLIENT-BOUND."""
    server = fake(0.0)
    try:
        report = replay([0.0, 0.01, 0.02], ReplaySpec(url=f"127.0.0.1:{server.port}", model="m", slo_ms=1000,
                                                      max_lag_ms=0.001))
    finally:
        server.stop()
    assert report.spec.lag_tolerance_ms == 0.001
    assert report.client_bottleneck and any("tolerance 0.0 ms" in r for r in report.bottleneck_reasons)
    assert ReplaySpec(url="127.0.0.1:1", slo_ms=36).lag_tolerance_ms == pytest.approx(3.6)


def test_loadgen_bad_input_flags(capsys):
    assert cli_main(["loadgen", "--rate", "5", "--input-shape", "1,x"]) == 2
    assert "--input-shape must be integers" in capsys.readouterr().err
    assert cli_main(["loadgen", "--rate", "5", "--channels", "0"]) == 2
    assert "channels" in capsys.readouterr().err
