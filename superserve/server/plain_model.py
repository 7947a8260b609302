"""A plain exported model (no supernet) served as a one-subnet zoo, so that a user's existing model can sit in the
repository beside a supernet and be served by name over both doors.

The format is the one Triton's PyTorch backend and TorchServe take: a TorchScript file (`torch.jit.save`), named
`model.pt`, beside a small declaration `model.json` (Triton's config.pbtxt says the same things). torch's successor
format is read too: a `torch.export` archive (`torch.export.save`, `model.pt2`, exported with a dynamic batch
dimension), with "format": "torch_export".

    {"format": "torchscript",          # or "torch_export"; neither unpickles code from the file
     "input_shape": [1, 28, 28],       # [C, S, S] of one image (square, as the protocol's INPUT tensor)
     "num_classes": 10,                # the model maps [B, C, S, S] float32 to [B, num_classes] logits
     "accuracy": 0.97,                 # its validation top-1 as you measured it: reported in responses
     "normalization": {"mean": [0.1307], "std": [0.3081], "raw_max": 255},   # optional (default 0, 1, 255):
                                       # how IMAGE / IMAGE_BYTES pixels become input; INPUT is passed as is
     "max_batch_size": 32}             # optional (default 32): batches up to this are profiled and formed

A pickled `nn.Module` (`torch.save(model)`) is refused: loading one runs whatever code the file names. Export it with
`torch.jit.script(model).save("model.pt")` (or `torch.jit.trace`).

At load the model is checked (one forward on zeros must give [1, num_classes] finite logits) and its latency table is
measured on this host at batch sizes 1, 2, 4, ... up to `max_batch_size`, once per host: the table is cached beside
the supernets' re-profiles (keyed by both files' bytes and the host fingerprint). The zoo has one entry; its subnet
config is the space's smallest, a placeholder that only gives the entry an id (the model runs whole, whatever the
config). `--workers N` (process pools load a supernet checkpoint) refuses a plain model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supernet.config import SubnetConfig, SupernetSpace
from superserve.zoo import HostFingerprint, LatencyStats, Zoo, ZooEntry

MODEL_FILE, DECLARATION_FILE = "model.pt", "model.json"
MODEL_FILES = {"torchscript": MODEL_FILE, "torch_export": "model.pt2"}  # format -> the model's file name
PLAIN_FAMILY = "exported"  # SupernetSpace.family of a plain model's zoo (no supernet implementation serves it)
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class PlainDeclaration:
    """What `model.json` declares."""

    in_channels: int
    image_size: int
    num_classes: int
    accuracy: float
    format: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    raw_max: float
    max_batch_size: int

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        sizes = [1]
        while sizes[-1] * 2 <= self.max_batch_size:
            sizes.append(sizes[-1] * 2)
        return tuple(sizes)


def is_plain_model(directory: Path) -> bool:
    return (Path(directory) / DECLARATION_FILE).is_file()


def read_declaration(path: Path) -> PlainDeclaration:
    """`model.json` -> PlainDeclaration (ValueError naming the field that is wrong)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")  # noqa: TRY004 - bad file content, not a bad argument
    form = data.get("format", "torchscript")
    if form not in MODEL_FILES:
        raise ValueError(f"{path}: format {form!r} is not supported; export the model with "
                         f"torch.jit.script(model).save('{MODEL_FILE}') and say \"torchscript\", or with "
                         f"torch.export.save(...) to '{MODEL_FILES['torch_export']}' and say \"torch_export\"")

    def positive_int(key: str, default: int | None = None) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
        return value

    shape = data.get("input_shape")
    if (not isinstance(shape, list) or len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                               for v in shape)):
        raise ValueError(f"{path}: input_shape must be [C, S, S] (positive integers), got {shape!r}")
    if shape[1] != shape[2]:
        raise ValueError(f"{path}: input_shape {shape}: only square images are served (the INPUT tensor is "
                         f"[B, C, S, S])")
    accuracy = data.get("accuracy")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"{path}: accuracy must be the model's measured top-1 as a fraction in [0, 1] (responses "
                         f"report it; min_accuracy hints compare with it), got {accuracy!r}")
    norm = data.get("normalization", {})
    channels = shape[0]
    try:
        mean = tuple(float(v) for v in norm.get("mean", [0.0] * channels))
        std = tuple(float(v) for v in norm.get("std", [1.0] * channels))
        raw_max = float(norm.get("raw_max", 255.0))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{path}: normalization must be {{\"mean\": [...], \"std\": [...], \"raw_max\": N}}, got "
                         f"{norm!r}") from None
    if len(mean) != channels or len(std) != channels or not all(math.isfinite(v) for v in mean + std) \
            or min(std) <= 0 or not raw_max > 0:
        raise ValueError(f"{path}: normalization needs {channels} finite mean(s) and positive std(s) and raw_max > 0")
    return PlainDeclaration(channels, shape[1], positive_int("num_classes"), float(accuracy), form, mean, std, raw_max,
                            positive_int("max_batch_size", DEFAULT_MAX_BATCH))


class PlainNet:
    """A TorchScript module behind the supernet's interface as the workers and the profiler use it: `net(x, subnet)`
    (the subnet is ignored), `space`, `parameters()`, `eval()` / `train()`."""

    def __init__(self, module: Any, space: SupernetSpace, device: torch.device, fixed_mode: bool = False) -> None:
        self.module, self.space = module, space
        self.fixed_mode = fixed_mode  # a torch.export program: its mode was fixed at export (train()/eval() raise)
        self._where = [torch.empty(0, device=device)]  # what parameters() yields for a module without any

    def __call__(self, x: torch.Tensor, subnet: Any = None) -> torch.Tensor:
        return self.module(x)

    def parameters(self) -> Any:
        params = list(self.module.parameters())
        return iter(params or self._where)  # the pools read the device from the first one

    @property
    def training(self) -> bool:
        return False if self.fixed_mode else bool(self.module.training)

    def eval(self) -> PlainNet:
        if not self.fixed_mode:
            self.module.eval()
        return self

    def train(self, mode: bool = True) -> PlainNet:
        if not self.fixed_mode:
            self.module.train(mode)
        return self


def load_module(path: Path, device: torch.device, form: str = "torchscript") -> Any:
    """The TorchScript module (or torch.export program's module) in `path` (ValueError saying what the file is
    instead)."""
    if not Path(path).is_file():
        raise ValueError(f"{path} does not exist (a plain model directory holds {MODEL_FILES[form]} and "
                         f"{DECLARATION_FILE})")
    if form == "torch_export":
        try:
            module = torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 - whatever the archive's reader raises
            raise ValueError(f"{path} is not a torch.export archive: {str(exc).splitlines()[0][:200]}") from None
        return module.to(device)  # an exported program has no train/eval mode to set
    try:
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; it is still what Triton loads
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError or pickle errors here
        hint = (" (a torch.save'd module or state dict? export it with torch.jit.script(model).save(...))"
                if _is_zip_pickle(path) else "")
        raise ValueError(f"{path} is not a TorchScript file{hint}: {str(exc).splitlines()[0][:200]}") from None
    module.eval()
    return module


def _is_zip_pickle(path: Path) -> bool:
    """A torch.save archive has data.pkl but no code/ directory (TorchScript archives have both)."""
    import zipfile

    try:
        names = zipfile.ZipFile(path).namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("data.pkl") for n in names) and not any("/code/" in n for n in names)


