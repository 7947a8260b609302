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


def _slow_table_assets(directory: Path) -> tuple[Path, Path]:
    """The fixture with a fixed, monotone latency table of 20 / 40 / 80 ms at batch 1: the subnets' SLO steps are
    then far wider than this shared host's stalls and the gRPC overhead, so where the attacker pins is decided by
    the table, not by noise (the measured fixture's steps are fractions of a millisecond)."""
    from serving_fixture import build_serving_assets
    from superserve.zoo import LatencyStats, Zoo

    zoo_path, ckpt = build_serving_assets(directory, repeats=1)
    zoo = Zoo.load(zoo_path)
    tables = {e.subnet_id: {b: LatencyStats(l1 * (1 + 0.25 * (b - 1)), l1 * (1 + 0.25 * (b - 1)))
                            for b in zoo.batch_sizes} for e, l1 in zip(zoo.entries, (20.0, 40.0, 80.0))}
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
