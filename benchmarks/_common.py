"""Shared bits of the benchmark scripts: the exact command line, result writing, the subnets to use, free ports, and
starting / stopping the processes a benchmark runs beside it (servers, workers, redis-server)."""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def nice_prefix() -> str:
    """'nice -n N ' when this process runs niced (the command as it really ran), else ''."""
    level = os.nice(0)
    return f"nice -n {level} " if level else ""


def command_line() -> str:
    return nice_prefix() + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write_result(name: str, headline: dict[str, float | int | str], detail: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"command": command_line(), "headline": headline, **detail}, indent=1) + "\n")
    return path


def host_info(load_average_1m_at_start: float) -> dict[str, Any]:
    """What a result needs to say about the host it ran on: figures from hosts 2-8x apart in speed do not compare.
    The load average is taken at start by the caller (at the end it mostly shows the benchmark itself)."""
    from superserve.zoo import HostFingerprint

    return {"cpus": os.cpu_count(), "processor": HostFingerprint.current(torch_version="-").processor,
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1m_at_start": round(load_average_1m_at_start, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2)}


def measured_model_load_ms() -> float | None:
    """The model-load time benchmarks/actuation.py measured on this host (median, ms), if it has run. Benchmarks only:
    nothing at run time reads benchmarks/results/ (the shipped default is superserve.defaults.INFAAS_SWITCH_MS)."""
    try:
        return float(json.loads((RESULTS_DIR / "actuation.json").read_text())["headline"]["load_standalone_median_ms"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def zoo_subnets(net) -> list:
    """The shipped zoo's subnets in zoo order (fastest first), or [] if the zoo is missing or for another space."""
    from superserve.defaults import DEFAULT_ZOO
    from superserve.zoo import Zoo, ZooError

    try:
        zoo = Zoo.load(DEFAULT_ZOO)
    except ZooError:
        return []
    return [e.config for e in zoo.entries] if zoo.space == net.space else []


def served_subnets(net, count: int, seed: int = 0):
    """The shipped zoo's subnets first (what is really served), then seeded random ones to reach `count`."""
    from supernet.config import SubnetConfig

    subnets = zoo_subnets(net)
    rng = random.Random(seed)
    seen = {s.subnet_id for s in subnets}
    while len(subnets) < count:
        s = SubnetConfig.random(net.space, rng)
        if s.subnet_id not in seen:
            seen.add(s.subnet_id)
            subnets.append(s)
    return subnets[:count]


def load_supernet():
    """The shipped checkpoint if present (real weights), else an untrained default supernet (same shapes/costs)."""
    from supernet.checkpoint import load_checkpoint
    from supernet.network import SuperNet
    from superserve.defaults import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        net, _ = load_checkpoint(DEFAULT_CHECKPOINT)
        return net, str(DEFAULT_CHECKPOINT)
    return SuperNet().eval(), "untrained default supernet (no shipped checkpoint yet)"



# --- peer processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, period_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(period_s)


def grpc_ready(port: int, timeout_s: float = 2.0) -> bool:
    """Whether the Open Inference Protocol server on 127.0.0.1:`port` says it is ready (False while not listening)."""
    import tritonclient.grpc as tc

    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            return bool(client.is_server_ready(client_timeout=timeout_s))
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - not listening yet (or already gone): not ready
        return False


def wait_server_ready(proc: subprocess.Popen, port: int, timeout_s: float, what: str = "the server") -> None:
    """Until `proc`'s gRPC port says ready; a clear error with its stderr (when piped) if it exits first."""

    def ready() -> bool:
        if proc.poll() is not None:
            err = proc.communicate()[1] if proc.stderr is not None else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready: {(err or '')[-2000:]}")
        return grpc_ready(port)

    wait_for(ready, timeout_s, f"{what} to become ready", period_s=0.1)


def stop_processes(procs: Iterable[subprocess.Popen | None], timeout_s: float = 30.0, sig: int = signal.SIGTERM,
                   group: bool = False) -> float:
    """Signal every process still running (resumed first: a benchmark may have paused it with SIGSTOP), wait up to
    `timeout_s` for each, then SIGKILL what is left: with `group`, the whole process group of a process started with
    `start_new_session=True` (a peer's children, e.g. Ray's actors or Triton's stub). Returns the seconds taken."""
    t0 = time.perf_counter()
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        if group:
            try:  # leftovers of its own session only
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        elif p.poll() is None:
            p.kill()
        p.wait()
    return time.perf_counter() - t0


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    return path


def start_redis(port: int, wait_s: float = 10.0) -> subprocess.Popen:
    """A throwaway redis-server on 127.0.0.1:`port` (no persistence), once it answers PING."""
    import redis

    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=2)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(up, wait_s, f"redis-server on port {port}")
    except BaseException:
        stop_processes([proc], sig=signal.SIGKILL)
        raise
    finally:
        client.close()
    return proc
