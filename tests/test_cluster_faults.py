"""Faults of the Redis cluster (issue 16), end to end on our own redis-server: a stalled Redis (SIGSTOP) never blocks
the front end's event loop and turns pending calls into UNAVAILABLE within the documented bound; a Redis restart
fails pending calls and the front end re-registers by itself; a worker killed while it holds a batch has the batch
re-queued and answered by the survivor; a cancelled call's images leave the queue and are never computed; the serving
options of `superserve serve` apply (or are refused) with --backend redis."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

import tritonclient.grpc as tc  # noqa: E402

from test_cluster import (REDIS, SLO_MS, RedisServer, fp32_input, images, start_worker,  # noqa: E402
                          wait_for)

pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")
# Slack on top of the front end's documented bound (FrontendConfig.unavailable_within_s, 2.6 s): this shared 2-core
# host stalls threads for hundreds of ms at times. Generous, and still far below what the old blocking front end did
# (every call waited for the whole stall).
SLACK_S = 2.0
# ServerLive must never wait on Redis. Answered in ~1 ms normally; the bound leaves room for this busy host's stalls
# and the test's own threads sharing the GIL with the in-process server, and is still below one stalled Redis
# command's failure time (2 x 1 s), so any health check that waited on Redis fails it.
LIVE_BOUND_S = 1.5


@pytest.fixture(scope="module")
def cluster(serving_assets):
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
    wait_for(lambda: server.engine.accepting, 10, "the front end to see them")
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    state = {"redis": rs, "server": server, "client": client, "workers": workers, "ckpt": ckpt, "zoo": zoo}
    yield state
    client.close()
    server.stop(drain_timeout_s=5)
    for w in state["workers"]:
        if w.poll() is None:
            w.send_signal(signal.SIGCONT)
            w.terminate()
            w.wait(timeout=20)
    if rs.proc is not None and rs.proc.poll() is None:
        rs.proc.send_signal(signal.SIGCONT)
        rs.kill()


class Load:
    """Open-loop client load: a call every `gap_s`, each answer timestamped; counts every answer of every call."""

    def __init__(self, client, n_images: int = 1, gap_s: float = 0.02, slo_ms: float = SLO_MS) -> None:  # noqa: ANN001
        self.client, self.gap_s, self.slo_ms = client, gap_s, slo_ms
        self.inp = fp32_input(images(n_images, 0))
        self.sent: list[float] = []
        self.answers: dict[int, list[tuple[float, str]]] = {}  # k -> [(time, "OK" or status name)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            k = len(self.sent)
            with self._lock:
                self.answers[k] = []
                self.sent.append(time.monotonic())
            self.client.async_infer("superserve", [self.inp], lambda result, error, k=k: self._done(k, error),
                                    parameters={"slo_ms": self.slo_ms})
            time.sleep(self.gap_s)

    def _done(self, k: int, error) -> None:  # noqa: ANN001
        status = "OK" if error is None else str(error.status()).removeprefix("StatusCode.")
        with self._lock:
            self.answers[k].append((time.monotonic(), status))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._stop.set()
        self._thread.join()
        wait_for(lambda: all(self.answers[k] for k in range(len(self.sent))), 60, "every call to be answered")
        time.sleep(0.3)  # a second answer to any call would show up here


class Probe:
    """ServerLive and ServerReady every 50 ms on their own connection: the longest wait and each readiness seen."""

    def __init__(self, port: int) -> None:
        self.client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        self.longest_s = 0.0
        self.ready: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            assert self.client.is_server_live()
            self.longest_s = max(self.longest_s, time.monotonic() - t)
            self.ready.append((time.monotonic(), self.client.is_server_ready()))
            time.sleep(0.05)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._stop.set()
        self._thread.join()
        self.client.close()


def serves(client) -> bool:  # noqa: ANN001
    try:
        client.infer("superserve", [fp32_input(images(1, 3))], parameters={"slo_ms": SLO_MS})
        return True
    except Exception:  # noqa: BLE001 - UNAVAILABLE until Redis and the workers are back
        return False


@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_cancelled_call_leaves_the_queue_and_is_never_computed(cluster, serving_assets, tmp_path):
    """Engine level, with an in-process worker whose every dispatch the test drives (`step`): deterministic. Records
    and metrics count the cancelled images and calls."""
    import torch

    from superserve.cluster.frontend import FrontendConfig, RedisEngine
    from superserve.cluster.redis_queue import ClusterConfig, parse_backend
    from superserve.cluster.worker import ClusterWorker, WorkerConfig
    from superserve.records import CANCELLED, OK, read_jsonl
    from superserve.server.engine import EngineConfig
    from superserve.server.metrics import RecordWriter, ServerMetrics
    from superserve.zoo import Zoo

    zoo_path, ckpt = serving_assets
    zoo = Zoo.load(zoo_path)
    url, ns = parse_backend(cluster["redis"].url), "cancel"
    r = cluster["redis"].client()
    metrics, records = ServerMetrics("m", "1"), RecordWriter(tmp_path / "records.jsonl")
    engine = RedisEngine(zoo, url, ClusterConfig(zoo.to_dict(), "slackfit", {"overhead_ms": 2.0}, "m"),
                         EngineConfig(default_slo_ms=SLO_MS), FrontendConfig(namespace=ns), metrics,
                         records).start()
    worker = ClusterWorker(url, WorkerConfig(ckpt, namespace=ns, correction_interval_s=None))
    try:
        worker.load(worker.wait_for_config())
        worker.register()
        answers: list = []
        shape = (4, zoo.space.in_channels, zoo.space.image_size, zoo.space.image_size)
        cancel = engine.submit(torch.zeros(shape), None, 0.0, answers.append)
        assert engine.wait_sent(10) and r.zcard(f"{ns}:queue") == 4 and len(r.keys(f"{ns}:req:*")) == 4
        assert cancel() is True and cancel() is False  # answered once: a second cancel finds it done
        assert [a.outcome for a in answers] == [CANCELLED]
        # The counter is bumped once the sender has Redis's reply: after the keys are gone.
        wait_for(lambda: engine.withdrawn == 4, 10, "the cancelled images to be withdrawn from Redis")
        assert r.zcard(f"{ns}:queue") == 0 and not r.keys(f"{ns}:req:*")
        worker.step()  # the queue is empty: nothing to compute
        assert worker.batches == 0
        # A call submitted after it is computed and answered as usual; the cancelled one never is.
        engine.submit(torch.zeros((1, *shape[1:])), None, 0.0, answers.append)
        assert engine.wait_sent(10)
        for _ in range(20):
            if worker.batches:
                break
            worker.step()
        wait_for(lambda: len(answers) == 2, 10, "the second call's answer")
        assert answers[1].outcome == OK and answers[1].probabilities.shape[0] == 1
        assert worker.batches == 1 and int(r.hget(f"{ns}:metrics", "images")) == 1
        assert engine.duplicates == 0 and engine.late_replies == 0
        # Cancelling a call not yet written to Redis: it is never written (nothing queued afterwards).
        cancel = engine.submit(torch.zeros(shape), None, 0.0, answers.append)
        cancel()
        assert engine.wait_sent(10) and answers[-1].outcome == CANCELLED and len(answers) == 3
        wait_for(lambda: r.zcard(f"{ns}:queue") == 0, 10, "nothing left queued")
    finally:
        worker.deregister()
        engine.close()
        records.close()
    statuses = [rec.status for rec in read_jsonl(tmp_path / "records.jsonl")]
    assert sorted(statuses) == sorted([CANCELLED] * 8 + [OK])  # 4 queued + 4 never sent, cancelled; 1 served
    metrics.flush()
    assert metrics.registry.get_sample_value("superserve_requests_total", {"outcome": CANCELLED}) == 2
    metrics.close()


@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_redis_stall_never_blocks_health_checks_and_fails_pending_calls_in_bounded_time(cluster):
    from superserve.cluster.frontend import FrontendConfig

    server, client, rs = cluster["server"], cluster["client"], cluster["redis"]
    bound_s = FrontendConfig().unavailable_within_s
    stall_s = bound_s + SLACK_S + 1.5  # longer than bound + slack: a call held until SIGCONT would fail the check
    with Probe(server.port) as probe, Load(client) as load:
        time.sleep(1.0)
        rs.proc.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        time.sleep(stall_s)
        rs.proc.send_signal(signal.SIGCONT)
        t_cont = time.monotonic()
        wait_for(lambda: serves(client), 30, "the front end to serve again after SIGCONT")
        t_back = time.monotonic()
        time.sleep(0.5)
    answers = load.answers
    assert all(len(a) == 1 for a in answers.values()), "a call was answered twice"
    statuses = {a[0][1] for a in answers.values()}
    assert statuses <= {"OK", "UNAVAILABLE"}, statuses
    during = [k for k, t in enumerate(load.sent) if t_stop <= t < t_cont]
    assert during and all(answers[k][0][1] == "UNAVAILABLE" for k in during)
    # Every call in flight at the stall or sent during it: answered within the bound of max(stall start, its send).
    late = {k: answers[k][0][0] - max(t_stop, t) for k, t in enumerate(load.sent)
            if t < t_cont and answers[k][0][0] > t_stop}
    assert max(late.values()) <= bound_s + SLACK_S, sorted(late.values())[-5:]
    assert probe.longest_s < LIVE_BOUND_S, probe.longest_s
    # Not ready while Redis did not answer; ready again once it did.
    assert any(not ok for t, ok in probe.ready if t_stop < t < t_cont)
    wait_for(client.is_server_ready, 10, "ServerReady to say ready again")  # the heartbeat sees workers re-register
    assert t_back - t_cont < 30 and server.engine.duplicates == 0


def test_redis_restart_fails_pending_calls_and_the_front_end_reregisters(cluster):
    server, client, rs = cluster["server"], cluster["client"], cluster["redis"]
    engine = server.engine
    r = rs.client()
    losses = engine.state_losses
    for w in cluster["workers"]:  # hold the workers: the calls stay queued in Redis
        w.send_signal(signal.SIGSTOP)
    try:
        got: dict[int, list[str]] = {k: [] for k in range(5)}
        inp = fp32_input(images(2, 1))
        for k in range(5):
            client.async_infer("superserve", [inp], lambda result, error, k=k: got[k].append(
                "OK" if error is None else str(error.status()).removeprefix("StatusCode.")),
                parameters={"slo_ms": 20000.0})
        wait_for(lambda: r.zcard("superserve:queue") == 10, 10, "the calls to be queued")
        rs.kill()
        t_kill = time.monotonic()
        wait_for(lambda: all(got.values()), 20, "the pending calls to be answered")
        assert time.monotonic() - t_kill < 20
        assert all(v == ["UNAVAILABLE"] for v in got.values()), got
        rs.start()  # same port, empty
    finally:
        for w in cluster["workers"]:
            w.send_signal(signal.SIGCONT)
    r = rs.client()
    wait_for(lambda: serves(client), 30, "the cluster to serve again after the Redis restart")
    # Re-registered by itself: the zoo republished, its liveness key back, counted as a state loss.
    assert r.exists("superserve:config") and r.exists(engine._alive_key) and engine.state_losses > losses
    time.sleep(0.3)
    assert all(len(v) == 1 for v in got.values()) and engine.duplicates == 0


def _worker_ids(r) -> dict[int, int]:  # noqa: ANN001
    """pid -> worker id, from the registry's heartbeat keys."""
    import json

    out = {}
    for wid in r.smembers("superserve:workers"):
        info = r.get(f"superserve:worker:{wid.decode()}")
        if info is not None:
            out[json.loads(info)["pid"]] = int(wid)
    return out


