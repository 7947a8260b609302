"""Trace generators (rate and burstiness), the Azure Functions format, and trace files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtest import traces
from loadtest.traces import TraceError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("cv2", [1.0, 2.0, 4.0, 8.0])
def test_gamma_has_the_asked_mean_rate_and_cv2(cv2: float) -> None:
    a = traces.gamma(1000.0, cv2, 200.0, rng(1))
    s = traces.stats(a)
    assert s["mean_rate_qps"] == pytest.approx(1000.0, rel=0.05 * np.sqrt(cv2))
    assert s["cv2"] == pytest.approx(cv2, rel=0.1)
    assert np.all(np.diff(a) >= 0) and a[0] >= 0 and a[-1] < 200.0


def test_poisson_is_seeded_and_has_cv2_one() -> None:
    a, b = traces.poisson(500.0, 100.0, rng(3)), traces.poisson(500.0, 100.0, rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, traces.poisson(500.0, 100.0, rng(4)))
    s = traces.stats(a)
    assert s["mean_rate_qps"] == pytest.approx(500.0, rel=0.03) and s["cv2"] == pytest.approx(1.0, rel=0.05)
    with pytest.raises(TraceError):
        traces.poisson(-1.0, 10.0, rng())
    with pytest.raises(TraceError):
        traces.gamma(10.0, 0.0, 10.0, rng())


def test_ramp_rates_follow_the_acceleration() -> None:
    # 200 q/s for 2 s, +400 q/s² for 2 s up to 1000 q/s, hold 2 s
    a = traces.ramp(200.0, 1000.0, 400.0, rng(5), hold_before_s=2.0, hold_after_s=2.0)
    counts = np.histogram(a, bins=np.arange(0.0, 6.5, 0.5))[0][:12]
    assert counts[:4].sum() / 2.0 == pytest.approx(200.0, rel=0.15)
    assert counts[8:].sum() / 2.0 == pytest.approx(1000.0, rel=0.08)
    ramp_rate = counts[4:8] / 0.5  # expected 300, 500, 700, 900 q/s in the four half-seconds of the ramp
    assert np.allclose(ramp_rate, [300, 500, 700, 900], rtol=0.2)
    assert a[-1] < 6.0
    down = traces.ramp(1000.0, 200.0, 400.0, rng(5), hold_before_s=1.0, hold_after_s=1.0)
    assert len(down) == pytest.approx(1000 + 1200 + 200, rel=0.1)


HEADER_NUMBERED = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 5))
HEADER_MINUTE = "HashFunction,HashApp,HashOwner," + ",".join(f"minute_{m}" for m in range(1, 5))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("header,prefix", [(HEADER_NUMBERED, "o,a,{f},http"), (HEADER_MINUTE, "{f},a,o")])
def test_azure_both_header_variants_sum_functions_per_minute(tmp_path: Path, header: str, prefix: str) -> None:
    rows = [prefix.format(f="f1") + ",10,0,5,5", prefix.format(f="f2") + ",0,0,25,5",
            prefix.format(f="f3") + ",1,1,1,1"]
    trace = traces.read_azure(write(tmp_path, "\n".join([header] + rows) + "\n"))
    assert trace.function_ids == ("f1", "f2", "f3") and trace.minutes == 4
    assert traces.azure_minute_counts(trace).tolist() == [11, 1, 31, 11]
    assert traces.azure_minute_counts(trace, 1).tolist() == [0, 0, 25, 5]  # the busiest function (30)
    assert traces.azure_minute_counts(trace, ["f1", "f3"]).tolist() == [11, 1, 6, 6]
    with pytest.raises(TraceError, match="not in the trace"):
        traces.azure_minute_counts(trace, ["nope"])


def test_azure_rescales_to_the_target_rate_and_keeps_the_shape(tmp_path: Path) -> None:
    header = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 11))
    trace = traces.read_azure(write(tmp_path, header + "\no,a,f,http," + ",".join(["1"] * 5 + ["3"] * 5) + "\n"))
    a = traces.azure(trace, 100.0, rng(2), minute_s=10.0)
    assert len(a) == pytest.approx(100.0 * 100, rel=0.001)  # 10 minutes x 10 s at 100 q/s
    first, second = np.sum(a < 50.0), np.sum(a >= 50.0)
    assert second / first == pytest.approx(3.0, rel=0.02) and a[-1] < 100.0 and np.all(np.diff(a) >= 0)
    part = traces.azure(trace, 100.0, rng(2), start_minute=5, minutes=2, minute_s=1.0)
    assert len(part) == pytest.approx(200, abs=1) and part[-1] < 2.0
    with pytest.raises(TraceError):
        traces.azure(trace, 100.0, rng(), start_minute=9, minutes=5)


@pytest.mark.parametrize("text,match", [
    ("", ":1: empty"),
    ("HashApp,HashFunction,1,2\n", "lacks HashOwner"),
    ("HashOwner,HashApp,HashFunction,1,3\n", "expected minute 2"),
    ("HashOwner,HashApp,HashFunction,1,2\no,a,f,1,2\no,a,g,1\n", ":3: 4 fields"),
    ("HashOwner,HashApp,HashFunction,1,2\no,a,f,1,x\n", ":2: invocation count 'x'"),
    ("HashOwner,HashApp,HashFunction,1,2\no,a,f,1,-2\n", ":2: negative"),
    ("HashOwner,HashApp,HashFunction,1,2\n", "no function rows"),
])
def test_azure_malformed_files_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        traces.read_azure(write(tmp_path, text))


def test_shipped_azure_trace_is_the_default_and_bursty() -> None:
    trace = traces.read_azure()
    assert trace.minutes == 1440 and traces.DEFAULT_AZURE_PATH.stat().st_size < 300_000
    counts = traces.azure_minute_counts(trace)
    assert counts.max() / counts.mean() > 3  # minute-level bursts
    top = traces.read_azure(traces.DATA_DIR / "azure2019_top20.csv")
    assert len(top.function_ids) == 20 and np.all(top.counts.sum(axis=0) <= counts)


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_save_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    a = traces.gamma(100.0, 2.0, 5.0, rng())
    path = tmp_path / f"t{suffix}"
    traces.save(path, a)
    assert np.array_equal(traces.load(path), a)


def test_load_rejects_malformed_trace_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s\n0.1\n0.2\nzero\n")
    with pytest.raises(TraceError, match=":4:"):
        traces.load(bad)
    bad.write_text("time\n0.1\n")
    with pytest.raises(TraceError, match=":1: expected the header"):
        traces.load(bad)
    bad.write_text("arrival_s\n0.3\n0.2\n")
    with pytest.raises(TraceError, match="sorted"):
        traces.load(bad)
    with pytest.raises(TraceError, match="does not exist"):
        traces.load(tmp_path / "missing.npy")
    with pytest.raises(TraceError, match=".npy or .csv"):
        traces.save(tmp_path / "t.txt", np.array([0.0]))


def _write_2021(path: Path) -> None:
    # end_timestamp - duration: f1 arrives at 10 s, 20 s (minute 0) and 70 s (minute 1); g at 130 s (minute 2).
    path.write_text("app,func,end_timestamp,duration\n"
                    "a1,f1,10.5,0.5\n"
                    "a1,f1,21.0,1.0\n"
                    "a1,f1,70.25,0.25\n"
                    "a2,g,131.0,1.0\n")


def test_azure_2021_per_invocation_format_bins_arrivals_per_minute(tmp_path: Path) -> None:
    f = tmp_path / "inv2021.csv"
    _write_2021(f)
    t = traces.read_azure(f)
    assert t.function_ids == ("a1/f1", "a2/g")
    assert t.counts.tolist() == [[2, 1, 0], [0, 0, 1]]
    a = traces.azure(t, 2.0, rng(0), minute_s=60.0)
    assert a.min() >= 0 and a.max() < 180.0 and np.all(np.diff(a) >= 0)
    bad = tmp_path / "bad2021.csv"
    bad.write_text("app,func,end_timestamp,duration\na,f,soon,1\n")
    with pytest.raises(TraceError, match=":2: end_timestamp"):
        traces.read_azure(bad)


def test_trace_cli_reads_the_2021_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from loadtest import trace_cli

    f = tmp_path / "inv2021.csv"
    _write_2021(f)
    parser = argparse.ArgumentParser()
    trace_cli.add_arguments(parser)
    assert trace_cli.run(parser.parse_args(["azure", "--file", str(f), "--rate", "5"])) == 0
    assert '"requests"' in capsys.readouterr().out


def test_azure_paced_replays_minutes_at_real_time() -> None:
    a = traces.named("azure-paced", 50.0, 1.0, rng(2))  # duration is ignored: ten trace minutes last 600 s
    assert a[-1] > 590.0 and a[-1] < 600.0
    per_minute = np.bincount((a // 60).astype(int), minlength=10)
    # The window's spike (minute 6 of 10, 46k invocations against a ~20k mean) stays a spike at real pacing.
    assert int(np.argmax(per_minute)) == 6 and per_minute[6] > 2 * per_minute.mean()
    with pytest.raises(TraceError):
        traces.named("azure-paced:x", 50.0, 1.0, rng(2))
