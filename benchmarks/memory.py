"""Memory: one supernet + SubnetNorm tables for K served subnets versus K exported standalone models.

Two measures for K = 1, 5, 10, 20, 50:
- tensor bytes: parameters + buffers (+ SubnetNorm statistics) actually held, counted exactly;
- resident memory: the RSS growth of a fresh process that loads the K models (from TorchScript files, as a model-zoo
  server would) versus one that loads the supernet checkpoint and keeps K subnets' statistics, each measured against
  the same process right after `import torch`.
Which K subnets: what a K-model zoo covering the same latency/accuracy range would host. For K up to the zoo's size,
K subnets spread evenly along the shipped zoo's Pareto front (both ends included: a one-model server hosts the most
accurate model, and any zoo serving the whole SLO range keeps both the fastest and the most accurate). Beyond the
zoo's size, the whole zoo plus seeded random subnets. Also reported, as a lower bound: the K *fastest* subnets
(the cheapest zoo one could pick, which drops the most accurate models).

`--supernet ofa_resnet50` (or `ofa_mbv3`) measures once-for-all's supernet instead, randomly initialised at
`--image-size` (weights do not change memory): its K subnets are spread evenly along a MACs-ordered front (the K most
evenly log-MAC-spaced of `--pool` seeded random subnets plus the smallest and largest, `ofa_front`), the standalone
models are OFA's own `get_active_subnet()` networks (TorchScript by tracing), and the result goes to
`results/memory_<supernet>.json` with headline keys prefixed by the supernet's name.

Run: python benchmarks/memory.py [--ks 1,5,10,20,50]
     python benchmarks/memory.py --supernet ofa_resnet50 --ks 10,50
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warnings  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._common import load_supernet, served_subnets, write_result, zoo_subnets  # noqa: E402
from supernet.checkpoint import save_checkpoint  # noqa: E402
from supernet.export import export  # noqa: E402
from training.calibrate import calibrate_subnets  # noqa: E402

# Runs in a fresh interpreter: RSS after import torch, then after loading what argv names.
_PROBE = r"""
import json, sys, gc, psutil, torch
proc = psutil.Process()
base = proc.memory_info().rss
kind, paths = sys.argv[1], sys.argv[2:]
if kind == "supernet":
    sys.path.insert(0, sys.argv[2]); paths = paths[1:]
    from supernet.checkpoint import load_checkpoint
    net, _ = load_checkpoint(paths[0])
    held = [net]
else:
    held = [torch.jit.load(p, map_location="cpu").eval() for p in paths]
