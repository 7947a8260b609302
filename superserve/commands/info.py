"""`superserve info`: the supernet's elastic space and, if present, the served zoo and whether it fits this host."""

from __future__ import annotations

import argparse
from pathlib import Path

from superserve.defaults import DEFAULT_ZOO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="a running server's metrics endpoint (e.g. http://127.0.0.1:8002/metrics): also say "
                             "which latency table it uses now (the file's, a scaled one while it re-profiles in the "
                             "background, or the re-profiled one)")


def live_table(metrics_text: str) -> tuple[str, str, float] | None:
    """(kind, source, scale) of the live latency table from a server's Prometheus text, or None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    kind = source = None
    scale = 1.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "superserve_latency_table" and sample.value == 1:
                kind, source = sample.labels.get("kind"), sample.labels.get("source")
            elif sample.name == "superserve_latency_table_scale":
                scale = sample.value
    return None if kind is None else (kind, str(source), scale)


def _print_live_table(url: str) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            found = live_table(response.read().decode())
    except OSError as exc:
        print(f"server {url}: not reachable ({exc})")
        return 1
    if found is None:
        print(f"server {url}: no superserve_latency_table metric (not a superserve server, or an older one)")
        return 1
    kind, source, scale = found
    what = {"file": "the zoo file's own table", "cached": "this host's cached re-profile",
            "reprofiled": "re-profiled on this host at start",
            "scaled": f"the table scaled by the measured {scale:.2f}x while it re-profiles in the background"}
    print(f"server {url}: live latency table: {kind} ({what.get(kind, kind)}): {source}")
    return 0


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
    from superserve.server.profiling import cache_path

    cached = cache_path(Path(args.zoo), current)
    here = Zoo.load(cached) if cached.is_file() else None
    if here is not None:
        print(f"  this host has its own re-profile of it, which the server uses: {cached}")
    elif not zoo.host_matches(current):
        print("  WARNING: the latency table comes from other hardware; `superserve serve` serves at once with it scaled "
              "by a measured factor and re-profiles it in the background (or run `superserve zoo reprofile` here)")
    else:
        print("  the fingerprint matches this host; `superserve serve` spot-checks the speed at start and, if it is "
              "off by more than 1.5x, serves with the table scaled by the measured factor and re-profiles in the "
              "background")
    last = zoo.batch_sizes[-1]
    head = f"  {'subnet':16} {'val acc':>8} {'MMACs':>8} {'b1 p99 ms':>10} {f'b{last} p99 ms':>11}"
    print(head + (f" {'this host:':>11} {'b1':>7} {f'b{last}':>9}" if here is not None else ""))
    for e in zoo.entries:
        row = (f"  {e.subnet_id:16} {e.accuracy * 100:7.2f}% {e.flops / 1e6:8.1f} "
               f"{zoo.latency_ms(e.subnet_id, 1):10.2f} {zoo.latency_ms(e.subnet_id, last):11.2f}")
        if here is not None and e.subnet_id in here.subnet_ids:
            row += f" {'':11} {here.latency_ms(e.subnet_id, 1):7.2f} {here.latency_ms(e.subnet_id, last):9.2f}"
        print(row)
    if args.server is not None:
        return _print_live_table(args.server)
    return 0
