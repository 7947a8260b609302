"""Which implementation serves a space (`SupernetSpace.family`), and its subnet sampler.

Pure Python at import time: torch-backed classes are imported only when a network is built.
"""

from __future__ import annotations

import random
from typing import Any

from supernet.config import SubnetConfig, SupernetSpace
from supernet.contract import SubnetSampler

FAMILIES = ("superserve", "ofa_mbv3", "ofa_resnet")


class NativeSampler:
    """The `SubnetSampler` of spaces shaped like the native one (per-stage depth, per-block expand and kernel):
    the native supernet and OFA-MobileNetV3. Delegates to `SubnetConfig`'s own helpers."""

    def __init__(self, space: SupernetSpace):
        self.space = space

    def min(self) -> SubnetConfig:
        return SubnetConfig.min(self.space)

    def max(self) -> SubnetConfig:
        return SubnetConfig.max(self.space)

    def random(self, rng: random.Random) -> SubnetConfig:
        return SubnetConfig.random(self.space, rng)

    def mutate(self, subnet: SubnetConfig, rng: random.Random, prob: float = 0.2) -> SubnetConfig:
        return subnet.mutate(self.space, rng, prob).validate(self.space)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: random.Random) -> SubnetConfig:
        return SubnetConfig.crossover(a, b, rng).validate(self.space)

    def validate(self, subnet: SubnetConfig) -> SubnetConfig:
        return subnet.validate(self.space)


def _check(space: SupernetSpace) -> None:
    if space.family not in FAMILIES:
        raise ValueError(f"unknown supernet family {space.family!r}; this superserve knows {', '.join(FAMILIES)}")


def sampler_for(space: SupernetSpace) -> SubnetSampler:
    _check(space)
    if space.family == "ofa_resnet":
        from supernet.ofa_space import ResNetSampler

        return ResNetSampler(space)
    return NativeSampler(space)


def build_supernet(space: SupernetSpace) -> Any:
    """A freshly initialised supernet of `space` (a `ServableSupernet`), of the class its family names."""
    _check(space)
    if space.family == "superserve":
        from supernet.network import SuperNet

        return SuperNet(space)
    from supernet.ofa_net import OFASupernet

    return OFASupernet(space)
