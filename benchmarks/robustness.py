"""Robustness under hostile clients and faults (issue 16): one run, one JSON.

Phases, each against `superserve serve` processes of our own on the shipped model (`--reprofile never`: the table
does not matter here):
1. hostile load: `loadtest.hostile` sends --malformed generated malformed calls (7 families) interleaved with good
   ones, while a second client sends large inputs (4 M typed values; two 4096 x 4096 PNGs) and a third probes
   ServerLive every 20 ms. Counted: crashes, unanswered calls, wrong answers (a good call not served, a malformed one
   served or answered without a clear status), the server's peak RSS growth, the longest ServerLive round trip.
2. worker kill: `--workers 2` under steady load; one worker process is SIGKILLed. Counted: calls lost (never
   answered), answered twice (server records of one image twice), statuses, and the recovery time (until the
   replacement is up again, read from `superserve_workers_up`).
3. SLO accounting: a burst beyond capacity; misses the client saw (failed, or answered after the SLO) against misses
   the server's records count (its SLO clock starts at the arrival stamp).
4. idle connections (slowloris): --idle-connections HTTP connections trickling half a request line and as many
   silent TCP connections to the gRPC port, while both doors' health is probed: how many the server closed and when.
5. the Redis cluster's faults (worker kill, Redis restart, Redis stall, front-end kill) from
   `benchmarks/robustness_cluster.py`, merged with a `cluster_` prefix (skip with --skip-cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, stop_processes, wait_server_ready, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class _Server:
    def __init__(self, *extra: str, records: Path | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        args = [sys.executable, "-m", "superserve.cli", "serve", "--port", str(self.port), "--metrics-port",
                str(self.metrics_port), "--reprofile", "never", *extra]
        if records is not None:
            args += ["--records", str(records)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_server_ready(self.proc, self.port, 300)

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        stop_processes([self.proc], timeout_s=60)


class _LiveProbe(threading.Thread):
    def __init__(self, port: int, period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        import tritonclient.grpc as tc

        self.client, self.period_s = tc.InferenceServerClient(f"127.0.0.1:{port}"), period_s
        self.ms: list[float] = []
        self.failed = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                self.client.is_server_live(client_timeout=30)
            except Exception:  # noqa: BLE001 - counted
                self.failed += 1
            self.ms.append((time.perf_counter() - t0) * 1e3)
            self.stop_event.wait(self.period_s)


def hostile_phase(malformed: int, seed: int) -> dict[str, float]:
    import psutil
    from tritonclient.grpc import service_pb2 as pb

    from loadtest.hostile import GOOD, bytes_tensor, hostile_calls, send_hostile, zero_bomb_png

    srv = _Server("--default-slo-ms", "60000", "--queue-capacity", "4096")
    try:
        ps = psutil.Process(srv.proc.pid)
        warm = send_hostile(f"127.0.0.1:{srv.port}", (c for c in hostile_calls(60, seed=seed + 1)
                                                       if c.expect == GOOD))
        base = ps.memory_info().rss
        peak = [base]
        count = [0]

        def sample() -> None:
            count[0] += 1
            if count[0] % 50 == 0:
                try:
                    peak[0] = max(peak[0], ps.memory_info().rss)
                except psutil.Error:
                    pass

        probe = _LiveProbe(srv.port)
        probe.start()
        big_codes: list[str] = []
        big_done = threading.Event()

        def big_sender() -> None:
            import grpc

            big = pb.ModelInferRequest(model_name="superserve")
            t = big.inputs.add(name="IMAGE", datatype="UINT8", shape=[64, 1, 256, 256])
            t.contents.uint_contents.extend([3] * (64 * 256 * 256))
            big.parameters["slo_ms"].double_param = 600_000.0
            two = pb.ModelInferRequest(model_name="superserve")
            two.inputs.add(name="IMAGE_BYTES", datatype="BYTES", shape=[2])
            two.raw_input_contents.append(bytes_tensor([zero_bomb_png(4096)] * 2))
            two.parameters["slo_ms"].double_param = 600_000.0
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}", [("grpc.max_send_message_length", 64 << 20)])
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            while not big_done.is_set():
                futures = [infer.future(r, timeout=600) for r in (big, two, big, two)]
                for f in futures:
                    try:
                        f.result()
                        big_codes.append("OK")
                    except grpc.RpcError as err:
                        big_codes.append(err.code().name)
            channel.close()

        big = threading.Thread(target=big_sender, daemon=True)
        big.start()
        t0 = time.perf_counter()
        report = send_hostile(f"127.0.0.1:{srv.port}", hostile_calls(malformed, seed=seed), max_outstanding=48,
                              on_answer=sample)
        elapsed = time.perf_counter() - t0
        big_done.set()
        big.join(600)
        probe.stop_event.set()
        probe.join(60)
        crashed = srv.proc.poll() is not None
        if not crashed:
            peak[0] = max(peak[0], ps.memory_info().rss)
        live = np.array(probe.ms)
        print(f"hostile: {report.sent} calls in {elapsed:.1f} s; wrong {len(report.wrong or [])}; "
              f"ServerLive max {live.max():.1f} ms; RSS +{(peak[0] - base) / 2**20:.0f} MB", flush=True)
        for line in (report.wrong or [])[:10]:
            print("  wrong:", line)
        return {
            "hostile_malformed_requests_sent": report.hostile_total,
            "hostile_good_requests_sent": report.good_total,
            "hostile_good_requests_served": report.good_served,
            "hostile_large_input_calls_sent": len(big_codes),
            "hostile_large_input_calls_served": big_codes.count("OK"),
            "hostile_large_input_calls_refused_busy": big_codes.count("RESOURCE_EXHAUSTED"),
            "hostile_server_crashes": int(crashed),
            "hostile_unanswered_calls": report.sent - report.answered,
            "hostile_wrong_answers": len(report.wrong or []),
            "hostile_unknown_or_internal_statuses": (report.codes or {}).get("UNKNOWN", 0)
            + (report.codes or {}).get("INTERNAL", 0),
            "hostile_peak_rss_growth_mb": round((peak[0] - base) / 2 ** 20, 1),
            "hostile_serverlive_max_ms": round(float(live.max()), 1),
            "hostile_serverlive_p99_ms": round(float(np.percentile(live, 99)), 1),
            "hostile_serverlive_probes": int(live.size),
            "hostile_serverlive_failed": probe.failed,
            "hostile_warmup_ok": int(warm.ok),
            "hostile_run_s": round(elapsed, 1),
        }
    finally:
        srv.stop()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def worker_kill_phase(seconds: float, rate_qps: float, seed: int) -> dict[str, float]:
    import psutil
    import tritonclient.grpc as tc

    records = Path(tempfile.mkdtemp()) / "records.jsonl"
    srv = _Server("--workers", "2", "--default-slo-ms", "2000", records=records)
    try:
        workers = [c for c in psutil.Process(srv.proc.pid).children()
                   if "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) == 2, [c.cmdline() for c in workers]
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        rng = np.random.default_rng(seed)
        sent, answers, lock = [0], {}, threading.Lock()
        times: dict[int, float] = {}

        def callback(k: int):
            def done(result, error):
                with lock:
                    answers.setdefault(k, []).append(("OK" if error is None else error.status(), time.monotonic()))
            return done

        recovered: list[float | None] = [None]

        def watch() -> None:  # from the kill, beside the load: the replacement may be up long before the load ends
            while time.monotonic() < killed_s + 120:
                try:
                    up = srv.metric("superserve_workers_up") == 2
                    if up and srv.metric("superserve_worker_restarts_total") == 1:
                        recovered[0] = time.monotonic() - killed_s
                        return
                except OSError:  # a scrape that timed out under the load: try again
                    pass
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        kill_at = time.monotonic() + seconds / 3
        end = time.monotonic() + seconds
        killed_s = None
        while time.monotonic() < end:
            x = tc.InferInput("INPUT", [1, 1, 28, 28], "FP32")
            x.set_data_from_numpy(rng.standard_normal((1, 1, 28, 28)).astype(np.float32))
            k = sent[0]
            times[k] = time.monotonic()
            client.async_infer("superserve", [x], callback(k), client_timeout=30)
            sent[0] += 1
            if killed_s is None and time.monotonic() >= kill_at:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed_s = time.monotonic()
                watcher.start()
            time.sleep(rng.exponential(1.0 / rate_qps))
        if killed_s is not None:
            watcher.join()
        recovered_s = recovered[0]
        deadline = time.monotonic() + 40
        while len(answers) < sent[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        client.close()
    finally:
        srv.stop()
    statuses: dict[str, int] = {}
    for got in answers.values():
        statuses[got[0][0]] = statuses.get(got[0][0], 0) + 1
    after = [t for k, got in answers.items() for s, t in got if s == "OK" and times[k] >= killed_s]
    ids = [r["request_id"] for r in _records(records)]
    print(f"worker kill: {sent[0]} calls, statuses {statuses}, recovery {recovered_s} s", flush=True)
    return {
        "worker_kill_calls_sent": sent[0],
        "worker_kill_calls_lost": sent[0] - len(answers),
        "worker_kill_calls_answered_twice": sum(len(v) > 1 for v in answers.values())
        + (len(ids) - len(set(ids))),
        "worker_kill_calls_ok": statuses.get("OK", 0),
        "worker_kill_calls_unavailable": statuses.get("StatusCode.UNAVAILABLE", 0),
        "worker_kill_calls_other_failed": sum(v for s, v in statuses.items()
                                              if s not in ("OK", "StatusCode.UNAVAILABLE")),
        "worker_kill_first_ok_after_kill_ms": round((min(after) - killed_s) * 1e3, 1) if after else -1,
        "worker_kill_recovery_to_full_capacity_s": round(recovered_s, 2) if recovered_s is not None else -1,
    }


def idle_connections_phase(connections: int) -> dict[str, float]:
    """Slowloris: `connections` HTTP connections that send half a request line and then one byte a second, and as
    many TCP connections to the gRPC port that send nothing, all at once, while ServerLive (gRPC) and
    /v2/health/ready (HTTP) are probed. Counted: how many of each the server closed and when the last one went (the
    doors' deadline is 10 s), how many HTTP ones got a 408, and the probes' p99."""
    import socket

    http_port = free_port()
    srv = _Server("--http-port", str(http_port))
    probe = _LiveProbe(srv.port)
    http_ms: list[float] = []
    http_failed = [0]
    stop = threading.Event()

    def http_probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=30) as r:
                    r.read()
            except Exception:  # noqa: BLE001 - counted
                http_failed[0] += 1
            http_ms.append((time.perf_counter() - t0) * 1e3)
            stop.wait(0.02)

    prober = threading.Thread(target=http_probe, daemon=True)
    try:
        probe.start()
        prober.start()
        t0 = time.monotonic()
        http_socks = [socket.create_connection(("127.0.0.1", http_port)) for _ in range(connections)]
        grpc_socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(connections)]
        for s in http_socks:
            s.sendall(b"POST /v2/models/superserve/infer HTTP/1.1\r\nHo")
        for s in (*http_socks, *grpc_socks):
            s.setblocking(False)
        got: dict[socket.socket, bytes] = {s: b"" for s in http_socks}
        closed_at: dict[socket.socket, float] = {}
        last_trickle = time.monotonic()
        while len(closed_at) < 2 * connections and time.monotonic() - t0 < 60:
            trickle = time.monotonic() - last_trickle >= 1.0
            for s in (*http_socks, *grpc_socks):
                if s in closed_at:
                    continue
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        closed_at[s] = time.monotonic() - t0
                    elif s in got:
                        got[s] += chunk
                except BlockingIOError:
                    if trickle and s in got:
                        with contextlib.suppress(OSError):
                            s.send(b"s")
                except OSError:
                    closed_at[s] = time.monotonic() - t0
            if trickle:
                last_trickle = time.monotonic()
            time.sleep(0.1)
        for s in (*http_socks, *grpc_socks):
            s.close()
    finally:
        stop.set()
        probe.stop_event.set()
        prober.join(5)
        probe.join(5)
        srv.stop()
    http_closed = [closed_at[s] for s in http_socks if s in closed_at]
    grpc_closed = [closed_at[s] for s in grpc_socks if s in closed_at]
    print(f"idle connections: {len(http_closed)}/{connections} HTTP closed (last after "
          f"{max(http_closed, default=-1):.1f} s), {len(grpc_closed)}/{connections} gRPC closed (last after "
          f"{max(grpc_closed, default=-1):.1f} s)", flush=True)
    return {
        "idle_connections_per_door": connections,
        "idle_http_connections_closed": len(http_closed),
        "idle_http_connections_answered_408": sum(v.startswith(b"HTTP/1.1 408") for v in got.values()),
        "idle_http_last_closed_after_s": round(max(http_closed, default=-1.0), 2),
        "idle_grpc_connections_closed": len(grpc_closed),
        "idle_grpc_last_closed_after_s": round(max(grpc_closed, default=-1.0), 2),
        "idle_http_health_p99_ms": round(float(np.percentile(http_ms, 99)), 1) if http_ms else -1.0,
        "idle_http_health_failed": http_failed[0],
        "idle_grpc_serverlive_p99_ms": round(float(np.percentile(probe.ms, 99)), 1) if probe.ms else -1.0,
        "idle_grpc_serverlive_failed": probe.failed,
    }


def slo_accounting_phase(calls: int, slo_ms: float) -> dict[str, float]:
    import tritonclient.grpc as tc

    records = Path(tempfile.mkdtemp()) / "records.jsonl"
    srv = _Server("--default-slo-ms", str(slo_ms), "--queue-capacity", str(4 * calls), records=records)
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        rng = np.random.default_rng(0)
        lat: list[float] = []
        lock, done = threading.Lock(), threading.Event()

        def callback(t0: float):
            def cb(result, error):
                with lock:
                    lat.append(np.inf if error is not None else (time.perf_counter() - t0) * 1e3)
                    if len(lat) == calls:
                        done.set()
            return cb

        for _ in range(calls):  # all at once: far beyond what the server can serve within the SLO
            x = tc.InferInput("INPUT", [1, 1, 28, 28], "FP32")
            x.set_data_from_numpy(rng.standard_normal((1, 1, 28, 28)).astype(np.float32))
            client.async_infer("superserve", [x], callback(time.perf_counter()))
        done.wait(300)
        client.close()
    finally:
        srv.stop()
    recs = _records(records)
    client_missed = int(sum(v > slo_ms for v in lat))
    server_missed = int(sum(r["status"] != "ok" for r in recs))
    print(f"SLO accounting: client saw {client_missed} misses of {calls}, server counted {server_missed}", flush=True)
    return {"slo_burst_calls": calls, "slo_burst_slo_ms": slo_ms,
            "slo_burst_misses_client_seen": client_missed, "slo_burst_misses_server_counted": server_missed,
            "slo_burst_server_counted_over_client_seen_ratio": round(server_missed / client_missed, 3)
            if client_missed else 1.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--malformed", type=int, default=5000, help="generated malformed calls (default %(default)s)")
    p.add_argument("--kill-seconds", type=float, default=15.0, help="length of the worker-kill phase")
    p.add_argument("--rate-qps", type=float, default=40.0, help="steady load during the worker kill (calls/s)")
    p.add_argument("--burst", type=int, default=400, help="calls in the SLO-accounting burst")
    p.add_argument("--burst-slo-ms", type=float, default=100.0,
                   help="SLO of the burst's calls, ms (default %(default)s)")
    p.add_argument("--idle-connections", type=int, default=1000,
                   help="slowloris connections per door in the idle-connections phase (default %(default)s)")
    p.add_argument("--skip-cluster", action="store_true", help="leave out the Redis cluster's faults")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the malformed calls, the worker-kill load and the cluster faults (default "
                        "%(default)s)")
    args = p.parse_args(argv)
    headline: dict[str, float] = {}
    headline.update(hostile_phase(args.malformed, args.seed))
    headline.update(worker_kill_phase(args.kill_seconds, args.rate_qps, args.seed))
    headline.update(slo_accounting_phase(args.burst, args.burst_slo_ms))
    headline.update(idle_connections_phase(args.idle_connections))
    if not args.skip_cluster:
        from robustness_cluster import measure_cluster_faults

        headline.update({f"cluster_{k}": v for k, v in measure_cluster_faults(seed=args.seed).items()})
    from superserve.zoo import HostFingerprint

    host = {"fingerprint": HostFingerprint.current().__dict__, "cpus": os.cpu_count(),
            "platform": platform.platform(), "loadavg_1m_at_end": os.getloadavg()[0],
            "note": "shared 2-core host; clients and servers on the same host"}
    for k, v in headline.items():
        print(f"{k}: {v}")
    print("wrote", write_result("robustness", headline, {"host": host}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
