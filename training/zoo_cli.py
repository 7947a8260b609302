"""`superserve zoo`: build the served zoo from a trained checkpoint, re-profile it on this host, check and show it.

    superserve zoo build --ckpt runs/deps.pt --out superserve/assets/zoo.json      (+ supernet.pt next to it)
    superserve zoo import-ofa --supernet ofa_mbv3 --weights ofa_mbv3_d234_e346_k357_w1.2 --out runs/ofa.pt
        (then: superserve zoo build --ckpt runs/ofa.pt --data folder:PATH --out ...)
    superserve zoo reprofile --zoo superserve/assets/zoo.json --ckpt superserve/assets/supernet.pt
    superserve zoo check [--zoo ...] [--ckpt ...]      exit 1 when the latency table is stale or foreign
    superserve zoo show [--zoo ...]
    superserve zoo plot [--zoo ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from supernet.checkpoint import CheckpointError
from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO
from superserve.zoo import Zoo, ZooError
from superserve.data import DataError
from superserve.profiler import DEFAULT_BATCH_SIZES, ProfileConfig
from training.search import SearchConfig


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch threads while profiling (default 1)")
    p.add_argument("--min-repeats", type=int, default=ProfileConfig.min_repeats,
                   help="timed repeats per cell, at least (default %(default)s)")
    p.add_argument("--max-repeats", type=int, default=ProfileConfig.max_repeats,
                   help="timed repeats per cell, at most (default %(default)s)")
    p.add_argument("--target-s", type=float, default=ProfileConfig.target_s, help="timed seconds per cell")
    p.add_argument("--passes", type=int, default=ProfileConfig.passes,
                   help="rounds through all cells that share a cell's repeats, so that a slow spell of a shared host "
                        f"hits a share of every cell (default {ProfileConfig.passes})")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: where the subnets run while searching and profiling (cuda: timed with "
                        "CUDA synchronisation, and the zoo's host fingerprint names the GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    b = sub.add_parser("build", help="search + Pareto selection + calibration + profiling -> zoo and checkpoint")
    b.add_argument("--ckpt", required=True, type=Path, help="trained checkpoint (superserve train --out)")
    b.add_argument("--out", required=True, type=Path, help="zoo JSON to write")
    b.add_argument("--out-ckpt", type=Path, help="calibrated checkpoint to write (default: supernet.pt next to --out)")
    b.add_argument("--data", help="dataset spec (default: the checkpoint's)")
    b.add_argument("--data-seed", type=int, help="split seed (default: the checkpoint's)")
    b.add_argument("--num-random", type=int, default=SearchConfig.num_random,
                   help="random subnets that seed the search (default %(default)s)")
    b.add_argument("--generations", type=int, default=SearchConfig.generations,
                   help="evolutionary search generations (default %(default)s)")
    b.add_argument("--population", type=int, default=SearchConfig.population,
                   help="evolutionary search population (default %(default)s)")
    b.add_argument("--min-size", type=int, default=SearchConfig.min_size, help="served subnets, at least")
    b.add_argument("--max-size", type=int, default=SearchConfig.max_size, help="served subnets, at most")
    b.add_argument("--search-calibration-images", type=int, default=SearchConfig.search_calibration_images,
                   help="images that calibrate each candidate's SubnetNorm during search (default %(default)s)")
    b.add_argument("--calibration-images", type=int, default=2000, help="for the served subnets")
    b.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                   help="batch sizes of the latency table, comma-separated (default %(default)s)")
    b.add_argument("--half", choices=("auto", "yes", "no"), default="auto",
                   help="float16 weights in the checkpoint (auto: when float32 would exceed 8 MB)")
    b.add_argument("--seed", type=int, default=0,
                   help="seed of the search and of the calibration images (default %(default)s)")
    _profile_args(b)
    o = sub.add_parser("import-ofa", help="turn once-for-all weights (OFA-MobileNetV3 / OFA-ResNet50) into a "
                                          "superserve checkpoint for `zoo build`",
                       description="Reads an OFA checkpoint file you provide (nothing is downloaded) into the "
                                   "architecture of the `ofa` package, checks every tensor, and writes a superserve "
                                   "checkpoint serving it at --image-size. Then build its zoo with `superserve zoo "
                                   "build --ckpt OUT --data folder:PATH`.")
    o.add_argument("--supernet", required=True, choices=("ofa_mbv3", "ofa_mbv3_w1.0", "ofa_resnet50"),
                   help="ofa_mbv3 = ofa_mbv3_d234_e346_k357_w1.2; ofa_mbv3_w1.0 = ..._w1.0; "
                        "ofa_resnet50 = ofa_resnet50_d=0+1+2_e=0.2+0.25+0.35_w=0.65+0.8+1.0")
    src = o.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="the OFA checkpoint file (a dict with 'state_dict', or the dict)")
    src.add_argument("--random-init", action="store_true",
                     help="randomly initialised weights (seeded; chance accuracy): for trying the pipeline")
    o.add_argument("--seed", type=int, default=0, help="of --random-init")
    o.add_argument("--image-size", type=int, default=224, help="input side the zoo is built and served at")
    o.add_argument("--num-classes", type=int, default=1000,
                   help="classes of the OFA classifier head (default %(default)s)")
    o.add_argument("--out", required=True, type=Path, help="superserve checkpoint to write")
    r = sub.add_parser("reprofile", help="re-measure a zoo's latency tables on this host (no retraining)")
    r.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    r.add_argument("--ckpt", type=Path, default=DEFAULT_CHECKPOINT,
                   help="supernet checkpoint (default: the shipped one)")
    r.add_argument("--out", type=Path, help="write here instead of overwriting --zoo")
    _profile_args(r)
    for name, text in (("check", "is the zoo's latency table valid on this host and for this checkpoint?"),
                       ("show", "print the zoo table (and any check problems)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
        c.add_argument("--ckpt", type=Path, help="also verify this checkpoint's sha256 against the zoo")
        c.add_argument("--threads", type=int, help="threads the server will use (default: the zoo's)")
        c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    pl = sub.add_parser("plot", help="write the front and latency-table PNGs of a zoo")
    pl.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    pl.add_argument("--out-dir", type=Path, help="default: the zoo's directory")


def _profile_config(args: argparse.Namespace, batch_sizes=DEFAULT_BATCH_SIZES) -> ProfileConfig:
    return ProfileConfig(batch_sizes=tuple(batch_sizes), threads=args.threads, min_repeats=args.min_repeats,
                         max_repeats=args.max_repeats, target_s=args.target_s, passes=args.passes)


def write_plots(zoo: Zoo, zoo_path: Path, out_dir: Path | None = None) -> list[Path]:
    from training.plots import plot_front, plot_latency_tables
    from training.zoo_build import candidates_file

    out_dir = out_dir or zoo_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = zoo_path.stem
    return [plot_front(zoo, out_dir / f"{stem}_front.png", candidates_file(zoo_path)),
            plot_latency_tables(zoo, out_dir / f"{stem}_latency.png")]


def show(zoo: Zoo) -> str:
    lines = [f"zoo: {len(zoo.entries)} subnets, dataset {zoo.dataset}, host {zoo.host.processor} / "
             f"{zoo.host.device} / {zoo.host.threads} thread(s) / torch {zoo.host.torch_version}",
             f"{'subnet':<16}{'val %':>7}{'test %':>8}{'params':>10}{'MMACs':>8}" +
             "".join(f"{'b' + str(b) + ' ms':>10}" for b in zoo.batch_sizes)]
    for e in zoo.entries:
        test = f"{100 * e.test_accuracy:.2f}" if e.test_accuracy is not None else "-"
        lines.append(f"{e.subnet_id:<16}{100 * e.accuracy:>7.2f}{test:>8}{e.params:>10}{e.flops / 1e6:>8.1f}" +
                     "".join(f"{e.latency_ms[b].median_ms:>10.2f}" for b in zoo.batch_sizes))
    return "\n".join(lines)


def import_ofa(args: argparse.Namespace) -> int:
    from supernet.checkpoint import file_sha256, save_checkpoint
    from supernet.ofa_net import load_ofa_weights, random_ofa_supernet
    from supernet.ofa_space import named_space

    if args.image_size < 8 or args.num_classes < 1:
        raise ValueError("--image-size must be >= 8 and --num-classes >= 1")
    space = named_space(args.supernet, args.image_size, args.num_classes)
    if args.random_init:
        net = random_ofa_supernet(space, args.seed)
        meta = {"source": "ofa", "ofa_supernet": args.supernet, "random_init": True, "seed": args.seed}
    else:
        net = load_ofa_weights(args.weights, space)
        meta = {"source": "ofa", "ofa_supernet": args.supernet, "random_init": False,
                "ofa_weights": str(args.weights), "ofa_weights_sha256": file_sha256(args.weights)}
    save_checkpoint(net, args.out, meta=meta)
    params = sum(p.numel() for p in net.parameters())
    print(f"wrote {args.out}: {args.supernet} ({params / 1e6:.1f}M parameters, "
          f"{'random weights' if args.random_init else args.weights}) at {args.image_size}x{args.image_size}; "
          f"next: superserve zoo build --ckpt {args.out} --data folder:PATH --out ZOO.json")
    return 0


def run(args: argparse.Namespace) -> int:
    from training import zoo_build

    try:
        if args.zoo_command == "build":
            if args.threads < 1:
                raise ValueError("--threads must be >= 1")
            sizes = tuple(int(b) for b in args.batch_sizes.split(","))
            search_cfg = SearchConfig(num_random=args.num_random, generations=args.generations,
                                      population=args.population, min_size=args.min_size, max_size=args.max_size,
                                      search_calibration_images=args.search_calibration_images, seed=args.seed)
            out_ckpt = args.out_ckpt or args.out.with_name("supernet.pt")
            half = {"auto": None, "yes": True, "no": False}[args.half]
            result = zoo_build.build_zoo(args.ckpt, args.out, out_ckpt, data_spec=args.data, data_seed=args.data_seed,
                                         search_cfg=search_cfg, profile_cfg=_profile_config(args, sizes),
                                         calibration_images=args.calibration_images, half_weights=half,
                                         progress=not args.quiet, device=args.device,
                                         log=lambda m: print(m, file=sys.stderr))
            print(show(result.zoo))
            for path in write_plots(result.zoo, args.out):
                print(f"wrote {path}")
            print(f"wrote {args.out} and {out_ckpt}")
            return 0
        if args.zoo_command == "import-ofa":
            return import_ofa(args)
        if args.zoo_command == "reprofile":
            zoo = zoo_build.reprofile(args.zoo, args.ckpt, _profile_config(args), args.out, args.device,
                                      progress=not args.quiet)
            print(show(zoo))
            print(f"wrote {args.out or args.zoo}")
            return 0
        zoo = Zoo.load(args.zoo)
        if args.zoo_command == "plot":
            for path in write_plots(zoo, args.zoo, args.out_dir):
                print(f"wrote {path}")
            return 0
        problems = zoo_build.check(zoo, args.ckpt, args.device, args.threads)
        if args.zoo_command == "show":
            print(show(zoo))
        for warning in zoo_build.latency_warnings(zoo):
            print(f"warning: {warning}")
        for problem in problems:
            print(f"STALE: {problem}" if "host" in problem else f"problem: {problem}")
        if args.zoo_command == "check" and not problems:
            print(f"ok: {args.zoo} matches this host" + (f" and {args.ckpt}" if args.ckpt else ""))
        return 1 if (problems and args.zoo_command == "check") else 0
    except (ZooError, CheckpointError, DataError, ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
        print(f"error: {exc}", file=sys.stderr)
        return 2
