"""`superserve demo`: the newcomer's first look at the main job, end to end on this machine in under a minute.

Starts the real server on the shipped zoo, replays ~20 s of a bursty trace through the real gRPC path (open loop,
`loadtest.replayer` in its own process), once with SlackFit choosing the subnet per batch and once with a
fixed-subnet baseline (the most accurate subnet, Clipper-style adaptive batching), and prints SLO attainment and mean
accuracy of each next to what the simulator predicts for the same trace; writes a PNG of both over time.

The load is sized from the zoo's latency table so that the bursts exceed what the most accurate subnet can serve
within the SLO while the mean load does not: the regime SuperServe is built for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint (default: shipped)")
    parser.add_argument("--duration-s", type=float, default=20.0, help="trace length per policy (default 20)")
    parser.add_argument("--cv2", type=float, default=8.0, help="burstiness: gamma CV² of inter-arrivals (default 8)")
    parser.add_argument("--rate-qps", type=float, default=None, help="mean request rate (default: from the zoo)")
    parser.add_argument("--slo-ms", type=float, default=None, help="latency SLO per request (default: from the zoo)")
    parser.add_argument("--out", type=Path, default=Path("superserve-demo.png"), help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trace (default %(default)s)")


def size_load(zoo, max_rate_qps: float = 120.0) -> tuple[float, float]:  # noqa: ANN001 - a Zoo
    """(slo_ms, mean rate): SLO = 5x the most accurate subnet's batch-1 p99; rate = 70% of what that subnet
    sustains with batches that take at most half the SLO (so only the bursts overload it), capped at what one
    Python client and server keep up with on a small machine."""
    top = max(zoo.entries, key=lambda e: e.accuracy)
    slo_ms = 5 * zoo.latency_ms(top.subnet_id, 1)
    sustain = max(b / zoo.latency_ms(top.subnet_id, b) * 1e3 for b in zoo.batch_sizes
                  if zoo.latency_ms(top.subnet_id, b) <= slo_ms / 2 or b == 1)
    return slo_ms, min(max_rate_qps, 0.7 * sustain)


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import tempfile
    import time

    from superserve.server.app import frozen_host_zoo

    for path, what in ((args.zoo, "zoo"), (args.checkpoint, "checkpoint")):
        if not Path(path).is_file():
            print(f"superserve demo: no {what} at {path}; train one (`superserve train`, `superserve zoo`) or pass "
                  f"--{what}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    print("superserve demo: one supernet, many subnets; SlackFit picks the subnet per batch to ride out bursts.\n")
    # The zoo as the server resolves it on this host (re-profiled once and cached when the file's table does not fit
    # here), frozen for both runs: the servers and the simulator then use the same table, and the second server does
    # not spot-check the speed again.
    frozen = Path(tempfile.mkdtemp(prefix="superserve-demo-")) / "zoo.json"
    zoo = frozen_host_zoo(args.zoo, args.checkpoint, frozen, quiet=False)
    try:
        return _compare(args, zoo, frozen, started)
    finally:
        shutil.rmtree(frozen.parent, ignore_errors=True)


def _compare(args: argparse.Namespace, zoo, frozen: Path, started: float) -> int:  # noqa: ANN001 - a Zoo
    """Both runs (SlackFit, then the fixed subnet) on the real server, the simulator's prediction, the PNG."""
    import time

    import numpy as np

    from loadtest import traces
    from loadtest.replayer import ReplaySpec, replay_in_subprocess
    from policies.base import make_policy
    from superserve.metrics import summarize
    from superserve.server.app import Server, ServeConfig
    from superserve.server.engine import EngineConfig
    from superserve.sim import SimConfig, simulate

    slo_auto, rate_auto = size_load(zoo)
    slo_ms = args.slo_ms or slo_auto
    rate = args.rate_qps or rate_auto
    accs = [e.accuracy for e in zoo.entries]
    print(f"zoo: {len(zoo.entries)} subnets of one supernet, validation accuracy {min(accs) * 100:.1f}% to "
          f"{max(accs) * 100:.1f}%, batch-1 latency {min(zoo.latency_ms(s, 1) for s in zoo.subnet_ids):.1f} to "
          f"{max(zoo.latency_ms(s, 1) for s in zoo.subnet_ids):.1f} ms (p99, this host)")
    arrivals = traces.gamma(rate, args.cv2, args.duration_s, np.random.default_rng(args.seed))
    st = traces.stats(arrivals)
    print(f"load: {st['requests']} requests over {args.duration_s:g} s, bursty (gamma CV² {args.cv2:g}): mean "
          f"{st['mean_rate_qps']:.0f} req/s, busiest second {st['peak_1s_rate_qps']:.0f} req/s; SLO {slo_ms:.0f} ms "
          f"per request\n")
    images = _digits(len(arrivals))
    runs = [("SlackFit", "slackfit", {}), ("fixed subnet (most accurate)", "clipper+", {"subnet": -1})]
    results = {}
    for label, policy, params in runs:
        print(f"  replaying through the gRPC server with {label} ...", end="", flush=True)
        srv = Server(ServeConfig(port=0, metrics_port=None, zoo_path=frozen, checkpoint_path=args.checkpoint,
                                 reprofile="never", policy=policy, policy_params=params, quiet=True,
                                 engine=EngineConfig(default_slo_ms=slo_ms)))
        srv.start()
        try:
            out = replay_in_subprocess(arrivals, ReplaySpec(url=f"127.0.0.1:{srv.port}", slo_ms=slo_ms), images)
        finally:
            srv.stop()
        sim = simulate(arrivals, make_policy(policy, zoo, **params), slo_ms, config=SimConfig(workers=1))
        results[label] = (summarize(out.records), summarize(sim), out)
        print(f" done (client send lag max {out.send_lag_ms(100):.0f} ms)")
        for reason in out.bottleneck_reasons:
            print(f"    warning: the client, not the server, may have limited this run: {reason}")
    print(f"\n{'':30} {'SLO attainment':>15} {'mean accuracy':>14} {'p99 latency':>12}   simulator predicted")
    for label, (real, sim, _) in results.items():
        print(f"{label:30} {real.slo_attainment * 100:14.1f}% {real.mean_accuracy * 100:13.2f}% "
              f"{real.p99_latency_ms:9.1f} ms   {sim.slo_attainment * 100:5.1f}% / {sim.mean_accuracy * 100:.2f}%")
    (sf, _, _), (fx, _, _) = results["SlackFit"], results["fixed subnet (most accurate)"]
    print(f"\nSlackFit met the SLO for {sf.slo_attainment * 100:.1f}% of requests vs {fx.slo_attainment * 100:.1f}% "
          f"for the fixed subnet, giving up {max(0.0, fx.mean_accuracy - sf.mean_accuracy) * 100:.2f} points of mean "
          f"accuracy: during bursts it serves smaller subnets of the same weights, and the large one again after.")
    _plot(results, args.out, slo_ms)
    print(f"plot: {args.out}   (whole demo: {time.perf_counter() - started:.0f} s)")
    return 0


