"""`superserve demo`: the first look. Loads the shipped supernet (or builds an untrained one), activates several
subnets by passing their config, and prints what each costs and how accurate it is on real MNIST test digits."""

from __future__ import annotations

import argparse
import time

from superserve.defaults import DEFAULT_CHECKPOINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default=str(DEFAULT_CHECKPOINT), help="supernet checkpoint (default: shipped)")
    parser.add_argument("--subnets", type=int, default=6, help="how many subnets to activate (default 6)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import random
    from pathlib import Path

    import torch

    from supernet.checkpoint import load_checkpoint
    from supernet.config import SubnetConfig, SupernetSpace
    from supernet.network import SuperNet
    from training.calibrate import calibrate_subnets
    from training.data import load_dataset

    torch.manual_seed(args.seed)
    data = load_dataset("mnist5k", seed=args.seed)
    if Path(args.ckpt).is_file():
        net, _ = load_checkpoint(args.ckpt)
        print(f"loaded the shipped supernet {args.ckpt}")
    else:
        net = SuperNet(SupernetSpace()).eval()
        print("no trained checkpoint found: using an untrained supernet (accuracies will be near chance)")
    space = net.space
    rng = random.Random(args.seed)
    subnets = [SubnetConfig.max(space), SubnetConfig.min(space)]
    subnets += [SubnetConfig.random(space, rng) for _ in range(max(0, args.subnets - 2))]
    missing = [s for s in subnets if s.subnet_id not in net.norm_table]
    if missing:
        calib_x, _ = data.calibration_subset(500, seed=args.seed)
        calibrate_subnets(net, missing, calib_x)
        print(f"calibrated SubnetNorm statistics for {len(missing)} subnet(s) on 500 training digits")
    x, y = data.test_x, data.test_y
    print(f"{'subnet':16} {'depths':>8} {'MMACs':>8} {'activate us':>12} {'batch-1 ms':>11} {'test acc':>9}")
    with torch.inference_mode():
        for subnet in subnets:
            start = time.perf_counter()
            stats = net.norm_table.get(subnet.subnet_id)  # activation = choosing a config and its statistics
            activate_us = (time.perf_counter() - start) * 1e6
            assert stats is not None
            net(x[:1], subnet)
            start = time.perf_counter()
            for i in range(5):
                net(x[i:i + 1], subnet)
            batch1_ms = (time.perf_counter() - start) / 5 * 1e3
            acc = (net(x, subnet).argmax(1) == y).float().mean().item()
            macs = net.count_params_and_macs(subnet)[1]
            print(f"{subnet.subnet_id:16} {''.join(map(str, subnet.depths)):>8} {macs / 1e6:8.1f} {activate_us:12.1f} "
                  f"{batch1_ms:11.2f} {acc * 100:8.2f}%")
    print("each row ran the same weights: activating a subnet is passing its config to forward(), nothing is loaded")
    return 0
