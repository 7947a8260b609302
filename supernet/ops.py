"""WeightSlice: conv and linear layers that run on a prefix slice of their shared max-size weights.

The slice sizes are arguments of `forward`; nothing is stored on the module, so two threads may run two different
subnets through the same layer at once. Slicing returns views (no copy), which is what makes switching subnets free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def centre_crop_bounds(max_kernel: int, kernel: int) -> tuple[int, int]:
    """[start, end) of the centre `kernel x kernel` window of a `max_kernel x max_kernel` filter."""
    start = (max_kernel - kernel) // 2
    return start, start + kernel


class WeightSliceConv2d(nn.Module):
    """A conv holding the max weight (max_out, max_in, K, K); `forward` uses weight[:out, :in] and a centre crop.

    Depthwise mode (groups == channels) slices the channel count only: weight[:channels, :1, crop, crop].
    """

    def __init__(self, max_in: int, max_out: int, max_kernel: int = 1, stride: int = 1, depthwise: bool = False):
        super().__init__()
        if depthwise and max_in != max_out:
            raise ValueError("a depthwise conv has as many outputs as inputs")
        self.max_in, self.max_out, self.max_kernel = max_in, max_out, max_kernel
        self.stride, self.depthwise = stride, depthwise
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, max_kernel, max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def sliced_weight(self, in_channels: int, out_channels: int, kernel: int | None = None) -> torch.Tensor:
        """The view of the shared weight that a (in, out, kernel) slice uses."""
        kernel = self.max_kernel if kernel is None else kernel
        lo, hi = centre_crop_bounds(self.max_kernel, kernel)
        if self.depthwise:
            return self.weight[:out_channels, :, lo:hi, lo:hi]
        return self.weight[:out_channels, :in_channels, lo:hi, lo:hi]

    def forward(self, x: torch.Tensor, out_channels: int, kernel: int | None = None) -> torch.Tensor:
        in_channels = x.shape[1]  # (B, C_in, H, W)
        if self.depthwise:
            out_channels = in_channels
        kernel = self.max_kernel if kernel is None else kernel
        weight = self.sliced_weight(in_channels, out_channels, kernel)
        return F.conv2d(x, weight, None, self.stride, kernel // 2, 1, in_channels if self.depthwise else 1)


class WeightSliceLinear(nn.Module):
    """A linear layer holding (max_out, max_in); `forward` uses the first `x.shape[1]` input columns."""

    def __init__(self, max_in: int, max_out: int):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        layer = nn.Linear(max_in, max_out)  # borrow torch's default initialisation
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        out_features = self.max_out if out_features is None else out_features
        return F.linear(x, self.weight[:out_features, : x.shape[1]], self.bias[:out_features])
