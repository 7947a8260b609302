"""The README's other commands from their command lines: `superserve trace` (generate, save, `trace info`) and the
trace specs the replayer and the simulator take (`azure`, `azure:START:MINUTES`, `azure-day`, `file:`);
`superserve simulate` and its flags (`--late serve`, `--param`, `--records`, `--timeseries`); `superserve zoo build`,
`zoo show`, `zoo reprofile` and `zoo check` end to end on a tiny supernet."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from loadtest import traces
from loadtest.replayer import make_trace
from superserve.cli import main as cli_main
from superserve.records import read_jsonl


# --- superserve trace ---------------------------------------------------------------------------------------------
def test_trace_gamma_saved_then_trace_info_prints_its_statistics(tmp_path: Path, capsys):
    """README: `superserve trace gamma --rate 1000 --cv2 4 --duration 60 --out t.npy`, then `superserve trace info
    t.npy` prints the request count, duration, mean rate, CV² and the busiest one-second rate."""
    out = tmp_path / "t.npy"
    assert cli_main(["trace", "gamma", "--rate", "1000", "--cv2", "4", "--duration", "60", "--out", str(out)]) == 0
    made = capsys.readouterr().out
    arrivals = np.load(out)
    assert made.startswith(f"wrote {len(arrivals)} arrivals to {out}")
    assert cli_main(["trace", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    gaps = np.diff(arrivals)
    assert info["requests"] == len(arrivals) and info["duration_s"] == pytest.approx(arrivals[-1] - arrivals[0])
    assert info["mean_rate_qps"] == pytest.approx((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    assert info["cv2"] == pytest.approx(gaps.var() / gaps.mean() ** 2)
    assert info["peak_1s_rate_qps"] == np.bincount((arrivals - arrivals[0]).astype(int)).max()
    assert info["mean_rate_qps"] == pytest.approx(1000, rel=0.1) and info["cv2"] == pytest.approx(4, rel=0.35)
    assert info["peak_1s_rate_qps"] > 1000  # bursty: the busiest second is above the mean


def test_trace_kinds_from_the_cli(tmp_path: Path, capsys):
    csv_out = tmp_path / "p.csv"
    assert cli_main(["trace", "poisson", "--rate", "50", "--duration", "20", "--out", str(csv_out)]) == 0
    capsys.readouterr()
    assert traces.stats(traces.load(csv_out))["cv2"] == pytest.approx(1.0, rel=0.25)  # csv: one time per line
    assert cli_main(["trace", "ramp", "--start-rate", "10", "--end-rate", "100", "--accel", "30"]) == 0
    ramp = json.loads(capsys.readouterr().out)
    assert ramp["duration_s"] == pytest.approx(1 + 3 + 1, abs=0.5)  # hold 1 s, 90 q/s at 30 q/s², hold 1 s
    assert cli_main(["trace", "azure", "--rate", "100", "--minutes", "10", "--minute-s", "1"]) == 0
    azure = json.loads(capsys.readouterr().out)
    assert azure["duration_s"] <= 10 and azure["mean_rate_qps"] == pytest.approx(100, rel=0.15)


def test_malformed_trace_files_are_rejected_with_the_offending_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s\n0.0\n0.5\nabc\n1.0\n")
    assert cli_main(["trace", "info", str(bad)]) == 2
    assert capsys.readouterr().out == f"error: {bad}:4: 'abc' is not a number of seconds\n"


def test_azure_window_spec_follows_the_files_minutes():
    """`azure:START:MINUTES` replays those minutes of the Azure file, each compressed into duration / MINUTES
    seconds and rescaled to the mean rate: the per-slice counts follow the file's per-minute counts."""
    trace = traces.read_azure()
    minute_counts = traces.azure_minute_counts(trace)
    start, minutes = 1080, 20
    arrivals = make_trace(f"azure:{start}:{minutes}", 200.0, 20.0, seed=0)
    per_slice = np.bincount(arrivals.astype(int), minlength=minutes)[:minutes]
    want = minute_counts[start:start + minutes]
    assert len(arrivals) == pytest.approx(200 * 20, rel=0.1)
    assert np.corrcoef(per_slice, want)[0, 1] > 0.9, (per_slice, want)
    # the default window is the burst window, and another window gives another shape
    default = make_trace("azure", 200.0, 20.0, seed=0)
    window = make_trace("azure:%d:%d" % traces.AZURE_BURST_WINDOW, 200.0, 20.0, seed=0)
    assert np.array_equal(default, window)
    assert not np.array_equal(default, make_trace("azure:0:40", 200.0, 20.0, seed=0))


