"""Issue 21: the device argument through every layer that runs the model: `run_batch`, the embedded thread pool, the
process pool (spawned processes) and the Redis cluster worker. This host has no GPU, so the plumbing runs with
`device="cpu"` passed explicitly, and the refusals with CUDA made unavailable; the tests at the end run on a GPU host
only (they compare the GPU's answers with the CPU's)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from superserve.server import workers
from superserve.server.workers import Batch, ProcessWorkerPool, ThreadWorkerPool, run_batch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model(serving_assets):
    """(checkpoint path, net on the CPU, {subnet_id: config}, a (3, 1, 28, 28) batch, the reference probabilities
    per subnet from a plain forward)."""
    from supernet.checkpoint import load_checkpoint
    from superserve.zoo import Zoo

    zoo_path, ckpt = serving_assets
    net, _ = load_checkpoint(ckpt)
    configs = {e.subnet_id: e.config for e in Zoo.load(zoo_path).entries}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32))
    with torch.inference_mode():
        ref = {sid: torch.softmax(net(x, cfg), dim=1).numpy() for sid, cfg in configs.items()}
    return ckpt, net, configs, x, ref


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


class Results:
    """An `on_result` callback that lets a test wait for a batch's result."""

    def __init__(self) -> None:
        self.got: dict[int, workers.BatchResult] = {}
        self._cv = threading.Condition()

    def __call__(self, result: workers.BatchResult) -> None:
        with self._cv:
            self.got[result.batch_id] = result
            self._cv.notify_all()

    def wait(self, batch_id: int, timeout_s: float = 60.0) -> workers.BatchResult:
        with self._cv:
            assert self._cv.wait_for(lambda: batch_id in self.got, timeout_s), f"no result for batch {batch_id}"
            return self.got[batch_id]


# --- run_batch ----------------------------------------------------------------------------------------------------
def test_run_batch_on_an_explicit_device_synchronises_inside_the_timed_span(model, monkeypatch):
    _, net, configs, x, ref = model
    sid = next(iter(configs))
    synced = []
    real_sync = workers.synchronize

    def recording_sync(device):
        synced.append((device, time.perf_counter()))
        real_sync(device)
    monkeypatch.setattr(workers, "synchronize", recording_sync)
    t0 = time.perf_counter()
    result = run_batch(net, configs, 7, sid, x, 3, torch.device("cpu"))
    t1 = time.perf_counter()
    assert result.error is None and (result.batch_id, result.worker_id) == (7, 3)
    assert isinstance(result.probabilities, np.ndarray) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, ref[sid], atol=1e-6)
    assert [d for d, _ in synced] == [torch.device("cpu")]  # once per batch, with the batch's device
    assert t0 < synced[0][1] < t1 and 0 < result.compute_s <= t1 - t0


def test_synchronize_waits_for_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    workers.synchronize(torch.device("cpu"))
    assert calls == []
    workers.synchronize(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]


def test_run_batch_reports_a_device_failure_instead_of_raising(model):
    _, net, configs, x, _ = model
    result = run_batch(net, configs, 1, next(iter(configs)), x, 0, torch.device("meta"))
    assert result.probabilities is None and result.error  # the engine hears about the batch either way


# --- the embedded pool ----------------------------------------------------------------------------------------------
def test_thread_pool_on_an_explicit_device(model):
    _, net, configs, x, ref = model
    results = Results()
    pool = ThreadWorkerPool(net, configs, 2, 1, results, device="cpu")
    try:
        assert pool.device == torch.device("cpu")
        pool.warm_up(torch.zeros(1, 1, 28, 28))
        for k, sid in enumerate(configs):
            pool.submit(k % 2, Batch(k, sid, (0, 1, 2), x))
        for k, sid in enumerate(configs):
            got = results.wait(k)
            assert got.error is None and got.worker_id == k % 2
            np.testing.assert_allclose(got.probabilities, ref[sid], atol=1e-6)
    finally:
        pool.close()


