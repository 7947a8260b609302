"""Scale-out over Redis, end to end: a real redis-server on a free port, a front end in this process, worker processes
started with `superserve worker`, the standard tritonclient. Faults: a worker SIGKILLed under load, a dead worker's
heartbeat expiring, Redis killed and restarted, a front end SIGKILLed with work queued."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import redis  # noqa: E402 - required dependencies: a missing one is a broken install, not a skip
import tritonclient.grpc as tc  # noqa: E402

from superserve.cli import main as cli_main  # noqa: E402
from superserve.cluster.redis_queue import BackendError, connect, parse_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")
SLO_MS = 5000.0  # this shared 2-core machine stalls for tens of ms: functional tests must not be shed
HEARTBEAT_TTL_S = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Our own redis-server (never the machine's): no persistence, loopback only, restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def client(self):  # noqa: ANN201
        return redis.Redis(port=self.port)


def start_worker(url: str, ckpt: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "superserve.cli", "worker", "--backend", url, "--checkpoint",
                             str(ckpt), "--heartbeat-ttl-s", str(HEARTBEAT_TTL_S)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def fp32_input(x: np.ndarray):  # noqa: ANN201
    inp = tc.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x.astype(np.float32))
    return inp


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def fire(client, calls: int, gap_s: float, on_sent=None, slo_ms: float = SLO_MS):  # noqa: ANN001, ANN201
    """Open loop: `calls` async single-image calls `gap_s` apart. Returns {k: [(ok, detail), ...]} once all answered."""
    answers: dict[int, list] = {k: [] for k in range(calls)}
    done = threading.Semaphore(0)
    inp = fp32_input(images(1, 0))

    def callback(k, result, error):  # noqa: ANN001
        answers[k].append((error is None, None if error is None else str(error)))
        done.release()

    for k in range(calls):
        client.async_infer("superserve", [inp], lambda result, error, k=k: callback(k, result, error), parameters={"slo_ms": slo_ms})
        if on_sent is not None:
            on_sent(k)
        time.sleep(gap_s)
    for _ in range(calls):
        assert done.acquire(timeout=60), "a call was never answered"
    time.sleep(0.2)  # a second answer to any call would show up here
    return answers


# --- no Redis needed ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, needle", [("http://127.0.0.1:6379", "expected redis://"),
                                         ("redis://", "no host"), ("redis://h:99999", "port"),
                                         ("redis://h:1/x", "database")])
def test_bad_backend_urls_say_what_is_wrong(url, needle):
    with pytest.raises(BackendError, match=needle):
        parse_backend(url)


def test_unreachable_redis_is_a_clear_error(capsys, serving_assets):
    port = free_port()  # nothing listens there
    with pytest.raises(BackendError, match=f"cannot reach Redis at redis://127.0.0.1:{port}"):
        connect(parse_backend(f"redis://127.0.0.1:{port}"))
    assert cli_main(["worker", "--backend", f"redis://127.0.0.1:{port}", "--checkpoint",
                     str(serving_assets[1])]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
    assert cli_main(["worker", "--backend", "tcp://x"]) == 2
    assert "expected redis://" in capsys.readouterr().err


# --- a cluster: redis-server, a front end here, two worker processes ------------------------------------------------
@pytest.fixture(scope="module")
def cluster(serving_assets):
    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from superserve.cluster.server import ClusterServer
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    rs = RedisServer()
    rs.start()
    zoo, ckpt = serving_assets
    workers = [start_worker(rs.url, ckpt) for _ in range(2)]
    config = ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True,
                         reprofile="never", engine=EngineConfig(default_slo_ms=SLO_MS))
    server = ClusterServer(config, rs.url).start()
    server.wait_ready()
    r = rs.client()
    wait_for(lambda: r.scard("superserve:workers") == 2, 90, "two workers to register")
    wait_for(lambda: server.engine.accepting, 10, "the front end to see them (its heartbeat)")
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield {"redis": rs, "server": server, "client": client, "workers": workers, "ckpt": ckpt}
    client.close()
    server.stop(drain_timeout_s=5)
    for w in workers:
        if w.poll() is None:
            w.terminate()
            w.wait(timeout=20)
    rs.kill()


@needs_redis
@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_end_to_end_through_redis_with_tritonclient(cluster, serving_assets):
    from supernet.checkpoint import load_checkpoint
    from superserve.cluster.redis_queue import ClusterConfig
    from superserve.zoo import Zoo

    client, server = cluster["client"], cluster["server"]
    assert client.is_server_ready() and client.is_model_ready("superserve")
    x = images(3, seed=1)
    result = client.infer("superserve", [fp32_input(x)], parameters={"slo_ms": SLO_MS})
    probs = result.as_numpy("PROBABILITIES")
    params = result.get_response().parameters
    subnets = params["subnet_id"].string_param.split(",")
    # With two idle workers the policy may split the call's 3 images (a batch of 2 and one of 1): then the response
    # names each image's subnet, and each row must be that subnet's output.
    assert probs.shape == (3, 10) and len(subnets) in (1, 3) and params["slo_met"].bool_param
    net, _ = load_checkpoint(serving_assets[1])
    with torch.inference_mode():
        for row, sid in enumerate(subnets * 3 if len(subnets) == 1 else subnets):
            expected = torch.softmax(net(torch.from_numpy(x[row:row + 1]), server.zoo.entry(sid).config), dim=1)
            np.testing.assert_allclose(probs[row:row + 1], expected.numpy(), rtol=1e-4, atol=1e-5)
    # An accuracy hint is honoured through Redis too.
    top = max(e.accuracy for e in server.zoo.entries)
    hinted = client.infer("superserve", [fp32_input(x[:1])], parameters={"slo_ms": SLO_MS, "min_accuracy": top})
    assert hinted.get_response().parameters["subnet_accuracy"].double_param == pytest.approx(top)
    # Shared state: the zoo profile, the worker registry with heartbeats, live metrics.
    r = cluster["redis"].client()
    published = ClusterConfig.from_json(r.get("superserve:config"))
    assert Zoo.from_dict(published.zoo) == server.zoo and published.policy == "slackfit"
    wids = sorted(int(w) for w in r.smembers("superserve:workers"))
    assert len(wids) == 2 and all(0 < r.ttl(f"superserve:worker:{w}") <= HEARTBEAT_TTL_S for w in wids)
    metrics = {k.decode(): int(v) for k, v in r.hgetall("superserve:metrics").items()}
    assert metrics["ok"] >= 4 and metrics["images"] >= 4
    # Bad input is still the codec's business: the same status and message as the embedded server.
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        client.infer("superserve", [fp32_input(images(1, 0)[:, :, :10])])


@needs_redis
@pytest.mark.slow
def test_worker_sigkilled_mid_load_every_call_answered_once(cluster):
    client, server, r = cluster["client"], cluster["server"], cluster["redis"].client()
    victim = cluster["workers"][0]
    before = {w for w in r.smembers("superserve:workers")}

    def kill_midway(k: int) -> None:
        if k == 40:
            victim.send_signal(signal.SIGKILL)

    answers = fire(client, calls=120, gap_s=0.004, on_sent=kill_midway)
    assert all(len(a) == 1 for a in answers.values()), "a call was answered twice"
    failed = [a[0][1] for a in answers.values() if not a[0][0]]
    # Served, or an explicit error naming why; never silence.
    assert all("UNAVAILABLE" in f or "DEADLINE_EXCEEDED" in f or "INTERNAL" in f for f in failed), failed
    # Only what the killed worker held can fail (its lease is re-queued once its heartbeat expires, maybe too late
    # for the SLO); the survivor serves the rest.
    assert len(failed) <= 20, f"{len(failed)} of 120 failed"
    assert server.engine.duplicates == 0
    # The dead worker's heartbeat expires; it is removed from the registry, its leased requests re-queued.
    wait_for(lambda: len(set(r.smembers("superserve:workers"))) == 1, 4 * HEARTBEAT_TTL_S + 5,
             "the killed worker to be declared dead")
    (dead,) = before - set(r.smembers("superserve:workers"))
    assert not r.exists(f"superserve:worker:{dead.decode()}") and not r.exists(f"superserve:inflight:{dead.decode()}")
    assert int(r.hget("superserve:metrics", "dead_workers") or 0) >= 1
    # The survivor carries on.
    result = client.infer("superserve", [fp32_input(images(1, 2))], parameters={"slo_ms": SLO_MS})
    assert result.as_numpy("PROBABILITIES").shape == (1, 10) and result.as_numpy("CLASS").shape == (1,)


@needs_redis
@pytest.mark.slow
def test_redis_restart_fails_in_flight_explicitly_then_recovers(cluster):
    client, rs = cluster["client"], cluster["redis"]
    killed = threading.Event()

    def kill_midway(k: int) -> None:
        if k == 20:
            rs.kill()
            killed.set()

    t0 = time.monotonic()
    answers = fire(client, calls=40, gap_s=0.005, on_sent=kill_midway)
    assert time.monotonic() - t0 < 30, "calls hung instead of failing"
    assert all(len(a) == 1 for a in answers.values())
    failed = [a[0][1] for a in answers.values() if not a[0][0]]
    assert failed and all("UNAVAILABLE" in f for f in failed), failed
    rs.start()  # same port, empty: front end and worker must reconnect and re-register

    def serves() -> bool:
        try:
            client.infer("superserve", [fp32_input(images(1, 3))], parameters={"slo_ms": SLO_MS})
            return True
        except Exception:  # noqa: BLE001 - UNAVAILABLE until the worker is back
            return False

    wait_for(serves, 30, "the cluster to serve again after the Redis restart")
    r = rs.client()
    assert r.exists("superserve:config") and r.scard("superserve:workers") >= 1


_DYING_FRONTEND = textwrap.dedent("""
    import os, signal, sys, torch
    from superserve.cluster.frontend import FrontendConfig, RedisEngine
    from superserve.cluster.redis_queue import ClusterConfig, parse_backend
    from superserve.server.engine import EngineConfig
    from superserve.zoo import Zoo
    url, zoo_path = sys.argv[1], sys.argv[2]
    zoo = Zoo.load(zoo_path)
    engine = RedisEngine(zoo, parse_backend(url), ClusterConfig(zoo.to_dict(), "slackfit", {}, "m"),
                         EngineConfig(default_slo_ms=300.0), FrontendConfig(namespace="fe-death", alive_ttl_s=1,
                                                                            grace_s=0.5)).start()
    for _ in range(5):
        engine.submit(torch.zeros(2, 1, 28, 28), None, 0.0, lambda result: None)
    assert engine.wait_sent(30)  # submit returns before the sender thread has written the calls to Redis
    print("queued", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@needs_redis
@pytest.mark.slow
def test_front_end_killed_leaves_no_orphaned_keys(cluster, serving_assets):
    r = cluster["redis"].client()
    # A registered worker that never takes anything (so the queued work is left to the TTLs alone).
    r.sadd("fe-death:workers", 999)
    r.set("fe-death:worker:999", "{}", ex=60)
    proc = subprocess.run([sys.executable, "-c", _DYING_FRONTEND, cluster["redis"].url, str(serving_assets[0])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "queued" in proc.stdout, proc.stderr
    keys = {k.decode() for k in r.keys("fe-death:*")}
    assert "fe-death:queue" in keys and sum(k.startswith("fe-death:req:") for k in keys) == 10
    # Requests live until deadline (0.3 s) + 2 x grace + 1 s; the front end's liveness key 1 s.
    wait_for(lambda: not any(k.startswith((b"fe-death:req:", b"fe-death:fe:")) for k in r.keys("fe-death:*"))
             and not r.exists("fe-death:queue", "fe-death:wake"), 10, "the dead front end's keys to expire")
    left = {k.decode() for k in r.keys("fe-death:*")}
    assert left <= {"fe-death:config", "fe-death:config_id", "fe-death:ids", "fe-death:workers",
                    "fe-death:worker:999"}, left