def test_azure_day_spans_every_minute_of_the_file():
    trace = traces.read_azure()
    arrivals = make_trace("azure-day", 100.0, float(trace.minutes), seed=0)  # one second per trace minute
    per_minute = np.bincount(arrivals.astype(int), minlength=trace.minutes)[:trace.minutes]
    assert arrivals.max() < trace.minutes
    assert np.corrcoef(per_minute, traces.azure_minute_counts(trace))[0, 1] > 0.9


def test_file_spec_replays_a_saved_trace_as_is(tmp_path: Path):
    saved = np.array([0.0, 0.25, 0.3, 2.0])
    path = tmp_path / "t.npy"
    traces.save(path, saved)
    assert np.array_equal(make_trace(f"file:{path}", 999.0, 1.0, seed=5), saved)  # rate and duration ignored
    with pytest.raises(traces.TraceError):
        make_trace("azure:x:y", 10, 1, 0)


# --- superserve simulate ------------------------------------------------------------------------------------------
def _simulate(capsys, *flags: str) -> str:
    assert cli_main(["simulate", *flags]) == 0
    return capsys.readouterr().out


def _counts(text: str) -> dict[str, int]:
    import re

    m = re.search(r"\(met (\d+), late (\d+), shed (\d+), rejected (\d+)\)", text)
    assert m, text
    return dict(zip(("met", "late", "shed", "rejected"), map(int, m.groups())))


def test_simulate_readme_example_prints_every_metric(capsys):
    text = _simulate(capsys, "--policy", "slackfit", "--trace", "azure", "--load", "4", "--duration", "10")
    for label in ("zoo:", "policy: slackfit", "SLO attainment", "mean accuracy", "goodput", "latency p50/p99",
                  "requests/s"):
        assert label in text, label
    assert sum(_counts(text).values()) > 0


def test_simulate_late_serve_serves_what_shed_mode_sheds(capsys, tmp_path: Path):
    flags = ["--trace", "gamma:8", "--load", "20", "--duration", "5", "--seed", "1"]
    shed = _counts(_simulate(capsys, *flags))
    served = _counts(_simulate(capsys, *flags, "--late", "serve"))
    assert shed["shed"] > 0  # overloaded: shed mode sheds
    assert served["shed"] == 0 and served["late"] > shed["late"]  # serve mode serves those late instead
    assert sum(shed.values()) == sum(served.values())  # the same trace


