"""The served zoo: the Pareto subnets, their accuracy and their latency table on one host (no torch here).

This is the contract between the offline path (training/ writes it) and the online path (policies/, the simulator and
the server read it). A zoo file is versioned JSON; loading checks its shape and says what is wrong. The latency table
carries the fingerprint of the host it was measured on, so a table from other hardware is detected rather than
trusted (`Zoo.host_matches`).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from supernet.config import SubnetConfig, SupernetSpace

ZOO_FORMAT_VERSION = 1
LatencyStat = Literal["median", "p99"]


class ZooError(ValueError):
    """A zoo file that cannot be used: wrong version, missing fields, inconsistent table."""


@dataclass(frozen=True)
class LatencyStats:
    """Measured latency of one (subnet, batch size) on the profiling host."""

    median_ms: float  # median over the timed repeats, milliseconds for the whole batch
    p99_ms: float  # 99th percentile over the timed repeats, milliseconds

    def get(self, stat: LatencyStat) -> float:
        return self.median_ms if stat == "median" else self.p99_ms


@dataclass(frozen=True)
class HostFingerprint:
    """What makes a latency table valid: the same CPU/GPU model, core budget and torch build."""

    machine: str  # platform.machine(), e.g. x86_64
    processor: str  # CPU model name (from /proc/cpuinfo when available)
    device: str  # "cpu" or the CUDA device name
    threads: int  # torch intra-op threads used while profiling
    torch_version: str

    @classmethod
    def current(cls, device: str = "cpu", threads: int = 1, torch_version: str | None = None) -> "HostFingerprint":
        if torch_version is None:
            try:
                import torch  # local import: this module must stay importable without torch

                torch_version = torch.__version__.split("+")[0]
            except ImportError:  # pragma: no cover - torch is a dependency
                torch_version = "none"
        return cls(platform.machine(), _cpu_model(), device, threads, torch_version)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class ZooEntry:
    """One served subnet."""

    config: SubnetConfig
    accuracy: float  # top-1 on the validation split, fraction in [0, 1]
    params: int  # parameters of the exported subnet
    flops: int  # multiply-accumulates of one image through the subnet
    latency_ms: Mapping[int, LatencyStats]  # batch size -> measured latency of the whole batch
    test_accuracy: float | None = None  # top-1 on the held-out test split, if measured

    @property
    def subnet_id(self) -> str:
        return self.config.subnet_id

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.latency_ms))


@dataclass(frozen=True)
class Zoo:
    """The served set: Pareto subnets sorted by batch-1 latency, fastest first."""

    space: SupernetSpace
    entries: tuple[ZooEntry, ...]
    host: HostFingerprint
    dataset: str = "mnist5k"
    checkpoint_sha256: str = ""  # of the checkpoint whose weights and SubnetNorm statistics these numbers describe
    version: int = ZOO_FORMAT_VERSION
    _by_id: dict[str, ZooEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ZooError("a zoo needs at least one subnet")
        by_id = {e.subnet_id: e for e in self.entries}
        if len(by_id) != len(self.entries):
            raise ZooError("duplicate subnet ids in zoo")
        sizes = self.entries[0].batch_sizes
        for e in self.entries:
            if e.batch_sizes != sizes:
                raise ZooError(f"subnet {e.subnet_id} profiled at batch sizes {e.batch_sizes}, others at {sizes}")
            if not 0.0 <= e.accuracy <= 1.0:
                raise ZooError(f"subnet {e.subnet_id}: accuracy {e.accuracy} outside [0, 1]")
            e.config.validate(self.space)
        object.__setattr__(self, "_by_id", by_id)

    # --- lookups --------------------------------------------------------------------------------------------------
    @property
    def subnet_ids(self) -> tuple[str, ...]:
        return tuple(e.subnet_id for e in self.entries)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.entries[0].batch_sizes

    def entry(self, subnet_id: str) -> ZooEntry:
        try:
            return self._by_id[subnet_id]
        except KeyError:
            raise KeyError(f"subnet {subnet_id!r} is not in the zoo") from None

    def latency_ms(self, subnet_id: str, batch_size: int, stat: LatencyStat = "p99") -> float:
        """Profiled latency of a batch; batch sizes between profiled points use the next larger profiled size."""
        table = self.entry(subnet_id).latency_ms
        if batch_size in table:
            return table[batch_size].get(stat)
        for b in self.batch_sizes:
            if b >= batch_size:
                return table[b].get(stat)
        raise ValueError(f"batch size {batch_size} exceeds the largest profiled ({self.batch_sizes[-1]})")

    def host_matches(self, other: HostFingerprint) -> bool:
        return self.host == other

    # --- derived zoos ---------------------------------------------------------------------------------------------
    def scaled(self, factor: float) -> "Zoo":
        """The same zoo with every latency multiplied by `factor` (e.g. a GPU-like zoo for the simulator)."""
        entries = tuple(
            replace(e, latency_ms={b: LatencyStats(s.median_ms * factor, s.p99_ms * factor)
                                   for b, s in e.latency_ms.items()})
            for e in self.entries)
        return replace(self, entries=entries)

    def with_latencies(self, tables: Mapping[str, Mapping[int, LatencyStats]], host: HostFingerprint) -> "Zoo":
        """Replace the latency tables (re-profiling on a new host) keeping configs and accuracies."""
        entries = tuple(replace(e, latency_ms=dict(tables[e.subnet_id])) for e in self.entries)
        return replace(self, entries=entries, host=host)

    # --- JSON -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "superserve-zoo",
            "version": self.version,
            "dataset": self.dataset,
            "checkpoint_sha256": self.checkpoint_sha256,
            "host": self.host.__dict__,
            "space": self.space.to_dict(),
            "subnets": [
                {
                    "subnet_id": e.subnet_id,
                    "config": e.config.to_dict(),
                    "accuracy": e.accuracy,
                    "test_accuracy": e.test_accuracy,
                    "params": e.params,
                    "flops": e.flops,
                    "latency_ms": {str(b): {"median": s.median_ms, "p99": s.p99_ms}
                                   for b, s in sorted(e.latency_ms.items())},
                }
                for e in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Zoo":
        if not isinstance(data, dict) or data.get("format") != "superserve-zoo":
            raise ZooError("not a superserve zoo file (missing \"format\": \"superserve-zoo\")")
        if data.get("version") != ZOO_FORMAT_VERSION:
            raise ZooError(f"zoo format version {data.get('version')} is not supported "
                           f"(this superserve reads version {ZOO_FORMAT_VERSION})")
        try:
            space = SupernetSpace.from_dict(data["space"])
            entries = []
            for item in data["subnets"]:
                config = SubnetConfig.from_dict(item["config"])
                if item.get("subnet_id", config.subnet_id) != config.subnet_id:
                    raise ZooError(f"subnet id {item['subnet_id']} does not match its config ({config.subnet_id})")
                latency = {int(b): LatencyStats(float(s["median"]), float(s["p99"]))
                           for b, s in item["latency_ms"].items()}
                test_acc = item.get("test_accuracy")
                entries.append(ZooEntry(config, float(item["accuracy"]), int(item["params"]), int(item["flops"]),
                                        latency, None if test_acc is None else float(test_acc)))
            host = HostFingerprint(**data["host"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ZooError(f"malformed zoo file: missing or wrong field ({exc!r})") from exc
        return cls(space, tuple(entries), host, data.get("dataset", ""), data.get("checkpoint_sha256", ""))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a zoo."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Zoo":
        path = Path(path)
        if not path.is_file():
            raise ZooError(f"zoo file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ZooError(f"zoo file {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def pareto_front(points: Iterable[tuple[str, float, float]]) -> list[str]:
    """Ids of the non-dominated (id, latency, accuracy) points: no other point is at least as fast and as accurate
    and strictly better in one. Returned fastest first."""
    ordered = sorted(points, key=lambda p: (p[1], -p[2]))
    front, best_acc = [], float("-inf")
    for pid, _lat, acc in ordered:
        if acc > best_acc:
            front.append(pid)
            best_acc = acc
    return front
