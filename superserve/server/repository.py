"""A model repository: one server, several models by name, each with its own queue, policy, workers and metrics,
behind the one gRPC door and the one HTTP door.

Models come from a repository directory in Triton's spirit (`--model-repository DIR`: every `DIR/<name>/` holding
`zoo.json` and a supernet checkpoint, `supernet.pt` or the one `*.pt` there) or from repeated `--model NAME=DIR`.
A directory holding `model.json` instead is a plain exported model (TorchScript `model.pt`, as Triton's PyTorch
backend takes it; plain_model.py): a one-subnet zoo beside the supernets, served, listed, loaded and unloaded alike.
Each model is a whole `Server` without a transport (`Server.start_model`): its own EDF queue and engine, its policy,
its worker pool, its spot check and background re-profile, its records file. `ModelRouter` is the servicer both doors
see: it routes every call by model name and answers the repository extension (index, load, unload).

A model that fails to load (a missing or corrupt file, a checkpoint that does not match its zoo) is reported by name
at start and listed in the index as UNAVAILABLE with the reason; the others serve. Only if none loads does the start
fail. `load` of a loaded model is a no-op; `unload` drains the model (its admitted calls are answered) and frees it;
calls to an unloaded model get NOT_FOUND. Metrics: each model's registry, every series labelled `model=<name>`, on
the one /metrics endpoint.

Not done: per-model versions beyond "1".
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from superserve.server.app import Server, ServeConfig
from superserve.server.calls import INVALID, NOT_FOUND, Refused
from superserve.server.codec import show
from superserve.server.service import InferenceService, ModelState


@dataclass(frozen=True)
class ModelSource:
    name: str
    directory: Path

    @property
    def plain(self) -> bool:
        """A plain exported model (model.json + model.pt), not a supernet and its zoo."""
        from superserve.server.plain_model import is_plain_model

        return is_plain_model(self.directory)

    @property
    def zoo_path(self) -> Path:
        from superserve.server.plain_model import DECLARATION_FILE

        return self.directory / (DECLARATION_FILE if self.plain else "zoo.json")

    @property
    def checkpoint_path(self) -> Path:
        """`supernet.pt`, else the one `*.pt` of the directory (ValueError naming the problem); a plain model's
        `model.pt`."""
        from superserve.server.plain_model import MODEL_FILE, MODEL_FILES

        if self.plain:  # model.pt, or the torch.export archive when that is the one there
            exported = self.directory / MODEL_FILES["torch_export"]
            return exported if exported.is_file() and not (self.directory / MODEL_FILE).is_file() \
                else self.directory / MODEL_FILE
        default = self.directory / "supernet.pt"
        if default.is_file():
            return default
        found = sorted(self.directory.glob("*.pt"))
        if len(found) != 1:
            raise ValueError(f"model {self.name!r}: {self.directory} needs supernet.pt (or exactly one *.pt), found "
                             f"{len(found)}")
        return found[0]


def parse_model_flag(text: str) -> ModelSource:
    """`NAME=DIR` -> ModelSource (ValueError saying what is wrong)."""
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise ValueError(f"--model {text!r}: expected NAME=DIR (a directory with zoo.json and supernet.pt, or a plain "
                         f"model's model.json and model.pt)")
    return ModelSource(name, Path(directory))


def scan_repository(root: Path) -> list[ModelSource]:
    """Every subdirectory of `root` is a model named after it (sorted by name)."""
    if not root.is_dir():
        raise ValueError(f"--model-repository {root}: not a directory")
    return [ModelSource(d.name, d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]


class ModelRouter(InferenceService):
    """The servicer of a repository server: routes by model name to each model's own InferenceService."""

    def __init__(self, server: "RepositoryServer") -> None:  # noqa: D107 - no single model to set up
        self.server = server
        self.response_params = server.config.response_params
        self.engine = server  # the base class's stream handler reads engine.clock()

    @property
    def spec(self) -> Any:  # the first loaded model's (the base class reads it only through model_service)
        units = self.server.units
        return next(iter(units.values())).service.spec if units else None

    def model_service(self, name: str, version: str = "") -> InferenceService:
        unit = self.server.units.get(name)
        if unit is None:
            known = ", ".join(repr(n) for n in self.server.units) or "none"
            why = self.server.failed.get(name)
            if why is not None:
                raise Refused(NOT_FOUND, f"model {show(name)} is not loaded ({why})")
            raise Refused(NOT_FOUND, f"unknown model {show(name)}; this server serves {known}")
        return unit.service.model_service(name, version)

    def repository_index(self) -> list[ModelState]:
        out = []
        for name in self.server.names():
            unit = self.server.units.get(name)
            if unit is not None:
                out.append(ModelState(name, unit.service.spec.version,
                                      "READY" if unit.service.ready else "UNAVAILABLE", ""))
            elif name in self.server.failed:
                out.append(ModelState(name, "", "UNAVAILABLE", self.server.failed[name]))
            else:
                out.append(ModelState(name, "", "UNLOADED", "unloaded"))
        return out

    @property
    def warm(self) -> bool:
        return all(u.service.warm for u in list(self.server.units.values()))

    def wait_warm(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        return all(u.service.wait_warm(max(0.0, deadline - time.monotonic()))
                   for u in list(self.server.units.values()))

    @property
    def ready(self) -> bool:
        """Every loaded model ready (Triton's server readiness), and at least one loaded."""
        units = list(self.server.units.values())
        return bool(units) and all(u.service.ready for u in units)

    # --- the repository extension ---------------------------------------------------------------------------------
    async def load_model(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.server.load, name)

    async def unload_model(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.server.unload, name)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        await self._control(self.load_model, request.model_name, context)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        from tritonclient.grpc import service_pb2 as pb

        await self._control(self.unload_model, request.model_name, context)
        return pb.RepositoryModelUnloadResponse()

    async def _control(self, action: Any, name: str, context: Any) -> None:
        from superserve.server.calls import GRPC_STATUS

        try:
            await action(name)
        except Refused as exc:
            await context.abort(GRPC_STATUS[exc.reason], exc.message)

    def close(self) -> None:
        pass  # each model's service is closed with its model


class _ModelLabelled:
    """A collector over the models' registries: every series gains `model=<name>` (when it has no model label yet)."""

    def __init__(self, server: "RepositoryServer") -> None:
        self.server = server

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for name, unit in list(self.server.units.items()):
            for family in unit.metrics.registry.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for s in family.samples:
                    labels = s.labels if "model" in s.labels else {**s.labels, "model": name}
                    out.samples.append(type(s)(s.name, labels, s.value, s.timestamp, s.exemplar))
        yield from merged.values()


class _RepositoryMetrics:
    """What the transport needs of `Server.metrics`: one registry (the models' series plus the security counters)."""

    def __init__(self, server: "RepositoryServer") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ModelLabelled(server))

    def close(self) -> None:
        pass