# --- the process pool -------------------------------------------------------------------------------------------------
def test_process_pool_on_an_explicit_device_through_spawned_processes(model):
    ckpt, _, configs, x, ref = model
    results = Results()
    pool = ProcessWorkerPool(ckpt, configs, 1, 1, results, (1, 1, 28, 28), device="cpu")
    try:
        assert pool._ctx.get_start_method() == "spawn"  # a CUDA context cannot cross a fork
        assert pool.device == "cpu" and pool.worker_devices == ["cpu"]  # what the child says it loaded onto
        for k, sid in enumerate(configs):
            pool.submit(0, Batch(k, sid, (0, 1, 2), x))
        for k, sid in enumerate(configs):
            got = results.wait(k)
            assert got.error is None
            np.testing.assert_allclose(got.probabilities, ref[sid], atol=1e-5)
    finally:
        pool.close()


def test_process_pool_refuses_cuda_without_cuda_before_starting_processes(model, no_cuda, monkeypatch):
    ckpt, _, configs, _, _ = model
    started = []
    monkeypatch.setattr(ProcessWorkerPool, "_spawn", lambda self, w: started.append(w))
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available on this host"):
        ProcessWorkerPool(ckpt, configs, 2, 1, Results(), (1, 1, 28, 28), device="cuda")
    assert started == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_the_spawned_process_checks_the_device_itself(model, monkeypatch):
    """The parent is told CUDA is there; the spawned child (a fresh interpreter, unpatched) finds none and says so:
    the device string reached the child, which loads nothing on a device it does not have."""
    ckpt, _, configs, _, _ = model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"worker process 0 failed to start: ValueError: --device cuda:0: CUDA is "
                                           r"not available on this host"):
        ProcessWorkerPool(ckpt, configs, 1, 1, Results(), (1, 1, 28, 28), device="cuda:0", start_timeout_s=120)


# --- the server -------------------------------------------------------------------------------------------------------
def test_server_with_worker_processes_on_an_explicit_device(serving_assets):
    import tritonclient.grpc as tc
    from helpers import start_fixture_server

    srv = start_fixture_server(serving_assets, workers=1, device="cpu")
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    try:
        assert type(srv.pool).__name__ == "ProcessWorkerPool" and srv.pool.worker_devices == ["cpu"]
        inp = tc.InferInput("INPUT", [2, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(np.zeros((2, 1, 28, 28), np.float32))
        out = client.infer("superserve", [inp]).as_numpy("PROBABILITIES")
        assert out.shape[0] == 2 and np.allclose(out.sum(axis=1), 1.0, atol=1e-4)
    finally:
        client.close()
        srv.stop()


def test_server_with_worker_processes_refuses_cuda_without_cuda(no_cuda, serving_assets):
    from superserve.server.app import ServeConfig, Server

    zoo, ckpt = serving_assets
    with pytest.raises(ValueError, match="CUDA is not available on this host"):
        Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True,
                           reprofile="never", device="cuda", workers=2)).start()


# --- the cluster worker -----------------------------------------------------------------------------------------------
def test_cluster_worker_refuses_cuda_without_cuda_before_connecting(no_cuda, serving_assets):
    from superserve.cluster.redis_queue import parse_backend
    from superserve.cluster.worker import ClusterWorker, WorkerConfig

    _, ckpt = serving_assets  # nothing listens on port 1: connecting first would be a BackendError instead
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available on this host"):
        ClusterWorker(parse_backend("redis://127.0.0.1:1"), WorkerConfig(ckpt, device="cuda"))


