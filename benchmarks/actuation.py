"""Actuation: switching the served subnet with SubNetAct versus loading a standalone model from disk.

SubNetAct switch = what a worker does before running a batch on another subnet: look up the subnet's SubnetNorm
statistics by id (the weights are already there; the config is an argument of forward). We also measure the
*observed* switch penalty: the batch-1 forward latency of a subnet right after another subnet ran, minus its
latency when it ran last too.
Model-zoo load = what a zoo-serving system (INFaaS-style, or Triton/TorchServe loading a TorchScript model) pays to
make another subnet ready: `torch.jit.load` of that subnet exported to TorchScript on disk (page cache warm, which
favours the loader), plus `.eval()`. Reported separately: the first inference after loading.
Also measured side by side: the batch-1 latency of the largest and the smallest subnet (the space's 10x design goal).

`--supernet ofa_resnet50` (or `ofa_mbv3`) measures once-for-all's supernet instead, randomly initialised at
`--image-size` (weights do not change switching or loading time), over `--subnets` subnets spread along a MACs-ordered
front (`benchmarks.memory.ofa_front`); the standalone models are OFA's own `get_active_subnet()` networks (TorchScript
by tracing). Results go to `results/actuation_<supernet>.json`, headline keys prefixed by the supernet's name.

Run: python benchmarks/actuation.py [--subnets 10] [--switches 2000] [--loads 60]
     python benchmarks/actuation.py --supernet ofa_resnet50 --latency-repeats 40 --loads 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._common import load_supernet, served_subnets, write_result  # noqa: E402
from supernet.config import SubnetConfig  # noqa: E402
from supernet.export import export  # noqa: E402
from training.calibrate import calibrate_subnets  # noqa: E402


def pct(values, q):
    return float(np.percentile(np.asarray(values), q))


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.save's deprecation notice
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", type=int, default=10, help="subnets switched among (default %(default)s)")
    parser.add_argument("--switches", type=int, default=2000, help="timed SubNetAct switches (default %(default)s)")
    parser.add_argument("--loads", type=int, default=60,
                        help="timed standalone-model loads from disk (default %(default)s)")
    parser.add_argument("--latency-repeats", type=int, default=200,
                        help="timed batch-1 forwards per latency figure (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subnets picked and of an OFA supernet's random weights (default %(default)s)")
    parser.add_argument("--supernet", default="native", choices=("native", "ofa_resnet50", "ofa_mbv3"),
                        help="native: the shipped checkpoint; ofa_*: once-for-all's, randomly initialised")
    parser.add_argument("--image-size", type=int, default=224, help="input side of an OFA supernet")
    parser.add_argument("--pool", type=int, default=200, help="random OFA subnets the front is thinned from")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    ofa = args.supernet != "native"
    load_before = os.getloadavg()
    if ofa:
        from benchmarks.memory import ofa_front
        from supernet.ofa_net import random_ofa_supernet
        from supernet.ofa_space import named_space

        net = random_ofa_supernet(named_space(args.supernet, args.image_size), args.seed)
        source = f"{args.supernet} at {args.image_size}x{args.image_size}, random weights (seed {args.seed})"
        subnets = ofa_front(net, args.subnets, args.seed, args.pool)
        big, small = net.sampler.max(), net.sampler.min()
    else:
        net, source = load_supernet()
        subnets = served_subnets(net, args.subnets, args.seed)
        big, small = SubnetConfig.max(net.space), SubnetConfig.min(net.space)
    space = net.space
    missing = [s for s in subnets + [big, small] if s.subnet_id not in net.norm_table]
    calibrate_subnets(net, missing, torch.randn(4 if ofa else 32, space.in_channels, space.image_size,
                                                space.image_size))
    net.eval()
    x1 = torch.randn(1, space.in_channels, space.image_size, space.image_size)

    # 1) SubNetAct switch: the per-batch actuation work, cycling through the served subnets.
    switch_us = []
    with torch.inference_mode():
        for i in range(args.switches):
            subnet = subnets[i % len(subnets)]
            start = time.perf_counter()
            stats = net.norm_table.get(subnet.subnet_id)
            switch_us.append((time.perf_counter() - start) * 1e6)
            assert stats
    # 2) Observed penalty inside a forward pass: smallest subnet after another subnet vs after itself.
    other = subnets[0] if subnets[0] != small else subnets[1]
    after_other, after_self = [], []
    with torch.inference_mode():
        for _ in range(10):
            net(x1, small), net(x1, other)
        for _ in range(args.latency_repeats):
            net(x1, other)
            t = time.perf_counter()
            net(x1, small)
            after_other.append(time.perf_counter() - t)
            t = time.perf_counter()
            net(x1, small)
            after_self.append(time.perf_counter() - t)
    # Paired differences: a load spike hits both calls of a pair alike, so the median pair difference is robust.
    penalty_us = statistics.median(np.subtract(after_other, after_self)) * 1e6

    # 3) Model-zoo alternative: load the subnet from disk as a standalone TorchScript model.
    load_ms, first_infer_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for subnet in tqdm(subnets, desc="export", unit="subnet"):
            path = Path(tmp) / f"{subnet.subnet_id}.pt"
            if ofa:  # OFA's static networks trace (their Python control flow is fixed)
                torch.jit.save(torch.jit.trace(net.export(subnet), x1, check_trace=False), str(path))
            else:
                torch.jit.save(torch.jit.script(export(net, subnet)), str(path))
            paths.append(path)
        for i in tqdm(range(args.loads), desc="load standalone models", unit="load"):
            path = paths[i % len(paths)]
            start = time.perf_counter()
            model = torch.jit.load(str(path), map_location="cpu").eval()
            load_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            with torch.inference_mode():
                model(x1)
            first_infer_ms.append((time.perf_counter() - start) * 1e3)

    # 4) The space's latency span at batch 1. Steady state (what the zoo profile and the scheduler see): alternating
    # blocks of 20 calls of one subnet, so load noise hits both alike but each block runs warm. Also reported: strictly
    # interleaved calls, where the small subnet always runs right after the large one evicted its weights from cache.
    lat_big, lat_small, mixed_big, mixed_small = [], [], [], []
    with torch.inference_mode():
        for _ in range(5):
            net(x1, big), net(x1, small)
        for _ in range(max(1, args.latency_repeats // 20)):
            for subnet, out in ((big, lat_big), (small, lat_small)):
                net(x1, subnet)
                for _ in range(20):
                    t = time.perf_counter()
                    net(x1, subnet)
                    out.append(time.perf_counter() - t)
        for _ in range(args.latency_repeats):
            t = time.perf_counter()
            net(x1, big)
            mixed_big.append(time.perf_counter() - t)
            t = time.perf_counter()
            net(x1, small)
            mixed_small.append(time.perf_counter() - t)

    switch_med, switch_p99 = statistics.median(switch_us), pct(switch_us, 99)
    load_med, load_p99 = statistics.median(load_ms), pct(load_ms, 99)
    headline = {
        "subnetact_switch_median_us": round(switch_med, 3),
        "subnetact_switch_p99_us": round(switch_p99, 3),
        "subnetact_observed_forward_penalty_us": round(penalty_us, 1),
        "load_standalone_median_ms": round(load_med, 3),
        "load_standalone_p99_ms": round(load_p99, 3),
        "load_plus_first_inference_median_ms": round(statistics.median(np.add(load_ms, first_infer_ms)), 3),
        "load_over_switch_median_ratio": round(load_med * 1e3 / switch_med, 1),
        "load_over_switch_p99_ratio": round(load_p99 * 1e3 / switch_p99, 1),
        "largest_subnet_batch1_median_ms": round(statistics.median(lat_big) * 1e3, 3),
        "smallest_subnet_batch1_median_ms": round(statistics.median(lat_small) * 1e3, 3),
        "largest_over_smallest_batch1_latency_ratio": round(statistics.median(lat_big) / statistics.median(lat_small), 2),
        "largest_over_smallest_batch1_latency_interleaved_ratio": round(
            statistics.median(mixed_big) / statistics.median(mixed_small), 2),
    }
    if ofa:
        import platform

        from superserve.zoo import HostFingerprint

        headline = {f"{args.supernet}_{k}": v for k, v in headline.items()}
        headline[f"{args.supernet}_image_size_px"] = args.image_size
        extra = {"host": HostFingerprint.current().processor, "machine": platform.machine(),
                 "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                 "macs": {s.subnet_id: net.count_params_and_macs(s)[1] for s in subnets + [big, small]}}
    else:
        extra = {}
    for k, v in headline.items():
        print(f"{k:60} {v}")
    path = write_result(f"actuation_{args.supernet}" if ofa else "actuation", headline, {
        **extra, "supernet": source, "subnets": [s.subnet_id for s in subnets], "torch_threads": 1,
        "notes": "switch = SubnetNorm statistics lookup by subnet id (weights shared, config passed to forward); "
                 "load = torch.jit.load of the exported TorchScript subnet from disk (warm page cache) + eval()",
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
