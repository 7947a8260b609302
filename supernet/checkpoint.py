"""Versioned checkpoints: supernet weights + config space + SubnetNorm tables (+ free-form metadata).

Written atomically (temp file, fsync, rename) so an interrupted save never leaves half a file where a good one was.
Loaded with `weights_only=True`: a checkpoint holds tensors and plain containers only, never pickled code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from supernet.config import SubnetConfig, SupernetSpace
from supernet.contract import ServableSupernet
from supernet.families import build_supernet
from supernet.norm import NormTable

CHECKPOINT_FORMAT = "superserve-supernet"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, corrupt, another format or version, or another space."""


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # including KeyboardInterrupt: never leave a half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(net: ServableSupernet, path: str | os.PathLike[str], meta: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, half_weights: bool = False) -> None:
    """Save weights, space, SubnetNorm statistics and calibrated configs. `extra` holds training state
    (optimizer, step, RNG) for `--resume`; `meta` is free-form JSON-able information.

    `half_weights` stores floating-point weights as float16 (half the file); `load_checkpoint` turns them back into
    float32. Calibrate statistics on the round-tripped weights (`round_trip_half`) so they match what is served."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if half_weights:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    stats = {sid: {str(i): torch.stack([m, v]) for i, (m, v) in layers.items()}
             for sid, layers in net.norm_table.stats.items()}
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "space": net.space.to_dict(),
        "state_dict": state,
        "norm_stats": stats,
        "meta": meta or {},
        "extra": extra or {},
    }, path)


def round_trip_half(net: ServableSupernet) -> None:
    """Round every floating-point weight through float16 in place (what a `half_weights` checkpoint will hold)."""
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, validated for format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbled zips and pickles
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a superserve supernet checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}; "
                              f"this superserve reads version {CHECKPOINT_VERSION}")
    return data


def load_checkpoint(path: str | os.PathLike[str], space: SupernetSpace | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[ServableSupernet, dict[str, Any]]:
    """Rebuild the supernet from a checkpoint (the class its space's family names: the native `SuperNet` or
    `OFASupernet`). If `space` is given it must match the checkpoint's.

    Returns (net in eval mode, the checkpoint dict for its meta/extra fields)."""
    data = read_checkpoint(path)
    try:
        ckpt_space = SupernetSpace.from_dict(data["space"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid space: {exc}") from exc
    if space is not None and space != ckpt_space:
        raise CheckpointError(f"{path} was trained for a different space:\n  checkpoint: {ckpt_space}\n"
                              f"  expected:   {space}")
    try:
        net = build_supernet(ckpt_space)
    except ValueError as exc:  # an unknown family
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        net.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the space: {exc}") from exc
    table = NormTable()
    for sid, layers in data.get("norm_stats", {}).items():
        table.stats[sid] = {int(i): (mv[0].clone(), mv[1].clone()) for i, mv in layers.items()}
    net.norm_table = table
    net.to(map_location)
    if str(map_location) != "cpu":
        net.norm_table = NormTable({sid: {i: (m.to(map_location), v.to(map_location)) for i, (m, v) in layers.items()}
                                    for sid, layers in table.stats.items()})
    return net.eval(), data


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint", "file_sha256",
           "atomic_torch_save", "round_trip_half", "SubnetConfig"]