def test_simulate_param_records_and_timeseries(capsys, tmp_path: Path):
    """`--policy clipper+ --param subnet=3`: every served record names the zoo's subnet 3; the records and the
    per-second CSV are written and agree with the printed counts."""
    from superserve.synthetic import load_zoo

    zoo, _ = load_zoo(None)
    records, series = tmp_path / "r.jsonl", tmp_path / "ts.csv"
    text = _simulate(capsys, "--policy", "clipper+", "--param", "subnet=3", "--trace", "poisson", "--load", "0.5",
                     "--duration", "5", "--records", str(records), "--timeseries", str(series))
    served = [r for r in read_jsonl(records) if r.subnet_id is not None]
    assert served and {r.subnet_id for r in served} == {zoo.entries[3].subnet_id}
    c = _counts(text)
    assert len(read_jsonl(records)) == sum(c.values())
    with open(series, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 4 <= len(rows) <= 6 and sum(int(float(r["arrivals"])) for r in rows) == sum(c.values())
    assert f"records: {records}" in text and f"time series: {series}" in text


def test_simulate_bad_arguments(capsys):
    assert cli_main(["simulate", "--policy", "nope"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["simulate", "--param", "novalue"])
    assert cli_main(["simulate", "--trace", "zipf"]) == 2
    assert "unknown trace" in capsys.readouterr().err


# --- superserve zoo build / show / reprofile / check ----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    import torch

    from supernet.checkpoint import save_checkpoint
    from supernet.config import SupernetSpace
    from supernet.network import SuperNet

    tiny = SupernetSpace(image_size=8, stem_width=8, stage_widths=(8, 16), stage_strides=(1, 2), head_width=16,
                         depth_choices=(1, 2))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("zoo_cli") / "trained.pt"
    save_checkpoint(SuperNet(tiny), path, meta={"data": "digits", "data_seed": 0})
    return path


@pytest.mark.slow  # search, calibration and two profiles: ~20 s on a shared 2-core host
def test_zoo_build_show_reprofile_check_from_the_cli(trained: Path, tmp_path: Path, capsys):
    from dataclasses import replace

    from helpers import TEST_HOST
    from superserve.zoo import HostFingerprint, Zoo

    out = tmp_path / "zoo.json"
    rc = cli_main(["zoo", "build", "--ckpt", str(trained), "--out", str(out), "--num-random", "6", "--generations",
                   "1", "--population", "3", "--search-calibration-images", "64", "--min-size", "4", "--max-size",
                   "6", "--calibration-images", "64", "--batch-sizes", "1,2,4", "--min-repeats", "2",
                   "--max-repeats", "3", "--target-s", "0.01", "--quiet"])
    built = capsys.readouterr().out
    assert rc == 0, built
    zoo = Zoo.load(out)
    ckpt = tmp_path / "supernet.pt"
    assert 4 <= len(zoo.entries) <= 6 and zoo.batch_sizes == (1, 2, 4) and ckpt.is_file()
    assert f"wrote {out} and {ckpt}" in built
    for png in ("zoo_front.png", "zoo_latency.png"):
        assert (tmp_path / png).stat().st_size > 5_000 and f"wrote {tmp_path / png}" in built
    assert all(e.subnet_id in built for e in zoo.entries)  # the table printed

    assert cli_main(["zoo", "show", "--zoo", str(out)]) == 0
    shown = capsys.readouterr().out
    rows = [line for line in shown.splitlines() if any(line.strip().startswith(e.subnet_id) for e in zoo.entries)]
    assert len(rows) == len(zoo.entries)

    assert cli_main(["zoo", "check", "--zoo", str(out), "--ckpt", str(ckpt)]) == 0
    assert f"ok: {out} matches this host and {ckpt}" in capsys.readouterr().out

    foreign = tmp_path / "foreign.json"
    replace(zoo, host=TEST_HOST).save(foreign)
    assert cli_main(["zoo", "check", "--zoo", str(foreign)]) == 1
    assert "STALE" in capsys.readouterr().out
    again = tmp_path / "reprofiled.json"
    assert cli_main(["zoo", "reprofile", "--zoo", str(foreign), "--ckpt", str(ckpt), "--out", str(again),
                     "--min-repeats", "2", "--max-repeats", "2", "--target-s", "0.01", "--quiet"]) == 0
    assert f"wrote {again}" in capsys.readouterr().out
    new = Zoo.load(again)
    assert new.host == HostFingerprint.current(threads=1) and Zoo.load(foreign).host == TEST_HOST  # --out: kept
    assert {e.subnet_id: e.accuracy for e in new.entries} == {e.subnet_id: e.accuracy for e in zoo.entries}
    assert cli_main(["zoo", "check", "--zoo", str(again), "--ckpt", str(ckpt)]) == 0
    capsys.readouterr()


def test_zoo_commands_report_bad_input(tmp_path: Path, capsys):
    assert cli_main(["zoo", "show", "--zoo", str(tmp_path / "none.json")]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["zoo", "build", "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "z.json")]) == 2
    assert "error:" in capsys.readouterr().err


def test_simulate_host_cost_flags_fit_and_online_correction(capsys, tmp_path: Path):
    """Records simulated with a known host cost, fed back with --host-cost-from, give that cost back; both ways of
    giving it at once is an error; --correct-online runs the server's correction (its interval is the server's)."""
    from superserve.commands.simulate import CORRECTION_INTERVAL_S
    from superserve.server.engine import EngineConfig

    assert CORRECTION_INTERVAL_S == EngineConfig().correction_interval_s
    records = tmp_path / "server.jsonl"
    flags = ["--trace", "gamma:4", "--load", "3", "--duration", "5", "--workers", "2", "--no-noise"]
    text = _simulate(capsys, *flags, "--host-ms-per-batch", "2", "--host-ms-per-request", "0.5",
                     "--records", str(records))
    assert "host: 2 ms per batch, 0.5 ms per arriving call, online correction off" in text
    text = _simulate(capsys, *flags, "--host-cost-from", str(records), "--correct-online")
    assert re.search(r"host cost fitted from .*: 2\.00 ms per batch \+ 0\.50 ms per arriving call", text), text
    assert "online correction on" in text and sum(_counts(text).values()) > 0
    assert cli_main(["simulate", *flags, "--host-cost-from", str(records), "--host-ms-per-batch", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main(["simulate", *flags, "--host-cost-from", str(tmp_path / "missing.jsonl")]) == 2
    assert cli_main(["simulate", *flags, "--host-cost-from", str(tmp_path)]) == 2  # a directory
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe not records\n")
    assert cli_main(["simulate", *flags, "--host-cost-from", str(tmp_path / "bad.jsonl")]) == 2
    # the client path: given, or fitted from the client's records of the same run (here the server's own: nothing
    # between them, so nothing to fit)
    text = _simulate(capsys, *flags, "--host-ms-per-receive", "0.8", "--host-ms-per-answer", "0.4", "--network-ms", "2")
    assert "client path: 0.8 ms per call taken in, 0.4 ms per answer, network 2 ms" in text
    from dataclasses import replace

    from superserve.records import read_jsonl, write_jsonl

    client = tmp_path / "client.jsonl"  # as the replayer writes them: dispatch_s = when the call was sent
    write_jsonl(client, [replace(r, dispatch_s=r.arrival_s) for r in read_jsonl(records)])
    text = _simulate(capsys, *flags, "--host-cost-from", str(records), "--client-records", str(client))
    assert re.search(r"client path fitted from .*: 0\.0 ms to take in a call, 0\.0 ms per answer, network 0\.00 ms",
                     text), text
    assert cli_main(["simulate", *flags, "--client-records", str(records)]) == 2
    assert "needs --host-cost-from" in capsys.readouterr().err

    # the server's clock: the client sent every call 4 ms after its scheduled time, so the simulated server sees it
    # then and counts its deadline from there, while the client judges from the schedule (--no-server-clock: not)
    late = tmp_path / "client_late.jsonl"
    write_jsonl(late, [replace(r, arrival_s=r.arrival_s - 0.004, deadline_s=r.deadline_s - 0.004,
                               dispatch_s=r.arrival_s) for r in read_jsonl(records)])
    tight = [*flags, "--slo-ms", "12", "--host-cost-from", str(records), "--client-records", str(late)]
    on, off = _simulate(capsys, *tight), _simulate(capsys, *tight, "--no-server-clock")
    assert "server clock: calls reach the server 0 ms after they leave, plus the client's send lag (fitted, median " \
           "4.0 ms)" in on, on
    assert "server clock" not in off
    assert _counts(on)["met"] < _counts(off)["met"]
    assert cli_main(["simulate", *flags, "--host-spread"]) == 2
    assert "needs --host-cost-from" in capsys.readouterr().err
