"""benchmarks/_common.py's process helpers, which every benchmark that starts servers, workers or redis-server uses:
free ports, a server's readiness, stopping processes (graceful, then killed; paused ones resumed; a peer's whole
session), redis-server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (free_port, grpc_ready, start_redis, stop_processes, wait_for,  # noqa: E402
                                wait_server_ready)

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
              "time.sleep(60)"


def _spawn(code: str, **kw) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kw)
    assert proc.stdout.readline().strip() == "up"  # its signal handlers are in place
    return proc


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_stop_processes_terminates_kills_the_stubborn_and_resumes_the_paused() -> None:
    polite = _spawn("import time; print('up', flush=True); time.sleep(60)")
    stubborn = _spawn(IGNORE_TERM)
    paused = _spawn("import time; print('up', flush=True); time.sleep(60)")
    paused.send_signal(signal.SIGSTOP)
    took = stop_processes([polite, None, stubborn, paused], timeout_s=1.0)
    assert polite.returncode == -signal.SIGTERM and paused.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert 0.9 < took < 20
    assert stop_processes([polite]) < 1.0  # already gone: nothing to do


def test_stop_processes_group_kills_the_session_leftovers() -> None:
    # a peer server whose child outlives it (like a Ray actor): the child is in the server's own session
    proc = subprocess.Popen([sys.executable, "-c",
                             "import subprocess, sys, time\n"
                             "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
                             "print(c.pid, flush=True)\n"
                             "time.sleep(60)\n"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    stop_processes([proc], timeout_s=5.0, group=True)
    assert proc.returncode == -signal.SIGTERM

    def child_gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{child}/stat") as f:  # killed but not yet reaped by init: a zombie is gone too
            return f.read().split(") ")[1].startswith("Z")

    wait_for(child_gone, 10, "the session's leftover child to die")


def test_wait_for_times_out_with_what_it_waited_for() -> None:
    with pytest.raises(RuntimeError, match="the impossible"):
        wait_for(lambda: False, 0.1, "the impossible")


def test_start_redis_answers_and_stops() -> None:
    import redis

    port = free_port()
    proc = start_redis(port)
    try:
        client = redis.Redis(port=port)
        assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
        client.close()
    finally:
        stop_processes([proc])
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    with pytest.raises(redis.ConnectionError):
        while time.monotonic() < deadline:
            redis.Redis(port=port, socket_connect_timeout=0.5).ping()
            time.sleep(0.05)


def test_wait_server_ready_on_a_real_server_and_on_one_that_dies(serving_assets) -> None:
    zoo, checkpoint = serving_assets
    port = free_port()
    assert not grpc_ready(port)  # nothing listens yet
    proc = subprocess.Popen([sys.executable, "-m", "superserve.cli", "serve", "--port", str(port), "--metrics-port",
                             "-1", "--http-port", "-1", "--zoo", str(zoo), "--checkpoint", str(checkpoint),
                             "--reprofile", "never"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_server_ready(proc, port, 120)
        assert grpc_ready(port)
    finally:
        stop_processes([proc], timeout_s=30)
    assert proc.returncode == 0  # SIGTERM: a graceful drain, not a kill
    dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('no model here'); sys.exit(3)"],
                            stderr=subprocess.PIPE, text=True)
    with pytest.raises(RuntimeError, match="exited with 3 before it was ready: no model here"):
        wait_server_ready(dead, free_port(), 30, "the test server")
