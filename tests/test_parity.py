"""Parity: the simulator, the embedded engine and the Redis cluster's workers schedule a trace the same way.

All three drive the one dispatch core (`superserve.dispatch`); only the clock, the queue and the executor differ. Here
the same trace goes through:
- the simulator, noise off (service time = the zoo's median table, plus the policy's switch cost);
- the embedded `Engine`, on an injected clock, with a fake worker pool whose batches take exactly those service
  times (a discrete-event loop that orders events as the simulator does: a completion before an arrival at the same
  instant);
- the cluster's `ClusterWorker`s against a real redis-server (started here), the same discrete-event loop driving
  their `step` on an injected clock, the forward pass replaced by zeros; the trace is enqueued with the front ends'
  ENQUEUE script and the outcomes are read back from the replies the workers and CLAIM push (stateless policies:
  each cluster worker keeps its own policy state, see below).
Each must produce the same batches (dispatch time, worker, subnet, requests), the same shed set and the same ok/late
outcome for every request. A driver that grows its own copy of the loop drifts from the others and fails here; so
does one that calls the policy itself (checked on the sources).
"""

from __future__ import annotations

import heapq
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from loadtest import traces
from policies.base import make_policy
from superserve.experiments import capacity_qps
from superserve.outcomes import Outcome
from superserve.records import STATUSES
from superserve.server.engine import Engine, EngineConfig
from superserve.server.workers import BatchResult
from superserve.sim import ServiceTimes, SimConfig, simulate
from superserve.synthetic import load_zoo

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 3
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def zoo():
    return load_zoo(None)[0]  # the shipped 12-subnet table


