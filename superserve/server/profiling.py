"""Re-profile a zoo at server start when its latency table does not fit this host, with a per-host cache.

Two checks decide it. The fingerprint (CPU model, device, threads, torch build) catches other hardware. A spot check
of the speed catches the same fingerprint running at another speed: virtual machines report generic model names
("AMD EPYC") over hosts whose forward passes differ by 2-4x (nested virtualisation, clock, neighbours), and a table
off by that much makes every slack computation wrong.

The measuring itself is `superserve.profiler.profile_subnets` (the same code `superserve zoo build/reprofile` uses,
with a progress bar); this module only decides where the re-profiled copy lives: ~/.cache/superserve (or
$SUPERSERVE_CACHE), keyed by the zoo file's bytes and this host's fingerprint, so the next start here is instant and the
shipped zoo file is never modified.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from superserve.zoo import HostFingerprint, Zoo

# Re-profile when the table's batch-1 latencies are off by more than this factor either way. Wide enough that a
# busy-but-same host does not trigger a re-profile (online correction absorbs 10-30%), narrow enough to catch another
# machine behind the same model name.
SPEED_TOLERANCE = 1.5


@dataclass(frozen=True)
class SpeedCheck:
    """Measured over profiled batch-1 latency, the median over the zoo's subnets (1.0 = the table fits)."""

    ratio: float
    subnets: int

    def fits(self, tolerance: float = SPEED_TOLERANCE) -> bool:
        return 1.0 / tolerance <= self.ratio <= tolerance


@torch.inference_mode()
def check_speed(net: Any, zoo: Zoo, sample: torch.Tensor, warm_up: bool = True) -> SpeedCheck:
    """Run every subnet twice at batch 1 (the first run is the warm-up the workers need anyway) and compare the second
    with the table. One sample per subnet is noisy, but the median over a dozen subnets is not, and the decision is
    about factors of 1.5, not percents. `warm_up=False` (a second check, to confirm the first): time each subnet
    once, since the first check warmed them all up."""
    ratios = []
    sync = torch.cuda.synchronize if sample.device.type == "cuda" else (lambda: None)  # GPU kernels run async
    for entry in zoo.entries:
        if warm_up:
            net(sample, entry.config)
            sync()
        t0 = time.perf_counter()
        net(sample, entry.config)
        sync()
        measured_ms = (time.perf_counter() - t0) * 1e3
        ratios.append(measured_ms / zoo.latency_ms(entry.subnet_id, 1, "median"))
    return SpeedCheck(statistics.median(ratios), len(ratios))


def profile_zoo(net: Any, zoo: Zoo, host: HostFingerprint, progress: bool = True) -> Zoo:
    """The same zoo with latencies measured here, at `host.threads` torch threads, on the device `net` is on (CUDA:
    synchronised per forward by `superserve.profiler`)."""
    from superserve.profiler import profile_subnets

    tables = profile_subnets(net, [e.config for e in zoo.entries], start_profile_config(zoo, host.threads),
                             progress=progress)
    return zoo.with_latencies(tables, host)


def start_profile_config(zoo: Zoo, threads: int) -> Any:
    """A lighter profile than `superserve zoo build`'s, since the server waits for it: one warm-up forward per cell
    (not 2; batch 1 ran twice in the speed check already), at least 5 timed ones (not 7), 0.5 s of timed work per
    cell (not 1 s). On a vCPU 7.8x slower than the shipped table's host the re-profile took 168 s instead of about
    210 s (most of it at batch 32 and 64, where one forward of the big subnets takes seconds), with the same medians
    (median ratio 1.00 over the 84 cells); online correction refines the table while serving. Two passes through the
    cells (not 3): each pass warms every cell up once more."""
    from superserve.profiler import ProfileConfig

    return ProfileConfig(batch_sizes=zoo.batch_sizes, threads=threads, warmup=1, min_repeats=5, target_s=0.5,
                         passes=2)


def cache_path(zoo_path: Path, host: HostFingerprint) -> Path:
    """Where the re-profiled copy of `zoo_path` for `host` lives."""
    digest = hashlib.sha256(zoo_path.read_bytes() + json.dumps(host.__dict__, sort_keys=True).encode()).hexdigest()
    root = Path(os.environ.get("SUPERSERVE_CACHE", Path.home() / ".cache" / "superserve"))
    return root / f"zoo-{digest[:16]}.json"


# --- the background re-profile (issue 20: first answer within 3 s on a host of any speed) -------------------------
def scaled_for_host(zoo: Zoo, speed: SpeedCheck) -> Zoo:
    """The interim table a server starts with when the spot check finds the table off: every latency scaled by the
    measured median ratio (one factor for all subnets and batch sizes: what a dozen batch-1 forwards can tell).
    Online correction refines it per subnet while the background re-profile runs."""
    return zoo.scaled(speed.ratio)


def reprofile_in_subprocess(zoo_path: Path, checkpoint: Path, host: HostFingerprint, out: Path, device: str = "cpu",
                            on_start: Callable[[subprocess.Popen], None] | None = None) -> Zoo:
    """Re-profile `zoo_path` for `host` in a child process (`python -m superserve.server.profiling`), write it to `out`
    (atomically) and return it. A child, not a thread: the serving process's GIL and event loop stay free, and
    stopping the server ends it. Raises RuntimeError with the child's last words if it fails."""
    cmd = [sys.executable, "-m", "superserve.server.profiling", "--zoo", str(zoo_path), "--checkpoint",
           str(checkpoint), "--threads", str(host.threads), "--device", device, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if on_start is not None:
        on_start(proc)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"re-profile exited with {proc.returncode}: {err.strip().splitlines()[-1:] or ''}")
    return Zoo.load(out)


def main(argv: list[str] | None = None) -> int:
    """The re-profiling child: profile a zoo's subnets here and write the table (what `reprofile_in_subprocess`
    runs)."""
    from supernet.checkpoint import load_checkpoint
    from superserve.profiler import device_name, resolve_device

    p = argparse.ArgumentParser(description="re-profile a zoo's latency table on this host (background job of "
                                            "`superserve serve`)")
    p.add_argument("--zoo", type=Path, required=True, help="zoo whose latency table is re-profiled")
    p.add_argument("--checkpoint", type=Path, required=True, help="supernet checkpoint the subnets come from")
    p.add_argument("--threads", type=int, default=1, help="torch threads while profiling (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="zoo JSON to write with this host's table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    net, _ = load_checkpoint(args.checkpoint, map_location=device)
    here = HostFingerprint.current(device=device_name(device), threads=args.threads)
    zoo = profile_zoo(net, Zoo.load(args.zoo), here, progress=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(f".tmp{os.getpid()}")
    zoo.save(tmp)
    os.replace(tmp, args.out)  # a server starting meanwhile reads the old cache or the new one, never half of one
    return 0


if __name__ == "__main__":
    sys.exit(main())
