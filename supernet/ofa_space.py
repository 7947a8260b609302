"""Once-for-all's search spaces as plain data (no torch here): OFA-MobileNetV3 and OFA-ResNet50.

Both are `SupernetSpace`s with a `family`, so zoo files, gRPC parameters and Redis carry them as they carry the native
space. A subnet is a `SubnetConfig` in the canonical form of `supernet.config` (per stage, one entry per *active*
block), translated to and from OFA's own arch dicts (`ks`/`e`/`d` and `d`/`e`/`w`) by `supernet.ofa_net`:

- OFA-MobileNetV3 (`family="ofa_mbv3"`): 5 elastic stages, depth 2/3/4, expand ratio 3/4/6 and kernel 3/5/7 per
  block: exactly the shape of the native space, so the native validation and sampling apply unchanged.
- OFA-ResNet50 (`family="ofa_resnet"`): 4 stages of bottlenecks with `base_depths[s] + d` blocks (d in 0/1/2),
  expand ratio 0.2/0.25/0.35 per block, a fixed 3x3 kernel, a width multiplier 0.65/0.8/1.0 per width unit
  (`SubnetConfig.widths`, OFA's `w`: two stem convs and the four stages) and an elastic input stem
  (`SubnetConfig.skip_stem`, OFA's `d[0]`). Validation and sampling live here.

Sampling follows OFA's `sample_active_subnet` (uniform per choice; the stem is skipped with probability 1/2, as OFA
samples d[0] from {min, max}); mutation and crossover follow OFA's `EvolutionFinder` (per-choice resampling; per-gene
choice between two parents), here per stage so that a child's depth and its per-block choices stay consistent.
"""

from __future__ import annotations

import random

from supernet.config import InvalidSubnetError, SubnetConfig, SupernetSpace, make_divisible

RESNET_BASE_DEPTHS = (2, 2, 4, 2)  # ofa.imagenet_classification.networks.ResNets.BASE_DEPTH_LIST
RESNET_STAGE_WIDTHS = (256, 512, 1024, 2048)  # ResNets.STAGE_WIDTH_LIST at width multiplier 1.0
RESNET_WIDTH_UNITS = 6  # OFA's `w`: input stem conv 1 (and its residual conv), stem conv 3, four stages
MBV3_BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)  # OFAMobileNetV3's base_stage_width
FAMILIES = ("ofa_mbv3", "ofa_resnet")


def ofa_mbv3_space(image_size: int = 224, num_classes: int = 1000, width_mult: float = 1.2,
                   ks_list: tuple[int, ...] = (3, 5, 7), expand_list: tuple[float, ...] = (3.0, 4.0, 6.0),
                   depth_list: tuple[int, ...] = (2, 3, 4)) -> SupernetSpace:
    """OFA-MobileNetV3 (the paper's `ofa_mbv3_d234_e346_k357_w1.2` by default) served at `image_size`."""
    widths = [make_divisible(w * width_mult) for w in MBV3_BASE_WIDTHS]
    return SupernetSpace(in_channels=3, image_size=image_size, num_classes=num_classes, stem_width=widths[0],
                         stem_stride=2, stage_widths=tuple(widths[2:7]), stage_strides=(2, 2, 2, 1, 2),
                         depth_choices=tuple(depth_list), expand_choices=tuple(float(e) for e in expand_list),
                         kernel_choices=tuple(ks_list), head_width=widths[-1], dropout=0.0, family="ofa_mbv3",
                         width_choices=(float(width_mult),))


def ofa_resnet50_space(image_size: int = 224, num_classes: int = 1000, depth_list: tuple[int, ...] = (0, 1, 2),
                       expand_list: tuple[float, ...] = (0.2, 0.25, 0.35),
                       width_list: tuple[float, ...] = (0.65, 0.8, 1.0)) -> SupernetSpace:
    """OFA-ResNet50 (the paper's `ofa_resnet50_d=0+1+2_e=0.2+0.25+0.35_w=0.65+0.8+1.0`) served at `image_size`."""
    top = max(width_list)
    return SupernetSpace(in_channels=3, image_size=image_size, num_classes=num_classes,
                         stem_width=make_divisible(64 * top), stem_stride=4,
                         stage_widths=tuple(make_divisible(w * top) for w in RESNET_STAGE_WIDTHS),
                         stage_strides=(1, 2, 2, 2), depth_choices=tuple(depth_list),
                         expand_choices=tuple(float(e) for e in expand_list), kernel_choices=(3,),
                         head_width=make_divisible(RESNET_STAGE_WIDTHS[-1] * top), dropout=0.0,
                         family="ofa_resnet", width_choices=tuple(float(w) for w in width_list),
                         base_depths=RESNET_BASE_DEPTHS)


def named_space(name: str, image_size: int = 224, num_classes: int = 1000) -> SupernetSpace:
    """`ofa_mbv3` (width 1.2), `ofa_mbv3_w1.0` or `ofa_resnet50`, the supernets OFA published."""
    if name in ("ofa_mbv3", "ofa_mbv3_w1.2"):
        return ofa_mbv3_space(image_size, num_classes, 1.2)
    if name == "ofa_mbv3_w1.0":
        return ofa_mbv3_space(image_size, num_classes, 1.0)
    if name == "ofa_resnet50":
        return ofa_resnet50_space(image_size, num_classes)
    raise ValueError(f"unknown OFA supernet {name!r}; expected ofa_mbv3 (= ofa_mbv3_w1.2), ofa_mbv3_w1.0 or "
                     f"ofa_resnet50")


