"""Once-for-all's supernets (OFA-MobileNetV3, OFA-ResNet50) served through SubNetAct: `OFASupernet`.

The architecture and the weights are the `ofa` package's own modules (`OFAMobileNetV3`, `OFAResNets`), so a
checkpoint trained with OFA loads as is (`load_ofa_weights`). What changes is how a subnet runs:

- OFA selects a subnet by writing `active_*` attributes into its modules (`set_active_subnet`) and then calling the
  network: one active subnet per network object, so two threads cannot run two subnets. Here `forward(x, subnet)` is
  functional: it walks OFA's modules and slices their weights exactly as OFA's dynamic layers do (`DynamicConv2d`:
  `weight[:out, :in]`; `DynamicSeparableConv2d`: OFA's own `get_active_filter`, which applies the learned kernel
  transformation matrices for smaller kernels; `DynamicSE`: its pure `get_active_*` slices; `DynamicLinear`:
  `weight[:, :in]`), writing nothing. Any number of threads may run different subnets at once.
- OFA keeps one set of global BatchNorm statistics and recomputes it for a subnet before using it
  (`set_running_statistics`). Here every BatchNorm2d of the OFA network gets a layer index, and each served subnet
  has its own (mean, var) per layer in `norm_table` (SubnetNorm), filled by calibration (`training.calibrate`, the same
  recipe: batch statistics averaged over ~2,000 images). OFA's global running statistics stay in the state dict (a
  checkpoint round-trips) but are not used by `forward`.

Deviations, all outside serving: dropout is never applied (this class calibrates and serves; it does not train), and
`export` deep-copies the OFA network once per call (OFA's `get_active_subnet` needs `set_active_subnet`, which must not
touch the served copy).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supernet.config import SubnetConfig, SupernetSpace
from supernet.norm import MissingStatisticsError, NormTable, StatsAccumulator, SubnetStats

try:  # the `ofa` package (a dependency); its model zoo downloads weights and is never imported here
    from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import DynamicSE
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3, OFAResNets
    from ofa.utils import MyNetwork, get_same_padding, make_divisible
    from ofa.utils.layers import IdentityLayer
    from ofa.utils.pytorch_modules import SEModule
except ImportError as _exc:  # pragma: no cover - ofa is in pyproject's dependencies
    raise ImportError("the once-for-all supernets need the `ofa` package: pip install ofa") from _exc


class OFACheckpointError(ValueError):
    """An OFA weight file that does not fit the supernet: missing, unreadable, or a tensor of another shape."""


@dataclass
class _Count:
    params: int = 0
    macs: int = 0  # per image (the batch is 1 when counting)


@dataclass
class _Run:
    """What one forward pass needs besides the input; local to the call (never stored on a module)."""

    stats: SubnetStats | None  # the subnet's SubnetNorm statistics (eval mode)
    accumulator: StatsAccumulator | None = None  # calibration: batch statistics, recorded
    count: _Count | None = None  # counting parameters and MACs instead of serving


def _divisible(value: float) -> int:
    return make_divisible(value, MyNetwork.CHANNEL_DIVISIBLE)


class OFASupernet(nn.Module):
    """An OFA network of `space.family` "ofa_mbv3" or "ofa_resnet" behind the `ServableSupernet` contract."""

    def __init__(self, space: SupernetSpace):
        super().__init__()
        self.space = space
        if space.family == "ofa_mbv3":
            self.net = OFAMobileNetV3(n_classes=space.num_classes, dropout_rate=0.0, width_mult=space.width_choices[0],
                                      ks_list=list(space.kernel_choices), expand_ratio_list=list(space.expand_choices),
                                      depth_list=list(space.depth_choices))
            self._stages = [list(ix) for ix in self.net.block_group_info]
        elif space.family == "ofa_resnet":
            self.net = OFAResNets(n_classes=space.num_classes, dropout_rate=0.0,
                                  depth_list=list(space.depth_choices), expand_ratio_list=list(space.expand_choices),
                                  width_mult_list=list(space.width_choices))
            self._stages = [list(ix) for ix in self.net.grouped_block_index]  # a property OFA recomputes per call
        else:
            raise ValueError(f"OFASupernet serves families ofa_mbv3 and ofa_resnet, not {space.family!r}")
        if len(self._stages) != space.num_stages:
            raise ValueError(f"{space.family}: the OFA network has {len(self._stages)} stages, the space "
                             f"{space.num_stages}")
        # SubnetNorm layer index of every BatchNorm2d, in module order (stable across processes and checkpoints)
        self.norm_layer_names = [n for n, m in self.net.named_modules() if isinstance(m, nn.BatchNorm2d)]
        self._norm_index = {id(m): i for i, m in enumerate(
            m for m in self.net.modules() if isinstance(m, nn.BatchNorm2d))}
        self.norm_table = NormTable()

    # --- the contract -----------------------------------------------------------------------------------------------
    @property
    def sampler(self):  # noqa: ANN201 - supernet.contract.SubnetSampler
        from supernet.families import sampler_for

        return sampler_for(self.space)

    def forward(self, x: torch.Tensor, subnet: SubnetConfig, *, accumulator: StatsAccumulator | None = None
                ) -> torch.Tensor:
        """(B, num_classes) logits of `subnet` for normalised images x (B, 3, S, S); see the module docstring."""
        stats = None if (self.training or accumulator is not None) else self.norm_table.get(subnet.subnet_id)
        return self._run(x, subnet, _Run(stats, accumulator))

    def count_params_and_macs(self, subnet: SubnetConfig) -> tuple[int, int]:
        """(parameters, multiply-accumulates per image at `space.image_size`) of the standalone subnet, counted on
        one forward pass (convolutions and linear layers; BatchNorm affine parameters count as parameters)."""
        self.sampler.validate(subnet)
        count = _Count()
        size = self.space.image_size
        device = next(self.parameters()).device
        with torch.no_grad():
            x = torch.zeros(1, self.space.in_channels, size, size, device=device)
            self._run(x, subnet, _Run(None, None, count))
        return count.params, count.macs

    def export(self, subnet: SubnetConfig) -> nn.Module:
        """OFA's own static subnet (`get_active_subnet`) with this subnet's SubnetNorm statistics in its BatchNorms,
        in eval mode, detached. Built on a deep copy, so the served network is never switched."""
        self.sampler.validate(subnet)
        stats = self.norm_table.get(subnet.subnet_id)
        twin = copy.deepcopy(self.net)
        norms = dict(twin.named_modules())
        with torch.no_grad():
            for index, (mean, var) in stats.items():
                bn = norms[self.norm_layer_names[index]]
                bn.running_mean[:mean.shape[0]].copy_(mean)
                bn.running_var[:var.shape[0]].copy_(var)
        twin.set_active_subnet(**self.to_ofa_arch(subnet))
        model = twin.get_active_subnet(preserve_weight=True)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    # --- OFA's arch dicts ---------------------------------------------------------------------------------------------
    def to_ofa_arch(self, subnet: SubnetConfig) -> dict[str, list]:
        """OFA's `set_active_subnet` keywords for `subnet` (inactive blocks get the max choice; OFA ignores them)."""
        sp = self.space
        if sp.family == "ofa_mbv3":
            ks, es = [], []
            for ix, s_e, s_k in zip(self._stages, subnet.expand_ratios, subnet.kernel_sizes):
                pad = len(ix) - len(s_e)
                es += list(s_e) + [sp.max_expand] * pad
                ks += list(s_k) + [sp.max_kernel] * pad
            return {"ks": ks, "e": es, "d": list(subnet.depths)}
        es = []
        for ix, s_e in zip(self._stages, subnet.expand_ratios):
            es += list(s_e) + [sp.max_expand] * (len(ix) - len(s_e))
        top = max(sp.depth_choices)
        d = [min(sp.depth_choices) if subnet.skip_stem else top]
        d += [len(s_e) - base for s_e, base in zip(subnet.expand_ratios, sp.base_depths)]
        return {"d": d, "e": es, "w": list(subnet.widths)}

    def from_ofa_arch(self, arch: dict[str, list]) -> SubnetConfig:
        """The canonical `SubnetConfig` of an OFA arch dict (e.g. what `sample_active_subnet` returns)."""
        sp = self.space
        if sp.family == "ofa_mbv3":
            es, ks, start = [], [], 0
            for ix, depth in zip(self._stages, arch["d"]):
                es.append(tuple(arch["e"][start:start + depth]))
                ks.append(tuple(arch["ks"][start:start + depth]))
                start += len(ix)
            return SubnetConfig(tuple(es), tuple(ks)).validate(sp)
        es, start = [], 0
        for ix, base, d in zip(self._stages, sp.base_depths, arch["d"][1:]):
            es.append(tuple(arch["e"][start:start + base + d]))
            start += len(ix)
        return SubnetConfig(tuple(es), tuple((3,) * len(e) for e in es), widths=tuple(arch["w"]),
                            skip_stem=arch["d"][0] != max(sp.depth_choices)).validate(sp)

    def global_statistics(self, subnet: SubnetConfig) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """OFA's global running statistics sliced to `subnet`'s channels, as SubnetNorm statistics: what OFA's own
        subnet would normalise with before any recalibration (tests compare against it; serving calibrates)."""
        acc = StatsAccumulator()
        size = self.space.image_size
        with torch.no_grad():  # a counting-style pass records which layers run at which width
            self._run(torch.zeros(1, self.space.in_channels, size, size, device=next(self.parameters()).device),
                      subnet, _Run(None, acc, _Count()))
        norms = dict(self.net.named_modules())
        out = {}
        for index, (mean, _var) in acc.result().items():
            bn = norms[self.norm_layer_names[index]]
            c = mean.shape[0]
            out[index] = (bn.running_mean[:c].clone(), bn.running_var[:c].clone())
        return out

    # --- the functional forward -------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, subnet: SubnetConfig, run: _Run) -> torch.Tensor:
        if self.space.family == "ofa_mbv3":
            return self._mbv3(x, subnet, run)
        return self._resnet(x, subnet, run)

    def _conv(self, run: _Run, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
              padding: Any, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if run.count is not None:  # out_h * out_w * out_c * in_c / groups * k * k, as OFA's flops counter
            run.count.macs += y.shape[2] * y.shape[3] * weight.numel()
            run.count.params += weight.numel() + (bias.numel() if bias is not None else 0)
        return y

    def _linear(self, run: _Run, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if run.count is not None:
            run.count.macs += weight.numel()
            run.count.params += weight.numel() + (bias.numel() if bias is not None else 0)
        return F.linear(x, weight, bias)

    def _bn(self, run: _Run, x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        """SubnetNorm over OFA's BatchNorm2d: shared affine parameters sliced to x's channels, statistics per subnet."""
        c = x.shape[1]  # (B, C, H, W)
        index = self._norm_index[id(bn)]
        weight, bias = bn.weight[:c], bn.bias[:c]
        if run.count is not None:
            run.count.params += 2 * c
        if run.accumulator is not None:
            with torch.no_grad():
                run.accumulator.record(index, x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))
        if run.count is not None:  # one image may have 1x1 maps: no batch statistics, and none are needed
            return F.batch_norm(x, torch.zeros(c, device=x.device), torch.ones(c, device=x.device), weight, bias,
                                False, 0.0, bn.eps)
        if run.stats is None:  # training mode or calibration: the batch's own statistics
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
        try:
            mean, var = run.stats[index]
        except KeyError:
            raise MissingStatisticsError(f"no SubnetNorm statistics for layer {index} "
                                         f"({self.norm_layer_names[index]})") from None
        if mean.shape[0] != c:
            raise MissingStatisticsError(f"statistics of layer {index} have {mean.shape[0]} channels, the activation "
                                         f"has {c}")
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)

    def _se(self, run: _Run, x: torch.Tensor, se: SEModule) -> torch.Tensor:
        """Squeeze-and-excitation; `DynamicSE` slices to x's channels as OFA's does, a static SEModule is whole."""
        c = x.shape[1]
        y = x.mean(3, keepdim=True).mean(2, keepdim=True)
        if isinstance(se, DynamicSE):
            mid = _divisible(c // se.reduction)
            w1, b1 = se.get_active_reduce_weight(mid, c), se.get_active_reduce_bias(mid)
            w2, b2 = se.get_active_expand_weight(mid, c), se.get_active_expand_bias(c)
        else:
            w1, b1, w2, b2 = se.fc.reduce.weight, se.fc.reduce.bias, se.fc.expand.weight, se.fc.expand.bias
        y = F.relu(self._conv(run, y, w1, b1, 1, 0))
        y = F.relu6(self._conv(run, y, w2, b2, 1, 0) + 3.0) / 6.0  # OFA's Hsigmoid
        return x * y

    def _static(self, run: _Run, x: torch.Tensor, layer: nn.Module | None) -> torch.Tensor:
        """A fixed OFA layer (ConvLayer, or a Sequential of MBConvLayer): its modules in order, BN per subnet."""
        if layer is None:
            return x
        for module in layer.children():
            if isinstance(module, nn.Conv2d):
                x = self._conv(run, x, module.weight, module.bias, module.stride, module.padding, module.dilation,
                               module.groups)
            elif isinstance(module, nn.BatchNorm2d):
                x = self._bn(run, x, module)
            elif isinstance(module, SEModule):
                x = self._se(run, x, module)
            elif isinstance(module, (nn.Dropout, nn.Dropout2d)):
                continue  # inference and calibration only (module docstring)
            else:  # an activation (ReLU, Hswish...): stateless
                x = module(x)
        return x

    # OFA-MobileNetV3 ------------------------------------------------------------------------------------------------
    def _mbv3(self, x: torch.Tensor, subnet: SubnetConfig, run: _Run) -> torch.Tensor:
        net = self.net
        x = self._static(run, x, net.first_conv)
        first = net.blocks[0]  # a static MBConvLayer (expand ratio 1) with an identity shortcut
        h = x
        for part in (first.conv.inverted_bottleneck, first.conv.depth_conv, first.conv.point_linear):
            h = self._static(run, h, part)
        x = h + x if first.shortcut is not None else h
        for ix, s_e, s_k in zip(self._stages, subnet.expand_ratios, subnet.kernel_sizes):
            for idx, e, k in zip(ix, s_e, s_k):  # zip stops at the active depth
                block = net.blocks[idx]
                h = self._mbconv(run, x, block.conv, e, k)
                x = h + x if block.shortcut is not None else h
        x = self._static(run, x, net.final_expand_layer)
        x = x.mean(3, keepdim=True).mean(2, keepdim=True)
        x = self._static(run, x, net.feature_mix_layer)
        x = x.view(x.size(0), -1)
        linear = net.classifier.linear
        return self._linear(run, x, linear.weight, linear.bias)

    def _mbconv(self, run: _Run, x: torch.Tensor, layer: nn.Module, expand: float, kernel: int) -> torch.Tensor:
        """DynamicMBConvLayer at (expand ratio, kernel): 1x1 expand -> depthwise kxk (+SE) -> 1x1 project."""
        cin = x.shape[1]
        mid = _divisible(round(cin * expand))
        if layer.inverted_bottleneck is not None:
            ib = layer.inverted_bottleneck
            x = self._conv(run, x, ib.conv.get_active_filter(mid, cin), None, ib.conv.stride,
                           get_same_padding(ib.conv.kernel_size), ib.conv.dilation)
            x = ib.act(self._bn(run, x, ib.bn.bn))
        dc = layer.depth_conv
        x = self._conv(run, x, dc.conv.get_active_filter(mid, kernel), None, dc.conv.stride,
                       get_same_padding(kernel), dc.conv.dilation, mid)
        x = dc.act(self._bn(run, x, dc.bn.bn))
        if layer.use_se:
            x = self._se(run, x, dc.se)
        pl = layer.point_linear
        x = self._conv(run, x, pl.conv.get_active_filter(max(layer.out_channel_list), mid), None, pl.conv.stride,
                       get_same_padding(pl.conv.kernel_size), pl.conv.dilation)
        return self._bn(run, x, pl.bn.bn)

    # OFA-ResNet50 ----------------------------------------------------------------------------------------------------
    def _dynamic_conv_layer(self, run: _Run, x: torch.Tensor, layer: nn.Module, out: int) -> torch.Tensor:
        conv = layer.conv
        x = self._conv(run, x, conv.get_active_filter(out, x.shape[1]), None, conv.stride,
                       get_same_padding(conv.kernel_size), conv.dilation)
        if layer.use_bn:
            x = self._bn(run, x, layer.bn.bn)
        return layer.act(x) if layer.act is not None else x

    def _resnet(self, x: torch.Tensor, subnet: SubnetConfig, run: _Run) -> torch.Tensor:
        net, w = self.net, subnet.widths
        stem0, stem1, stem2 = net.input_stem
        c0 = stem0.out_channel_list[w[0]]
        x = self._dynamic_conv_layer(run, x, stem0, c0)
        if not subnet.skip_stem:  # the residual middle conv of the stem (OFA's d[0])
            x = self._dynamic_conv_layer(run, x, stem1.conv, c0) + x
        x = self._dynamic_conv_layer(run, x, stem2, stem2.out_channel_list[w[1]])
        x = net.max_pooling(x)
        for s, (ix, s_e) in enumerate(zip(self._stages, subnet.expand_ratios)):
            for idx, e in zip(ix, s_e):
                block = net.blocks[idx]
                x = self._bottleneck(run, x, block, e, block.out_channel_list[w[2 + s]])
        x = x.mean(3).mean(2)  # (B, C)
        linear = net.classifier.linear.linear
        return self._linear(run, x, linear.weight[:, :x.shape[1]], linear.bias)

    def _bottleneck(self, run: _Run, x: torch.Tensor, block: nn.Module, expand: float, out: int) -> torch.Tensor:
        """DynamicResNetBottleneckBlock: 1x1 -> 3x3 (stride) -> 1x1, + identity or avgpool-conv downsample."""
        mid = _divisible(round(out * expand))
        if isinstance(block.downsample, IdentityLayer):
            residual = x
        else:
            ds = block.downsample
            residual = ds.avg_pool(x) if hasattr(ds, "avg_pool") else x
            residual = self._conv(run, residual, ds.conv.get_active_filter(out, x.shape[1]), None, ds.conv.stride,
                                  get_same_padding(ds.conv.kernel_size), ds.conv.dilation)
            residual = self._bn(run, residual, ds.bn.bn)
        h = x
        for seq, width in ((block.conv1, mid), (block.conv2, mid), (block.conv3, out)):
            h = self._conv(run, h, seq.conv.get_active_filter(width, h.shape[1]), None, seq.conv.stride,
                           get_same_padding(seq.conv.kernel_size), seq.conv.dilation)
            h = self._bn(run, h, seq.bn.bn)
            if seq is not block.conv3:
                h = F.relu(h)
        return F.relu(h + residual)


# --- user-provided OFA weights ----------------------------------------------------------------------------------------
def _ofa_key(key: str, expected: dict[str, torch.Tensor]) -> str | None:
    """The supernet's name for `key` of an OFA checkpoint, with the renames OFA's own `load_state_dict` accepts."""
    for base in dict.fromkeys((key, key.replace(".mobile_inverted_conv.", ".conv."))):
        if base in expected:
            return base
        for old, new in ((".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear."),
                         (".linear.", ".linear.linear."), ("bn.", "bn.bn."), ("conv.weight", "conv.conv.weight")):
            if old in base and base.replace(old, new) in expected:
                return base.replace(old, new)
    return None


def load_ofa_weights(path: str | os.PathLike[str], space: SupernetSpace) -> OFASupernet:
    """An `OFASupernet` of `space` holding the weights of an OFA checkpoint file (as OFA publishes them: a dict with
    a "state_dict", or the state dict itself). Never downloads anything.

    Raises OFACheckpointError naming the file and the first tensor that does not fit (unknown, wrong shape, or
    missing), so a checkpoint of another OFA variant (width 1.0 vs 1.2, other expand ratios) is refused, not
    half-loaded."""
    path = Path(path)
    what = f"the {space.family} supernet"
    if not path.is_file():
        raise OFACheckpointError(f"OFA checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for garbled files
        raise OFACheckpointError(f"OFA checkpoint {path} is corrupt or not a torch file: {exc}") from exc
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OFACheckpointError(f"OFA checkpoint {path} holds no state dict of tensors")
    net = OFASupernet(space)
    expected = net.net.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = _ofa_key(key, expected)
        if name is None:
            raise OFACheckpointError(f"OFA checkpoint {path}: tensor {key!r} is not part of {what} "
                                     f"(a checkpoint of another network?)")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise OFACheckpointError(f"OFA checkpoint {path}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                     f"{what} expects {tuple(expected[name].shape)} (another width, expand or kernel "
                                     f"configuration, or another number of classes?)")
        loaded[name] = tensor
    missing = [k for k in expected if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise OFACheckpointError(f"OFA checkpoint {path}: tensor {missing[0]!r} of {what} is missing "
                                 f"({len(missing)} missing in all)")
    nn.Module.load_state_dict(net.net, {**expected, **loaded}, strict=True)
    return net.eval()


def random_ofa_supernet(space: SupernetSpace, seed: int = 0) -> OFASupernet:
    """A randomly initialised supernet of `space` (seeded): for tests and for memory / switching benchmarks, whose
    figures do not depend on the weights. Its accuracy is chance; say so wherever it is used."""
    torch.manual_seed(seed)
    return OFASupernet(space).eval()


__all__ = ["OFASupernet", "OFACheckpointError", "load_ofa_weights", "random_ofa_supernet"]
