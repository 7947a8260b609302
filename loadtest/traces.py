"""Arrival traces: seeded generators, the Azure Functions 2019 per-minute format, and a trace file format.

A trace is a sorted 1-D float64 numpy array of arrival times in seconds from 0. Every random generator takes a
`numpy.random.Generator`, so a trace is a pure function of its parameters and the seed.

Trace files: `.npy` (the array itself) or `.csv` (a header line `arrival_s`, then one arrival time per line).

Azure Functions 2019 invocation counts (`invocations_per_function_md.anon.d*.csv`): one row per function with the
columns HashOwner, HashApp, HashFunction (any order), optionally Trigger, then one count per minute of the day, the
minute columns named `1`..`N` or `minute_1`..`minute_N`. We sum the chosen functions per minute, rescale the counts so
that the mean rate is the target, and spread each minute's arrivals uniformly at random inside it. The package ships
a derived copy (`loadtest/data/azure2019_1000fn_sum.csv`: the per-minute sum of the 1000 functions of the shared
sample, one row in the same format; `azure2019_top20.csv`: its 20 busiest functions). Source: Azure Public Dataset,
AzureFunctionsDataset2019 (Shahrad et al., ATC'20), CC-BY 4.0.

Azure Functions 2021 invocations (`AzureFunctionsInvocationTraceForTwoWeeksJan2021`, one row per invocation with the
columns app, func, end_timestamp, duration in seconds): `read_azure` recognises the header and bins each invocation's
arrival (end_timestamp - duration) into per-minute counts per (app, func), so the same rescaling applies. The binning
drops the sub-minute timing inside each minute, which the rescaled replay redraws uniformly as for the 2019 format.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_AZURE_PATH = DATA_DIR / "azure2019_1000fn_sum.csv"
_HASH_COLUMNS = ("HashOwner", "HashApp", "HashFunction")
_AZURE2021_COLUMNS = ("app", "func", "end_timestamp", "duration")


class TraceError(ValueError):
    """A malformed trace file or impossible trace parameters."""


def _check_rate(rate_qps: float, duration_s: float) -> None:
    if not rate_qps > 0 or not math.isfinite(rate_qps):
        raise TraceError(f"rate must be a positive number of queries/s, got {rate_qps}")
    if not duration_s > 0:
        raise TraceError(f"duration must be > 0 s, got {duration_s}")


def _renewal(rate_qps: float, cv2: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrivals of a renewal process with gamma inter-arrivals (CV² = 1 is Poisson) on [0, duration_s)."""
    shape, scale = 1.0 / cv2, cv2 / rate_qps  # mean = shape * scale = 1/rate, CV² = 1/shape
    chunks, t, expected = [], 0.0, rate_qps * duration_s
    while t < duration_s:  # draw in chunks: a bursty trace can need more than its expected count
        gaps = rng.gamma(shape, scale, size=int(expected + 10 * math.sqrt(expected * cv2) + 100))
        times = t + np.cumsum(gaps)
        chunks.append(times)
        t = float(times[-1])
    out = np.concatenate(chunks)
    return out[out < duration_s]