def validate_resnet(cfg: SubnetConfig, space: SupernetSpace) -> SubnetConfig:
    """Raise InvalidSubnetError naming the first problem if the OFA-ResNet `space` cannot run `cfg`."""
    if len(cfg.expand_ratios) != space.num_stages:
        raise InvalidSubnetError(f"config has {len(cfg.expand_ratios)} stages, the space has {space.num_stages}")
    for s, (es, ks) in enumerate(zip(cfg.expand_ratios, cfg.kernel_sizes)):
        extra = len(es) - space.base_depths[s]
        if extra not in space.depth_choices:
            allowed = [space.base_depths[s] + d for d in space.depth_choices]
            raise InvalidSubnetError(f"stage {s}: depth {len(es)} not in {allowed}")
        for j, (e, k) in enumerate(zip(es, ks)):
            if e not in space.expand_choices:
                raise InvalidSubnetError(f"stage {s} block {j}: expand ratio {e} not in {space.expand_choices}")
            if k not in space.kernel_choices:
                raise InvalidSubnetError(f"stage {s} block {j}: kernel size {k} not in {space.kernel_choices}")
    if len(cfg.widths) != RESNET_WIDTH_UNITS:
        raise InvalidSubnetError(f"OFA-ResNet needs {RESNET_WIDTH_UNITS} width indices, got {len(cfg.widths)}")
    for i, w in enumerate(cfg.widths):
        if not 0 <= w < len(space.width_choices):
            raise InvalidSubnetError(f"width unit {i}: index {w} outside 0..{len(space.width_choices) - 1}")
    return cfg


class ResNetSampler:
    """min / max / random / mutate / crossover over an OFA-ResNet space (the `SubnetSampler` contract)."""

    def __init__(self, space: SupernetSpace):
        if space.family != "ofa_resnet":
            raise ValueError(f"ResNetSampler needs an ofa_resnet space, got family {space.family!r}")
        self.space = space

    def _make(self, depths: list[int], es: list[list[float]], widths: list[int], skip: bool) -> SubnetConfig:
        sp = self.space
        return SubnetConfig(tuple(tuple(e[:sp.base_depths[s] + d]) for s, (d, e) in enumerate(zip(depths, es))),
                            tuple((3,) * (sp.base_depths[s] + d) for s, d in enumerate(depths)),
                            widths=tuple(widths), skip_stem=skip).validate(sp)

    def _max_blocks(self, s: int) -> int:
        return self.space.base_depths[s] + max(self.space.depth_choices)

    def max(self) -> SubnetConfig:
        sp = self.space
        return self._make([max(sp.depth_choices)] * sp.num_stages,
                          [[sp.max_expand] * self._max_blocks(s) for s in range(sp.num_stages)],
                          [len(sp.width_choices) - 1] * RESNET_WIDTH_UNITS, False)

    def min(self) -> SubnetConfig:
        sp = self.space
        return self._make([min(sp.depth_choices)] * sp.num_stages,
                          [[min(sp.expand_choices)] * self._max_blocks(s) for s in range(sp.num_stages)],
                          [0] * RESNET_WIDTH_UNITS, True)

    def random(self, rng: random.Random) -> SubnetConfig:
        sp = self.space
        es = [[rng.choice(sp.expand_choices) for _ in range(self._max_blocks(s))] for s in range(sp.num_stages)]
        depths = [rng.choice(sp.depth_choices) for _ in range(sp.num_stages)]
        widths = [rng.randrange(len(sp.width_choices)) for _ in range(RESNET_WIDTH_UNITS)]
        return self._make(depths, es, widths, rng.random() < 0.5)

    def _genes(self, cfg: SubnetConfig, rng: random.Random) -> tuple[list[int], list[list[float]]]:
        """Per-stage depth choice and max-depth expand lists (blocks beyond the active depth drawn fresh)."""
        sp = self.space
        depths = [len(es) - sp.base_depths[s] for s, es in enumerate(cfg.expand_ratios)]
        es = [list(e) + [rng.choice(sp.expand_choices) for _ in range(self._max_blocks(s) - len(e))]
              for s, e in enumerate(cfg.expand_ratios)]
        return depths, es

    def mutate(self, cfg: SubnetConfig, rng: random.Random, prob: float = 0.2) -> SubnetConfig:
        sp = self.space
        depths, es = self._genes(cfg, rng)
        depths = [rng.choice(sp.depth_choices) if rng.random() < prob else d for d in depths]
        es = [[rng.choice(sp.expand_choices) if rng.random() < prob else e for e in stage] for stage in es]
        widths = [rng.randrange(len(sp.width_choices)) if rng.random() < prob else w for w in cfg.widths]
        skip = (rng.random() < 0.5) if rng.random() < prob else cfg.skip_stem
        return self._make(depths, es, widths, skip)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: random.Random) -> SubnetConfig:
        da, ea = self._genes(a, rng)
        db, eb = self._genes(b, rng)
        picks = [rng.random() < 0.5 for _ in da]
        depths = [x if p else y for p, x, y in zip(picks, da, db)]
        es = [x if p else y for p, x, y in zip(picks, ea, eb)]
        # width units 2.. belong to the stages; the two stem units and the stem depth go with one parent
        stem_from_a = rng.random() < 0.5
        stem = (a if stem_from_a else b)
        widths = list(stem.widths[:2]) + [x if p else y for p, x, y in zip(picks, a.widths[2:], b.widths[2:])]
        return self._make(depths, es, widths, stem.skip_stem)

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        return validate_resnet(cfg, self.space)