def _digits(n: int) -> np.ndarray:  # noqa: F821 - numpy imported lazily by run()
    """Real MNIST test digits, normalised as in training (random images if the dataset is unavailable)."""
    import numpy as np

    try:
        from superserve.data import load_dataset

        x = load_dataset("mnist5k").test_x.numpy()
    except Exception:  # noqa: BLE001 - the demo still shows scheduling without real digits
        x = np.random.default_rng(0).standard_normal((256, 1, 28, 28)).astype(np.float32)
    return x[: max(1, min(n, len(x)))]


def _plot(results: dict, out: Path, slo_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from superserve.metrics import time_series

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for k, (label, (_, _, out_run)) in enumerate(results.items()):
        ts = time_series(out_run.records, 1.0)
        t = ts.start_s - ts.start_s[0]
        if k == 0:
            axes[0].bar(t, ts.arrivals, width=0.9, color="0.7", align="edge")
        axes[1].plot(t + 0.5, ts.slo_attainment * 100, marker="o", ms=3, label=label)
        axes[2].plot(t + 0.5, ts.mean_accuracy * 100, marker="o", ms=3, label=label)
    axes[0].set_ylabel("requests / s")
    axes[0].set_title(f"bursty load through the gRPC server, SLO {slo_ms:.0f} ms")
    axes[1].set_ylabel("SLO attainment %")
    axes[2].set_ylabel("mean accuracy %")
    axes[2].set_xlabel("time (s)")
    axes[1].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