def poisson(rate_qps: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals at `rate_qps` for `duration_s` seconds."""
    _check_rate(rate_qps, duration_s)
    return _renewal(rate_qps, 1.0, duration_s, rng)


def gamma(rate_qps: float, cv2: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma inter-arrivals with mean rate `rate_qps` and squared coefficient of variation `cv2` (bursty if > 1)."""
    _check_rate(rate_qps, duration_s)
    if not cv2 > 0:
        raise TraceError(f"CV² must be > 0, got {cv2}")
    return _renewal(rate_qps, cv2, duration_s, rng)


def ramp(start_qps: float, end_qps: float, accel_qps2: float, rng: np.random.Generator,
         hold_before_s: float = 1.0, hold_after_s: float = 1.0, cv2: float = 1.0) -> np.ndarray:
    """Rate `start_qps` for `hold_before_s`, then changing linearly at `accel_qps2` (queries/s², > 0) to `end_qps`,
    then `end_qps` for `hold_after_s`. Made by time-rescaling a unit-rate renewal process with CV² `cv2`."""
    if start_qps <= 0 or end_qps <= 0 or accel_qps2 <= 0 or hold_before_s < 0 or hold_after_s < 0:
        raise TraceError("ramp needs positive rates and acceleration and non-negative hold times")
    ramp_s = abs(end_qps - start_qps) / accel_qps2
    slope = math.copysign(accel_qps2, end_qps - start_qps) if ramp_s > 0 else 0.0
    total_s = hold_before_s + ramp_s + hold_after_s
    area1 = start_qps * hold_before_s
    area2 = area1 + (start_qps + end_qps) / 2 * ramp_s
    area3 = area2 + end_qps * hold_after_s
    u = _renewal(1.0, cv2, area3, rng) if cv2 != 1.0 else np.sort(rng.uniform(0, area3, rng.poisson(area3)))
    t = np.empty_like(u)
    a = u < area1
    t[a] = u[a] / start_qps
    b = (u >= area1) & (u < area2)
    x = u[b] - area1  # solve start*s + slope*s²/2 = x for s >= 0
    if slope == 0:
        s = x / start_qps
    else:
        s = (-start_qps + np.sqrt(np.maximum(start_qps**2 + 2 * slope * x, 0.0))) / slope
    t[b] = hold_before_s + s
    c = u >= area2
    t[c] = hold_before_s + ramp_s + (u[c] - area2) / end_qps
    return np.minimum(np.sort(t), np.nextafter(total_s, 0))


# --- Azure Functions ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AzureTrace:
    function_ids: tuple[str, ...]  # HashFunction per row
    counts: np.ndarray  # (functions, minutes) int64 invocations per minute

    @property
    def minutes(self) -> int:
        return self.counts.shape[1]


def read_azure(path: str | os.PathLike[str] = DEFAULT_AZURE_PATH) -> AzureTrace:
    """Parse an Azure Functions 2019 per-minute invocation file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"Azure trace file {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(f"{path}:1: empty file, expected a header") from None
        if all(c in [h.strip() for h in header] for c in _AZURE2021_COLUMNS):
            return _read_azure_2021(path, [h.strip() for h in header], reader)
        missing = [c for c in _HASH_COLUMNS if c not in header]
        if missing:
            raise TraceError(f"{path}:1: header lacks {', '.join(missing)} (an Azure Functions 2019 "
                             f"invocations file has HashOwner,HashApp,HashFunction[,Trigger],1..1440; a 2021 "
                             f"invocation file has app,func,end_timestamp,duration)")
        id_cols = [k for k, name in enumerate(header) if name in _HASH_COLUMNS or name == "Trigger"]
        minute_cols = [k for k in range(len(header)) if k not in id_cols]
        for m, k in enumerate(minute_cols, 1):
            if header[k].strip() not in (str(m), f"minute_{m}"):
                raise TraceError(f"{path}:1: column {k + 1} is {header[k]!r}, expected minute {m} "
                                 f"('{m}' or 'minute_{m}')")
        if not minute_cols:
            raise TraceError(f"{path}:1: no minute columns")
        fn_col = header.index("HashFunction")
        ids, rows = [], []
        for lineno, row in enumerate(reader, 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TraceError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            try:
                counts = [int(row[k]) for k in minute_cols]
            except ValueError:
                bad = next(row[k] for k in minute_cols if not row[k].strip().lstrip("-").isdigit())
                raise TraceError(f"{path}:{lineno}: invocation count {bad!r} is not an integer") from None
            if min(counts) < 0:
                raise TraceError(f"{path}:{lineno}: negative invocation count")
            ids.append(row[fn_col])
            rows.append(counts)
    if not rows:
        raise TraceError(f"{path}: no function rows")
    return AzureTrace(tuple(ids), np.array(rows, dtype=np.int64))


def _read_azure_2021(path: Path, header: list[str], reader: Any) -> AzureTrace:
    """Per-minute counts per (app, func) from 2021 per-invocation rows; arrival = end_timestamp - duration."""
    k_app, k_func, k_end, k_dur = (header.index(c) for c in _AZURE2021_COLUMNS)
    fn_index: dict[str, int] = {}
    fn_of: list[int] = []
    arrivals: list[float] = []
    for lineno, row in enumerate(reader, 2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise TraceError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
        try:
            end, dur = float(row[k_end]), float(row[k_dur])
        except ValueError:
            raise TraceError(f"{path}:{lineno}: end_timestamp {row[k_end]!r} or duration {row[k_dur]!r} is not "
                             f"a number of seconds") from None
        if not (math.isfinite(end) and math.isfinite(dur)) or dur < 0:
            raise TraceError(f"{path}:{lineno}: end_timestamp and duration must be finite, duration >= 0")
        fn = f"{row[k_app]}/{row[k_func]}"
        fn_of.append(fn_index.setdefault(fn, len(fn_index)))
        arrivals.append(end - dur)
    if not arrivals:
        raise TraceError(f"{path}: no invocation rows")
    t = np.array(arrivals)
    minute = np.floor(t / 60.0).astype(np.int64)
    minute -= minute.min()
    counts = np.zeros((len(fn_index), int(minute.max()) + 1), dtype=np.int64)
    np.add.at(counts, (np.array(fn_of), minute), 1)
    return AzureTrace(tuple(fn_index), counts)


def azure_minute_counts(trace: AzureTrace, functions: int | Sequence[str] | None = None) -> np.ndarray:
    """Per-minute invocations summed over the chosen functions: None = all, an int N = the N busiest, or a list of
    HashFunction values."""
    if functions is None:
        rows = trace.counts
    elif isinstance(functions, int):
        if functions < 1:
            raise TraceError(f"need at least one function, got {functions}")
        order = np.argsort(-trace.counts.sum(axis=1), kind="stable")
        rows = trace.counts[order[:functions]]
    else:
        index = {f: k for k, f in enumerate(trace.function_ids)}
        unknown = [f for f in functions if f not in index]
        if unknown:
            raise TraceError(f"functions not in the trace: {', '.join(unknown[:3])}")
        rows = trace.counts[[index[f] for f in functions]]
    return rows.sum(axis=0)


def azure(trace: AzureTrace, rate_qps: float, rng: np.random.Generator, functions: int | Sequence[str] | None = None,
          start_minute: int = 0, minutes: int | None = None, minute_s: float = 60.0) -> np.ndarray:
    """Arrivals following the per-minute shape of the chosen functions, rescaled to mean `rate_qps`.

    Minutes [start_minute, start_minute + minutes) of the trace are replayed, each over `minute_s` seconds (60 =
    real time; less compresses the day). Each minute gets its rescaled count stochastically rounded (so the mean rate
    is exact in expectation), placed uniformly at random inside the minute.
    """
    counts = azure_minute_counts(trace, functions).astype(np.float64)
    end = trace.minutes if minutes is None else start_minute + minutes
    if not 0 <= start_minute < end <= trace.minutes:
        raise TraceError(f"minutes [{start_minute}, {end}) outside the trace's {trace.minutes}")
    counts = counts[start_minute:end]
    _check_rate(rate_qps, minute_s)
    if counts.sum() == 0:
        raise TraceError("the chosen functions have no invocations in the chosen minutes")
    expected = counts * (rate_qps * minute_s / counts.mean())
    n = np.floor(expected).astype(np.int64)
    n += rng.random(len(n)) < (expected - n)
    starts = np.repeat(np.arange(len(n)) * minute_s, n)
    return np.sort(starts + rng.uniform(0.0, minute_s, size=int(n.sum())))


AZURE_BURST_WINDOW = (1080, 40)  # minutes [1080, 1120) of the shared sample: holds the day's largest spike
# Minutes [1102, 1112): ten minutes around that spike (9.4k, 8.8k, 17k, 9.8k, 24k, 35k, 46k, 31k, 11k, 8.2k
# invocations per minute), replayed at real time by `azure-paced`.
AZURE_PACED_WINDOW = (1102, 10)


def named(spec: str, rate_qps: float, duration_s: float, rng: np.random.Generator,
          azure_path: str | os.PathLike[str] = DEFAULT_AZURE_PATH) -> np.ndarray:
    """A trace from a short spec, as the CLI and the experiments name them:

    - `poisson`; `gamma:CV2` (e.g. `gamma:4`): `duration_s` seconds at mean `rate_qps`;
    - `azure`: the bursty window AZURE_BURST_WINDOW of the Azure file (all functions summed), its 40 minutes
      compressed into `duration_s`, rescaled to mean `rate_qps`; `azure:START:MINUTES` picks another window and
      `azure-day` the whole day;
    - `azure-paced`: AZURE_PACED_WINDOW at real minute pacing (each trace minute lasts 60 s; `duration_s` is
      ignored), rescaled to mean `rate_qps`; `azure-paced:START:MINUTES` picks another window;
    - `file:PATH`: a saved trace, replayed as is (rate and duration ignored).
    """
    kind, _, arg = spec.partition(":")
    if kind == "poisson" and not arg:
        return poisson(rate_qps, duration_s, rng)
    if kind == "gamma":
        try:
            cv2 = float(arg)
        except ValueError:
            raise TraceError(f"trace {spec!r}: write gamma:CV2, e.g. gamma:4") from None
        return gamma(rate_qps, cv2, duration_s, rng)
    if kind in ("azure", "azure-day", "azure-paced"):
        trace = read_azure(azure_path)
        if kind == "azure-paced":
            start, minutes = AZURE_PACED_WINDOW
            if arg:
                try:
                    start, minutes = (int(x) for x in arg.split(":"))
                except ValueError:
                    raise TraceError(f"trace {spec!r}: write azure-paced:START:MINUTES, e.g. azure-paced:1102:10") \
                        from None
            return azure(trace, rate_qps, rng, start_minute=start, minutes=minutes, minute_s=60.0)
        if kind == "azure-day" and not arg:
            start, minutes = 0, trace.minutes
        elif not arg:
            start, minutes = AZURE_BURST_WINDOW
        else:
            try:
                start, minutes = (int(x) for x in arg.split(":"))
            except ValueError:
                raise TraceError(f"trace {spec!r}: write azure:START:MINUTES, e.g. azure:1080:40") from None
        return azure(trace, rate_qps, rng, start_minute=start, minutes=minutes, minute_s=duration_s / minutes)
    if kind == "file" and arg:
        return load(arg)
    raise TraceError(f"unknown trace {spec!r}: use poisson, gamma:CV2, azure[:START:MINUTES], "
                     f"azure-paced[:START:MINUTES], azure-day or file:PATH")


# --- statistics and files -----------------------------------------------------------------------------------------
def stats(arrivals_s: np.ndarray) -> dict[str, float]:
    """Count, duration, mean rate, CV² of inter-arrival times, and the busiest one-second window's rate."""
    a = np.asarray(arrivals_s)
    if a.size < 2:
        raise TraceError("a trace needs at least two arrivals for statistics")
    gaps = np.diff(a)
    duration = float(a[-1] - a[0])
    per_second = np.bincount((a - a[0]).astype(np.int64))
    return {"requests": int(a.size), "duration_s": duration, "mean_rate_qps": (a.size - 1) / duration,
            "cv2": float(gaps.var() / gaps.mean() ** 2), "peak_1s_rate_qps": float(per_second.max())}


def validate(arrivals_s: np.ndarray, source: str = "trace") -> np.ndarray:
    a = np.asarray(arrivals_s, dtype=np.float64)
    if a.ndim != 1:
        raise TraceError(f"{source}: a trace is a 1-D array of arrival seconds, got shape {a.shape}")
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0):
        raise TraceError(f"{source}: arrival times must be finite and >= 0")
    if np.any(np.diff(a) < 0):
        k = int(np.argmax(np.diff(a) < 0)) + 1
        raise TraceError(f"{source}: arrival times must be sorted (entry {k}: {a[k]} < {a[k - 1]})")
    return a


