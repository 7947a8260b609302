"""`superserve serve` from its command line: every README flag lands in ServeConfig (fast, no server), bad values
fail with the reason, `--backend` refuses what a front end cannot apply, and end to end: a non-SlackFit policy with
a worker process, `--late serve` and `--queue-capacity` on a running server, the warning for a non-localhost
`--host`, SIGTERM during start-up, and online correction learning a table that is off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from superserve.cli import build_parser
from superserve.cli import main as cli_main
from superserve.server.app import Server, ServeConfig
from superserve.server.cli import config_from_args
from superserve.server.engine import EngineConfig
from superserve.server.security import SecurityConfig

REPO = Path(__file__).resolve().parents[1]
MODEL = "superserve"
KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab"}


def _config(*flags: str) -> ServeConfig:
    return config_from_args(build_parser("serve").parse_args(["serve", *flags]))  # type: ignore[return-value]


def _cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return cert, key


def _image(seed: int = 0, n: int = 1):
    x = np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)
    inp = tc.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


# --- flags -> ServeConfig (no server) -----------------------------------------------------------------------------
def test_no_flags_give_the_documented_defaults():
    """README: 127.0.0.1:8001, metrics on 8002, SlackFit, embedded worker, shed late requests, correction on, the
    shipped zoo, no keys / limits / TLS."""
    cfg = _config()
    # The HTTP door: 8000 from the command line (a free port when 8000 is taken); off in an embedded ServeConfig.
    assert cfg.http_port == 8000 and cfg.http_port_fallback and ServeConfig().http_port is None
    assert replace(cfg, http_port=None, http_port_fallback=False) == ServeConfig()
    assert (cfg.host, cfg.port, cfg.metrics_port, cfg.policy, cfg.workers) == ("127.0.0.1", 8001, 8002, "slackfit", 0)
    assert cfg.engine == EngineConfig(100.0, "shed", 1024, 0.25) and cfg.security == SecurityConfig()


def test_every_serving_flag_lands_in_the_config(tmp_path):
    cfg = _config("--host", "0.0.0.0", "--port", "9001", "--metrics-port", "-1", "--model-name", "m",
                  "--zoo", "z.json", "--checkpoint", "c.pt", "--policy", "clipper+", "--policy-params",
                  '{"subnet": 2}', "--workers", "3", "--threads-per-worker", "2", "--default-slo-ms", "40",
                  "--late", "serve", "--queue-capacity", "7", "--rpc-overhead-ms", "3.5", "--no-correction",
                  "--no-response-params", "--records", "r.jsonl", "--reprofile", "never")
    assert (cfg.host, cfg.port, cfg.metrics_port, cfg.model_name) == ("0.0.0.0", 9001, None, "m")
    assert (cfg.zoo_path, cfg.checkpoint_path, cfg.records_path) == (Path("z.json"), Path("c.pt"), Path("r.jsonl"))
    assert (cfg.policy, cfg.policy_params, cfg.workers, cfg.threads_per_worker) == ("clipper+", {"subnet": 2}, 3, 2)
    assert cfg.engine == EngineConfig(default_slo_ms=40.0, late="serve", queue_capacity=7, correction_interval_s=None)
    assert (cfg.rpc_overhead_ms, cfg.response_params, cfg.reprofile) == (3.5, False, "never")


def test_every_security_flag_lands_in_the_config(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    cert, key = _cert(tmp_path)
    cfg = _config("--api-keys", str(keys), "--auth-health", "--rate-limit", "50", "--rate-burst", "80",
                  "--max-inflight", "4", "--tls-cert", str(cert), "--tls-key", str(key), "--max-message-bytes",
                  "4194304", "--max-images", "16", "--hint-defense", "pareto:p=0.3", "--defense-seed", "5")
    assert cfg.security == SecurityConfig(api_keys=KEYS, auth_health=True, rate_limit_images_per_s=50.0,
                                          rate_burst_images=80.0, max_inflight_per_tenant=4, tls_cert=cert,
                                          tls_key=key, hint_defense="pareto:p=0.3", defense_seed=5)
    assert cfg.security.tls and (cfg.max_message_bytes, cfg.max_images) == (4194304, 16)


@pytest.mark.parametrize("flags, message", [
    (["--policy-params", "{subnet: 1}"], "--policy-params is not valid JSON"),
    (["--policy-params", "[1]"], "--policy-params must be a JSON object"),
    (["--api-keys", "/nonexistent/keys.json"], "cannot read API key file"),
    (["--tls-cert", "c.pem"], "TLS needs both a certificate and a key"),
    (["--rate-limit", "0"], "rate limit must be > 0"),
    (["--max-inflight", "0"], "in-flight cap must be >= 1"),
    (["--hint-defense", "bogus:x=1"], "--hint-defense:"),
    (["--max-message-bytes", "10"], "--max-message-bytes must be >= 1024"),
])
def test_bad_flag_values_fail_with_the_reason(flags, message):
    with pytest.raises(SystemExit) as exc:
        _config(*flags)
    assert message in str(exc.value)


def test_api_keys_shorter_than_16_characters_are_refused(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"alice": "short"}))
    with pytest.raises(SystemExit, match="at least 16 characters"):
        _config("--api-keys", str(keys))


def test_backend_refuses_what_a_front_end_cannot_apply(serving_assets, capsys):
    """README: `--late serve` is embedded-only; the refusal comes before any connection to Redis."""
    zoo, ckpt = serving_assets
    base = ["serve", "--zoo", str(zoo), "--checkpoint", str(ckpt), "--backend", "redis://127.0.0.1:1"]
    assert cli_main([*base, "--late", "serve"]) == 2
    err = capsys.readouterr().err
    assert "--late serve is not supported with --backend redis" in err
    assert cli_main([*base, "--workers", "2", "--no-correction"]) == 2
    err = capsys.readouterr().err
    assert "--workers/--embedded-workers" in err and "--no-correction" in err
    assert cli_main(["serve", "--zoo", str(zoo), "--checkpoint", str(ckpt), "--backend", "http://x"]) == 2


def test_missing_files_are_named(tmp_path, capsys):
    assert cli_main(["serve", "--zoo", str(tmp_path / "none.json")]) == 2
    assert f"zoo file {tmp_path / 'none.json'} does not exist" in capsys.readouterr().err


# --- flags on a running server (in-process) -----------------------------------------------------------------------
def _serve(assets, *flags: str) -> Server:
    zoo, ckpt = assets
    cfg = _config("--zoo", str(zoo), "--checkpoint", str(ckpt), "--port", "0", "--metrics-port", "-1",
                  "--reprofile", "never", *flags)
    server = Server(ServeConfig(**{**cfg.__dict__, "quiet": True})).start()
    server.wait_ready()
    return server


def test_a_baseline_policy_on_worker_processes(serving_assets):
    """`--policy clipper+ --policy-params '{"subnet": 0}' --workers 1`: every call is served by subnet 0, from a
    worker process."""
    srv = _serve(serving_assets, "--policy", "clipper+", "--policy-params", '{"subnet": 0}', "--workers", "1",
                 "--default-slo-ms", "5000")
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    try:
        first = srv.zoo.entries[0].subnet_id
        for k in range(4):
            r = client.infer(MODEL, [_image(k, n=1 + k % 2)])
            assert set(r.get_response().parameters["subnet_id"].string_param.split(",")) == {first}
        assert type(srv.engine._pool).__name__ == "ProcessWorkerPool"
    finally:
        client.close()
        srv.stop()


@pytest.mark.parametrize("late", ["shed", "serve"])
def test_late_flag_sheds_or_serves_a_request_that_cannot_meet_its_deadline(serving_assets, late):
    """An SLO of 1 us cannot be met: `--late shed` answers DEADLINE_EXCEEDED, `--late serve` serves it anyway
    (slo_met false)."""
    srv = _serve(serving_assets, "--late", late)
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    try:
        if late == "shed":
            with pytest.raises(InferenceServerException) as err:
                client.infer(MODEL, [_image()], parameters={"slo_ms": 0.001})
            assert str(err.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
        else:
            r = client.infer(MODEL, [_image()], parameters={"slo_ms": 0.001})
            assert r.as_numpy("PROBABILITIES").shape == (1, 10)
            assert r.get_response().parameters["slo_met"].bool_param is False
    finally:
        client.close()
        srv.stop()


def test_queue_capacity_refuses_a_call_larger_than_the_queue(serving_assets):
    srv = _serve(serving_assets, "--queue-capacity", "2", "--default-slo-ms", "5000")
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    try:
        assert client.infer(MODEL, [_image(0, n=2)]).as_numpy("CLASS").shape == (2,)  # fits exactly
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [_image(1, n=3)])
        assert str(err.value.status()) == "StatusCode.RESOURCE_EXHAUSTED" and "queue full" in err.value.message()
    finally:
        client.close()
        srv.stop()


@pytest.mark.parametrize("correction", [True, False])
def test_online_correction_learns_a_table_that_is_off(serving_assets, tmp_path, correction):
    """README: online latency-table correction is on by default. The fixture's table is made 20x slower than this
    host runs it; after some calls the running server's table (the one its policy plans with) has shrunk toward the
    observed times. With --no-correction it stays as loaded. Waits on the correction's own period (0.25 s), polling
    with a generous deadline, not a fixed sleep."""
    from superserve.zoo import Zoo

    zoo_path, ckpt = serving_assets
    slow = tmp_path / "slow.json"
    Zoo.load(zoo_path).scaled(20.0).save(slow)
    srv = _serve((slow, ckpt), "--default-slo-ms", "5000", *([] if correction else ["--no-correction"]))
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    loaded = Zoo.load(slow)
    top = loaded.entries[-1]
    table_ms = loaded.latency_ms(top.subnet_id, 1)

    def planned_ms() -> float:  # what the running policy plans with for the top subnet at batch 1
        return srv.engine.policy.zoo.latency_ms(top.subnet_id, 1)

    try:
        deadline = time.monotonic() + 60
        k = 0
        while time.monotonic() < deadline and not (planned_ms() < 0.5 * table_ms or (not correction and k >= 60)):
            for _ in range(10):
                client.infer(MODEL, [_image(k)], parameters={"min_accuracy": top.accuracy})
                k += 1
        if correction:
            assert planned_ms() < 0.5 * table_ms, (k, planned_ms(), table_ms)
            assert srv.engine.corrector.factor(top.subnet_id) < 0.5
        else:
            assert planned_ms() == table_ms and srv.engine.corrector is None
    finally:
        client.close()
        srv.stop()


# --- the command itself, in a subprocess ---------------------------------------------------------------------------
def _serve_process(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "superserve.cli", "serve", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _read_until(stream, needle: str, timeout_s: float = 120.0) -> str:
    """Read a pipe until `needle` appears (in a thread, so a silent process cannot hang the test)."""
    seen: list[str] = []
    found = threading.Event()

    def pump() -> None:
        for line in stream:
            seen.append(line)
            if needle in line:
                found.set()
                return

    threading.Thread(target=pump, daemon=True).start()
    assert found.wait(timeout_s), f"{needle!r} not seen in:\n{''.join(seen)[-3000:]}"
    return "".join(seen)


def test_serve_on_a_public_host_warns_then_sigterm_drains_and_exits_zero(serving_assets):
    zoo, ckpt = serving_assets
    proc = _serve_process(["--zoo", str(zoo), "--checkpoint", str(ckpt), "--host", "0.0.0.0", "--port", "0",
                           "--metrics-port", "-1", "--reprofile", "never"])
    try:
        out = _read_until(proc.stdout, "superserve: serving model")
        assert "policy slackfit) on 0.0.0.0:" in out and "(gRPC, Open Inference Protocol)" in out
        err = _read_until(proc.stderr, "WARNING")
        assert "listening on 0.0.0.0 without TLS and API keys" in err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigterm_during_start_up_exits_at_once(tmp_path):
    """README: SIGTERM during start-up exits at once. The shipped zoo with --reprofile always starts a re-profile of
    minutes; SIGTERM once it has begun must end the process within 30 s (generous: the point is not waiting for
    the minutes of profiling), with 128 + SIGTERM and no table cached."""
    proc = _serve_process(["--port", "0", "--metrics-port", "-1", "--reprofile", "always"],
                          env={"SUPERSERVE_CACHE": str(tmp_path / "cache")})
    try:
        _read_until(proc.stderr, "re-profiling here once")
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t < 30
        assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "SIGTERM during start-up; stopped before serving" in err
        assert not list(tmp_path.rglob("*.json"))  # nothing cached from the interrupted profile
    finally:
        if proc.poll() is None:
            proc.kill()