@torch.inference_mode()
def check_output(net: PlainNet, decl: PlainDeclaration, device: torch.device, where: Path) -> None:
    """One forward on zeros at batch 1: [1, num_classes] finite logits, or ValueError saying what came instead."""
    x = torch.zeros(1, decl.in_channels, decl.image_size, decl.image_size, device=device)
    try:
        out = net(x)
    except Exception as exc:  # noqa: BLE001 - the model's own error, reported at load instead of per call
        raise ValueError(f"{where}: a forward pass on zeros of [1, {decl.in_channels}, {decl.image_size}, "
                         f"{decl.image_size}] failed: {str(exc).splitlines()[0][:200]}"
                         + (" (exported for another batch size? export with a dynamic batch dimension)"
                            if decl.format == "torch_export" else "")) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, decl.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{where}: the model returns {got} for one image; {DECLARATION_FILE} declares "
                         f"num_classes {decl.num_classes} (expected (1, {decl.num_classes}) logits)")
    if not torch.isfinite(out).all():
        raise ValueError(f"{where}: the model's output on zeros is not finite")


def plain_space(decl: PlainDeclaration) -> SupernetSpace:
    return SupernetSpace(in_channels=decl.in_channels, image_size=decl.image_size, num_classes=decl.num_classes,
                         family=PLAIN_FAMILY)