@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_worker_killed_while_holding_a_batch_has_it_requeued_and_answered_once(cluster):
    server, client, rs = cluster["server"], cluster["client"], cluster["redis"]
    r = rs.client()
    wait_for(lambda: len(_worker_ids(r)) == 2, 30, "both workers registered")
    victim = cluster["workers"][0]
    wid = _worker_ids(r)[victim.pid]
    requeued_before = int(r.hget("superserve:metrics", "requeued") or 0)
    held: set[bytes] = set()
    with Load(client, n_images=4, gap_s=0.02) as load:
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:  # catch the victim between CLAIM and COMPLETE
            if r.scard(f"superserve:inflight:{wid}"):
                victim.send_signal(signal.SIGSTOP)
                time.sleep(0.05)  # the signal is delivered; the lease set cannot change now until the reaper runs
                held = r.smembers(f"superserve:inflight:{wid}")
                if not held:  # it completed just before the stop: let it go and try again
                    victim.send_signal(signal.SIGCONT)
        assert held, "never caught the worker holding a batch"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # Its heartbeat expires (2 s), the reaper re-queues its lease, the survivor serves it.
        wait_for(lambda: int(r.hget("superserve:metrics", "requeued") or 0) >= requeued_before + len(held), 20,
                 "the dead worker's batch to be re-queued")
        time.sleep(0.5)
    answers = load.answers
    assert all(len(a) == 1 for a in answers.values()), "a call was answered twice"
    assert {a[0][1] for a in answers.values()} <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert all(int(rid) in server.engine._answered for rid in held), "a re-queued request got no answer"
    assert server.engine.duplicates == 0
    assert not r.exists(f"superserve:inflight:{wid}") and str(wid).encode() not in r.smembers("superserve:workers")
    # Back to two workers for whatever runs next.
    cluster["workers"][0] = start_worker(rs.url, cluster["ckpt"])
    wait_for(lambda: len(_worker_ids(r)) == 2, 90, "the replacement worker to register")


