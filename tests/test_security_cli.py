"""`superserve security` end to end on the small fixture: the simulator path and the live-server path print what the
attacker found and write the result; bad arguments fail before the set-up with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import start_fixture_server
from superserve.cli import main as cli_main


def _check(text: str, out: Path) -> dict:
    assert "fingerprinting:" in text and "really served by:" in text
    assert "fingerprinted  accuracy" in text and "naive          accuracy" in text
    result = json.loads(out.read_text())
    assert result["responders_found"] >= 1 and result["fingerprint_queries"] > 0
    assert {"fingerprinted", "naive"} <= set(result["scores"])
    return result


def test_security_simulate_runs_on_the_fixture(serving_assets, tmp_path: Path, capsys):
    zoo, ckpt = serving_assets
    out = tmp_path / "sim.json"
    rc = cli_main(["security", "simulate", "--zoo", str(zoo), "--checkpoint", str(ckpt), "--budget", "30",
                   "--epochs", "1", "--defense", "pareto:p=0.3", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    result = _check(text, out)
    assert "upper_bound" in result["scores"] and 0 <= result["goodput_pct"] <= 100
    assert "benign goodput" in text


def _slow_table_assets(directory: Path, scale: float = 1.0) -> tuple[Path, Path]:
    """The fixture with a fixed, monotone latency table of 20 / 40 / 80 ms (x scale) at batch 1: the SLO steps are
    then far wider than this shared host's stalls and the gRPC overhead, so where the attacker pins is decided by
    the table, not by noise (the measured fixture's steps are fractions of a millisecond)."""
    from serving_fixture import build_serving_assets
    from superserve.zoo import LatencyStats, Zoo

    zoo_path, ckpt = build_serving_assets(directory, repeats=1)
    zoo = Zoo.load(zoo_path)
    tables = {e.subnet_id: {b: LatencyStats(l1 * (1 + 0.25 * (b - 1)), l1 * (1 + 0.25 * (b - 1)))
                            for b in zoo.batch_sizes} for e, l1 in zip(zoo.entries, (20.0, 40.0, 80.0))}
    tables = {sid: {b: LatencyStats(s.median_ms * scale, s.p99_ms * scale) for b, s in table.items()}
              for sid, table in tables.items()}
    zoo.with_latencies(tables, zoo.host).save(zoo_path)
    return zoo_path, ckpt


def test_security_attack_against_a_live_server_pins_the_victim(tmp_path: Path, capsys):
    """The live attack finds the fixture's three subnets, pins the victim (the middle one) and the server really
    serves the pin with it."""
    from superserve.server.engine import EngineConfig

    zoo, ckpt = _slow_table_assets(tmp_path / "assets")
    # online correction off: it would shrink the table back to this host's real (sub-millisecond) latencies
    server = start_fixture_server((zoo, ckpt), engine=EngineConfig(default_slo_ms=5000.0, correction_interval_s=None))
    out = tmp_path / "attack.json"
    try:
        rc = cli_main(["security", "attack", "--url", f"127.0.0.1:{server.port}", "--zoo", str(zoo), "--checkpoint",
                       str(ckpt), "--budget", "20", "--epochs", "1", "--no-naive", "--json", str(out)])
    finally:
        server.stop()
    text = capsys.readouterr().out
    assert rc == 0
    assert "fingerprinting:" in text and "fingerprinted  accuracy" in text
    result = json.loads(out.read_text())
    assert set(result["scores"]) == {"fingerprinted"}
    assert result["responders_found"] == 3, result["responders_found"]
    assert result["pinned_is_victim"] is True, (result["pinned_subnet"], result["pin"])
    assert f"really served by: {result['pinned_subnet']} (the victim)" in text
    assert text.startswith(f"victim: {result['pinned_subnet']} (zoo index 1 of 3)")


def test_security_attack_flags_api_key_tls_subnet_param_and_victim(tmp_path: Path, capsys):
    """`--api-key`, `--tls-ca`, `--use-subnet-param` and `--victim` against a server with keys and TLS: the attack
    authenticates, connects over TLS, reads the served subnet from the responses, and pins the victim asked for
    (the most accurate subnet, zoo index 2)."""
    import subprocess

    from superserve.server.engine import EngineConfig
    from superserve.server.security import SecurityConfig

    zoo, ckpt = _slow_table_assets(tmp_path / "assets")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    api_key = "attacker-key-0123456789"
    server = start_fixture_server((zoo, ckpt), engine=EngineConfig(default_slo_ms=5000.0, correction_interval_s=None),
                                  security=SecurityConfig(api_keys={"mallory": api_key}, tls_cert=cert, tls_key=key))
    out = tmp_path / "attack.json"
    url = f"localhost:{server.port}"
    try:
        rc = cli_main(["security", "attack", "--url", url, "--zoo", str(zoo), "--checkpoint", str(ckpt), "--budget",
                       "12", "--epochs", "1", "--no-naive", "--api-key", api_key, "--tls-ca", str(cert),
                       "--use-subnet-param", "--victim", "2", "--seed", "1", "--json", str(out)])
        text = capsys.readouterr().out
    finally:
        server.stop()
    assert rc == 0, text
    result = json.loads(out.read_text())
    assert text.startswith(f"victim: {result['pinned_subnet']} (zoo index 2 of 3)")
    assert result["responders_found"] == 3 and result["pinned_is_victim"] is True  # every call was let in
    # without --tls-ca (nor a key) the same server cannot even be reached
    server = start_fixture_server((zoo, ckpt), engine=EngineConfig(default_slo_ms=5000.0, correction_interval_s=None),
                                  security=SecurityConfig(api_keys={"mallory": api_key}, tls_cert=cert, tls_key=key))
    try:
        rc = cli_main(["security", "attack", "--url", f"localhost:{server.port}", "--zoo", str(zoo), "--checkpoint",
                       str(ckpt), "--budget", "5", "--epochs", "1", "--no-naive"])
    finally:
        server.stop()
    assert rc == 2 and "cannot reach" in capsys.readouterr().err


def test_noise_defense_on_a_live_server_moves_pinned_requests(tmp_path: Path):
    """`--hint-defense noise:acc=0.03,slo=0.5` on a live server: calls whose hints pin the middle subnet are
    sometimes answered by another subnet (or refused), where without the defense every one is served by it."""
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    from superserve.server.engine import EngineConfig
    from superserve.server.security import SecurityConfig

    zoo, ckpt = _slow_table_assets(tmp_path / "assets", scale=10.0)  # 200 / 400 / 800 ms: stalls cannot shed
    served_by = {}
    for defense in (None, "noise:acc=0.03,slo=0.5"):
        server = start_fixture_server((zoo, ckpt),
                                      engine=EngineConfig(default_slo_ms=5000.0, correction_interval_s=None),
                                      security=SecurityConfig(hint_defense=defense, defense_seed=0))
        client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        mid = server.zoo.entries[1]
        got = []
        try:
            for k in range(30):
                x = tc.InferInput("INPUT", [1, 1, 28, 28], "FP32")
                x.set_data_from_numpy(np.random.default_rng(k).standard_normal((1, 1, 28, 28)).astype(np.float32))
                try:  # SLO between the middle subnet's budget (402 ms) and the top's (802 ms), its accuracy
                    r = client.infer("superserve", [x], parameters={"slo_ms": 600.0, "min_accuracy": mid.accuracy})
                    got.append(r.get_response().parameters["subnet_id"].string_param)
                except InferenceServerException as exc:
                    got.append(str(exc.status()))
        finally:
            client.close()
            server.stop()
        served_by[defense] = got
    assert set(served_by[None]) == {mid.subnet_id}
    moved = [s for s in served_by["noise:acc=0.03,slo=0.5"] if s != mid.subnet_id]
    assert 0 < len(moved) < 30, served_by


def test_security_bad_arguments_fail_fast(serving_assets, tmp_path: Path, capsys):
    zoo, ckpt = serving_assets
    base = ["--zoo", str(zoo), "--checkpoint", str(ckpt)]
    assert cli_main(["security", "simulate", *base, "--budget", "0"]) == 2
    assert "--budget and --epochs must be >= 1" in capsys.readouterr().err
    assert cli_main(["security", "simulate", *base, "--defense", "bogus:x=1"]) == 2
    assert capsys.readouterr().err.startswith("superserve security:")
    assert cli_main(["security", "simulate", "--zoo", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["security", "attack", *base, "--url", "127.0.0.1:1", "--budget", "5"]) == 2
    assert "cannot reach 127.0.0.1:1" in capsys.readouterr().err