class RepositoryServer(Server):
    """Several models behind one transport. `start()` loads every model (reporting failures by name), then serves."""

    def __init__(self, config: ServeConfig, models: list[ModelSource]) -> None:
        super().__init__(config)
        names = [m.name for m in models]
        if not models or len(set(names)) != len(names):
            raise ValueError(f"a model repository needs at least one model and distinct names, got {names}")
        self.sources = {m.name: m for m in models}
        self.units: dict[str, Server] = {}
        self.failed: dict[str, str] = {}  # model name -> why it is not loaded
        self._control = threading.Lock()  # one load/unload at a time

    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def clock(self) -> Any:
        return time.monotonic

    def _unit_config(self, source: ModelSource) -> ServeConfig:
        cfg = self.config
        records = (None if cfg.records_path is None else
                   Path(cfg.records_path).with_name(f"{Path(cfg.records_path).stem}.{source.name}"
                                                    f"{Path(cfg.records_path).suffix}"))
        return replace(cfg, model_name=source.name, zoo_path=source.zoo_path,
                       checkpoint_path=source.checkpoint_path, records_path=records, port=0, metrics_port=None,
                       http_port=None, plain_model_dir=source.directory if source.plain else None)

    def load(self, name: str) -> None:
        """Load model `name` (a no-op if loaded); Refused(NOT_FOUND) for a name not in the repository,
        Refused(INVALID) with the reason when it fails to load."""
        if name not in self.sources:
            raise Refused(NOT_FOUND, f"no model {show(name)} in the repository; it has "
                                     f"{', '.join(repr(n) for n in self.sources)}")
        with self._control:
            if name in self.units:
                return
            unit = None
            try:
                unit = Server(self._unit_config(self.sources[name]))
                unit.start_model()
            except Exception as exc:  # noqa: BLE001 - one bad model must not take the others down
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                self._say(f"superserve: model {name!r} failed to load: {self.failed[name]}")
                raise Refused(INVALID, f"model {show(name)} failed to load: {self.failed[name]}") from None
            self.failed.pop(name, None)
            self.units[name] = unit
            if self._loop is not None:  # loaded while serving: its background work starts now, not after the doors
                unit._start_background_work()

    def unload(self, name: str) -> None:
        """Drain model `name` (its admitted calls are answered) and free it; Refused(NOT_FOUND) if not loaded."""
        with self._control:
            unit = self.units.get(name)
            if unit is None:
                raise Refused(NOT_FOUND, f"model {show(name)} is not loaded")
            unit.engine.drain(30.0)  # refuses new calls from here on; answers the admitted ones
            del self.units[name]  # new calls now get NOT_FOUND
            unit.stop()

    def start(self) -> "RepositoryServer":
        t_start = time.perf_counter()
        self._prepare_in_background()
        for name in self.sources:
            try:
                self.load(name)
            except Refused:
                pass  # reported by name in load()
        if not self.units:
            raise ValueError("no model of the repository could be loaded: " +
                             "; ".join(f"{n}: {why}" for n, why in self.failed.items()))
        first = next(iter(self.units.values()))
        self.zoo, self.table = first.zoo, first.table
        self.metrics = _RepositoryMetrics(self)  # type: ignore[assignment]
        self.service = ModelRouter(self)
        return self._start_transport(t_start)  # type: ignore[return-value]

    def _start_background_work(self) -> None:
        for unit in list(self.units.values()):
            unit._start_background_work()

    def _drain_models(self, timeout_s: float) -> bool:
        return all([unit.engine.drain(timeout_s) for unit in list(self.units.values())])

    def _close_models(self) -> None:
        for unit in list(self.units.values()):
            unit.stop(0.0)