gc.collect()
print(json.dumps({"rss_bytes": proc.memory_info().rss - base}))
"""


def tensor_bytes(module: torch.nn.Module) -> int:
    tensors = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
               for t in list(module.parameters()) + list(module.buffers())}
    return sum(tensors.values())


def spread(front: list, k: int) -> list:
    """k members of `front` (sorted fastest first) evenly spaced by rank, the most accurate always included."""
    if k >= len(front):
        return list(front)
    if k == 1:
        return [front[-1]]
    return [front[round(i * (len(front) - 1) / (k - 1))] for i in range(k)]


def ofa_front(net, count: int, seed: int = 0, pool: int = 200) -> list:
    """`count` subnets of an OFA supernet along a MACs-ordered front, smallest first: the space's smallest and
    largest subnets plus `pool` seeded random ones, thinned to `count` evenly spaced in log-MACs (as the zoo builder
    thins its front). With random weights there is no accuracy axis; MACs stand in for the latency/accuracy order."""
    sampler, rng = net.sampler, random.Random(seed)
    found = {c.subnet_id: c for c in [sampler.min(), sampler.max()] + [sampler.random(rng) for _ in range(pool)]}
    macs = {sid: net.count_params_and_macs(c)[1] for sid, c in tqdm(found.items(), desc="count MACs", unit="subnet")}
    ordered = sorted(found, key=lambda sid: macs[sid])
    if count >= len(ordered):
        return [found[sid] for sid in ordered]
    lo, hi = math.log(macs[ordered[0]]), math.log(macs[ordered[-1]])
    keep: list[str] = []
    for i in range(count):
        target = lo + (hi - lo) * i / (count - 1)
        keep.append(min((sid for sid in ordered if sid not in keep), key=lambda sid: abs(math.log(macs[sid]) - target)))
    return [found[sid] for sid in sorted(keep, key=lambda sid: macs[sid])]


def probe(args: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_bytes"]


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.save's deprecation notice
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,5,10,20,50",
                        help="numbers of served subnets K, comma-separated (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subnets picked and of an OFA supernet's random weights (default %(default)s)")
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess RSS measurement")
    parser.add_argument("--supernet", default="native", choices=("native", "ofa_resnet50", "ofa_mbv3"),
                        help="native: the shipped checkpoint; ofa_*: once-for-all's, randomly initialised")
    parser.add_argument("--image-size", type=int, default=224, help="input side of an OFA supernet")
    parser.add_argument("--pool", type=int, default=200, help="random OFA subnets the front is thinned from")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    torch.manual_seed(args.seed)
    ofa = args.supernet != "native"
    if ofa:
        from supernet.ofa_net import random_ofa_supernet
        from supernet.ofa_space import named_space

        net = random_ofa_supernet(named_space(args.supernet, args.image_size), args.seed)
        source = f"{args.supernet} at {args.image_size}x{args.image_size}, random weights (seed {args.seed})"
        pool = ofa_front(net, max(ks), args.seed, args.pool)  # smallest MACs first
        zoo_size = len(pool)
        chosen = {k: spread(pool, k) for k in ks}
    else:
        net, source = load_supernet()
        pool = served_subnets(net, max(ks), args.seed)  # zoo (fastest first), then seeded random subnets
        zoo_size = min(len(zoo_subnets(net)), len(pool))
        front, extra = pool[:zoo_size], pool[zoo_size:]
        chosen = {k: spread(front, k) + extra[:max(0, k - len(front))] for k in ks}
    space = net.space
    prefix = f"{args.supernet}_" if ofa else ""
    subnets = pool
    missing = [s for s in subnets if s.subnet_id not in net.norm_table]
    images = 4 if ofa else 16  # statistics' values do not matter here, only that they exist (their bytes count)
    calibrate_subnets(net, missing, torch.randn(images, space.in_channels, space.image_size, space.image_size),
                      progress=ofa)
    net.eval()
    sample = torch.zeros(1, space.in_channels, space.image_size, space.image_size)

    def standalone(subnet):  # noqa: ANN001, ANN202
        return net.export(subnet) if ofa else export(net, subnet)

    def scripted(model):  # noqa: ANN001, ANN202 - OFA's static nets trace (their Python control flow is fixed)
        return torch.jit.trace(model, sample, check_trace=False) if ofa else torch.jit.script(model)
    weights_bytes = tensor_bytes(net)
    rows, headline = [], {}
    repo = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        model_paths, bytes_of = {}, {}
        for subnet in tqdm(subnets, desc="export", unit="subnet"):
            path = Path(tmp) / f"{subnet.subnet_id}.pt"
            model = standalone(subnet)  # each subnet exported once: its bytes, and its TorchScript file
            bytes_of[subnet.subnet_id] = tensor_bytes(model)
            torch.jit.save(scripted(model), str(path))
            model_paths[subnet.subnet_id] = str(path)
        for k in tqdm(ks, desc="measure K", unit="K"):
            ids = [s.subnet_id for s in chosen[k]]
            supernet_bytes = weights_bytes + net.norm_table.nbytes(ids)
            zoo_bytes = sum(bytes_of[s.subnet_id] for s in chosen[k])
            fastest_bytes = sum(bytes_of[s.subnet_id] for s in subnets[:k])
            fastest_supernet_bytes = weights_bytes + net.norm_table.nbytes([s.subnet_id for s in subnets[:k]])
            row = {"k": k, "subnets": ids, "supernet_tensor_bytes": supernet_bytes,
                   "standalone_tensor_bytes": zoo_bytes, "tensor_ratio": round(zoo_bytes / supernet_bytes, 3),
                   "fastest_k_tensor_ratio": round(fastest_bytes / fastest_supernet_bytes, 3)}
            if not args.no_rss:
                ckpt = Path(tmp) / f"supernet_k{k}.pt"
                keep = {i: net.norm_table.stats[i] for i in ids}
                saved_table, net.norm_table.stats = net.norm_table.stats, keep
                save_checkpoint(net, ckpt)
                net.norm_table.stats = saved_table
                row["supernet_rss_bytes"] = probe(["supernet", repo, str(ckpt)])
                row["standalone_rss_bytes"] = probe(["zoo", *(model_paths[i] for i in ids)])
                row["rss_ratio"] = round(row["standalone_rss_bytes"] / max(1, row["supernet_rss_bytes"]), 3)
            rows.append(row)
            headline[f"{prefix}k{k}_standalone_over_supernet_tensor_bytes_ratio"] = row["tensor_ratio"]
            headline[f"{prefix}k{k}_fastest_standalone_over_supernet_tensor_bytes_ratio"] = \
                row["fastest_k_tensor_ratio"]
            if "rss_ratio" in row:
                headline[f"{prefix}k{k}_standalone_over_supernet_rss_ratio"] = row["rss_ratio"]
    print(f"{'K':>3} {'supernet MB':>12} {'standalone MB':>14} {'ratio':>6} {'RSS ratio':>10} {'fastest-K ratio':>16}")
    for r in rows:
        print(f"{r['k']:>3} {r['supernet_tensor_bytes'] / 2**20:12.2f} {r['standalone_tensor_bytes'] / 2**20:14.2f} "
              f"{r['tensor_ratio']:6.2f} {r.get('rss_ratio', float('nan')):10.2f} {r['fastest_k_tensor_ratio']:16.2f}")
    headline[f"{prefix}supernet_weights_mb"] = round(weights_bytes / 2**20, 2)
    headline[f"{prefix}norm_stats_kb_per_subnet_mean"] = round(
        net.norm_table.nbytes([s.subnet_id for s in subnets]) / len(subnets) / 1024, 2)
    if ofa:
        import platform

        from superserve.zoo import HostFingerprint

        headline[f"{prefix}image_size_px"] = args.image_size
        extra_detail = {"host": HostFingerprint.current().processor, "machine": platform.machine(),
                        "macs": {s.subnet_id: net.count_params_and_macs(s)[1] for s in subnets}}
    else:
        extra_detail = {}
    path = write_result(f"memory_{args.supernet}" if ofa else "memory", headline, {
        "supernet": source, "rows": rows, **extra_detail, "subnets": [s.subnet_id for s in subnets],
        "zoo_size": zoo_size})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
