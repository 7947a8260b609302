"""`superserve train`: train the supernet with DεpS, BigNAS or OFA progressive shrinking.

Examples:
    superserve train --method deps --budget-fme 4 --data mnist5k --out runs/deps.pt
    superserve train --method deps --budget-fme 4 --data mnist5k --out runs/deps.pt --resume   # after a kill
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import torch

from supernet.checkpoint import CheckpointError, read_checkpoint
from supernet.config import SupernetSpace
from supernet.network import SuperNet
from superserve.data import DataError, load_dataset
from training.schedule import METHODS, MOMENTUM_HANDLING, ConfigError, TrainConfig
from training.steps import epochs_for_budget
from training.trainer import StopFlag, install_signal_handlers, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="deps", help="training method (default: deps)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="data epochs (passes over the train split)")
    budget.add_argument("--budget-fme", type=float,
                        help="budget in full-model-equivalent epochs (MACs run / max-net MACs); converted to data "
                             "epochs for the method, so all methods can get the same budget (default 8)")
    p.add_argument("--data", default="mnist5k", help="mnist5k | digits | cifar10:PATH | folder:PATH")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/val/test split (keep it for zoo build)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint path (written periodically and at the end)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue a stopped run exactly (default checkpoint: --out)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation, data order, augmentation, subnet sampling and dropout (default "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="training batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate (cosine, per step)")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                   help="weight decay (default %(default)s)")
    p.add_argument("--num-subnets", type=int, default=TrainConfig.num_subnets, help="sandwich size n")
    p.add_argument("--fm-warmup-frac", type=float, default=TrainConfig.fm_warmup_frac,
                   help="DεpS: share of steps training the max net only")
    p.add_argument("--ramp-frac", type=float, default=TrainConfig.ramp_frac,
                   help="DεpS: ε-ramp length as a share of all steps (default 5/270, the authors' code: "
                        "smallnet_warmup 5 of 270 epochs)")
    p.add_argument("--reorganize-momentum", choices=MOMENTUM_HANDLING, default=TrainConfig.reorganize_momentum,
                   help="DεpS: SGD momentum across the channel re-organisation when shrinking starts: keep (the "
                        "authors' code, default) or reset")
    p.add_argument("--no-augment", action="store_true", help="disable random +-2 px shifts")
    p.add_argument("--space", help="SupernetSpace as a JSON file or string, or 'deps-code' (one kernel, depth 2-4, "
                                   "expand 0.5-1: shaped like the DεpS code's space); default: the default space, "
                                   "with the data's channels/size/classes")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--val-every", type=int, default=None, help="steps between max/min validations (default: epoch)")
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop early, resumable
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def space_from_arg(arg: str | None, data) -> SupernetSpace:
    if arg is None:
        return SupernetSpace(in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes)
    if arg == "deps-code":
        return SupernetSpace.deps_code_shaped(in_channels=data.in_channels, image_size=data.image_size,
                                              num_classes=data.num_classes)
    text = Path(arg).read_text() if Path(arg).is_file() else arg
    try:
        return SupernetSpace.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ConfigError(f"--space is not a valid SupernetSpace JSON: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        resume = None if args.resume is None else Path(args.resume or args.out)
        if resume is not None:
            # the stored run decides the configuration: resuming must not silently change it
            stored = read_checkpoint(resume)
            meta = stored["meta"]
            cfg = TrainConfig.from_dict(stored["extra"]["config"])
            space = SupernetSpace.from_dict(stored["space"])
            data = load_dataset(meta["data"], seed=meta["data_seed"], image_size=space.image_size)
            print(f"resuming {resume} at step {stored['extra']['step']}/{meta['total_steps']}", file=sys.stderr)
            # CPU kernels reduce in an order that depends on the thread count: the same count as the stopped run is
            # what makes the continuation bit-exact, so it is the default, and a different one is said out loud.
            stored_threads = meta.get("threads")
            if stored_threads and not args.threads:
                torch.set_num_threads(int(stored_threads))
            elif stored_threads and args.threads != stored_threads:
                print(f"warning: the stopped run used {stored_threads} thread(s), this one {args.threads}: training "
                      "continues, but not bit-for-bit as the uninterrupted run would", file=sys.stderr)
        else:
            probe = load_dataset(args.data, seed=args.data_seed)
            space = space_from_arg(args.space, probe)
            data = probe if probe.image_size == space.image_size else \
                load_dataset(args.data, seed=args.data_seed, image_size=space.image_size)
            if (data.in_channels, data.num_classes) != (space.in_channels, space.num_classes):
                raise ConfigError(f"data has {data.in_channels} channels / {data.num_classes} classes, the space "
                                  f"expects {space.in_channels} / {space.num_classes}")
            torch.manual_seed(args.seed)  # weight initialisation
            base = TrainConfig(method=args.method, epochs=1.0, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, num_subnets=args.num_subnets,
                               fm_warmup_frac=args.fm_warmup_frac, ramp_frac=args.ramp_frac,
                               reorganize_momentum=args.reorganize_momentum,
                               augment=not args.no_augment, seed=args.seed)
            probe_net = SuperNet(space)
            if args.epochs is not None:
                epochs = args.epochs
            else:
                epochs = epochs_for_budget(probe_net, base, args.budget_fme or 8.0)
            cfg = TrainConfig.from_dict({**base.to_dict(), "epochs": round(epochs, 4)})
            meta = {"data": args.data, "data_seed": args.data_seed, "budget_fme": args.budget_fme,
                    "threads": torch.get_num_threads(),
                    "command": "superserve train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""}
    except (ConfigError, DataError, CheckpointError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    torch.manual_seed(cfg.seed)
    net = SuperNet(space).to(device)
    print(f"method {cfg.method}: {cfg.epochs} data epochs, batch {cfg.batch_size}, {len(data.train_y)} train images, "
          f"device {device}, threads {torch.get_num_threads()}", file=sys.stderr)
    flag = StopFlag()
    restore = install_signal_handlers(flag)
    try:
        result = train(net, data, cfg, args.out, resume_from=resume, checkpoint_every=args.checkpoint_every,
                       validate_every=args.val_every, stop=flag, progress=not args.quiet,
                       max_steps=args.max_steps, meta={k: meta[k] for k in ("data", "data_seed", "budget_fme",
                                                                           "threads", "command") if k in meta})
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        restore()
    last = result.history[-1] if result.history else {}
    print(f"{'stopped' if result.interrupted else 'done'} at step {result.step}/{result.total_steps}: "
          f"{result.fme_epochs:.2f} full-model-equivalent epochs, {result.train_time_s:.0f} s; checkpoint "
          f"{args.out}; last validation {last}", file=sys.stderr)
    if result.interrupted:
        print("resume with: superserve train --out {} --resume".format(args.out), file=sys.stderr)
        return 128 + getattr(signal.Signals, flag.signal_name, signal.SIGTERM).value
    return 0
