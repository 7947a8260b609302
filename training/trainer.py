"""The training loop shared by DεpS, BigNAS and OFA progressive shrinking: schedule, checkpoints, exact resume, stop.

Exact resume: a checkpoint holds the weights, the optimizer state (momentum buffers), the step, the python / numpy /
torch RNG states, the data-order generator's state at the start of the current epoch and the batch index inside it
(the batches of that epoch are replayed and skipped on resume), and for OFA the frozen teacher. Subnet sampling is
seeded by (seed, step, index) and needs no state. So N steps, or N/2 + kill + resume + N/2, give identical weights.

Stopping: `StopFlag` is set by SIGTERM/SIGINT (see `install_signal_handlers`); the loop finishes the current step,
writes a checkpoint atomically and returns with `interrupted=True`.
"""

from __future__ import annotations

import copy
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from supernet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from supernet.config import SubnetConfig
from supernet.network import SuperNet
from supernet.norm import NormTable
from training.calibrate import calibrate_subnets
from superserve.data import DatasetSplits, batches
from training.schedule import Schedule, TrainConfig
from training.steps import MacRatio, distill_step, sample_subnets, sandwich_step

CHECKPOINT_KIND = "training"


@dataclass
class StopFlag:
    """Set asynchronously (signal handler) to ask the loop to checkpoint and return after the current step."""

    requested: bool = False
    signal_name: str = ""

    def request(self, signum: int, _frame: Any = None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


def install_signal_handlers(flag: StopFlag) -> Callable[[], None]:
    """Route SIGTERM and SIGINT to `flag`; returns a function restoring the previous handlers."""
    previous = {s: signal.signal(s, flag.request) for s in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()] and None


@dataclass
class TrainResult:
    net: SuperNet
    step: int  # steps done
    total_steps: int
    fme_epochs: float  # full-model-equivalent epochs spent (see steps.py)
    train_time_s: float  # wall time inside the loop, summed over resumed segments (validation excluded)
    history: list[dict[str, Any]] = field(default_factory=list)  # validation records
    interrupted: bool = False


def make_optimizer(net: SuperNet, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD (Nesterov); weight decay on conv/linear weights only, none on norm affine params and biases."""
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        (no_decay if param.dim() <= 1 else decay).append(param)
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


@torch.no_grad()
def evaluate(net: SuperNet, subnet: SubnetConfig, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy (fraction) of a calibrated subnet; eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = net(x[start:start + batch_size].to(device), subnet)
        correct += int((logits.argmax(dim=1).cpu() == y[start:start + batch_size]).sum())
    net.train(was_training)
    return correct / len(y)


def validate_corners(net: SuperNet, data: DatasetSplits, calibration_images: int = 500, seed: int = 0
                     ) -> dict[str, float]:
    """Validation accuracy of the max and min subnets, each calibrated on `calibration_images` train images.

    Uses a scratch statistics table, so the net's own `norm_table` (and the training state) is untouched."""
    saved_table, net.norm_table = net.norm_table, NormTable()
    try:
        images, _ = data.calibration_subset(calibration_images, seed=seed)
        corners = {"max": SubnetConfig.max(net.space), "min": SubnetConfig.min(net.space)}
        calibrate_subnets(net, corners.values(), images)
        return {f"val_acc_{name}": evaluate(net, cfg, data.val_x, data.val_y) for name, cfg in corners.items()}
    finally:
        net.norm_table = saved_table


@dataclass
class _Resume:
    step: int = 0
    fme_images: float = 0.0
    train_time_s: float = 0.0
    history: list = field(default_factory=list)
    epoch_generator_state: torch.Tensor | None = None


def _rng_state() -> dict[str, Any]:
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [py_version, list(py_state), py_gauss],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
        torch.cuda.set_rng_state_all(state["cuda"])


def _reorganize(net: SuperNet, optimizer: torch.optim.Optimizer, momentum: str = "reset") -> None:
    """Sort middle channels by importance (OFA channel sorting) once; `momentum` says what the SGD buffers do.

    "keep" is what the DεpS code does: its `re_organize_middle_weights` assigns `param.data = index_select(...)`,
    which leaves the optimizer state untouched, so the momentum buffers carry on in the OLD channel order (a stale,
    permuted momentum for the few steps it takes to decay; with momentum 0.9 about 10). "reset" drops them, which
    is what OFA's code amounts to (each progressive-shrinking phase is a fresh run with a fresh optimizer) and what
    this module did for DεpS before (ours). Parameters are updated in place (`copy_`), so either way the optimizer
    keeps pointing at the same tensors."""
    net.reorder_middle_channels()
    if momentum == "reset":
        optimizer.state.clear()


def train(net: SuperNet, data: DatasetSplits, cfg: TrainConfig, out_path: str | Path, *,
          resume_from: str | Path | None = None, checkpoint_every: int = 50, validate_every: int | None = None,
          stop: StopFlag | None = None, progress: bool = True, max_steps: int | None = None,
          meta: dict[str, Any] | None = None) -> TrainResult:
    """Train `net` with `cfg` on `data`; checkpoint to `out_path`.

    Args:
        resume_from: a checkpoint written by this function; training continues exactly where it stopped (the
            checkpoint's TrainConfig is used; `cfg` must equal it).
        checkpoint_every: steps between checkpoints (also written at the end and on stop).
        validate_every: steps between max/min validations (default: once per epoch, and at the end).
        max_steps: stop (with a checkpoint, not interrupted) after this many steps in total; tests use it.
    """
    device = next(net.parameters()).device
    stop = stop or StopFlag()
    steps_per_epoch = len(data.train_y) // cfg.batch_size
    schedule = Schedule(cfg, steps_per_epoch)
    validate_every = validate_every or steps_per_epoch
    optimizer = make_optimizer(net, cfg)
    mac_ratio = MacRatio(net)
    teacher: SuperNet | None = None
    state = _Resume()
    generator = torch.Generator().manual_seed(cfg.seed)

    if resume_from is not None:
        loaded, data_ckpt = load_checkpoint(resume_from, space=net.space)
        extra = data_ckpt["extra"]
        if extra.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{resume_from} holds no training state to resume from")
        if TrainConfig.from_dict(extra["config"]) != cfg:
            raise CheckpointError(f"{resume_from} was written by another training configuration:\n"
                                  f"  checkpoint: {extra['config']}\n  requested:  {cfg.to_dict()}")
        net.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(extra["optimizer"])
        state = _Resume(int(extra["step"]), float(extra["fme_images"]), float(extra["train_time_s"]),
                        list(extra["history"]), extra["epoch_generator_state"])
        if "teacher" in extra:
            teacher = copy.deepcopy(net)
            teacher.load_state_dict(extra["teacher"])
        _set_rng_state(extra["rng"])
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)

    def save(step: int) -> None:
        extra = {"kind": CHECKPOINT_KIND, "config": cfg.to_dict(), "step": step, "fme_images": state.fme_images,
                 "train_time_s": state.train_time_s, "history": state.history, "optimizer": optimizer.state_dict(),
                 "rng": _rng_state(),
                 # at an epoch boundary the generator's current state starts the next epoch
                 "epoch_generator_state": generator.get_state() if step % steps_per_epoch == 0
                 else state.epoch_generator_state}
        if teacher is not None:
            extra["teacher"] = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
        info = {**(meta or {}), "method": cfg.method, "train_config": cfg.to_dict(), "step": step,
                "total_steps": schedule.total_steps, "fme_epochs": state.fme_images / len(data.train_y),
                "train_time_s": state.train_time_s, "history": state.history}
        save_checkpoint(net, out_path, meta=info, extra=extra)

    def record_validation(step: int) -> None:
        accs = validate_corners(net, data, seed=cfg.seed)
        state.history.append({"step": step, "fme_epochs": round(state.fme_images / len(data.train_y), 4),
                              "train_time_s": round(state.train_time_s, 2), "phase": schedule.phase(step - 1),
                              **{k: round(v, 4) for k, v in accs.items()}})
        tqdm.write(f"step {step}/{schedule.total_steps}: " +
                   ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))

    net.train()
    step = state.step
    last_step = min(schedule.total_steps, max_steps or schedule.total_steps)
    bar = tqdm(total=schedule.total_steps, initial=step, desc=f"train {cfg.method}", unit="step",
               disable=not progress, dynamic_ncols=True)
    while step < last_step and not stop.requested:
        skip = step % steps_per_epoch
        if state.epoch_generator_state is not None:  # resumed: replay this epoch's order, skip what is done
            generator.set_state(state.epoch_generator_state)
        state.epoch_generator_state = generator.get_state()  # start of this epoch
        stream = batches(data.train_x, data.train_y, cfg.batch_size, generator, shuffle=True, augment=cfg.augment,
                         drop_last=True)
        for index, (x, y) in enumerate(stream):
            if index < skip:
                continue
            if step >= last_step or stop.requested:
                break
            t0 = time.perf_counter()
            phase_index, phase = schedule.phase_index(step), schedule.phase(step)
            if cfg.method == "ofa":
                if phase_index == 1 and teacher is None:  # the full model is trained: freeze a copy as teacher
                    teacher = copy.deepcopy(net).requires_grad_(False)
                if phase == "width" and cfg.reorganize and step == schedule.boundaries[2]:
                    _reorganize(net, optimizer, "reset")  # OFA: the width phase is a fresh run in OFA's code
            elif cfg.method == "deps" and cfg.reorganize and step == schedule.boundaries[0] and step > 0:
                # once, when shrinking starts (DεpS `reorganize_weights` at the first epoch >= W - S)
                _reorganize(net, optimizer, cfg.reorganize_momentum)
            lr = schedule.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device), y.to(device)
            if cfg.method == "ofa":
                count = cfg.ofa_subnets_per_step[phase_index]
                subnets = sample_subnets(net.space, "ofa", phase, step, cfg.seed, count)
                result = distill_step(net, teacher if phase != "full" else None, x, y, subnets, cfg, mac_ratio)
            else:
                subnets = sample_subnets(net.space, cfg.method, phase, step, cfg.seed, cfg.num_subnets)
                result = sandwich_step(net, x, y, subnets, schedule.beta(step), cfg, mac_ratio)
            optimizer.step()
            step += 1
            elapsed = time.perf_counter() - t0
            state.train_time_s += elapsed
            state.fme_images += result.cost_fme_images
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.4f}", phase=phase,
                            img_s=f"{len(y) / elapsed:.0f}", fme=f"{state.fme_images / len(data.train_y):.2f}")
            if step % validate_every == 0 or step == schedule.total_steps:
                record_validation(step)
            if step % checkpoint_every == 0 and step < last_step:
                save(step)
        if step % steps_per_epoch == 0:
            state.epoch_generator_state = None  # epoch complete: the next one continues from the generator as is
    bar.close()
    save(step)
    return TrainResult(net, step, schedule.total_steps, state.fme_images / len(data.train_y), state.train_time_s,
                       state.history, interrupted=stop.requested and step < schedule.total_steps)