def make_trace(zoo, n: int, load: float, seed: int):
    """A bursty trace (gamma, CV² 4) at `load` x the capacity, two SLO classes, a quarter of it with accuracy hints
    (all within reach: the engine refuses a hint above the best subnet outright)."""
    rng = np.random.default_rng(seed)
    rate = load * capacity_qps(zoo, WORKERS, 36.0)
    arrivals = traces.gamma(rate, 4.0, 1.2 * n / rate, rng)[:n]
    arrivals = np.unique(arrivals)  # distinct instants: each arrival is its own event in every driver
    slo_ms = rng.choice([36.0, 72.0], size=len(arrivals))
    accs = sorted(e.accuracy for e in zoo.entries)
    hints = rng.choice([0.0, accs[len(accs) // 2], accs[-1]], size=len(arrivals), p=[0.75, 0.15, 0.10])
    return arrivals, slo_ms, hints


def batches_of(rows):
    """{(dispatch_s, worker): (subnet, sorted request ids)} from (rid, dispatch_s, worker, subnet) rows."""
    out: dict[tuple[float, int], tuple[str, list[int]]] = {}
    for rid, disp, worker, subnet in rows:
        sid, ids = out.setdefault((disp, worker), (subnet, []))
        assert sid == subnet, f"one batch, two subnets: {sid} and {subnet}"
        ids.append(rid)
    return {k: (s, sorted(ids)) for k, (s, ids) in out.items()}


def run_sim(zoo, policy_name, late, arrivals, slo_ms, hints):
    table = simulate(arrivals, make_policy(policy_name, zoo), slo_ms, hints,
                     SimConfig(workers=WORKERS, late=late, noise=False))
    status = {i: STATUSES[int(s)] for i, s in enumerate(table.status)}
    served = [(i, float(table.dispatch_s[i]), int(table.worker_id[i]), table.subnet_ids[int(table.subnet[i])])
              for i in range(len(table)) if status[i] in (Outcome.OK, Outcome.LATE)]
    return status, batches_of(served)


class _Executor:
    """Workers whose batches take the simulator's noiseless service time (plus the switch cost on a change)."""

    def __init__(self, zoo, policy_name: str) -> None:
        self.service = ServiceTimes(zoo, False, np.random.default_rng(0))
        self.index = {sid: i for i, sid in enumerate(zoo.subnet_ids)}
        self.switch_s = make_policy(policy_name, zoo).switch_ms * 1e-3
        self.loaded: dict[int, str] = {}
        self.events: list = []  # (finish_s, seq, ...)
        self.seq = 0

    def start(self, now: float, worker: int, subnet_id: str, size: int, payload) -> None:  # noqa: ANN001
        t = self.service(self.index[subnet_id], size)
        if self.loaded.get(worker, subnet_id) != subnet_id:
            t += self.switch_s
        self.loaded[worker] = subnet_id
        heapq.heappush(self.events, (now + t, self.seq, payload))
        self.seq += 1


def run_engine(zoo, policy_name, late, arrivals, slo_ms, hints):
    clock = [0.0]
    ex = _Executor(zoo, policy_name)
    dispatched = []

    class Pool:
        size = WORKERS

        def submit(self, worker_id, batch) -> None:  # noqa: ANN001
            for rid in batch.request_ids:
                dispatched.append((rid, clock[0], worker_id, batch.subnet_id))
            ex.start(clock[0], worker_id, batch.subnet_id, len(batch.request_ids), (worker_id, batch))

    engine = Engine(zoo, lambda z: make_policy(policy_name, z),
                    EngineConfig(default_slo_ms=100.0, late=late, queue_capacity=1 << 20, correction_interval_s=None),
                    clock=lambda: clock[0])
    engine.start(Pool())
    x = torch.zeros((1, zoo.space.in_channels, zoo.space.image_size, zoo.space.image_size))
    outcome: dict[int, str] = {}
    i, n = 0, len(arrivals)
    while i < n or ex.events:
        if ex.events and (i == n or ex.events[0][0] <= arrivals[i]):  # a completion first on a tie, as the sim
            fin, _, (worker, batch) = heapq.heappop(ex.events)
            clock[0] = fin
            probs = np.zeros((len(batch.request_ids), NUM_CLASSES), dtype=np.float32)
            engine.on_result(BatchResult(batch.batch_id, worker, probs, None, 0.0))
        else:
            clock[0] = float(arrivals[i])
            engine.submit(x, float(slo_ms[i]), float(hints[i]),
                          lambda r, i=i: outcome.__setitem__(i, r.outcome), arrival_s=float(arrivals[i]))
            i += 1  # single-image calls: the engine's request id is the trace index
    assert len(outcome) == n, "every call answered"
    return outcome, batches_of(dispatched)


@pytest.mark.parametrize("policy_name, late, load", [("slackfit", "shed", 1.5), ("slackfit", "serve", 2.5),
                                                     ("clipper+", "shed", 1.0), ("infaas", "shed", 1.2)])
def test_engine_schedules_a_trace_as_the_simulator_predicts(zoo, policy_name, late, load):
    arrivals, slo_ms, hints = make_trace(zoo, 3000, load, seed=7)
    sim_status, sim_batches = run_sim(zoo, policy_name, late, arrivals, slo_ms, hints)
    eng_status, eng_batches = run_engine(zoo, policy_name, late, arrivals, slo_ms, hints)
    shed = {i for i, s in sim_status.items() if s == Outcome.SHED}
    assert shed == {i for i, s in eng_status.items() if s == Outcome.SHED}
    assert sim_status == eng_status  # ok / late / shed, request for request
    assert sim_batches == eng_batches  # the same batches: when, on which worker, which subnet, which requests
    # The trace exercises what it should: batching, both on-time and late or shed requests, more than one subnet.
    assert max(len(ids) for _, ids in sim_batches.values()) > 1
    if policy_name == "slackfit":  # the fixed-subnet baselines run one
        assert len({s for s, _ in sim_batches.values()}) > 1
    assert any(s != Outcome.OK for s in sim_status.values()) and Outcome.OK in sim_status.values()


# --- the cluster path ----------------------------------------------------------------------------------------------
REDIS = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_server():
    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from test_cluster import RedisServer

    rs = RedisServer()
    rs.start()
    yield rs
    rs.kill()


def run_cluster(zoo, policy_name, arrivals, slo_ms, hints, url: str, namespace: str, monkeypatch):
    from superserve.cluster import worker as worker_mod
    from superserve.cluster.redis_queue import ClusterConfig, Keys, Scripts, connect, decode_reply, member, \
        parse_backend
    from superserve.cluster.worker import ClusterWorker, WorkerConfig

    clock = [0.0]
    monkeypatch.setattr(worker_mod, "wall_clock", lambda: clock[0])

    def forward(net, configs, batch_id, subnet_id, inputs, worker_id, *args):  # noqa: ANN001 - zeros, no model
        return BatchResult(batch_id, worker_id, np.zeros((inputs.shape[0], NUM_CLASSES), np.float32), None, 0.0)

    monkeypatch.setattr(worker_mod, "run_batch", forward)
    backend = parse_backend(url)
    client = connect(backend)
    keys = Keys(namespace)
    scripts = Scripts(client, keys)
    fe = "parity"
    client.set(keys.frontend(fe), "1")  # the front end's liveness key (no TTL: this test's clock is not Redis's)
    published = ClusterConfig(zoo.to_dict(), policy_name, {}, "m")
    sample_shape = (zoo.space.in_channels, zoo.space.image_size, zoo.space.image_size)
    ex = _Executor(zoo, policy_name)
    workers, execute, started = [], [], []
    for _ in range(WORKERS):
        w = ClusterWorker(backend, WorkerConfig(checkpoint=Path("unused"), namespace=namespace,
                                                correction_interval_s=None))
        w.register()
        w.published, w.zoo, w.configs, w.sample_shape = published, zoo, {}, sample_shape
        w.install_scheduler(zoo)
        execute.append(w._execute)  # the real completion, run at the batch's simulated finish
        w._execute = lambda wid, d, fes, inputs, j=len(workers): started.append((j, (wid, d, fes, inputs)))
        workers.append(w)
    idle = list(range(WORKERS - 1, -1, -1))  # a stack, worker 0 first, as the core's
    payload = np.zeros(sample_shape, np.float32).tobytes()

    def schedule() -> None:  # DispatchCore.schedule over the cluster's workers: the same loop, one step per worker
        while idle and client.zcard(keys.queue):
            j = idle[-1]
            before = client.zcard(keys.queue)
            workers[j].step()
            if started:
                j, args = started.pop()
                idle.pop()
                d = args[1]
                ex.start(clock[0], j, d.subnet_id, len(d.request_ids), (j, args))
            elif client.zcard(keys.queue) == before:
                break  # the policy had nothing to do

    i, n = 0, len(arrivals)
    while i < n or ex.events:
        if ex.events and (i == n or ex.events[0][0] <= arrivals[i]):
            fin, _, (j, args) = heapq.heappop(ex.events)
            clock[0] = fin
            execute[j](*args)
            idle.append(j)
        else:
            t = float(arrivals[i])
            clock[0] = t
            deadline = t + float(slo_ms[i]) * 1e-3  # as the simulator computes it
            res = scripts.enqueue(keys=[keys.queue, keys.wake, keys.workers, keys.frontend(fe)],
                                  args=[keys.prefix, 1 << 20, fe, 1, i, repr(deadline), member(i, t, float(hints[i])),
                                        payload, 3600])
            assert int(res) == 1
            i += 1
        schedule()
    replies = [decode_reply(raw) for raw in client.lrange(keys.replies(fe), 0, -1)]
    wid_slot = {w.worker_id: j for j, w in enumerate(workers)}
    status = {r.rid: r.status for r in replies}
    assert len(replies) == n == len(status), "one reply per request"
    served = [(r.rid, r.dispatch_s, wid_slot[r.worker_id], r.subnet_id) for r in replies if r.status in ("ok", "late")]
    client.close()
    return status, batches_of(served)


# Stateless policies only: a cluster worker is its own process with its own policy state (Clipper+'s AIMD batch cap
# is per worker there, one shared cap in the engine and the simulator), so a stateful policy's batches differ by
# design, not by drift.
@pytest.mark.parametrize("policy_name, load", [("slackfit", 5.0), ("infaas", 3.0)])
def test_cluster_workers_schedule_a_trace_as_the_simulator_predicts(zoo, redis_server, policy_name, load,
                                                                     monkeypatch):
    arrivals, slo_ms, hints = make_trace(zoo, 1200, load, seed=11)
    sim_status, sim_batches = run_sim(zoo, policy_name, "shed", arrivals, slo_ms, hints)
    status, batches = run_cluster(zoo, policy_name, arrivals, slo_ms, hints, redis_server.url,
                                  f"parity-{policy_name}", monkeypatch)
    assert status == {i: str(s) for i, s in sim_status.items()}  # ok / late / shed, request for request
    assert batches == sim_batches
    assert any(s == "shed" for s in status.values()) or any(s == "late" for s in status.values())
    assert max(len(ids) for _, ids in batches.values()) > 1


def test_only_the_core_calls_the_policy():
    """The scheduling loop lives in superserve/dispatch.py: no driver decides or observes on its own."""
    drivers = ["superserve/sim.py", "superserve/server/engine.py", "superserve/cluster/worker.py",
               "superserve/cluster/frontend.py"]
    for path in drivers:
        source = (ROOT / path).read_text()
        calls = re.findall(r"(?<![`\w.])(\w+)\.(decide|observe)\(", source)  # in code, not in `quoted` prose
        assert all(name == "core" for name, _ in calls), \
            f"{path} calls the policy itself: use superserve.dispatch.DispatchCore"
        assert "late_subnet" not in source and "BatchOutcome(" not in source, path


# --- what the doors need from an engine -----------------------------------------------------------------------------
def test_both_engines_satisfy_the_servicer_protocol(zoo):
    import inspect

    from superserve.cluster.frontend import RedisEngine
    from superserve.server.engine_api import ServingEngine

    for cls in (Engine, RedisEngine):
        for name in ("submit", "drain"):
            want = inspect.signature(getattr(ServingEngine, name)).parameters
            got = inspect.signature(getattr(cls, name)).parameters
            assert list(got) == list(want), f"{cls.__name__}.{name}{tuple(got)} is not the protocol's {tuple(want)}"
            assert [p.default for p in got.values()] == [p.default for p in want.values()], (cls.__name__, name)
        for name in ("accepting", "serving"):
            assert isinstance(getattr(cls, name), property), (cls.__name__, name)
    engine = Engine(zoo, lambda z: make_policy("slackfit", z), EngineConfig(correction_interval_s=None))
    assert isinstance(engine, ServingEngine)


def test_the_engine_and_the_core_import_without_grpc_or_torch():
    """Refusals are values: only the doors know gRPC; torch is loaded by the worker pool, not by scheduling."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['grpc'] = None; sys.modules['torch'] = None\n"
            "import superserve.dispatch, superserve.outcomes, superserve.sim, superserve.server.engine\n"
            "import superserve.server.engine_api")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