# --- the serving options with --backend redis -----------------------------------------------------------------------
@pytest.fixture()
def front_end(cluster, serving_assets):
    """Start a ClusterServer with the given security options on the cluster's Redis, namespace `ns` (default: the
    live cluster's, whose workers serve it); stops them all at the end."""
    from superserve.cluster.frontend import FrontendConfig
    from superserve.cluster.server import ClusterServer
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    started = []

    def start(ns: str = "superserve", **security) -> tuple:  # noqa: ANN003
        from superserve.server.security import SecurityConfig

        zoo, ckpt = serving_assets
        config = ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True,
                             reprofile="never", engine=EngineConfig(default_slo_ms=SLO_MS),
                             security=SecurityConfig(**security))
        server = ClusterServer(config, cluster["redis"].url, FrontendConfig(namespace=ns, grace_s=0.5)).start()
        started.append(server)
        return server, tc.InferenceServerClient(f"127.0.0.1:{server.port}")

    yield start
    for server in started:
        server.stop(drain_timeout_s=5)


def _stuck_namespace(r, ns: str) -> None:  # noqa: ANN001
    """A registered worker that never takes anything: calls stay queued until their deadline + grace."""
    r.sadd(f"{ns}:workers", 999)
    r.set(f"{ns}:worker:999", "{}", ex=120)