def cache_path(directory: Path, host: HostFingerprint) -> Path:
    """Where this host's latency table of the plain model in `directory` lives (the supernets' cache directory)."""
    h = hashlib.sha256()
    for name in (*MODEL_FILES.values(), DECLARATION_FILE):
        if (Path(directory) / name).is_file():
            h.update(name.encode() + (Path(directory) / name).read_bytes())
    h.update(json.dumps(host.__dict__, sort_keys=True).encode())
    root = Path(os.environ.get("SUPERSERVE_CACHE", Path.home() / ".cache" / "superserve"))
    return root / f"plain-{h.hexdigest()[:16]}.json"


def one_subnet_zoo(net: PlainNet, decl: PlainDeclaration, host: HostFingerprint, table: dict[int, LatencyStats]
                   ) -> Zoo:
    space = plain_space(decl)
    params = sum(p.numel() for p in net.module.parameters())
    # flops 0: not known for an opaque module (nothing in serving reads it)
    entry = ZooEntry(SubnetConfig.min(space), decl.accuracy, params, 0, table)
    return Zoo(space, (entry,), host, dataset="", checkpoint_sha256="")


def load_plain_model(directory: Path, device: torch.device, threads: int,
                     say: Any = lambda _text: None) -> tuple[PlainNet, Zoo, PlainDeclaration, Path, bool]:
    """(model, its one-subnet zoo for this host, declaration, table cache path, whether the table was cached) of the
    plain model in `directory`; ValueError naming the problem."""
    from superserve.profiler import device_name
    from superserve.server.profiling import profile_zoo

    directory = Path(directory)
    decl = read_declaration(directory / DECLARATION_FILE)
    model_file = directory / MODEL_FILES[decl.format]
    net = PlainNet(load_module(model_file, device, decl.format), plain_space(decl), device,
                   fixed_mode=decl.format == "torch_export")
    check_output(net, decl, device, model_file)
    host = HostFingerprint.current(device=device_name(device), threads=threads)
    cached = cache_path(directory, host)
    if cached.is_file():
        try:
            zoo = Zoo.load(cached)
            if zoo.entries[0].accuracy == decl.accuracy and zoo.host_matches(host):
                return net, zoo, decl, cached, True
        except ValueError:
            pass  # a damaged cache file: profile again
    say(f"profiling the plain model {directory} on this host at batch sizes {list(decl.batch_sizes)} (once; cached "
        f"in {cached})")
    placeholder = {b: LatencyStats(1.0, 1.0) for b in decl.batch_sizes}
    try:
        zoo = profile_zoo(net, one_subnet_zoo(net, decl, host, placeholder), host, progress=False)
    except Exception as exc:  # noqa: BLE001 - e.g. a model exported for batch 1 only
        raise ValueError(f"{model_file}: running batches of {list(decl.batch_sizes)} failed ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); export the model with a dynamic batch dimension or "
                         f"lower max_batch_size") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    zoo.save(cached)
    return net, zoo, decl, cached, False
