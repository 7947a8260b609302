"""Re-profile a zoo at server start when its latency table comes from other hardware, with a per-host cache.

The measuring itself is `training.profiling.profile_subnets` (the same code `superserve zoo build/reprofile` uses,
with a progress bar); this module only decides where the re-profiled copy lives: ~/.cache/superserve (or
$SUPERSERVE_CACHE), keyed by the zoo file's bytes and this host's fingerprint, so the next start here is instant and the
shipped zoo file is never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from superserve.zoo import HostFingerprint, Zoo


def profile_zoo(net: Any, zoo: Zoo, host: HostFingerprint, progress: bool = True) -> Zoo:
    """The same zoo with latencies measured here, at `host.threads` torch threads."""
    from training.profiling import ProfileConfig, profile_subnets

    tables = profile_subnets(net, [e.config for e in zoo.entries],
                             ProfileConfig(batch_sizes=zoo.batch_sizes, threads=host.threads), progress=progress)
    return zoo.with_latencies(tables, host)


def cache_path(zoo_path: Path, host: HostFingerprint) -> Path:
    """Where the re-profiled copy of `zoo_path` for `host` lives."""
    digest = hashlib.sha256(zoo_path.read_bytes() + json.dumps(host.__dict__, sort_keys=True).encode()).hexdigest()
    root = Path(os.environ.get("SUPERSERVE_CACHE", Path.home() / ".cache" / "superserve"))
    return root / f"zoo-{digest[:16]}.json"
