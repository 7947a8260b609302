"""Build, re-profile and check the served zoo (the functions behind `superserve zoo ...`).

build: trained checkpoint -> search (random + evolutionary, val accuracy vs MACs) -> Pareto selection -> calibrate the
selected subnets on 2,000 train images (after the optional float16 round trip, so the statistics match the weights
actually served) -> validation and test accuracy -> latency tables on this host -> calibrated checkpoint (statistics
of the served subnets only) + zoo JSON (+ the candidates JSON for plots).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supernet.checkpoint import file_sha256, load_checkpoint, round_trip_half, save_checkpoint
from supernet.contract import ServableSupernet
from supernet.norm import NormTable
from superserve.zoo import Zoo, ZooEntry
from training.calibrate import calibrate_subnets
from superserve.data import DatasetSplits, load_dataset
from superserve.profiler import (ProfileConfig, host_fingerprint, monotone_violations, profile_subnets,
                                resolve_device)
from training.search import Candidate, SearchConfig, search, select_front
from training.trainer import evaluate

HALF_WEIGHTS_ABOVE_BYTES = 8_000_000  # store float16 weights when float32 ones would exceed this
# OFA's ImageNet networks were trained on inputs normalised with these (torchvision's ImageNet statistics).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BuildResult:
    zoo: Zoo
    candidates: list[Candidate]
    checkpoint: Path


def dataset_for_checkpoint(data: dict[str, Any], spec: str | None = None, seed: int | None = None
                           ) -> DatasetSplits:
    """The dataset (and split seed) the checkpoint was trained on, unless overridden.

    An OFA supernet (imported with `superserve zoo import-ofa`) names no dataset: `spec` is required, and the images
    are normalised with ImageNet's mean and std, as OFA trained them (not with the folder's own statistics)."""
    meta = data.get("meta", {})
    family = data["space"].get("family", "superserve")
    if family != "superserve" and not (spec or meta.get("data") or meta.get("dataset")):
        raise ValueError(f"a {family} supernet needs --data (e.g. folder:PATH, an ImageNet-style folder)")
    spec = spec or meta.get("data") or meta.get("dataset") or "mnist5k"
    seed = meta.get("data_seed", 0) if seed is None else seed
    size = data["space"]["image_size"]
    splits = load_dataset(spec, seed=seed, image_size=size)
    if family != "superserve":
        if splits.in_channels != data["space"]["in_channels"]:
            raise ValueError(f"{spec}: {splits.in_channels}-channel images, the {family} supernet takes "
                             f"{data['space']['in_channels']}")
        splits = renormalise(splits, IMAGENET_MEAN, IMAGENET_STD)
    return splits


def renormalise(splits: DatasetSplits, mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetSplits:
    """The same splits normalised with (mean, std) instead of the train split's own statistics."""
    old_m, old_s = (torch.tensor(v).view(1, -1, 1, 1) for v in (splits.mean, splits.std))
    new_m, new_s = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))

    def redo(x: torch.Tensor) -> torch.Tensor:
        return ((x * old_s + old_m) - new_m) / new_s

    return dataclasses.replace(splits, train_x=redo(splits.train_x), val_x=redo(splits.val_x),
                               test_x=redo(splits.test_x), mean=tuple(mean), std=tuple(std))


def normalization_meta(splits: DatasetSplits) -> dict[str, Any]:
    """What the server needs to prepare raw images exactly as training did."""
    return {"mean": list(splits.mean), "std": list(splits.std), "raw_max": splits.raw_max}


