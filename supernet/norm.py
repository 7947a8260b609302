"""SubnetNorm: batch normalisation whose running statistics belong to one subnet, selected by subnet id.

BatchNorm statistics cannot be shared between subnets: a different depth or width changes the distribution of every
activation after it. So the supernet keeps, per served subnet, the (mean, var) of each of its normalisation layers
(`NormTable`), filled by calibration, while the affine parameters (gamma, beta) stay shared and are sliced like the
weights. A subnet without statistics fails loudly instead of silently normalising with another subnet's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# layer index -> (mean, var), each of shape (active channels,)
SubnetStats = Mapping[int, tuple[torch.Tensor, torch.Tensor]]


class MissingStatisticsError(KeyError):
    """The subnet has no SubnetNorm statistics: calibrate it (training.calibrate) before serving it."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class StatsAccumulator:
    """Collects per-layer batch mean/var during calibration (passed into `forward`; never stored on a module).

    Statistics are averaged over calibration batches, as OFA's `set_running_statistics` does.
    """

    def __init__(self) -> None:
        self._sums: dict[int, list[torch.Tensor]] = {}
        self._batches: dict[int, int] = {}

    def record(self, layer_index: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        if layer_index in self._sums:
            self._sums[layer_index][0] += mean
            self._sums[layer_index][1] += var
            self._batches[layer_index] += 1
        else:
            self._sums[layer_index] = [mean.clone(), var.clone()]
            self._batches[layer_index] = 1

    def result(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {i: (s[0] / self._batches[i], s[1] / self._batches[i]) for i, s in self._sums.items()}


@dataclass
class NormTable:
    """subnet_id -> per-layer statistics. Owned by the supernet; saved in the checkpoint."""

    stats: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def get(self, subnet_id: str) -> SubnetStats:
        try:
            return self.stats[subnet_id]
        except KeyError:
            raise MissingStatisticsError(
                f"subnet {subnet_id} has no SubnetNorm statistics; calibrate it first "
                f"(superserve zoo calibrate, or training.calibrate.calibrate_subnets)") from None

    def __contains__(self, subnet_id: str) -> bool:
        return subnet_id in self.stats

    def __len__(self) -> int:
        return len(self.stats)

    def nbytes(self, subnet_ids: list[str] | None = None) -> int:
        ids = self.stats.keys() if subnet_ids is None else subnet_ids
        return sum(m.numel() * m.element_size() + v.numel() * v.element_size()
                   for sid in ids for m, v in self.stats[sid].values())


class SubnetNorm(nn.Module):
    """BatchNorm2d over a prefix of `max_channels`; statistics come from the caller, chosen by subnet id.

    Training mode (or calibration) normalises with the batch's own statistics; eval mode uses the subnet's stored
    statistics. The module itself holds only the shared affine parameters.
    """

    def __init__(self, max_channels: int, layer_index: int, eps: float = 1e-5):
        super().__init__()
        self.max_channels, self.layer_index, self.eps = max_channels, layer_index, eps
        self.weight = nn.Parameter(torch.ones(max_channels))
        self.bias = nn.Parameter(torch.zeros(max_channels))

    def forward(self, x: torch.Tensor, stats: SubnetStats | None,
                accumulator: StatsAccumulator | None = None) -> torch.Tensor:
        channels = x.shape[1]  # (B, C, H, W)
        weight, bias = self.weight[:channels], self.bias[:channels]
        if accumulator is not None:
            with torch.no_grad():
                mean = x.mean(dim=(0, 2, 3))
                var = x.var(dim=(0, 2, 3), unbiased=False)
            accumulator.record(self.layer_index, mean, var)
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if self.training:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if stats is None:
            raise MissingStatisticsError("eval-mode forward needs SubnetNorm statistics for the subnet")
        mean, var = stats[self.layer_index]
        if mean.shape[0] != channels:
            raise MissingStatisticsError(
                f"statistics of layer {self.layer_index} have {mean.shape[0]} channels, the activation has {channels}")
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
