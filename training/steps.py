"""One optimisation step per method/phase, subnet sampling, and the budget accounting in full-model equivalents.

Every step zeroes the gradients, accumulates them over the subnets it runs (gradient aggregation "sum", as in the
DεpS code: with sum, masking by the active slices is implicit, since an unused weight gets no gradient), and leaves
the optimizer step to the caller.

Budget accounting ("full-model-equivalent epochs", FME): a forward+backward of subnet s on one image costs
MACs(s) / MACs(max net) full-model passes; a forward-only pass (OFA's frozen teacher) costs a third of that (backward
~ 2x forward). One FME epoch = the cost of one max-net epoch over the train split. The trainer adds up the subnets it
actually runs; `expected_step_cost` gives the expectation used to convert an FME budget into data epochs
(`epochs_for_budget`), so each method can be given the same budget.

Provenance (code = gatech-sysml/DepS; ours = not from the papers or their code):
- sandwich of max + min + (n - 2) uniform random subnets, seeded by (seed, step, index), gradients summed, subnet
  gradients scaled by β, in-place distillation at T = 1 from the max net's soft outputs of the same batch, dropout
  and label smoothing on the max net only: code (`train_one_epoch_deps`, `train_one_epoch_bignas`).
- OFA: the frozen full model as teacher with KD ratio 1, kernel -> depth -> width phases: OFA's code as the DεpS
  repo runs it. One run with four phase shares and phase LR scales instead of OFA's separate runs (120 / 25 + 120
  / 25 + 120 epochs at their own LRs), and a kernel phase even though the DεpS-shaped space fixes the kernel: ours.
- FME accounting (MACs-weighted, teacher forward at 1/3): ours; the DεpS paper compares GPU-hours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from supernet.config import SubnetConfig, SupernetSpace
from supernet.network import SuperNet
from training.schedule import ConfigError, TrainConfig

FORWARD_ONLY_COST = 1.0 / 3.0  # forward-only pass relative to forward+backward


@dataclass(frozen=True)
class StepResult:
    loss: float  # the max net's loss in sandwich steps; mean loss over the sampled subnets in OFA steps
    cost_fme_images: float  # images x (MACs run / max-net MACs), forward+backward equivalents
    subnets: tuple[str, ...]  # ids of the subnets trained this step


def subnet_rng(seed: int, step: int, index: int) -> random.Random:
    """Sampling RNG seeded by (seed, step, index), as in the DεpS code: resuming needs no sampler state."""
    return random.Random((seed * 1_000_003 + step) * 101 + index)


def sample_subnets(space: SupernetSpace, method: str, phase: str, step: int, seed: int, count: int
                   ) -> list[SubnetConfig]:
    """The subnets a step trains.

    Sandwich methods (deps after warm-up, bignas): [max, min, count-2 uniform random]. OFA phases sample `count`
    subnets from the elastic set of the phase: kernel only, then kernel+depth, then kernel+depth+width.
    """
    if method in ("deps", "bignas"):
        if phase == "warmup":
            return [SubnetConfig.max(space)]
        randoms = [SubnetConfig.random(space, subnet_rng(seed, step, j)) for j in range(count - 2)]
        return [SubnetConfig.max(space), SubnetConfig.min(space), *randoms]
    if phase == "full":
        return [SubnetConfig.max(space)]
    restrict = {
        "kernel": dict(depths=(space.max_depth,), expand_choices=(space.max_expand,)),
        "depth": dict(expand_choices=(space.max_expand,)),
        "width": {},
    }[phase]
    return [SubnetConfig.random(space, subnet_rng(seed, step, j), **restrict) for j in range(count)]


def distillation_loss(logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * CE(softmax(logits / T), soft_targets): soft_targets (B, classes) are probabilities at temperature T."""
    log_probs = F.log_softmax(logits / temperature, dim=1)  # (B, classes)
    return temperature**2 * -(soft_targets * log_probs).sum(dim=1).mean()


class MacRatio:
    """MACs(subnet) / MACs(max net), cached per subnet id."""

    def __init__(self, net: SuperNet):
        self.net = net
        self.max_macs = net.count_params_and_macs(SubnetConfig.max(net.space))[1]
        self._cache: dict[str, float] = {}

    def __call__(self, subnet: SubnetConfig) -> float:
        if subnet.subnet_id not in self._cache:
            self._cache[subnet.subnet_id] = self.net.count_params_and_macs(subnet)[1] / self.max_macs
        return self._cache[subnet.subnet_id]


