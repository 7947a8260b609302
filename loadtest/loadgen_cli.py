"""`superserve loadgen`: open-loop replay of a trace against an Open Inference Protocol gRPC endpoint.

Prints the simulator's metrics (SLO attainment, mean accuracy, goodput, p50/p99 latency) from raw per-request
records, the client's send lag, and a verdict on whether the client or the server was the bottleneck; writes the
records (JSONL, the simulator's schema), the client-side events next to them, and a per-second time-series PNG.

Example::

    superserve loadgen --trace gamma:4 --rate 200 --duration 15 --url 127.0.0.1:8001 --slo-ms 36 \\
        --out records.jsonl --plot loadgen.png --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", default="poisson",
                        help="poisson | gamma:CV2 | azure[:START:MINUTES] | azure-day | ramp:START_QPS:END_QPS[:CV2] "
                             "| file:PATH (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=None, help="mean rate, queries/s (not for ramp: / file:)")
    parser.add_argument("--duration", type=float, default=10.0, help="trace seconds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals and payloads (default: 0)")
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port (default: %(default)s)")
    parser.add_argument("--model", default="superserve", help="OIP model name (default: %(default)s)")
    parser.add_argument("--slo-ms", type=float, default=100.0,
                        help="latency SLO, sent as the slo_ms hint and judged on the client clock (default: 100)")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="accuracy hint, fraction (default: none)")
    parser.add_argument("--no-hints", action="store_true", help="send no request parameters")
    parser.add_argument("--max-in-flight", type=int, default=1000,
                        help="outstanding calls at most; beyond it a request is recorded client_overloaded, not sent "
                             "(default: %(default)s)")
    parser.add_argument("--drain-timeout", type=float, default=10.0,
                        help="seconds to wait for answers after the last send (default: %(default)s)")
    parser.add_argument("--ready-timeout", type=float, default=60.0,
                        help="seconds to wait for the endpoint's ServerReady before the schedule starts (endpoints "
                             "without ServerReady count as ready) (default: %(default)s)")
    parser.add_argument("--max-lag-ms", type=float, default=None,
                        help="send-lag p99 above which the client counts as the bottleneck (default: 10%% of SLO)")
    parser.add_argument("--accuracy", type=float, default=None,
                        help="accuracy to record for answers without subnet_accuracy (a fixed-model endpoint)")
    parser.add_argument("--subnet-label", default=None, help="subnet id to record for answers without subnet_id")
    parser.add_argument("--input-name", default=None, help="input tensor name (default: from model metadata)")
    parser.add_argument("--input-datatype", default=None, help="FP32 or UINT8 (default: from model metadata)")
    parser.add_argument("--input-shape", default=None, help="e.g. 1,1,28,28 (default: from model metadata)")
    parser.add_argument("--channels", type=int, default=1, help="gRPC connections (default: 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="per-request records (JSONL); client events go to <stem>.client.jsonl")
    parser.add_argument("--plot", type=Path, default=None, help="per-second time-series PNG")
    parser.add_argument("--summary-json", type=Path, default=None, help="metrics + client report as JSON")


def report_dict(report: Any) -> dict[str, Any]:
    """The printed numbers as one JSON-able dict: the server-side metrics and the client's own report."""
    from superserve.metrics import summarize

    return {"metrics": summarize(report.records).as_dict(), "client": report.client_summary()}


def format_report(report: Any, label: str = "") -> str:
    from superserve.metrics import summarize

    s = summarize(report.records)
    c = report.client_summary()
    acc = "n/a (the endpoint reports no subnet_accuracy; pass --accuracy)" if math.isnan(s.mean_accuracy) \
        else f"{100 * s.mean_accuracy:.2f}%"
    lines = [
        f"loadgen{(' ' + label) if label else ''}: {s.requests} requests over {s.duration_s:.1f} s, input "
        f"{c['input']}",
        f"  SLO attainment  {100 * s.slo_attainment:6.2f}%   ({s.met} on time, {s.late} late, {s.shed} shed, "
        f"{s.rejected} rejected, {s.requests - s.met - s.late - s.shed - s.rejected} errors)",
        f"  mean accuracy   {acc}",
        f"  goodput         {s.goodput_qps:8.1f} q/s",
        f"  latency         p50 {s.p50_latency_ms:.1f} ms, p99 {s.p99_latency_ms:.1f} ms (from the scheduled send)",
        f"  send lag        p50 {c['send_lag_p50_ms']:.2f} ms, p99 {c['send_lag_p99_ms']:.2f} ms, max "
        f"{c['send_lag_max_ms']:.2f} ms; client CPU {100 * c['client_cpu_fraction']:.0f}% of a core",
        "  client side     " + ", ".join(f"{k[:-6]} {v}" for k, v in c.items() if k.endswith("_count") and v),
    ]
    for msg in report.error_messages():
        lines.append(f"  error           {msg}")
    lines += [f"  note            {n}" for n in report.notes]
    if report.client_bottleneck:
        lines.append("  VERDICT: THE CLIENT WAS THE BOTTLENECK; these numbers do not measure the server:")
        lines += [f"    - {r}" for r in report.bottleneck_reasons]
    else:
        lines.append(f"  VERDICT: the client kept up (send lag p99 {c['send_lag_p99_ms']:.2f} ms <= "
                     f"{c['lag_tolerance_ms']:.1f} ms, nothing dropped by the client): the numbers measure the server")
    return "\n".join(lines)


