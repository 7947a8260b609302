"""Calibration: fill the SubnetNorm statistics of the subnets that will be served.

Each subnet runs over ~2,000 training images in batches of 200 (OFA's `set_running_statistics` recipe); the batch means
and variances of every normalisation layer it uses are averaged and stored under its subnet id. Nothing else changes:
the weights are untouched, and other subnets' statistics are kept.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tqdm import tqdm

from supernet.config import SubnetConfig
from supernet.contract import ServableSupernet
from supernet.norm import StatsAccumulator


@torch.no_grad()
def calibrate_subnet(net: ServableSupernet, subnet: SubnetConfig, images: torch.Tensor, batch_size: int = 200) -> None:
    """Compute and store `subnet`'s statistics from `images` (N, C, H, W), already normalised like training data."""
    subnet.validate(net.space)
    if images.shape[0] == 0:
        raise ValueError("calibration needs at least one image")
    device = next(net.parameters()).device
    accumulator = StatsAccumulator()
    for start in range(0, images.shape[0], batch_size):
        net(images[start:start + batch_size].to(device), subnet, accumulator=accumulator)
    net.norm_table.stats[subnet.subnet_id] = accumulator.result()


def calibrate_subnets(net: ServableSupernet, subnets: Iterable[SubnetConfig], images: torch.Tensor,
                      batch_size: int = 200, progress: bool = False) -> None:
    """Calibrate every subnet in `subnets` (duplicates are calibrated once)."""
    unique = list({s.subnet_id: s for s in subnets}.values())
    for subnet in tqdm(unique, desc="calibrate", unit="subnet", disable=not progress):
        calibrate_subnet(net, subnet, images, batch_size)