def _status(fn) -> str:  # noqa: ANN001
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return str(exc.status()).removeprefix("StatusCode.")
    return "OK"


def test_api_keys_and_rate_limit_apply_with_redis(front_end):
    key = "k" * 24
    server, client = front_end(api_keys={"alice": key}, rate_limit_images_per_s=0.5, rate_burst_images=3)
    headers = {"authorization": f"Bearer {key}"}
    x = fp32_input(images(2, 4))
    assert _status(lambda: client.infer("superserve", [x], parameters={"slo_ms": SLO_MS})) == "UNAUTHENTICATED"
    result = client.infer("superserve", [x], parameters={"slo_ms": SLO_MS}, headers=headers)  # 2 of 3 tokens
    assert result.as_numpy("PROBABILITIES").shape[0] == 2
    assert _status(lambda: client.infer("superserve", [x], parameters={"slo_ms": SLO_MS},
                                        headers=headers)) == "RESOURCE_EXHAUSTED"
    client.close()


def test_inflight_cap_applies_with_redis(front_end, cluster):
    ns = "capped"
    r = cluster["redis"].client()
    _stuck_namespace(r, ns)
    server, client = front_end(ns=ns, max_inflight_per_tenant=1)
    first: list[str] = []
    client.async_infer("superserve", [fp32_input(images(1, 5))], lambda result, error: first.append(
        "OK" if error is None else str(error.status()).removeprefix("StatusCode.")), parameters={"slo_ms": 1500.0})
    wait_for(lambda: r.zcard(f"{ns}:queue") == 1, 10, "the first call to be queued")
    assert _status(lambda: client.infer("superserve", [fp32_input(images(1, 6))])) == "RESOURCE_EXHAUSTED"
    wait_for(lambda: bool(first), 15, "the first call's answer")  # nobody computes it: UNAVAILABLE after the grace
    assert first == ["UNAVAILABLE"]
    client.close()


def test_hint_defense_applies_with_redis(front_end, cluster):
    from superserve.cluster.redis_queue import parse_member

    ns = "defended"
    r = cluster["redis"].client()
    _stuck_namespace(r, ns)
    server, client = front_end(ns=ns, hint_defense="noise:acc=0.05", defense_seed=0)
    accs = sorted(e.accuracy for e in server.zoo.entries)
    asked = (accs[0] + accs[-1]) / 2
    client.async_infer("superserve", [fp32_input(images(8, 7))], lambda result, error: None,
                       parameters={"slo_ms": 1000.0, "min_accuracy": asked})
    wait_for(lambda: r.zcard(f"{ns}:queue") == 8, 10, "the call's 8 images to be queued")
    hints = [parse_member(m)[2] for m in r.zrange(f"{ns}:queue", 0, -1)]
    # Each image carries its own transformed hint (without the defense all 8 would be `asked`).
    assert len(set(hints)) > 1 and any(abs(h - asked) > 1e-9 for h in hints), hints
    samples = server.metrics.registry.get_sample_value("superserve_defense_images_total", {"changed": "yes"})
    assert samples is not None and samples >= 1
    client.close()


