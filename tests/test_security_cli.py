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


def test_security_attack_against_a_live_server(serving_assets, tmp_path: Path, capsys):
    from superserve.server.engine import EngineConfig

    zoo, ckpt = serving_assets
    server = start_fixture_server(serving_assets, engine=EngineConfig(default_slo_ms=5000.0))
    out = tmp_path / "attack.json"
    try:
        rc = cli_main(["security", "attack", "--url", f"127.0.0.1:{server.port}", "--zoo", str(zoo), "--checkpoint",
                       str(ckpt), "--budget", "20", "--epochs", "1", "--no-naive", "--json", str(out)])
    finally:
        server.stop()
    text = capsys.readouterr().out
    assert rc == 0
    assert "fingerprinting:" in text and "really served by:" in text and "fingerprinted  accuracy" in text
    result = json.loads(out.read_text())
    assert result["responders_found"] >= 1 and set(result["scores"]) == {"fingerprinted"}


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
