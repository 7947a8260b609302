"""Shared bits of the benchmark scripts: the exact command line, result writing, the subnets to use."""

from __future__ import annotations

import json
import random
import shlex
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write_result(name: str, headline: dict[str, float | int | str], detail: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"command": command_line(), "headline": headline, **detail}, indent=1) + "\n")
    return path


def measured_model_load_ms() -> float | None:
    """The model-load time benchmarks/actuation.py measured on this host (median, ms), if it has run. Benchmarks only:
    nothing at run time reads benchmarks/results/ (the shipped default is superserve.defaults.INFAAS_SWITCH_MS)."""
    try:
        return float(json.loads((RESULTS_DIR / "actuation.json").read_text())["headline"]["load_standalone_median_ms"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def zoo_subnets(net) -> list:
    """The shipped zoo's subnets in zoo order (fastest first), or [] if the zoo is missing or for another space."""
    from superserve.defaults import DEFAULT_ZOO
    from superserve.zoo import Zoo, ZooError

    try:
        zoo = Zoo.load(DEFAULT_ZOO)
    except ZooError:
        return []
    return [e.config for e in zoo.entries] if zoo.space == net.space else []


def served_subnets(net, count: int, seed: int = 0):
    """The shipped zoo's subnets first (what is really served), then seeded random ones to reach `count`."""
    from supernet.config import SubnetConfig

    subnets = zoo_subnets(net)
    rng = random.Random(seed)
    seen = {s.subnet_id for s in subnets}
    while len(subnets) < count:
        s = SubnetConfig.random(net.space, rng)
        if s.subnet_id not in seen:
            seen.add(s.subnet_id)
            subnets.append(s)
    return subnets[:count]


def load_supernet():
    """The shipped checkpoint if present (real weights), else an untrained default supernet (same shapes/costs)."""
    from supernet.checkpoint import load_checkpoint
    from supernet.network import SuperNet
    from superserve.defaults import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        net, _ = load_checkpoint(DEFAULT_CHECKPOINT)
        return net, str(DEFAULT_CHECKPOINT)
    return SuperNet().eval(), "untrained default supernet (no shipped checkpoint yet)"

