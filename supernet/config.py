"""The elastic search space and one subnet of it, as plain frozen data (no torch here).

`SupernetSpace` describes the family once (stage widths, strides, and the choices of depth, expand ratio and kernel
size); `SubnetConfig` names one member of it. Both are hashable and round-trip through JSON, so they can cross process
and module boundaries (zoo files, gRPC parameters, Redis) without dragging torch along.

A config is stored canonically: per stage, one (expand_ratio, kernel_size) pair for each *active* block only. Two
configs that would run the same computation therefore always compare equal and share one `subnet_id`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Sequence


class InvalidSubnetError(ValueError):
    """A subnet configuration that the space cannot run (wrong stage count, a choice outside the lists...)."""


@dataclass(frozen=True)
class SupernetSpace:
    """The elastic family: the max network's shape and the per-stage/per-block choices.

    Channels of each stage's output are fixed (as in OFA-ResNet50); the elastic width is the expand ratio of each
    bottleneck block: middle channels = make_divisible(out_channels * expand_ratio).
    """

    in_channels: int = 1  # image channels (1 for MNIST/digits, 3 for CIFAR / ImageFolder)
    image_size: int = 28  # square input side, pixels
    num_classes: int = 10
    stem_width: int = 24  # channels after the stem conv (fixed, always run)
    stem_stride: int = 1  # stride of the stem conv
    stage_widths: tuple[int, ...] = (64, 96, 128)  # output channels per elastic stage
    stage_strides: tuple[int, ...] = (1, 2, 2)  # stride of the first block of each stage (28->28->14->7)
    depth_choices: tuple[int, ...] = (1, 2, 3, 4)  # blocks run per stage (LayerSelect keeps the first d)
    expand_choices: tuple[float, ...] = (0.25, 0.5, 1.0)  # middle channels / block output channels (WeightSlice)
    kernel_choices: tuple[int, ...] = (3, 5)  # kernel of each block's spatial conv (WeightSlice, centre crop)
    head_width: int = 256  # channels of the final 1x1 "feature mix" conv before pooling
    dropout: float = 0.1  # classifier dropout, applied to the max net while training only
    # Which implementation runs this space (`supernet.families`): "superserve" is `supernet.network.SuperNet`;
    # "ofa_mbv3" / "ofa_resnet" are once-for-all's networks (`supernet.ofa_net`). The three fields below are
    # written to JSON only when they differ from their defaults, so files of the native space are unchanged.
    family: str = "superserve"
    width_choices: tuple[float, ...] = ()  # OFA width multipliers (OFA-ResNet: elastic per unit; OFA-MBv3: one)
    base_depths: tuple[int, ...] = ()  # OFA-ResNet: blocks per stage at depth choice 0 (depth = base + choice)

    def __post_init__(self) -> None:
        if len(self.stage_widths) != len(self.stage_strides) or not self.stage_widths:
            raise ValueError("stage_widths and stage_strides must be non-empty and of equal length")
        for name in ("depth_choices", "expand_choices", "kernel_choices"):
            values = getattr(self, name)
            if not values or tuple(sorted(set(values))) != tuple(values):
                raise ValueError(f"{name} must be a non-empty strictly increasing tuple, got {values}")
        if any(k % 2 == 0 for k in self.kernel_choices):
            raise ValueError(f"kernel sizes must be odd (centre crop), got {self.kernel_choices}")
        if self.base_depths and len(self.base_depths) != len(self.stage_widths):
            raise ValueError("base_depths must have one entry per stage")
        if min(self.depth_choices) + min(self.base_depths, default=0) < 1:
            raise ValueError("every stage runs at least one block")

    @property
    def num_stages(self) -> int:
        return len(self.stage_widths)

    @property
    def max_depth(self) -> int:
        return max(self.depth_choices)

    @property
    def max_kernel(self) -> int:
        return max(self.kernel_choices)

    @property
    def max_expand(self) -> int:
        return max(self.expand_choices)

    def num_subnets(self) -> int:
        """Number of distinct subnets (canonical configs) in the space."""
        per_block = len(self.expand_choices) * len(self.kernel_choices)
        per_stage = sum(per_block**d for d in self.depth_choices)
        return per_stage**self.num_stages

    def to_dict(self) -> dict[str, Any]:
        defaults = {"family": "superserve", "width_choices": (), "base_depths": ()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()
                if not (k in defaults and v == defaults[k])}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SupernetSpace":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SupernetSpace fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def deps_code_shaped(cls, **fields: Any) -> "SupernetSpace":
        """This family shaped like the DεpS code's MobileNetV3 runs (papers.md §2.2: `ks_list=7`,
        `depth_list=2,3,4`, `expand_list=3,4,6`): ONE kernel size, depth from 2, and expand ratios spanning 2x
        (0.5 / 0.75 / 1.0 of our bottleneck width, as 3 / 4 / 6 span 2x). The kernel is 3, not 7: our blocks are
        dense bottleneck convs (where 3x3 is the ResNet kernel), not depthwise ones, and images are 28x28 / 8x8.
        Smallest / largest MACs are about 16% (the default space: about 1.6%; the code's MBv3 space: about 26%).
        `fields` override any other field (widths, image size...)."""
        shape = {"kernel_choices": (3,), "depth_choices": (2, 3, 4), "expand_choices": (0.5, 0.75, 1.0)}
        return cls(**{**shape, **fields})


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor` (never below it, never more than 10% down), as MobileNet does."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: per stage, the (expand_ratio, kernel_size) of each active block.

    `expand_ratios[s][j]` and `kernel_sizes[s][j]` describe block j of stage s; the stage's depth is their length.
    """

    expand_ratios: tuple[tuple[float, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    # OFA-ResNet only (empty / False elsewhere, and then left out of the JSON and the id): the width-multiplier index
    # of each width-elastic unit (OFA's `w`: stem conv 1, stem conv 3, the four stages) and whether the input stem
    # skips its middle conv (OFA's `d[0] != max(depth_list)`).
    widths: tuple[int, ...] = ()
    skip_stem: bool = False
    subnet_id: str = field(init=False, compare=False, repr=False)  # stable, derived from the canonical JSON

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to tuples so the config stays hashable.
        object.__setattr__(self, "expand_ratios", tuple(tuple(float(e) for e in s) for s in self.expand_ratios))
        object.__setattr__(self, "kernel_sizes", tuple(tuple(int(k) for k in s) for s in self.kernel_sizes))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "skip_stem", bool(self.skip_stem))
        if len(self.expand_ratios) != len(self.kernel_sizes):
            raise InvalidSubnetError(
                f"expand_ratios has {len(self.expand_ratios)} stages but kernel_sizes has {len(self.kernel_sizes)}"
            )
        for s, (es, ks) in enumerate(zip(self.expand_ratios, self.kernel_sizes)):
            if len(es) != len(ks):
                raise InvalidSubnetError(f"stage {s}: {len(es)} expand ratios but {len(ks)} kernel sizes")
        # The id is computed once here: it is looked up on every forward pass (SubnetNorm statistics).
        digest = hashlib.sha1(self.canonical_json().encode()).hexdigest()[:8]
        object.__setattr__(self, "subnet_id", "d" + "".join(str(d) for d in self.depths) + "-" + digest)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.expand_ratios)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"expand_ratios": [list(s) for s in self.expand_ratios],
                               "kernel_sizes": [list(s) for s in self.kernel_sizes]}
        if self.widths:
            out["widths"] = list(self.widths)
        if self.skip_stem:
            out["skip_stem"] = True
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SubnetConfig":
        try:
            return cls(expand_ratios=data["expand_ratios"], kernel_sizes=data["kernel_sizes"],
                       widths=data.get("widths", ()), skip_stem=data.get("skip_stem", False))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidSubnetError):
                raise
            raise InvalidSubnetError(f"not a subnet config: {data!r} ({exc})") from exc

    @classmethod
    def from_json(cls, text: str) -> "SubnetConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSubnetError(f"subnet config is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidSubnetError(f"subnet config must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def validate(self, space: SupernetSpace) -> "SubnetConfig":
        """Raise InvalidSubnetError naming the first problem if `space` cannot run this config; return self."""
        if space.family == "ofa_resnet":
            from supernet.ofa_space import validate_resnet  # pure Python, like this module

            return validate_resnet(self, space)
        if self.widths or self.skip_stem:
            raise InvalidSubnetError(f"widths / skip_stem are OFA-ResNet choices; space family is {space.family}")
        if len(self.expand_ratios) != space.num_stages:
            raise InvalidSubnetError(f"config has {len(self.expand_ratios)} stages, the space has {space.num_stages}")
        for s, (es, ks) in enumerate(zip(self.expand_ratios, self.kernel_sizes)):
            if len(es) not in space.depth_choices:
                raise InvalidSubnetError(f"stage {s}: depth {len(es)} not in {space.depth_choices}")
            for j, (e, k) in enumerate(zip(es, ks)):
                if e not in space.expand_choices:
                    raise InvalidSubnetError(f"stage {s} block {j}: expand ratio {e} not in {space.expand_choices}")
                if k not in space.kernel_choices:
                    raise InvalidSubnetError(f"stage {s} block {j}: kernel size {k} not in {space.kernel_choices}")
        return self

    # --- sampling helpers -----------------------------------------------------------------------------------------
    @classmethod
    def max(cls, space: SupernetSpace) -> "SubnetConfig":
        d, e, k = space.max_depth, space.max_expand, space.max_kernel
        return cls(((e,) * d,) * space.num_stages, ((k,) * d,) * space.num_stages)

    @classmethod
    def min(cls, space: SupernetSpace) -> "SubnetConfig":
        d, e, k = min(space.depth_choices), min(space.expand_choices), min(space.kernel_choices)
        return cls(((e,) * d,) * space.num_stages, ((k,) * d,) * space.num_stages)

    @classmethod
    def random(cls, space: SupernetSpace, rng: random.Random | int,
               depths: Sequence[int] | None = None, kernel_choices: Sequence[int] | None = None,
               expand_choices: Sequence[float] | None = None) -> "SubnetConfig":
        """Uniform per-stage depth and per-block choices; `rng` is a seeded Random or a seed.

        The optional restrictions serve progressive shrinking (e.g. kernels only while depth and width stay max).
        """
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        depth_pool = tuple(depths) if depths is not None else space.depth_choices
        kernel_pool = tuple(kernel_choices) if kernel_choices is not None else space.kernel_choices
        expand_pool = tuple(expand_choices) if expand_choices is not None else space.expand_choices
        es, ks = [], []
        for _ in range(space.num_stages):
            d = rng.choice(depth_pool)
            es.append(tuple(rng.choice(expand_pool) for _ in range(d)))
            ks.append(tuple(rng.choice(kernel_pool) for _ in range(d)))
        return cls(tuple(es), tuple(ks)).validate(space)

    def mutate(self, space: SupernetSpace, rng: random.Random, prob: float = 0.2) -> "SubnetConfig":
        """Resample each stage depth and each block choice with probability `prob` (evolutionary search)."""
        es, ks = [], []
        for s in range(space.num_stages):
            d = len(self.expand_ratios[s])
            if rng.random() < prob:
                d = rng.choice(space.depth_choices)
            stage_e, stage_k = [], []
            for j in range(d):
                old_e = self.expand_ratios[s][j] if j < len(self.expand_ratios[s]) else rng.choice(space.expand_choices)
                old_k = self.kernel_sizes[s][j] if j < len(self.kernel_sizes[s]) else rng.choice(space.kernel_choices)
                stage_e.append(rng.choice(space.expand_choices) if rng.random() < prob else old_e)
                stage_k.append(rng.choice(space.kernel_choices) if rng.random() < prob else old_k)
            es.append(tuple(stage_e))
            ks.append(tuple(stage_k))
        return SubnetConfig(tuple(es), tuple(ks))

    @staticmethod
    def crossover(a: "SubnetConfig", b: "SubnetConfig", rng: random.Random) -> "SubnetConfig":
        """Take each whole stage from one parent or the other."""
        picks = [rng.random() < 0.5 for _ in a.expand_ratios]
        es = tuple(pa if p else pb for p, pa, pb in zip(picks, a.expand_ratios, b.expand_ratios))
        ks = tuple(pa if p else pb for p, pa, pb in zip(picks, a.kernel_sizes, b.kernel_sizes))
        return SubnetConfig(es, ks)
