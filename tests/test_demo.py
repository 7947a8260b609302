"""`superserve demo`, the README's first command, end to end on the small serving fixture."""

from __future__ import annotations

from pathlib import Path

from superserve.cli import main as cli_main


def test_demo_runs_both_policies_through_the_real_server(serving_assets, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))  # a re-profile must not land in ~/.cache
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    zoo, ckpt = serving_assets
    png = tmp_path / "demo.png"
    rc = cli_main(["demo", "--zoo", str(zoo), "--checkpoint", str(ckpt), "--duration-s", "2", "--rate-qps", "40",
                   "--slo-ms", "500", "--out", str(png)])
    text = capsys.readouterr().out
    assert rc == 0
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    assert "SlackFit" in lines and "fixed subnet (most accurate)" in lines
    for label in ("SlackFit", "fixed subnet (most accurate)"):
        assert "%" in lines[label] and "ms" in lines[label]
    assert "SlackFit met the SLO for" in text
    assert png.stat().st_size > 10_000
    # The frozen copy of the zoo the two servers shared is removed.
    assert not list(tmp_path.glob("superserve-demo-*"))


def test_demo_without_assets_says_what_is_missing(tmp_path: Path, capsys):
    rc = cli_main(["demo", "--zoo", str(tmp_path / "none.json")])
    assert rc == 2
    assert "no zoo at" in capsys.readouterr().err


def test_info_shows_this_hosts_re_profile_next_to_the_files_table(serving_assets, tmp_path: Path, capsys,
                                                                 monkeypatch):
    from superserve.server.profiling import cache_path
    from superserve.zoo import HostFingerprint, LatencyStats, Zoo

    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    zoo_path = serving_assets[0]
    zoo = Zoo.load(zoo_path)
    assert cli_main(["info", "--zoo", str(zoo_path)]) == 0
    text = capsys.readouterr().out
    assert "this host:" not in text and ("spot-checks the speed" in text or "re-profiles it at start" in text)
    # A re-profile cached for this host (as the server writes it): 3x slower everywhere.
    here = HostFingerprint.current(threads=zoo.host.threads)
    slow = zoo.with_latencies({e.subnet_id: {b: LatencyStats(3 * s.median_ms, 3 * s.p99_ms)
                                             for b, s in e.latency_ms.items()} for e in zoo.entries}, here)
    cached = cache_path(zoo_path, here)
    cached.parent.mkdir(parents=True)
    slow.save(cached)
    assert cli_main(["info", "--zoo", str(zoo_path)]) == 0
    text = capsys.readouterr().out
    assert f"which the server uses: {cached}" in text and "this host:" in text
    row = next(line for line in text.splitlines() if line.strip().startswith(zoo.entries[0].subnet_id))
    assert float(row.split()[-2]) == round(3 * zoo.latency_ms(zoo.entries[0].subnet_id, 1), 2)
