"""Training configuration and schedules: cosine LR per step, phases per method, and the DεpS ε-ramp (β).

Everything here is a pure function of (config, step): the trainer, the tests and `--resume` all recompute the same
numbers, so nothing schedule-related has to be stored in a checkpoint besides the step.

DεpS (papers.md §2.2), in steps instead of epochs (T = total steps, A = fm_warmup_frac * T, S = ramp_frac * T):
    step <  A          "warmup": full-model warm-up, only the max net trains (β = 0: subnets are not even run)
    A <= step < A + S  "ramp":   sandwich steps; the subnets' effective LR ramps linearly, per step, from 0 to
                                 LR(A + S), the scheduler's LR at the ramp end: β = (t / S) * LR(A + S) / LR(step)
                                 with t = step - A + 1 (the authors' `adjust_beta_value`, with LR(W) computed from
                                 the scheduler instead of read from a hard-coded per-dataset table)
    step >= A + S      "shrink": sandwich steps, β = 1 (subnets share the max net's LR)
BigNAS: "sandwich" from step 0, β = 1. OFA progressive shrinking: phases "full", "kernel", "depth", "width", each with
its own cosine schedule restarting at lr * phase scale (OFA fine-tunes the shrinking phases at lower rates).

Where each DεpS choice comes from (paper = the ECCV paper's text/figures, code = gatech-sysml/DepS at 317b1e5):
- warm-up share 0.5: paper (the FM-Warmup ablation picks 50%). The code's ImageNet command ends the ramp at
  `teacher_warmup` 150 of 270 epochs, so its warm-up is (150 - 5) / 270 = 53.7%; we keep the paper's round 50%.
- ramp length 5 / 270 = 1.85% of training: code (`--smallnet_warmup 5` with `--n_epochs 270`; the CIFAR runs use
  5 of 200 = 2.5%). Earlier versions of this module ramped for 10% (ours, not the authors'); `ramp_frac` keeps
  that reachable. The ramp is at least one step whenever ramp_frac > 0 (short runs would otherwise round it away).
- linear per-step ramp of the subnets' effective LR to the scheduler's LR at the ramp end, β = 1 after: code.
- momentum across the channel re-organisation: code by default (`reorganize_momentum="keep"`, see trainer.py).
- cosine per step (the code steps it per batch too), SGD Nesterov 0.9, label smoothing 0.1, T = 1, 4 subnets per step,
  weight decay 3e-5 on weights only: code. Peak LR, batch size and augmentation (+-2 px shifts instead of
  AutoAugment / random erase) are ours, sized for 28x28 / 8x8 digits on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

METHODS = ("deps", "bignas", "ofa")
MOMENTUM_HANDLING = ("keep", "reset")
# The DεpS code's ramp (`smallnet_warmup` 5 epochs) over its ImageNet run (`n_epochs` 270), as a share of training.
REFERENCE_RAMP_FRAC = 5 / 270
OFA_PHASES = ("full", "kernel", "depth", "width")


class ConfigError(ValueError):
    """A training configuration that cannot run (unknown method, fractions out of range...)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (together with the dataset spec and the space)."""

    method: str = "deps"  # deps | bignas | ofa
    epochs: float = 8.0  # passes over the train split (data epochs; see budget.py for full-model-equivalents)
    batch_size: int = 128  # images per step (every subnet of a sandwich step sees the same batch)
    lr: float = 0.15  # peak learning rate of the cosine schedule (step 0)
    momentum: float = 0.9  # SGD momentum (Nesterov)
    nesterov: bool = True
    weight_decay: float = 3e-5  # on conv/linear weights only (no decay on norm affine params and biases)
    label_smoothing: float = 0.1  # on the max net's cross-entropy (hard labels)
    temperature: float = 1.0  # in-place distillation temperature T (loss scaled by T^2)
    num_subnets: int = 4  # sandwich size n: max + min + (n - 2) random subnets per step
    fm_warmup_frac: float = 0.5  # DεpS: fraction of steps that train the max net only
    ramp_frac: float = REFERENCE_RAMP_FRAC  # DεpS: ε-ramp length as a share of all steps (code: 5 of 270 epochs)
    reorganize: bool = True  # sort middle channels by importance when shrinking starts (DεpS) / before width (OFA)
    reorganize_momentum: str = "keep"  # DεpS: momentum buffers across the re-organisation: keep (code) | reset
    ofa_phase_fracs: tuple[float, ...] = (0.3, 0.2, 0.25, 0.25)  # OFA: share of steps per phase (full..width)
    ofa_lr_scales: tuple[float, ...] = (1.0, 0.3, 0.1, 0.1)  # OFA: peak LR of each phase, relative to `lr`
    ofa_subnets_per_step: tuple[int, ...] = (1, 1, 2, 2)  # OFA: subnets sampled per step in each phase
    augment: bool = True  # random +-2 px shifts of training images
    seed: int = 0  # seeds init, data order, augmentation, subnet sampling and dropout

    def __post_init__(self) -> None:
        object.__setattr__(self, "ofa_phase_fracs", tuple(float(f) for f in self.ofa_phase_fracs))
        object.__setattr__(self, "ofa_lr_scales", tuple(float(f) for f in self.ofa_lr_scales))
        object.__setattr__(self, "ofa_subnets_per_step", tuple(int(n) for n in self.ofa_subnets_per_step))
        if self.method not in METHODS:
            raise ConfigError(f"unknown training method {self.method!r}; expected one of {', '.join(METHODS)}")
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (training normalises with batch statistics)")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.num_subnets < 2:
            raise ConfigError("the sandwich rule needs num_subnets >= 2 (max + min)")
        if not 0.0 <= self.fm_warmup_frac < 1.0 or not 0.0 <= self.ramp_frac <= 1.0 - self.fm_warmup_frac:
            raise ConfigError("need 0 <= fm_warmup_frac < 1 and 0 <= ramp_frac <= 1 - fm_warmup_frac")
        if self.reorganize_momentum not in MOMENTUM_HANDLING:
            raise ConfigError(f"reorganize_momentum must be one of {', '.join(MOMENTUM_HANDLING)}, "
                              f"got {self.reorganize_momentum!r}")
        if len(self.ofa_phase_fracs) != 4 or abs(sum(self.ofa_phase_fracs) - 1.0) > 1e-6 or \
                min(self.ofa_phase_fracs) <= 0:
            raise ConfigError("ofa_phase_fracs needs 4 positive fractions (full, kernel, depth, width) summing to 1")
        if len(self.ofa_lr_scales) != 4 or len(self.ofa_subnets_per_step) != 4 or min(self.ofa_subnets_per_step) < 1:
            raise ConfigError("ofa_lr_scales and ofa_subnets_per_step need 4 entries (subnets per step >= 1)")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {sorted(unknown)}")
        # configs stored before the field existed were trained with the momentum cleared at the re-organisation
        return cls(**{"reorganize_momentum": "reset", **data})


def cosine_lr(step: int, total_steps: int, peak_lr: float) -> float:
    """0.5 * peak * (1 + cos(pi * step / total)): peak at step 0, -> 0 at the end (per step, no table)."""
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * step / total_steps))


@dataclass(frozen=True)
class Schedule:
    """Phase, learning rate and subnet gradient multiplier β of every step of one run."""

    config: TrainConfig
    steps_per_epoch: int  # optimizer steps per pass over the train split (drop_last batches)
    total_steps: int = field(init=False)
    boundaries: tuple[int, ...] = field(init=False)  # first step of each phase after the first

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ConfigError("the train split is smaller than one batch")
        cfg = self.config
        total = max(1, round(cfg.epochs * self.steps_per_epoch))
        if cfg.method == "deps":
            start = round(cfg.fm_warmup_frac * total)
            ramp = max(1, round(cfg.ramp_frac * total)) if cfg.ramp_frac > 0 else 0
            ramp = min(ramp, total - start)
            bounds: tuple[int, ...] = (start, start + ramp)
        elif cfg.method == "bignas":
            bounds = ()
        else:
            cuts, acc = [], 0.0
            for frac in cfg.ofa_phase_fracs[:-1]:
                acc += frac
                cuts.append(round(acc * total))
            bounds = tuple(cuts)
            if len(set(bounds)) < 3 or bounds[0] == 0 or bounds[-1] >= total:
                raise ConfigError(f"{total} steps are too few for the four OFA phases; train longer")
        object.__setattr__(self, "total_steps", total)
        object.__setattr__(self, "boundaries", bounds)

    # --- phases ---------------------------------------------------------------------------------------------------
    def phase_names(self) -> tuple[str, ...]:
        return {"deps": ("warmup", "ramp", "shrink"), "bignas": ("sandwich",), "ofa": OFA_PHASES}[self.config.method]

    def phase_index(self, step: int) -> int:
        return sum(step >= b for b in self.boundaries)

    def phase(self, step: int) -> str:
        return self.phase_names()[self.phase_index(step)]

    def phase_span(self, index: int) -> tuple[int, int]:
        """[first, end) steps of phase `index`."""
        edges = (0, *self.boundaries, self.total_steps)
        return edges[index], edges[index + 1]

    # --- learning rate and β --------------------------------------------------------------------------------------
    def lr(self, step: int) -> float:
        cfg = self.config
        if cfg.method != "ofa":
            return cosine_lr(step, self.total_steps, cfg.lr)
        index = self.phase_index(step)
        first, end = self.phase_span(index)
        return cosine_lr(step - first, end - first, cfg.lr * cfg.ofa_lr_scales[index])

    def beta(self, step: int) -> float:
        """Multiplier of the subnets' gradients (their effective LR is beta * lr(step)); 1 outside DεpS."""
        if self.config.method != "deps":
            return 1.0
        start, end = self.boundaries
        if step < start:
            return 0.0
        if step >= end:
            return 1.0
        target_lr = self.lr(end)  # the scheduler's LR where the ramp ends ("desired" in adjust_beta_value)
        ramp_lr = (step - start + 1) / (end - start) * target_lr
        return ramp_lr / self.lr(step)
