"""`superserve info`: the supernet's elastic space and, if present, the served zoo and whether it fits this host."""

from __future__ import annotations

import argparse
from pathlib import Path

from superserve.defaults import DEFAULT_ZOO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")


def run(args: argparse.Namespace) -> int:
    from supernet.config import SubnetConfig, SupernetSpace
    from superserve.zoo import HostFingerprint, Zoo, ZooError

    space = SupernetSpace()
    print(f"default supernet space: {space.num_stages} stages, widths {space.stage_widths}, depth {space.depth_choices},"
          f" expand {space.expand_choices}, kernel {space.kernel_choices}: {space.num_subnets():,} subnets")
    print(f"  largest  {SubnetConfig.max(space).subnet_id}   smallest {SubnetConfig.min(space).subnet_id}")
    try:
        zoo = Zoo.load(args.zoo)
    except ZooError as exc:
        print(f"no usable zoo: {exc}")
        return 1
    print(f"zoo {args.zoo}: {len(zoo.entries)} Pareto subnets on {zoo.dataset}, profiled on {zoo.host.processor} "
          f"({zoo.host.threads} thread(s), torch {zoo.host.torch_version})")
    current = HostFingerprint.current(threads=zoo.host.threads)
    if not zoo.host_matches(current):
        print("  WARNING: the latency table comes from other hardware; run `superserve zoo reprofile` here")
    print(f"  {'subnet':16} {'val acc':>8} {'MMACs':>8} {'b1 p99 ms':>10} {'b64 p99 ms':>11}")
    for e in zoo.entries:
        print(f"  {e.subnet_id:16} {e.accuracy * 100:7.2f}% {e.flops / 1e6:8.1f} "
              f"{zoo.latency_ms(e.subnet_id, 1):10.2f} {zoo.latency_ms(e.subnet_id, zoo.batch_sizes[-1]):11.2f}")
    return 0
