"""The elastic supernet: ResNet bottleneck blocks (OFA-ResNet50 style) with elastic depth, width and kernel.

Why bottleneck blocks with dense convolutions: OFA-ResNet50 is the supernet SuperServe serves in its main
experiments, and it has the elastic dimensions we need: depth (LayerSelect per stage), width (the expand ratio slices
each block's middle channels) and kernel (the centre crop of each block's spatial conv). We measured the alternative,
OFA-MobileNetV3's inverted-residual blocks, on this 2-core CPU: depthwise convolutions run at 0.6-1.4 GMAC/s forward +
backward against 14-34 GMAC/s for dense ones, so an MBv3 supernet big enough to span 10x in latency would take ~5x
longer to train for the same accuracy. With dense convs the largest subnet (~630 MMACs, most of it at 28x28 where
convolutions are cheap in parameters) runs ~10x slower than the smallest at batch 1 (benchmarks/actuation.py measures
it), the checkpoint stays near 3M parameters, and the whole family trains on the CPU in minutes.

The subnet is an argument of `forward`: no module attribute is written while running, so any number of threads can run
different subnets through one copy of the weights at the same time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from supernet.config import SubnetConfig, SupernetSpace, make_divisible
from supernet.norm import NormTable, StatsAccumulator, SubnetNorm, SubnetStats
from supernet.ops import WeightSliceConv2d, WeightSliceLinear


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce -> norm -> relu -> kxk -> norm -> relu -> 1x1 expand -> norm (+ identity).

    Elastic width: the middle channels are make_divisible(out_channels * expand_ratio) (OFA-ResNet's expand ratio);
    elastic kernel: the kxk conv runs the centre crop of its max kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, space: SupernetSpace, first_norm_index: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.max_mid = self.mid_channels(space.max_expand)
        self.reduce = WeightSliceConv2d(in_channels, self.max_mid, 1)
        self.reduce_norm = SubnetNorm(self.max_mid, first_norm_index)
        self.spatial = WeightSliceConv2d(self.max_mid, self.max_mid, space.max_kernel, stride)
        self.spatial_norm = SubnetNorm(self.max_mid, first_norm_index + 1)
        self.expand = WeightSliceConv2d(self.max_mid, out_channels, 1)
        self.expand_norm = SubnetNorm(out_channels, first_norm_index + 2)
        self.residual = stride == 1 and in_channels == out_channels

    def mid_channels(self, expand_ratio: float) -> int:
        return make_divisible(self.out_channels * expand_ratio)

    def forward(self, x: torch.Tensor, expand_ratio: float, kernel_size: int, stats: SubnetStats | None,
                accumulator: StatsAccumulator | None) -> torch.Tensor:
        mid = self.mid_channels(expand_ratio)
        h = F.relu(self.reduce_norm(self.reduce(x, mid), stats, accumulator))  # (B, mid, H, W)
        h = F.relu(self.spatial_norm(self.spatial(h, mid, kernel_size), stats, accumulator))  # (B, mid, H/s, W/s)
        h = self.expand_norm(self.expand(h, self.out_channels), stats, accumulator)  # (B, out, H/s, W/s)
        return F.relu(x + h) if self.residual else F.relu(h)


class LayerSelect(nn.Module):
    """One stage: holds max-depth blocks and runs only the first d (d = len of the stage's config)."""

    def __init__(self, blocks: list[Bottleneck]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, expand_ratios: tuple[int, ...], kernel_sizes: tuple[int, ...],
                stats: SubnetStats | None, accumulator: StatsAccumulator | None) -> torch.Tensor:
        for block, e, k in zip(self.blocks, expand_ratios, kernel_sizes):  # zip stops at the active depth
            x = block(x, e, k, stats, accumulator)
        return x


class SuperNet(nn.Module):
    """stem conv -> elastic stages -> 1x1 feature mix -> global pool -> classifier.

    `norm_table` holds the SubnetNorm statistics of every calibrated subnet; eval-mode forward requires them.
    """

    def __init__(self, space: SupernetSpace | None = None):
        super().__init__()
        self.space = space or SupernetSpace()
        sp = self.space
        norm_index = 0
        self.stem = WeightSliceConv2d(sp.in_channels, sp.stem_width, 3, sp.stem_stride)
        self.stem_norm = SubnetNorm(sp.stem_width, norm_index)
        norm_index += 1
        stages, in_ch = [], sp.stem_width
        for width, stride in zip(sp.stage_widths, sp.stage_strides):
            blocks = []
            for j in range(sp.max_depth):
                blocks.append(Bottleneck(in_ch, width, stride if j == 0 else 1, sp, norm_index))
                norm_index += 3
                in_ch = width
            stages.append(LayerSelect(blocks))
        self.stages = nn.ModuleList(stages)
        self.head = WeightSliceConv2d(in_ch, sp.head_width, 1)
        self.head_norm = SubnetNorm(sp.head_width, norm_index)
        self.num_norm_layers = norm_index + 1
        self.classifier = WeightSliceLinear(sp.head_width, sp.num_classes)
        self.norm_table = NormTable()

    def forward(self, x: torch.Tensor, subnet: SubnetConfig, *, dropout: float = 0.0,
                accumulator: StatsAccumulator | None = None) -> torch.Tensor:
        """Logits of `subnet` for images x.

        Args:
            x: (B, in_channels, image_size, image_size) normalised images.
            subnet: which subnet to run (validated by the caller; see `SubnetConfig.validate`).
            dropout: classifier dropout probability, used only in training mode (DεpS applies it to the max net).
            accumulator: when given, normalise with batch statistics and record them (calibration).
        Returns:
            (B, num_classes) logits. In eval mode the subnet's SubnetNorm statistics must exist.
        """
        stats = None if (self.training or accumulator is not None) else self.norm_table.get(subnet.subnet_id)
        h = F.relu(self.stem_norm(self.stem(x, self.space.stem_width), stats, accumulator))
        for stage, es, ks in zip(self.stages, subnet.expand_ratios, subnet.kernel_sizes):
            h = stage(h, es, ks, stats, accumulator)
        h = F.relu(self.head_norm(self.head(h, self.space.head_width), stats, accumulator))
        h = h.mean(dim=(2, 3))  # (B, head_width)
        if dropout > 0.0 and self.training:
            h = F.dropout(h, dropout, training=True)
        return self.classifier(h)

    # --- the rest of the ServableSupernet contract (supernet.contract) ---------------------------------------------
    @property
    def sampler(self):  # noqa: ANN201 - supernet.contract.SubnetSampler
        from supernet.families import NativeSampler

        return NativeSampler(self.space)

    def export(self, subnet: SubnetConfig) -> nn.Module:
        """A standalone static copy of `subnet` (`supernet.export.export`)."""
        from supernet.export import export  # export imports this module

        return export(self, subnet)

    # --- bookkeeping ----------------------------------------------------------------------------------------------
    def norm_layer_indices(self, subnet: SubnetConfig) -> list[int]:
        """Indices of the SubnetNorm layers `subnet` runs, in execution order."""
        indices = [self.stem_norm.layer_index]
        for stage, es in zip(self.stages, subnet.expand_ratios):
            for block in list(stage.blocks)[: len(es)]:
                indices += [block.reduce_norm.layer_index, block.spatial_norm.layer_index,
                            block.expand_norm.layer_index]
        return indices + [self.head_norm.layer_index]

    def count_params_and_macs(self, subnet: SubnetConfig) -> tuple[int, int]:
        """(parameters, multiply-accumulates per image) of `subnet`, counted analytically."""
        sp = self.space
        size = -(-sp.image_size // sp.stem_stride)  # ceil: the stem conv pads k//2
        params = sp.stem_width * sp.in_channels * 9 + 2 * sp.stem_width
        macs = size * size * sp.stem_width * sp.in_channels * 9
        for stage, es, ks in zip(self.stages, subnet.expand_ratios, subnet.kernel_sizes):
            for block, e, k in zip(stage.blocks, es, ks):
                mid, out = block.mid_channels(e), block.out_channels
                out_size = -(-size // block.stride)
                params += block.in_channels * mid + mid * mid * k * k + mid * out + 2 * (2 * mid + out)
                macs += size * size * block.in_channels * mid + out_size * out_size * mid * (mid * k * k + out)
                size = out_size
        last = sp.stage_widths[-1]
        params += last * sp.head_width + 2 * sp.head_width + sp.head_width * sp.num_classes + sp.num_classes
        macs += size * size * last * sp.head_width + sp.head_width * sp.num_classes
        return params, macs

    def reorder_middle_channels(self) -> None:
        """Sort each block's middle channels by importance (L1 norm of the weights that read them), so that the prefix
        slices small subnets use hold the most important channels (OFA's `re_organize_middle_weights`, which DεpS runs
        once when shrinking starts). The function computed by the max net is unchanged; stored statistics are
        dropped because the channel order changed."""
        with torch.no_grad():
            for stage in self.stages:
                for block in stage.blocks:
                    # spatial conv outputs, read by the expand conv
                    order = torch.argsort(block.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True)
                    block.expand.weight.copy_(block.expand.weight[:, order])
                    for param in (block.spatial.weight, block.spatial_norm.weight, block.spatial_norm.bias):
                        param.copy_(param[order])
                    # reduce conv outputs, read by the spatial conv
                    order = torch.argsort(block.spatial.weight.abs().sum(dim=(0, 2, 3)), descending=True)
                    block.spatial.weight.copy_(block.spatial.weight[:, order])
                    for param in (block.reduce.weight, block.reduce_norm.weight, block.reduce_norm.bias):
                        param.copy_(param[order])
        self.norm_table = NormTable()