def sandwich_step(net: SuperNet, x: torch.Tensor, y: torch.Tensor, subnets: list[SubnetConfig], beta: float,
                  cfg: TrainConfig, mac_ratio: MacRatio) -> StepResult:
    """Max net on hard labels (label smoothing, dropout), then each other subnet by in-place distillation from the
    max net's soft outputs of this same batch, its gradient scaled by β; gradients summed into `.grad`.

    subnets[0] must be the max net. With β = 0 the other subnets are skipped (DεpS warm-up: they would add nothing).
    """
    net.zero_grad(set_to_none=True)
    out = net(x, subnets[0], dropout=net.space.dropout)  # (B, classes)
    loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
    loss.backward()
    cost = mac_ratio(subnets[0])
    trained = [subnets[0].subnet_id]
    if beta > 0.0 and len(subnets) > 1:
        soft = F.softmax(out.detach() / cfg.temperature, dim=1)  # (B, classes), teacher probabilities
        for subnet in subnets[1:]:
            sub_loss = distillation_loss(net(x, subnet), soft, cfg.temperature)
            (beta * sub_loss).backward()  # == adding beta * grad, as the authors' aggregation does
            cost += mac_ratio(subnet)
            trained.append(subnet.subnet_id)
    return StepResult(float(loss.detach()), cost * x.shape[0], tuple(trained))


def distill_step(net: SuperNet, teacher: SuperNet | None, x: torch.Tensor, y: torch.Tensor,
                 subnets: list[SubnetConfig], cfg: TrainConfig, mac_ratio: MacRatio) -> StepResult:
    """OFA progressive shrinking: each sampled subnet learns from the hard labels (label smoothing) plus KD from the
    frozen full model `teacher` (KD ratio 1, as in OFA). `teacher=None` (the "full" phase) trains on labels only,
    with dropout on the max net."""
    net.zero_grad(set_to_none=True)
    cost, losses = 0.0, []
    soft = None
    if teacher is not None:
        with torch.no_grad():
            max_cfg = SubnetConfig.max(net.space)
            soft = F.softmax(teacher(x, max_cfg) / cfg.temperature, dim=1)  # (B, classes)
        cost += FORWARD_ONLY_COST
    for subnet in subnets:
        is_max = subnet == SubnetConfig.max(net.space)
        out = net(x, subnet, dropout=net.space.dropout if is_max else 0.0)
        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
        if soft is not None:
            loss = loss + distillation_loss(out, soft, cfg.temperature)
        loss.backward()
        losses.append(float(loss.detach()))
        cost += mac_ratio(subnet)
    return StepResult(sum(losses) / len(losses), cost * x.shape[0], tuple(s.subnet_id for s in subnets))


# --- budget ---------------------------------------------------------------------------------------------------------
def expected_step_cost(net: SuperNet, cfg: TrainConfig, phase: str, samples: int = 400) -> float:
    """Expected FME cost of one image in one step of `phase` (Monte Carlo over the phase's sampler, seeded)."""
    ratio = MacRatio(net)
    method = cfg.method
    if phase in ("warmup", "full"):
        return 1.0
    count = cfg.num_subnets if method != "ofa" else \
        cfg.ofa_subnets_per_step[("full", "kernel", "depth", "width").index(phase)]
    total = 0.0
    for k in range(samples):
        total += sum(ratio(s) for s in sample_subnets(net.space, method, phase, 10_000 + k, 12345, count))
    return total / samples + (FORWARD_ONLY_COST if method == "ofa" else 0.0)


def expected_cost_per_epoch(net: SuperNet, cfg: TrainConfig) -> float:
    """FME per data epoch, averaged over the phases in proportion to their share of the steps."""
    if cfg.method == "bignas":
        return expected_step_cost(net, cfg, "sandwich")
    if cfg.method == "deps":
        sandwich = expected_step_cost(net, cfg, "shrink")
        # ramp steps run the same subnets as shrink steps (only β differs), so they cost the same
        return cfg.fm_warmup_frac + (1.0 - cfg.fm_warmup_frac) * sandwich
    phases = ("full", "kernel", "depth", "width")
    return sum(f * expected_step_cost(net, cfg, p) for f, p in zip(cfg.ofa_phase_fracs, phases))


def epochs_for_budget(net: SuperNet, cfg: TrainConfig, budget_fme: float) -> float:
    """Data epochs that spend `budget_fme` full-model-equivalent epochs with this method (in expectation)."""
    if not budget_fme > 0:
        raise ConfigError(f"budget must be positive, got {budget_fme}")
    return budget_fme / expected_cost_per_epoch(net, cfg)
