"""Open-loop replay of an arrival trace against any Open Inference Protocol gRPC endpoint (ours, Triton, ...).

Send times come from the trace, never from responses (no coordinated omission): a sender thread sleeps until each
arrival and fires an asynchronous call; responses are recorded as they come back. The result is one
`superserve.records.RequestRecord` per request on the client's clock (seconds from the start of the replay), the
same schema the server and the simulator write, so `superserve.metrics.summarize` judges all three alike.
Status: ok / late from the receive time vs arrival + SLO; shed = DEADLINE_EXCEEDED, rejected = RESOURCE_EXHAUSTED or
UNAVAILABLE, error = anything else. The subnet and its accuracy come from the response parameters when present.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from superserve.records import ERROR, LATE, OK, REJECTED, SHED, RequestRecord

_STATUS_OF_CODE = {"StatusCode.DEADLINE_EXCEEDED": SHED, "StatusCode.RESOURCE_EXHAUSTED": REJECTED,
                   "StatusCode.UNAVAILABLE": REJECTED}


@dataclass(frozen=True)
class ReplayResult:
    records: list[RequestRecord]  # one per arrival, in arrival order
    max_send_lag_ms: float  # worst delay of a send behind its scheduled time (the client kept up if small)
    errors: dict[str, int]  # error status code -> count (for a readable report)


def replay(url: str, arrivals_s: Sequence[float] | np.ndarray, slo_ms: float, images: np.ndarray,
           model: str = "superserve", min_accuracy: float = 0.0, timeout_s: float = 60.0) -> ReplayResult:
    """Replay `arrivals_s` (sorted seconds from 0) as single-image FP32 requests cycling through `images`
    ((N, C, H, W) float32, normalised), each with the `slo_ms` hint (and `min_accuracy` if > 0)."""
    import tritonclient.grpc as tc

    arrivals = np.asarray(arrivals_s, dtype=np.float64)
    n = len(arrivals)
    client = tc.InferenceServerClient(url)
    inputs = []
    for k in range(min(len(images), n)):
        inp = tc.InferInput("INPUT", [1, *images.shape[1:]], "FP32")
        inp.set_data_from_numpy(images[k:k + 1].astype(np.float32))
        inputs.append(inp)
    params: dict[str, float] = {"slo_ms": float(slo_ms)}
    if min_accuracy > 0:
        params["min_accuracy"] = float(min_accuracy)
    finish = np.full(n, np.nan)
    status: list[str | None] = [None] * n
    subnet: list[str | None] = [None] * n
    accuracy: list[float | None] = [None] * n
    errors: dict[str, int] = {}
    lock = threading.Lock()
    remaining = [n]
    all_done = threading.Event()
    start = time.perf_counter()
    slo_s = slo_ms * 1e-3

    def callback(k: int, result, error) -> None:  # noqa: ANN001 - tritonclient's types
        t = time.perf_counter() - start
        with lock:
            finish[k] = t
            if error is None:
                params_out = result.get_response().parameters
                if "subnet_id" in params_out:
                    subnet[k] = params_out["subnet_id"].string_param
                    accuracy[k] = params_out["subnet_accuracy"].double_param
                status[k] = OK if t <= arrivals[k] + slo_s else LATE
            else:
                code = str(error.status())
                status[k] = _STATUS_OF_CODE.get(code, ERROR)
                errors[code] = errors.get(code, 0) + 1
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    max_lag = 0.0
    for k in range(n):
        delay = arrivals[k] - (time.perf_counter() - start)
        if delay > 0:
            time.sleep(delay)
        else:
            max_lag = max(max_lag, -delay)
        client.async_infer(model, [inputs[k % len(inputs)]], lambda result, error, k=k: callback(k, result, error),
                           parameters=params, client_timeout=timeout_s)
    if n:
        all_done.wait(timeout_s + 5)
    client.close()
    unanswered = sum(1 for s in status if s is None)
    if unanswered:
        errors["no answer"] = unanswered
    records = []
    for k in range(n):
        st = status[k] or ERROR
        served = st in (OK, LATE)
        records.append(RequestRecord(k, float(arrivals[k]), float(arrivals[k] + slo_s), st,
                                     None, float(finish[k]) if served else None, subnet[k], accuracy[k],
                                     min_accuracy, None))
    return ReplayResult(records, max_lag * 1e3, errors)


def replay_in_subprocess(url: str, arrivals_s: Sequence[float] | np.ndarray, slo_ms: float, images: np.ndarray,
                         **kwargs) -> ReplayResult:
    """`replay` from a fresh process, so that the client does not compete with an in-process server for the GIL
    (in one process a Python client and server would each slow the other down and blur the measurement)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(replay, (url, np.asarray(arrivals_s), slo_ms, np.asarray(images)), kwargs)


def saturate(url: str, concurrency: int, duration_s: float, images: np.ndarray, slo_ms: float,
             model: str = "superserve", min_accuracy: float = 0.0) -> dict[str, float]:
    """Closed loop at a fixed `concurrency` (a new call as soon as one returns) for `duration_s`: the server's
    throughput at saturation. Only for throughput: open-loop `replay` is what measures latency honestly.
    Returns {"calls", "ok", "errors", "duration_s", "throughput_qps"}."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("INPUT", [1, *images.shape[1:]], "FP32")
    inp.set_data_from_numpy(images[:1].astype(np.float32))
    params: dict[str, float] = {"slo_ms": float(slo_ms)}
    if min_accuracy > 0:
        params["min_accuracy"] = float(min_accuracy)
    lock = threading.Condition()
    counts = {"calls": 0, "ok": 0, "errors": 0, "outstanding": 0}
    stop_at = time.perf_counter() + duration_s

    def fire() -> None:
        counts["outstanding"] += 1
        counts["calls"] += 1
        client.async_infer(model, [inp], callback, parameters=params)

    def callback(result, error) -> None:  # noqa: ANN001
        with lock:
            counts["outstanding"] -= 1
            counts["ok" if error is None else "errors"] += 1
            if time.perf_counter() < stop_at:
                fire()
            lock.notify_all()

    start = time.perf_counter()
    with lock:
        for _ in range(concurrency):
            fire()
        lock.wait_for(lambda: counts["outstanding"] == 0, timeout=duration_s + 60)
    elapsed = time.perf_counter() - start
    client.close()
    return {"calls": counts["calls"], "ok": counts["ok"], "errors": counts["errors"], "duration_s": elapsed,
            "throughput_qps": counts["ok"] / elapsed}


def sequential(url: str, calls: int, images: np.ndarray, slo_ms: float, model: str = "superserve",
               min_accuracy: float = 0.0) -> np.ndarray:
    """One call at a time (light load): the latency of each, in ms, as the client saw it."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("INPUT", [1, *images.shape[1:]], "FP32")
    inp.set_data_from_numpy(images[:1].astype(np.float32))
    params: dict[str, float] = {"slo_ms": float(slo_ms)}
    if min_accuracy > 0:
        params["min_accuracy"] = float(min_accuracy)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        client.infer(model, [inp], parameters=params)
        out.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.005)  # light load: the server is idle when each call arrives
    client.close()
    return np.array(out)


def in_subprocess(fn, *args, **kwargs):  # noqa: ANN001, ANN201
    """Run one of this module's client functions in a fresh process (see `replay_in_subprocess`)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args, kwargs)