def build_zoo(ckpt_path: str | Path, zoo_path: str | Path, out_ckpt: str | Path, *, data_spec: str | None = None,
              data_seed: int | None = None, search_cfg: SearchConfig = SearchConfig(),
              profile_cfg: ProfileConfig = ProfileConfig(), calibration_images: int = 2000,
              half_weights: bool | None = None, progress: bool = True, log=print, device: str = "cpu"
              ) -> BuildResult:
    """`device` runs search, calibration, evaluation and profiling there (cuda: the zoo's host names the GPU)."""
    dev = resolve_device(device)
    net, data = load_checkpoint(ckpt_path)
    net.norm_table = NormTable()  # training-time statistics (if any) are not the served ones
    splits = dataset_for_checkpoint(data, data_spec, data_seed)
    n_params = sum(p.numel() for p in net.parameters())
    half = n_params * 4 > HALF_WEIGHTS_ABOVE_BYTES if half_weights is None else half_weights
    if half:
        round_trip_half(net)  # search, calibrate and measure the weights that will be served
    net.to(dev)
    log(f"searching: {search_cfg.num_random} random + {search_cfg.generations}x{search_cfg.population} "
        f"evolutionary candidates (val split, {len(splits.val_y)} images)")
    candidates = search(net, splits, search_cfg, progress=progress)
    chosen = select_front(candidates, search_cfg.min_size, search_cfg.max_size)
    log(f"{len(candidates)} candidates -> {len(chosen)} selected; calibrating on {calibration_images} images")
    subnets = [c.config for c in chosen]
    images, _ = splits.calibration_subset(calibration_images, seed=0)
    calibrate_subnets(net, subnets, images, progress=progress)
    net.eval()
    val = {s.subnet_id: evaluate(net, s, splits.val_x, splits.val_y) for s in subnets}
    test = {s.subnet_id: evaluate(net, s, splits.test_x, splits.test_y) for s in subnets}
    tables = profile_subnets(net, subnets, profile_cfg, progress=progress)
    net.to("cpu")  # checkpoints hold CPU tensors; the statistics below too
    net.norm_table.stats = {sid: {i: (m.cpu(), v.cpu()) for i, (m, v) in layers.items()}
                            for sid, layers in net.norm_table.stats.items()}
    meta = {**data.get("meta", {}), "dataset": splits.spec, "data_seed": splits.seed,
            "normalization": normalization_meta(splits), "served_subnets": [s.subnet_id for s in subnets],
            "source_checkpoint_sha256": file_sha256(ckpt_path), "half_weights": half}
    meta.pop("history", None)
    save_checkpoint(net, out_ckpt, meta=meta, half_weights=half)  # statistics of the served subnets only
    entries = []
    for cand in chosen:
        sid = cand.subnet_id
        entries.append(ZooEntry(cand.config, val[sid], cand.params, cand.macs, tables[sid], test[sid]))
    entries.sort(key=lambda e: (e.latency_ms[min(e.latency_ms)].median_ms, e.flops))
    zoo = Zoo(net.space, tuple(entries), host_fingerprint(dev, profile_cfg.threads),
              dataset=splits.spec, checkpoint_sha256=file_sha256(out_ckpt))
    zoo.save(zoo_path)
    candidates_path = candidates_file(zoo_path)
    candidates_path.write_text(json.dumps({"candidates": [c.to_dict() for c in candidates],
                                           "selected": [c.subnet_id for c in chosen]}, indent=1))
    for e in zoo.entries:
        bad = monotone_violations(e.latency_ms)
        if bad:
            log(f"warning: {e.subnet_id}: latency drops at batch sizes {bad} (noisy host?)")
    return BuildResult(zoo, candidates, Path(out_ckpt))


def candidates_file(zoo_path: str | Path) -> Path:
    zoo_path = Path(zoo_path)
    return zoo_path.with_name(zoo_path.stem + "_candidates.json")


def load_for_zoo(zoo: Zoo, ckpt_path: str | Path, map_location: str = "cpu") -> ServableSupernet:
    net, _ = load_checkpoint(ckpt_path, space=zoo.space, map_location=map_location)
    missing = [sid for sid in zoo.subnet_ids if sid not in net.norm_table]
    if missing:
        raise ValueError(f"{ckpt_path} has no statistics for served subnets {missing}; rebuild with `zoo build`")
    return net


def reprofile(zoo_path: str | Path, ckpt_path: str | Path, profile_cfg: ProfileConfig = ProfileConfig(),
              out_path: str | Path | None = None, device: str = "cpu", progress: bool = True) -> Zoo:
    """Re-measure the latency tables of an existing zoo on this host (on `device`: cpu or cuda); configs and
    accuracies are kept."""
    resolve_device(device)
    zoo = Zoo.load(zoo_path)
    net = load_for_zoo(zoo, ckpt_path, device)
    subnets = [e.config for e in zoo.entries]
    cfg = ProfileConfig(**{**profile_cfg.__dict__, "batch_sizes": zoo.batch_sizes})
    tables = profile_subnets(net, subnets, cfg, progress=progress)
    new = zoo.with_latencies(tables, host_fingerprint(torch.device(device), cfg.threads))
    new = type(new)(new.space, tuple(sorted(new.entries, key=lambda e: e.latency_ms[min(e.latency_ms)].median_ms)),
                    new.host, new.dataset, file_sha256(ckpt_path))
    new.save(out_path or zoo_path)
    return new


def latency_warnings(zoo: Zoo, tolerance: float = 0.25) -> list[str]:
    """Tables where a bigger batch measured much faster than a smaller one (noise on a busy host; not fatal)."""
    out = []
    for e in zoo.entries:
        bad = monotone_violations(e.latency_ms, tolerance)
        if bad:
            out.append(f"{e.subnet_id}: latency falls by >{tolerance:.0%} at batch sizes {bad}")
    return out


def check(zoo: Zoo, ckpt_path: str | Path | None = None, device: str = "cpu", threads: int | None = None
          ) -> list[str]:
    """Problems that make the zoo's numbers untrustworthy here (empty list: all good): a latency table from another
    host (CPU model, device, threads or torch version) or a checkpoint other than the one the zoo describes."""
    problems = []
    here = host_fingerprint(resolve_device(device), threads if threads is not None else zoo.host.threads)
    if not zoo.host_matches(here):
        diffs = [f"{k}: zoo {v!r} vs here {here.__dict__[k]!r}" for k, v in zoo.host.__dict__.items()
                 if here.__dict__[k] != v]
        problems.append("latency table measured on another host (" + "; ".join(diffs) +
                        "): run `superserve zoo reprofile`")
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            problems.append(f"checkpoint {ckpt_path} does not exist")
        elif zoo.checkpoint_sha256 and file_sha256(ckpt_path) != zoo.checkpoint_sha256:
            problems.append(f"checkpoint {ckpt_path} is not the one this zoo describes (sha256 differs)")
    return problems