def plot_time_series(report: Any, path: Path, title: str = "") -> None:
    """Per-second panels: offered load and goodput, SLO attainment, mean accuracy, latency and send lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from superserve.metrics import time_series

    ts = time_series(report.records, 1.0)
    t = ts.start_s
    nb = len(t)
    lat = [[] for _ in range(nb)]
    lag = [[] for _ in range(nb)]
    for r, e in zip(report.records, report.events):
        b = int(r.arrival_s - t[0])
        if r.finish_s is not None:
            lat[b].append((r.finish_s - r.arrival_s) * 1e3)
        if e.sent_s is not None:
            lag[b].append((e.sent_s - e.scheduled_s) * 1e3)

    def pct(groups: list[list[float]], q: float) -> np.ndarray:
        return np.array([np.percentile(g, q) if g else np.nan for g in groups])

    t = t - t[0] + 0.5  # bin centres, seconds from the first arrival
    fig, ax = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    ax[0].plot(t, ts.arrivals, label="offered (arrivals/s)", color="tab:gray")
    ax[0].plot(t, ts.goodput_qps, label="goodput (on time/s)", color="tab:green")
    ax[0].set_ylabel("q/s")
    ax[0].legend(fontsize=8)
    ax[1].plot(t, ts.slo_attainment, color="tab:red")
    ax[1].set_ylabel("SLO attainment")
    ax[1].set_ylim(-0.03, 1.03)
    ax[2].plot(t, ts.mean_accuracy * 100, color="tab:blue")
    ax[2].set_ylabel("mean accuracy (%)")
    ax[3].plot(t, pct(lat, 50), label="latency p50")
    ax[3].plot(t, pct(lat, 99), label="latency p99")
    ax[3].plot(t, np.maximum(pct(lag, 99), 0.01), label="send lag p99", linestyle="--")
    ax[3].axhline(report.spec.slo_ms, color="k", linewidth=0.8, label="SLO")
    ax[3].set_yscale("log")
    ax[3].set_ylabel("ms")
    ax[3].set_xlabel("seconds from the first arrival (requests binned by scheduled send time)")
    ax[3].legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle(title or "superserve loadgen", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be integers separated by commas, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def run(args: argparse.Namespace) -> int:
    from loadtest.replayer import ReplayError, ReplaySpec, events_path, make_trace, replay
    from loadtest.traces import TraceError
    from superserve.records import write_jsonl

    try:
        rate = args.rate
        if rate is None:
            if not args.trace.startswith(("ramp", "file:")):
                raise TraceError(f"--rate is required for trace {args.trace!r}")
            rate = 1.0
        arrivals = make_trace(args.trace, rate, args.duration, args.seed)
        spec = ReplaySpec(url=args.url, model=args.model, slo_ms=args.slo_ms, min_accuracy=args.min_accuracy,
                          send_hints=not args.no_hints, max_in_flight=args.max_in_flight,
                          drain_timeout_s=args.drain_timeout, ready_timeout_s=args.ready_timeout,
                          accuracy=args.accuracy, subnet_label=args.subnet_label, input_name=args.input_name,
                          input_datatype=args.input_datatype,
                          input_shape=_shape(args.input_shape), channels=args.channels, max_lag_ms=args.max_lag_ms,
                          seed=args.seed)
        print(f"loadgen: {len(arrivals)} requests, trace {args.trace}, over {arrivals[-1] if len(arrivals) else 0:.1f}"
              f" s, to {args.url} model {args.model}, SLO {args.slo_ms:g} ms", file=sys.stderr, flush=True)
        report = replay(arrivals, spec)
    except (TraceError, ReplayError, ValueError) as exc:
        print(f"superserve loadgen: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args.trace))
    if args.out:
        write_jsonl(args.out, report.records)
        report.write_events(events_path(args.out))
        print(f"wrote {len(report.records)} records to {args.out} and client events to {events_path(args.out)}")
    if args.plot:
        plot_time_series(report, args.plot, f"loadgen {args.trace} -> {args.url} (SLO {args.slo_ms:g} ms)")
        print(f"wrote {args.plot}")
    if args.summary_json:
        args.summary_json.write_text(json.dumps({"trace": args.trace, "rate_qps": args.rate, "seed": args.seed,
                                                 **report_dict(report)}, indent=1, default=str) + "\n")
    return 0
