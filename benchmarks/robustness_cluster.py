"""Faults of the Redis cluster under steady load (issue 16): what the clients see when a worker is killed, Redis
restarts, Redis stalls for 8 s, or a front end is killed.

One run, on this host: our own redis-server on a free port, a front end (`superserve serve --backend ...`, its own
process) and two `superserve worker` processes (heartbeat TTL 2 s), the shipped checkpoint and zoo. A client in this
process sends one single-image call every `1 / rate_qps` seconds (open loop, SLO `slo_ms`) for the whole run and
probes ServerLive every 50 ms on its own connection. The faults, one after the other, each observed for
`seconds_per_fault` seconds from its start (at least the fault's length + 4 s):

  worker_kill     SIGKILL one of the two workers (then a replacement is started and waited for, between phases)
  redis_restart   SIGKILL redis-server, restart it empty on the same port 1 s later
  redis_stall     SIGSTOP redis-server for 8 s, then SIGCONT
  frontend_kill   SIGKILL the front-end process, start a new one on the same port 1 s later (as a supervisor would)

Per fault, over the calls sent in its phase: calls sent, lost (never answered, or only by the client's own 60 s
timeout), answered twice, answered with each status, the longest wait for an answer (sending to answer), the longest
ServerLive round trip from the fault's start to the phase's end (and probes that failed: a killed front end answers
none, so its longest is over the probes its successor answered in the phase, NaN if none), and the recovery time: from
the fault's end (kill, restart, SIGCONT, the new front end's launch) to the answer of the first call sent after it
that succeeded (for the front end, that includes the new process's start-up). The worker kill's recovery is that of
the cluster, which kept a worker; the dead one's replacement is started after the phase. The client's gRPC
channel reconnects with a 0.1-0.5 s backoff (gRPC's default starts at 1 s and grows; that would be the client's
delay, not the cluster's).

    nice -n 10 python benchmarks/robustness_cluster.py    # writes benchmarks/results/robustness_cluster.json
    python benchmarks/robustness_cluster.py --seconds-per-fault 10 --rate-qps 20

`measure_cluster_faults()` returns the flat headline; benchmarks/robustness.py merges it into its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (free_port, grpc_ready, redis_server_binary, start_redis, stop_processes,  # noqa: E402
                                wait_for, write_result)

STALL_S = 8.0
FAULTS = ("worker_kill", "redis_restart", "redis_stall", "frontend_kill")
STATUSES = ("ok", "unavailable", "deadline_exceeded", "resource_exhausted", "internal", "other")
CLIENT_TIMEOUT_S = 60.0
HEARTBEAT_TTL_S = 2
_CHANNEL_ARGS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                 ("grpc.max_reconnect_backoff_ms", 500)]


class _Cluster:
    """Our own redis-server, front end and workers (processes), restartable; `close()` ends them all."""

    def __init__(self, slo_ms: float, checkpoint: Path, zoo: Path) -> None:
        import redis

        redis_server_binary()  # fail before starting anything when it is missing
        self.redis_port, self.fe_port = free_port(), free_port()
        self.url = f"redis://127.0.0.1:{self.redis_port}"
        self.slo_ms, self.checkpoint, self.zoo = slo_ms, checkpoint, zoo
        self.redis: subprocess.Popen | None = None
        self.frontend: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.r = redis.Redis(port=self.redis_port, socket_timeout=2)

    def start_redis(self) -> None:  # on the same port each time: a restart is one of the faults
        self.redis = start_redis(self.redis_port)

    def start_frontend(self) -> None:
        self.frontend = subprocess.Popen(
            [sys.executable, "-m", "superserve.cli", "serve", "--backend", self.url, "--port", str(self.fe_port),
             "--metrics-port", "-1", "--reprofile", "never", "--default-slo-ms", str(self.slo_ms),
             "--checkpoint", str(self.checkpoint), "--zoo", str(self.zoo)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_worker(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "superserve.cli", "worker", "--backend", self.url,
                                 "--checkpoint", str(self.checkpoint), "--heartbeat-ttl-s", str(HEARTBEAT_TTL_S)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(proc)
        return proc

    def live_workers(self) -> int:
        try:
            return int(self.r.scard("superserve:workers"))
        except Exception:  # noqa: BLE001 - Redis restarting
            return 0

    def close(self) -> None:
        stop_processes([self.frontend, *self.workers], timeout_s=30)
        stop_processes([self.redis], sig=signal.SIGKILL)


class _Load:
    """The steady client load and the ServerLive probe, both for the whole run; every answer timestamped."""

    def __init__(self, port: int, rate_qps: float, slo_ms: float, seed: int) -> None:
        import tritonclient.grpc as tc

        self.client = tc.InferenceServerClient(f"127.0.0.1:{port}", channel_args=_CHANNEL_ARGS)
        self.probe_client = tc.InferenceServerClient(f"127.0.0.1:{port}", channel_args=_CHANNEL_ARGS)
        x = np.random.default_rng(seed).standard_normal((1, 1, 28, 28)).astype(np.float32)
        self.inp = tc.InferInput("INPUT", list(x.shape), "FP32")
        self.inp.set_data_from_numpy(x)
        self.gap_s, self.slo_ms = 1.0 / rate_qps, slo_ms
        self.sent: list[float] = []
        self.answers: list[list[tuple[float, str]]] = []
        self.probes: list[tuple[float, float | None]] = []  # (start, round trip or None when it failed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._probe, daemon=True)]

    def start(self) -> "_Load":
        for t in self._threads:
            t.start()
        return self

    def _send(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                k = len(self.sent)
                self.sent.append(time.monotonic())
                self.answers.append([])
            self.client.async_infer("superserve", [self.inp], lambda result, error, k=k: self._done(k, error),
                                    parameters={"slo_ms": self.slo_ms}, client_timeout=CLIENT_TIMEOUT_S)
            next_t += self.gap_s
            time.sleep(max(0.0, next_t - time.monotonic()))

    def _done(self, k: int, error) -> None:  # noqa: ANN001
        if error is None:
            status = "ok"
        else:
            status = str(error.status()).removeprefix("StatusCode.").lower()
            if status == "deadline_exceeded" and "Deadline Exceeded" in str(error.message()):
                status = "client_timeout"  # gRPC's own deadline on the client side: never answered
            elif status not in STATUSES:
                status = "other"
        with self._lock:
            self.answers[k].append((time.monotonic(), status))

    def _probe(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.probe_client.is_server_live(client_timeout=20)
                self.probes.append((t, time.monotonic() - t))
            except Exception:  # noqa: BLE001 - a killed front end answers nothing
                self.probes.append((t, None))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S + 5
        while time.monotonic() < deadline and not all(self.answers):
            time.sleep(0.1)
        time.sleep(0.5)  # a second answer to any call would show up here
        self.client.close()
        self.probe_client.close()


def _phase_summary(load: _Load, name: str, start: float, fault: float, fault_end: float, end: float,
                   recovery_until: float) -> dict:
    with load._lock:
        idx = [k for k, t in enumerate(load.sent) if start <= t < end]
        answers = {k: list(load.answers[k]) for k in idx}
    out: dict[str, float] = {f"{name}_calls_sent": len(idx)}
    out[f"{name}_calls_lost"] = sum(1 for a in answers.values() if not a or a[0][1] == "client_timeout")
    out[f"{name}_calls_answered_twice"] = sum(1 for a in answers.values() if len(a) > 1)
    for status in STATUSES:
        out[f"{name}_answered_{status}_calls"] = sum(1 for a in answers.values() if a and a[0][1] == status)
    waits = [answers[k][0][0] - load.sent[k] for k in idx if answers[k] and answers[k][0][1] != "client_timeout"]
    out[f"{name}_longest_answer_s"] = round(max(waits), 3) if waits else float("nan")
    probes = [(t, rtt) for t, rtt in load.probes if fault <= t < end]
    ok_rtts = [rtt for _, rtt in probes if rtt is not None]
    out[f"{name}_longest_live_ms"] = round(1e3 * max(ok_rtts), 1) if ok_rtts else float("nan")
    out[f"{name}_live_probes_failed"] = sum(1 for _, rtt in probes if rtt is None)
    with load._lock:  # recovery may come after the phase (a front end's restart): up to the next phase's start
        after = [a[0][0] for t, a in zip(load.sent, load.answers)
                 if fault_end <= t < recovery_until and a and a[0][1] == "ok"]
    out[f"{name}_recovery_s"] = round(min(after) - fault_end, 3) if after else float("nan")
    return out


def measure_cluster_faults(seconds_per_fault: float = 12.0, seed: int = 0, rate_qps: float = 20.0,
                           slo_ms: float = 1000.0, checkpoint: Path | None = None, zoo: Path | None = None,
                           progress: bool = True) -> dict[str, float]:
    """Run the four faults under steady load on a cluster of our own; the flat headline (units in key names)."""
    from tqdm import tqdm

    from superserve.cluster.frontend import FrontendConfig
    from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO

    observe_s = {f: max(seconds_per_fault, (STALL_S if f == "redis_stall" else 1.0) + 4.0) for f in FAULTS}
    cl = _Cluster(slo_ms, Path(checkpoint or DEFAULT_CHECKPOINT), Path(zoo or DEFAULT_ZOO))
    headline: dict[str, float] = {}
    windows: list[tuple[str, float, float, float, float]] = []  # (fault, phase start, fault, fault end, phase end)
    load = None
    try:
        cl.start_redis()
        cl.start_frontend()
        for _ in range(2):
            cl.start_worker()
        wait_for(lambda: cl.live_workers() == 2, 180, "two workers to register")
        wait_for(lambda: grpc_ready(cl.fe_port), 180, "the front end to be ready")
        load = _Load(cl.fe_port, rate_qps, slo_ms, seed).start()
        time.sleep(2.0)  # steady state before the first fault
        for name in tqdm(FAULTS, desc="faults", disable=not progress):
            start = time.monotonic()
            time.sleep(1.0)
            fault = time.monotonic()
            if name == "worker_kill":
                victim = next(w for w in cl.workers if w.poll() is None)
                victim.kill()
                fault_end = time.monotonic()
            elif name == "redis_restart":
                cl.redis.kill()  # type: ignore[union-attr]
                cl.redis.wait()  # type: ignore[union-attr]
                time.sleep(1.0)
                cl.start_redis()
                fault_end = time.monotonic()
            elif name == "redis_stall":
                cl.redis.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
                time.sleep(STALL_S)
                cl.redis.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                fault_end = time.monotonic()
            else:
                cl.frontend.kill()  # type: ignore[union-attr]
                cl.frontend.wait()  # type: ignore[union-attr]
                time.sleep(1.0)
                cl.start_frontend()
                fault_end = time.monotonic()
            time.sleep(max(0.0, fault + observe_s[name] - time.monotonic()))
            windows.append((name, start, fault, fault_end, time.monotonic()))
            if name == "worker_kill":  # back to two workers before the next fault
                cl.start_worker()
                wait_for(lambda: cl.live_workers() == 2, 180, "the replacement worker to register")
            if name == "frontend_kill":
                wait_for(lambda: grpc_ready(cl.fe_port), 180, "the new front end to be ready")
                time.sleep(2.0)  # its first answers
        load.stop()  # waits for the last answers (at most the client's timeout): then "lost" means never answered
        starts = [w[1] for w in windows[1:]] + [float("inf")]
        for window, until in zip(windows, starts):
            headline.update(_phase_summary(load, *window, recovery_until=until))
    finally:
        if load is not None and not load._stop.is_set():
            load.stop()
        cl.close()
    cfg = FrontendConfig()
    headline.update({"frontend_redis_timeout_s": cfg.redis_timeout_s,
                     "frontend_unavailable_bound_s": round(cfg.unavailable_within_s, 3),
                     "redis_stall_length_s": STALL_S, "worker_heartbeat_ttl_s": HEARTBEAT_TTL_S,
                     "load_rate_qps": rate_qps, "slo_ms": slo_ms, "seconds_per_fault": seconds_per_fault})
    return headline


def host_info() -> dict[str, object]:
    from superserve.zoo import HostFingerprint

    return {"fingerprint": HostFingerprint.current().__dict__, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_1m_at_end": os.getloadavg()[0],
            "note": "shared 2-core host, other jobs running; client, front end, workers and Redis share it"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds-per-fault", type=float, default=12.0,
                   help="observation per fault from its start (at least its length + 4 s; default %(default)s)")
    p.add_argument("--rate-qps", type=float, default=20.0, help="client calls per second (default %(default)s)")
    p.add_argument("--slo-ms", type=float, default=1000.0, help="each call's SLO (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the traces (default %(default)s)")
    args = p.parse_args(argv)
    headline = measure_cluster_faults(args.seconds_per_fault, args.seed, args.rate_qps, args.slo_ms)
    for k, v in headline.items():
        print(f"{k}: {v}")
    path = write_result("robustness_cluster", headline, {"host": host_info()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
