"""Subnet search: random + evolutionary search for the accuracy / cost Pareto front of a trained supernet.

Accuracy is top-1 on the validation split after calibrating the candidate's SubnetNorm statistics (on a smaller
subset during search, `search_calibration_images`; the served subnets are re-calibrated on 2,000 images later).
The cost axis during search is MACs per image: a cheap, noise-free proxy of latency that ranks subnets like the
batch-1 latency measured later (both are dominated by the convolutions). Only the selected front is profiled.

Selection (`select_front`): the non-dominated set over (MACs, val accuracy), always with the min and max subnets;
thinned evenly in log-MACs when larger than `max_size`, and when smaller than `min_size` filled from the next
non-dominated layers (the candidates closest to the front) where they fill the widest gaps of the MAC range.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm import tqdm

from supernet.config import SubnetConfig
from supernet.contract import ServableSupernet
from supernet.norm import NormTable
from superserve.zoo import pareto_front
from training.calibrate import calibrate_subnet
from superserve.data import DatasetSplits
from training.trainer import evaluate


@dataclass(frozen=True)
class SearchConfig:
    num_random: int = 32  # random candidates (plus the min and max subnets)
    generations: int = 3  # evolutionary rounds after the random round
    population: int = 16  # new candidates per round
    mutate_prob: float = 0.25  # per-choice resampling probability
    crossover_prob: float = 0.5  # share of children made by crossover (then mutated)
    search_calibration_images: int = 500  # per candidate during search
    min_size: int = 10  # served subnets, at least (if the search found that many candidates)
    max_size: int = 14  # ... and at most
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_size < 2 or self.max_size < self.min_size:
            raise ValueError("need 2 <= min_size <= max_size")


@dataclass(frozen=True)
class Candidate:
    config: SubnetConfig
    macs: int  # per image
    params: int
    val_accuracy: float  # fraction, after search calibration

    @property
    def subnet_id(self) -> str:
        return self.config.subnet_id

    def to_dict(self) -> dict:
        return {"subnet_id": self.subnet_id, "config": self.config.to_dict(), "macs": self.macs,
                "params": self.params, "val_accuracy": self.val_accuracy}


def score_candidate(net: ServableSupernet, subnet: SubnetConfig, calibration: torch.Tensor, data: DatasetSplits
                    ) -> Candidate:
    """Calibrate `subnet` into a scratch statistics table and measure its validation accuracy."""
    saved, net.norm_table = net.norm_table, NormTable()
    try:
        calibrate_subnet(net, subnet, calibration)
        accuracy = evaluate(net, subnet, data.val_x, data.val_y)
    finally:
        net.norm_table = saved
    params, macs = net.count_params_and_macs(subnet)
    return Candidate(subnet, macs, params, accuracy)


def search(net: ServableSupernet, data: DatasetSplits, cfg: SearchConfig = SearchConfig(), progress: bool = True
           ) -> list[Candidate]:
    """All evaluated candidates (random round, then `generations` evolutionary rounds bred from the current front)."""
    sampler = net.sampler  # the space's own min / max / random / mutate / crossover (supernet.contract)
    rng = random.Random(cfg.seed)
    calibration, _ = data.calibration_subset(cfg.search_calibration_images, seed=cfg.seed)
    seen: dict[str, Candidate] = {}
    total = 2 + cfg.num_random + cfg.generations * cfg.population
    bar = tqdm(total=total, desc="search", unit="subnet", disable=not progress)

    def add(configs: list[SubnetConfig]) -> None:
        for subnet in configs:
            seen[subnet.subnet_id] = score_candidate(net, subnet, calibration, data)
            bar.update(1)
            best = max(seen.values(), key=lambda c: c.val_accuracy)
            bar.set_postfix(evaluated=len(seen), best_acc=f"{best.val_accuracy:.3f}")

    def fresh(make, count: int) -> list[SubnetConfig]:
        out: dict[str, SubnetConfig] = {}
        for _ in range(50 * count):  # bounded: a tiny space may have fewer unseen configs than asked
            if len(out) == count:
                break
            subnet = sampler.validate(make())
            if subnet.subnet_id not in seen:
                out.setdefault(subnet.subnet_id, subnet)
        return list(out.values())

    add([sampler.min(), sampler.max()])
    add(fresh(lambda: sampler.random(rng), cfg.num_random))
    for _ in range(cfg.generations):
        front_ids = set(pareto_front((c.subnet_id, c.macs, c.val_accuracy) for c in seen.values()))
        parents = [c.config for c in seen.values() if c.subnet_id in front_ids]

        def child() -> SubnetConfig:
            if len(parents) > 1 and rng.random() < cfg.crossover_prob:
                a, b = rng.sample(parents, 2)
                return sampler.mutate(sampler.crossover(a, b, rng), rng, cfg.mutate_prob / 2)
            return sampler.mutate(rng.choice(parents), rng, cfg.mutate_prob)

        add(fresh(child, cfg.population))
    bar.close()
    return list(seen.values())


def _layers(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Successive non-dominated layers over (MACs, accuracy): layer 0 is the Pareto front."""
    remaining = {c.subnet_id: c for c in candidates}
    layers = []
    while remaining:
        ids = pareto_front((c.subnet_id, c.macs, c.val_accuracy) for c in remaining.values())
        layers.append([remaining.pop(i) for i in ids])
    return layers


def select_front(candidates: list[Candidate], min_size: int = 10, max_size: int = 14) -> list[Candidate]:
    """The served set, sorted by MACs (see module docstring). Always holds the cheapest and the largest subnet."""
    if not candidates:
        raise ValueError("no candidates to select from")
    layers = _layers(candidates)
    chosen = {c.subnet_id: c for c in layers[0]}
    cheapest = min(candidates, key=lambda c: c.macs)
    largest = max(candidates, key=lambda c: c.macs)
    chosen.setdefault(cheapest.subnet_id, cheapest)
    chosen.setdefault(largest.subnet_id, largest)
    pool = [c for layer in layers[1:] for c in layer if c.subnet_id not in chosen]
    while len(chosen) < min_size and pool:
        # fill the widest log-MAC gap with the near-front candidate closest to its middle
        points = sorted(math.log(c.macs) for c in chosen.values())
        lo, hi = max(zip(points, points[1:]), key=lambda g: g[1] - g[0])
        mid = (lo + hi) / 2
        best = min(pool, key=lambda c: abs(math.log(c.macs) - mid))
        pool.remove(best)
        chosen[best.subnet_id] = best
    ordered = sorted(chosen.values(), key=lambda c: c.macs)
    if len(ordered) > max_size:  # keep the endpoints, thin the rest evenly in log-MACs
        logs = [math.log(c.macs) for c in ordered]
        targets = [logs[0] + (logs[-1] - logs[0]) * k / (max_size - 1) for k in range(max_size)]
        keep: dict[str, Candidate] = {}
        for t in targets:
            pick = min((c for c in ordered if c.subnet_id not in keep), key=lambda c: abs(math.log(c.macs) - t))
            keep[pick.subnet_id] = pick
        ordered = sorted(keep.values(), key=lambda c: c.macs)
    return ordered
