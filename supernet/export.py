"""export(subnet): a standalone, static `nn.Module` with copies of exactly one subnet's weights and statistics.

For users who want one fixed model (and for the peers we compare against), and as the reference the SubNetAct path is
tested against: `export(net, cfg)(x) == net(x, cfg)`. Built from plain torch layers only, so it can be saved, loaded,
scripted or exported without superserve.
"""

from __future__ import annotations

import torch
from torch import nn

from supernet.config import SubnetConfig
from supernet.network import Bottleneck, SuperNet
from supernet.norm import SubnetNorm, SubnetStats
from supernet.ops import WeightSliceConv2d, centre_crop_bounds


def _conv(src: WeightSliceConv2d, in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    groups = in_ch if src.depthwise else 1
    conv = nn.Conv2d(in_ch, out_ch, kernel, src.stride, kernel // 2, groups=groups, bias=False)
    conv.weight.data.copy_(src.sliced_weight(in_ch, out_ch, kernel))
    return conv


def _norm(src: SubnetNorm, channels: int, stats: SubnetStats) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=src.eps)
    mean, var = stats[src.layer_index]
    bn.weight.data.copy_(src.weight[:channels])
    bn.bias.data.copy_(src.bias[:channels])
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    return bn.eval()


class StaticBlock(nn.Module):
    def __init__(self, src: Bottleneck, expand_ratio: int, kernel: int, stats: SubnetStats):
        super().__init__()
        mid = src.mid_channels(expand_ratio)
        self.conv = nn.Sequential(
            _conv(src.reduce, src.in_channels, mid, 1), _norm(src.reduce_norm, mid, stats), nn.ReLU(),
            _conv(src.spatial, mid, mid, kernel), _norm(src.spatial_norm, mid, stats), nn.ReLU(),
            _conv(src.expand, mid, src.out_channels, 1), _norm(src.expand_norm, src.out_channels, stats),
        )
        self.residual = src.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return torch.relu(x + h) if self.residual else torch.relu(h)


class StaticSubnet(nn.Module):
    """One subnet as an ordinary CNN: stem, blocks, head, pool, classifier."""

    def __init__(self, net: SuperNet, subnet: SubnetConfig):
        super().__init__()
        sp = net.space
        subnet.validate(sp)
        stats = net.norm_table.get(subnet.subnet_id)
        self.subnet_id = subnet.subnet_id
        self.stem = nn.Sequential(_conv(net.stem, sp.in_channels, sp.stem_width, 3),
                                  _norm(net.stem_norm, sp.stem_width, stats), nn.ReLU())
        blocks = []
        for stage, es, ks in zip(net.stages, subnet.expand_ratios, subnet.kernel_sizes):
            blocks += [StaticBlock(b, e, k, stats) for b, e, k in zip(stage.blocks, es, ks)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_conv(net.head, sp.stage_widths[-1], sp.head_width, 1),
                                  _norm(net.head_norm, sp.head_width, stats), nn.ReLU())
        self.classifier = nn.Linear(sp.head_width, sp.num_classes)
        self.classifier.weight.data.copy_(net.classifier.weight)
        self.classifier.bias.data.copy_(net.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(x)))  # (B, head_width, H', W')
        return self.classifier(h.mean(dim=(2, 3)))


def export(net: SuperNet, subnet: SubnetConfig) -> StaticSubnet:
    """A detached copy of `subnet` (weights and SubnetNorm statistics), in eval mode."""
    with torch.no_grad():
        model = StaticSubnet(net, subnet)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


__all__ = ["export", "StaticSubnet", "centre_crop_bounds"]