def test_worker_side_options_are_refused_on_a_front_end(cluster, serving_assets):
    from superserve.cluster.server import ClusterServer
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    zoo, ckpt = serving_assets
    base = ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True, reprofile="never")
    for change, needle in ((dict(workers=2), "--workers"), (dict(threads_per_worker=2), "--threads"),
                           (dict(engine=EngineConfig(correction_interval_s=None)), "--no-correction"),
                           (dict(engine=EngineConfig(late="serve")), "--late serve")):
        from dataclasses import replace

        with pytest.raises(ValueError, match=needle):
            ClusterServer(replace(base, **change), cluster["redis"].url).start()


def test_queue_full_is_answered_resource_exhausted_later(cluster, serving_assets):
    """The capacity check happens in Redis, after submit returned: the call gets REJECTED through on_done."""
    import torch

    from superserve.cluster.frontend import FrontendConfig, RedisEngine
    from superserve.cluster.redis_queue import ClusterConfig, parse_backend
    from superserve.records import REJECTED
    from superserve.server.engine import EngineConfig
    from superserve.zoo import Zoo

    zoo = Zoo.load(serving_assets[0])
    ns = "full"
    r = cluster["redis"].client()
    _stuck_namespace(r, ns)
    engine = RedisEngine(zoo, parse_backend(cluster["redis"].url),
                         ClusterConfig(zoo.to_dict(), "slackfit", {}, "m"),
                         EngineConfig(default_slo_ms=2000.0, queue_capacity=4), FrontendConfig(namespace=ns)).start()
    try:
        answers: list = []
        x = torch.zeros(3, zoo.space.in_channels, zoo.space.image_size, zoo.space.image_size)
        engine.submit(x, None, 0.0, answers.append)
        engine.submit(x, None, 0.0, answers.append)  # 3 + 3 > 4
        assert engine.wait_sent(10)
        wait_for(lambda: bool(answers), 5, "the refusal")
        assert answers[0].outcome == REJECTED and "queue full (3 of 4" in answers[0].message
        assert r.zcard(f"{ns}:queue") == 3
    finally:
        engine.close()


def test_no_worker_is_answered_unavailable_not_raised(cluster, serving_assets):
    import torch

    from superserve.cluster.frontend import FrontendConfig, RedisEngine
    from superserve.cluster.redis_queue import ClusterConfig, parse_backend
    from superserve.records import UNAVAILABLE
    from superserve.server.engine import EngineConfig
    from superserve.zoo import Zoo

    zoo = Zoo.load(serving_assets[0])
    engine = RedisEngine(zoo, parse_backend(cluster["redis"].url), ClusterConfig(zoo.to_dict(), "slackfit", {}, "m"),
                         EngineConfig(), FrontendConfig(namespace="nobody")).start()
    try:
        assert not engine.accepting  # ServerReady: no worker registered
        answers: list = []
        engine.submit(torch.zeros(1, zoo.space.in_channels, zoo.space.image_size, zoo.space.image_size), None, 0.0,
                      answers.append)
        wait_for(lambda: bool(answers), 10, "the answer")
        assert answers[0].outcome == UNAVAILABLE and "no superserve worker is registered" in answers[0].message
        assert np.isnan(answers[0].accuracy)
    finally:
        engine.close()


def test_grpc_deadline_withdraws_the_calls_images_from_redis(front_end, cluster):
    """The servicer cancels a call whose gRPC deadline passed; with --backend redis its images leave the queue (SLO
    60 s: nothing else would take them out within the test's wait)."""
    ns = "deadline"
    r = cluster["redis"].client()
    _stuck_namespace(r, ns)
    server, client = front_end(ns=ns)
    assert _status(lambda: client.infer("superserve", [fp32_input(images(4, 8))], parameters={"slo_ms": 60000.0},
                                        client_timeout=1.0)) == "DEADLINE_EXCEEDED"
    wait_for(lambda: server.engine.withdrawn == 4, 10, "the expired call's images to be withdrawn")
    assert r.zcard(f"{ns}:queue") == 0 and not r.keys(f"{ns}:req:*")
    client.close()