def test_cluster_worker_on_an_explicit_device(model, serving_assets, monkeypatch):
    from test_cluster import REDIS, RedisServer, wait_for

    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from superserve.cluster import worker as cluster_worker
    from superserve.cluster.frontend import FrontendConfig, RedisEngine
    from superserve.cluster.redis_queue import ClusterConfig, parse_backend
    from superserve.cluster.worker import ClusterWorker, WorkerConfig
    from superserve.records import OK
    from superserve.server.engine import EngineConfig
    from superserve.zoo import Zoo

    _, _, _, x, ref = model
    devices = []
    real = cluster_worker.run_batch

    def recording(*args):
        devices.append(args[6])
        return real(*args)
    monkeypatch.setattr(cluster_worker, "run_batch", recording)
    zoo_path, ckpt = serving_assets
    zoo = Zoo.load(zoo_path)
    rs = RedisServer()
    rs.start()
    url, ns = parse_backend(rs.url), "device"
    engine = RedisEngine(zoo, url, ClusterConfig(zoo.to_dict(), "slackfit", {"overhead_ms": 2.0}, "m"),
                         EngineConfig(default_slo_ms=600_000.0), FrontendConfig(namespace=ns)).start()
    worker = ClusterWorker(url, WorkerConfig(ckpt, namespace=ns, correction_interval_s=None, device="cpu"))
    try:
        assert worker.device == torch.device("cpu") and worker.host.device == "cpu"
        worker.load(worker.wait_for_config())
        assert next(worker._net.parameters()).device == torch.device("cpu")
        worker.register()
        info = json.loads(rs.client().get(f"{ns}:worker:{worker.worker_id}") or "{}")
        assert info.get("device") == "cpu", info
        answers: list = []
        engine.submit(x, None, 0.0, answers.append)
        assert engine.wait_sent(10)
        for _ in range(50):
            if worker.batches:
                break
            worker.step()
        wait_for(lambda: len(answers) == 1, 10, "the call's answer")
        assert answers[0].outcome == OK and answers[0].probabilities.shape == (3, zoo.space.num_classes)
        for row, subnet in enumerate(answers[0].subnet_ids):
            np.testing.assert_allclose(answers[0].probabilities[row], ref[subnet][row], atol=1e-5)
        assert devices == [torch.device("cpu")]
    finally:
        worker.deregister()
        engine.close()
        rs.kill()


# --- on a GPU host only -----------------------------------------------------------------------------------------------
@needs_cuda
def test_gpu_process_pool_answers_as_the_cpu_does(model):
    ckpt, _, configs, x, ref = model
    results = Results()
    pool = ProcessWorkerPool(ckpt, configs, 2, 1, results, (1, 1, 28, 28), device="cuda")
    try:
        assert all(d is not None and d.startswith("cuda:") for d in pool.worker_devices)
        for k, sid in enumerate(configs):
            pool.submit(k % 2, Batch(k, sid, (0, 1, 2), x))
        for k, sid in enumerate(configs):
            got = results.wait(k)
            assert got.error is None and got.compute_s > 0
            np.testing.assert_allclose(got.probabilities, ref[sid], atol=5e-3)  # cuDNN (TF32 convs), not bitwise
    finally:
        pool.close()


@needs_cuda
def test_gpu_cluster_worker_loads_onto_the_gpu(serving_assets):
    from test_cluster import REDIS, RedisServer

    from superserve.cluster.redis_queue import parse_backend
    from superserve.cluster.worker import ClusterWorker, WorkerConfig

    if REDIS is None:
        pytest.skip("redis-server is not installed")
    _, ckpt = serving_assets
    rs = RedisServer()
    rs.start()
    try:
        worker = ClusterWorker(parse_backend(rs.url), WorkerConfig(ckpt, device="cuda"))
        assert worker.device.type == "cuda" and worker.host.device == torch.cuda.get_device_name(worker.device)
    finally:
        rs.kill()


def test_superserve_worker_cli_with_an_explicit_device_serves_a_call(serving_assets):
    """README: `superserve worker --backend redis://... --device ...` beside `superserve serve --backend ...` (here
    the front end in this process): it says which device it serves on, and answers a tritonclient call."""
    import subprocess
    import sys

    import tritonclient.grpc as tc
    from test_cluster import REDIS, ROOT, RedisServer, wait_for

    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from superserve.cluster.server import ClusterServer
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    zoo, ckpt = serving_assets
    rs = RedisServer()
    rs.start()
    worker = subprocess.Popen([sys.executable, "-m", "superserve.cli", "worker", "--backend", rs.url, "--checkpoint",
                               str(ckpt), "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    server = None
    try:
        server = ClusterServer(ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True,
                                           reprofile="never", engine=EngineConfig(default_slo_ms=600_000.0)),
                               rs.url).start()
        line = worker.stdout.readline()  # printed once it has loaded and registered
        assert "serving 3 subnets (policy slackfit) from " in line and line.rstrip().endswith(" on cpu"), line
        wait_for(lambda: server.engine.accepting, 30, "the front end to see the worker")
        client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        inp = tc.InferInput("INPUT", [1, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
        out = client.infer("superserve", [inp]).as_numpy("PROBABILITIES")
        client.close()
        assert out.shape[0] == 1 and abs(float(out.sum()) - 1.0) < 1e-4
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
        if server is not None:
            server.stop(drain_timeout_s=5)
        rs.kill()
