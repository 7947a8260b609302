"""What superserve needs from a supernet to build a zoo from it and serve it (the contract, as `typing.Protocol`s).

A servable supernet
- runs any subnet given as an argument: `net(x, subnet)` writes no module state, so threads may run different
  subnets through one copy of the weights at once (SubNetAct);
- holds per-subnet normalisation statistics (`norm_table`, SubnetNorm): `net(x, subnet, accumulator=acc)` normalises
  with batch statistics and records them (calibration, `training.calibrate`); eval-mode forward uses the subnet's own;
- exports one subnet as a standalone static `nn.Module` (`export`);
- enumerates and identifies its subnets (`sampler`, pure Python, over `SubnetConfig`s whose `subnet_id` names them);
- counts a subnet's parameters and multiply-accumulates (`count_params_and_macs`);
- is an `nn.Module` (state_dict, parameters, eval/train, to), so `supernet.checkpoint` saves and loads it.

Implementations: `supernet.network.SuperNet` (the native ResNet-bottleneck supernet) and `supernet.ofa_net.OFASupernet`
(once-for-all's OFA-MobileNetV3 and OFA-ResNet50). `supernet.families.build_supernet(space)` picks one by
`space.family`. The zoo builder (`training.search`, `training.zoo_build`), the profiler and the server depend on
these protocols, not on a concrete class.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Protocol, runtime_checkable

from supernet.config import SubnetConfig, SupernetSpace


@runtime_checkable
class SubnetSampler(Protocol):
    """The subnets of one space, as the search walks them. Every method returns a validated config."""

    def min(self) -> SubnetConfig: ...

    def max(self) -> SubnetConfig: ...

    def random(self, rng: random.Random) -> SubnetConfig: ...

    def mutate(self, subnet: SubnetConfig, rng: random.Random, prob: float = 0.2) -> SubnetConfig: ...

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: random.Random) -> SubnetConfig: ...

    def validate(self, subnet: SubnetConfig) -> SubnetConfig: ...


@runtime_checkable
class ServableSupernet(Protocol):
    """A weight-shared supernet superserve can calibrate, profile, export and serve (see the module docstring).

    Torch types are written as `Any` so that this module imports without torch (like `supernet.config`)."""

    space: SupernetSpace
    norm_table: Any  # supernet.norm.NormTable: subnet_id -> per-layer (mean, var)
    training: bool

    def __call__(self, x: Any, subnet: SubnetConfig, *, accumulator: Any = None) -> Any:
        """(B, num_classes) logits of `subnet` for normalised images x (B, C, S, S)."""
        ...

    @property
    def sampler(self) -> SubnetSampler: ...

    def count_params_and_macs(self, subnet: SubnetConfig) -> tuple[int, int]:
        """(parameters, multiply-accumulates per image at `space.image_size`) of the standalone subnet."""
        ...

    def export(self, subnet: SubnetConfig) -> Any:
        """A detached static `nn.Module` computing `self(x, subnet)` in eval mode (weights and statistics copied)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[Any]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...
