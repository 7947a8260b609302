"""`superserve demo`, the README's first command, end to end: on the small serving fixture (quick), and at its default
sizing on the shipped zoo (slow), where SlackFit must beat the fixed subnet and match the simulator's prediction."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def _demo_rows(text: str) -> dict[str, tuple[float, float, float, float]]:
    """{label: (SLO attainment %, mean accuracy %, simulated attainment %, simulated accuracy %)} from the table."""
    import re

    rows = {}
    for label in ("SlackFit", "fixed subnet (most accurate)"):
        m = re.search(rf"^{re.escape(label)}\s+([\d.]+)%\s+([\d.]+)%\s+[\d.]+ ms\s+([\d.]+)% / ([\d.]+)%$", text,
                      re.MULTILINE)
        assert m, f"no row for {label!r} in:\n{text}"
        rows[label] = tuple(float(g) for g in m.groups())
    return rows


@pytest.mark.slow
def test_demo_at_its_default_sizing_slackfit_beats_the_fixed_subnet(tmp_path: Path, capsys, monkeypatch, request):
    """The README's first command as a newcomer runs it: the shipped zoo, the load and SLO sized from the zoo (no
    --rate-qps / --slo-ms), 20 s per policy. SlackFit must attain at least what the fixed most-accurate subnet does
    (as the simulator predicts too), and each real row must be near the simulator's prediction for it: within 35
    points of SLO attainment and 5 of mean accuracy. The tolerance is wide because the simulator models a quiet
    host and this is a shared 2-core one whose neighbours slow the real server only (runs here: SlackFit 89.5% real
    vs 98.8% simulated and fixed 16.6% vs 29.2% at load average ~2; SlackFit 71.2% vs 100.0% at load average 5.6);
    it still catches a simulator and a server that disagree on the SLO, the policy or the load (gaps of 50-80).
    About a minute, plus a re-profile of the shipped table (1-3 min) the first time on a host of another speed: it
    is cached in pytest's cache directory, and the server spot-checks the cached table at every start."""
    monkeypatch.setenv("SUPERSERVE_CACHE", str(request.config.cache.mkdir("superserve-reprofile")))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    png = tmp_path / "demo.png"
    assert cli_main(["demo", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    rows = _demo_rows(text)
    slackfit, fixed = rows["SlackFit"], rows["fixed subnet (most accurate)"]
    table = "\n".join(line for line in text.splitlines() if line.startswith(("zoo:", "load:", "SlackFit", "fixed")))
    assert slackfit[0] >= fixed[0], table
    assert slackfit[2] >= fixed[2], table  # the simulator agrees
    for label, (real_att, real_acc, sim_att, sim_acc) in rows.items():
        assert abs(real_att - sim_att) <= 35, (label, table)
        assert abs(real_acc - sim_acc) <= 5, (label, table)
    assert fixed[1] == fixed[3]  # one subnet: its accuracy, served or simulated
    assert png.stat().st_size > 10_000


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