def save(path: str | os.PathLike[str], arrivals_s: np.ndarray) -> None:
    path = Path(path)
    a = validate(arrivals_s)
    if path.suffix == ".npy":
        np.save(path, a)
    elif path.suffix == ".csv":
        with open(path, "w") as fh:
            fh.write("arrival_s\n")
            fh.writelines(f"{x!r}\n" for x in a.tolist())
    else:
        raise TraceError(f"{path}: trace files end in .npy or .csv")


def load(path: str | os.PathLike[str]) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist")
    if path.suffix == ".npy":
        try:
            return validate(np.load(path, allow_pickle=False), str(path))
        except ValueError as exc:
            if isinstance(exc, TraceError):
                raise
            raise TraceError(f"{path}: not a numpy array file: {exc}") from None
    if path.suffix != ".csv":
        raise TraceError(f"{path}: trace files end in .npy or .csv")
    values = []
    with open(path) as fh:
        first = fh.readline().strip()
        if first != "arrival_s":
            raise TraceError(f"{path}:1: expected the header 'arrival_s', got {first[:40]!r}")
        for lineno, line in enumerate(fh, 2):
            if not line.strip():
                continue
            try:
                values.append(float(line))
            except ValueError:
                raise TraceError(f"{path}:{lineno}: {line.strip()[:40]!r} is not a number of seconds") from None
    return validate(np.array(values, dtype=np.float64), str(path))
