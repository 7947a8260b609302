"""Wiring: load the checkpoint and zoo, check the host, start workers, engine, gRPC and metrics; drain on stop.

`Server(config).start()` returns once the server answers requests; `stop()` drains (stops admitting, answers
everything admitted, then closes). Tests and benchmarks run it in-process; `superserve serve` runs it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import torch
from tritonclient.grpc import service_pb2_grpc

from policies.base import make_policy
from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO
from superserve.server.codec import ModelSpec
from superserve.server.engine import Engine, EngineConfig
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.server.http_guard import HEADER_TIMEOUT_S
from superserve.server.security import HintDefenseHook, SecurityConfig, SecurityInterceptor, server_credentials
from superserve.server.service import EntryInterceptor, InferenceService
from superserve.server.workers import ProcessWorkerPool, ThreadWorkerPool
from superserve.zoo import HostFingerprint, Zoo
from superserve.profiler import device_name, resolve_device

log = logging.getLogger("superserve.server")
LATE_ARRIVAL_WINDOW_S = 0.2  # after draining, before gRPC stops: late calls get UNAVAILABLE, not CANCELLED


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8001  # gRPC; 0 = any free port (see Server.port)
    http_port: int | None = None  # HTTP/REST (KServe v2 JSON); 0 = any free port, None = off (the CLI's default: 8000)
    http_port_fallback: bool = False  # http_port taken at start: serve HTTP on any free port (the CLI's default port)
    max_http_body_bytes: int | None = None  # None = max_message_bytes
    metrics_port: int | None = 8002  # Prometheus /metrics over HTTP; 0 = any free port, None = off
    model_name: str = "superserve"
    zoo_path: Path = DEFAULT_ZOO
    checkpoint_path: Path = DEFAULT_CHECKPOINT
    # A plain exported model (TorchScript model.pt + model.json; plain_model.py) served as a one-subnet zoo instead
    # of zoo_path/checkpoint_path; the repository sets it for such model directories.
    plain_model_dir: Path | None = None
    policy: str = "slackfit"
    policy_params: dict[str, Any] = field(default_factory=dict)
    # Budgeted by the policy on top of each batch's profiled latency (its `overhead_ms`, unless policy_params sets
    # it): receiving, decoding, handing over and answering a call. Measured p50 ~1 ms on an idle 2-core host; the
    # default leaves room for a busy one.
    rpc_overhead_ms: float = 2.0
    workers: int = 0  # worker processes; 0 = embedded worker threads in this process
    embedded_workers: int = 1  # worker threads when workers == 0
    threads_per_worker: int = 1  # torch intra-op threads per worker
    engine: EngineConfig = EngineConfig()
    response_params: bool = True  # add subnet_id / subnet_accuracy / slo_met to responses
    records_path: Path | None = None  # per-request JSONL records
    reprofile: Literal["auto", "never", "always"] = "auto"  # when the zoo's host fingerprint differs from this host
    max_message_bytes: int = 16 << 20
    max_images: int = 64  # images per request
    quiet: bool = False
    # None keeps Python's 5 ms GIL switch interval. Measured: 0.5 ms gained nothing at light load or saturation here,
    # and made grpc.aio answer a few of ~1,000 concurrent calls CANCELLED instead of their status (a race in its
    # Cython layer, reproduced with a bare grpc.aio server).
    gil_switch_interval_s: float | None = None
    security: SecurityConfig = SecurityConfig()  # API keys, rate limits, TLS, hint defense (all off by default)
    # cpu, cuda or cuda:N: where the model, the speed check and a re-profile run; the host fingerprint names the GPU.
    # With workers > 0 every worker process loads its own copy onto it (its own CUDA context).
    device: str = "cpu"


def model_spec(name: str, zoo: Zoo, meta: dict[str, Any], max_images: int) -> ModelSpec:
    """How raw pixels become model input: the normalisation stored in the checkpoint meta (or, for checkpoints
    without it, recomputed from the named dataset exactly as training did)."""
    from superserve.data import checkpoint_normalisation

    space = zoo.space
    mean, std, raw_max = checkpoint_normalisation(meta, zoo.dataset)
    if len(mean) != space.in_channels or len(std) != space.in_channels:
        raise ValueError(f"normalisation has {len(mean)} channels, the supernet takes {space.in_channels}")
    return ModelSpec(name, "1", space.in_channels, space.image_size, space.num_classes, mean, std,
                     float(raw_max), max_images)


def frozen_host_zoo(zoo_path: Path, checkpoint: Path, out: Path, quiet: bool = True,
                    reprofile: Literal["auto", "always"] = "auto") -> Zoo:
    """The zoo as the server resolves it on this host (its table re-profiled and cached when the file's does not fit
    here, or always with `reprofile="always"`), saved to `out` so that servers started with reprofile="never" and the
    simulator all use the same table for a whole run (a server started later, beside a noisy neighbour, must not
    re-profile under it). For the demo and the benchmarks."""
    zoo = Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo_path, checkpoint_path=checkpoint,
                             quiet=quiet, reprofile=reprofile)).load_model()[1]
    zoo.save(out)
    return zoo


@dataclass(frozen=True)
class LiveTable:
    """Which latency table the scheduler uses: `kind` is file (the zoo file's own), cached (this host's earlier
    re-profile), scaled (the file's or cached table x `scale`, the spot check's measured factor, while the re-profile
    runs in the background) or reprofiled (measured here); `source` names the file."""

    kind: str
    source: str
    scale: float


def _default_background_profiler(zoo_path: Path, checkpoint: Path, host: HostFingerprint, out: Path, device: str,
                                  on_start: Any) -> Zoo:
    from superserve.server import profiling

    return profiling.reprofile_in_subprocess(zoo_path, checkpoint, host, out, device, on_start)


class Server:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.port: int | None = None
        self.admitting = False  # True once the gRPC door admits calls (start-up may still be finishing)
        self.metrics_port: int | None = None
        self.zoo: Zoo | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grpc: Any = None
        self.http_port: int | None = None
        self._http_door: Any = None
        self.limiter: Any = None  # the SecurityInterceptor both doors share (None when no key or limit is set)
        self._stopped = False
        self._warmed = False  # every subnet has run once in this process (allocator warm-up)
        self.table = LiveTable("file", str(config.zoo_path), 1.0)  # the latency table the scheduler uses now
        self._pending_reprofile: tuple[Any, Path, Any] | None = None
        self.table_swapped = threading.Event()  # set once a background re-profile's table is live
        # (zoo path, checkpoint, host, out path, device, on_start) -> Zoo; tests put a fake here before start()
        self.background_profiler: Any = _default_background_profiler
        self._child: Any = None  # the re-profiling child process, stopped with the server
        self._reprofile_started = False
        self._http_app: Any = None  # Future of (FastAPI app, LateDoor), built while the model loads

    def _say(self, text: str) -> None:
        if not self.config.quiet:
            print(text, file=sys.stderr, flush=True)

    def load_zoo(self, net: Any, sample: torch.Tensor, background: bool = False) -> Zoo:
        """The zoo with a latency table that fits this host: the file's own, or the per-host cached re-profile, or a
        new re-profile (then cached). With `reprofile="auto"` a table whose fingerprint matches must also pass a
        spot check of its speed (`profiling.check_speed`, which doubles as the workers' warm-up).

        `background=True` (what `start()` passes with `reprofile="auto"`): instead of re-profiling before serving,
        return the table scaled by the spot check's measured factor and leave the re-profile to `start()`, which
        runs it in the background and swaps the new table in when it is done (`table` says which one is live)."""
        from superserve.server import profiling

        cfg = self.config
        zoo = Zoo.load(cfg.zoo_path)
        here = HostFingerprint.current(device=device_name(sample.device), threads=cfg.threads_per_worker)
        cached = profiling.cache_path(Path(cfg.zoo_path), here)
        # This host's own re-profile first: the file's fingerprint can match a machine of another speed.
        candidate, source = ((Zoo.load(cached), str(cached)) if cached.is_file()
                             else (zoo, str(cfg.zoo_path)) if zoo.host_matches(here) else (None, ""))
        self.table = LiveTable("cached" if source == str(cached) else "file", source or str(cfg.zoo_path), 1.0)
        if cfg.reprofile == "never":
            if candidate is None:
                self._say(f"WARNING: {cfg.zoo_path} was profiled on other hardware ({zoo.host.processor}, "
                          f"{zoo.host.threads} thread(s)); SLO decisions rely on online correction until you restart "
                          f"with --reprofile auto (or run `superserve zoo reprofile`)")
            return candidate or zoo
        speed = None
        if candidate is not None and cfg.reprofile == "auto":
            speed = profiling.check_speed(net, candidate, sample)
            self._warmed = True
            if not speed.fits():  # confirm: a passing stall (another process starting) must not cost a re-profile
                speed = profiling.check_speed(net, candidate, sample, warm_up=False)
            if speed.fits():
                if source == str(cached):
                    self._say(f"using the latency table re-profiled for this host: {cached}")
                return candidate
            pace = f"{speed.ratio:.2f}x slower" if speed.ratio > 1 else f"{1 / speed.ratio:.2f}x faster"
            why = (f"this host runs the subnets {pace} than the latency table in {source} says (median over "
                   f"{speed.subnets} subnets at batch 1): a machine of another speed behind the same fingerprint")
        elif candidate is None:
            why = f"{cfg.zoo_path} was profiled on other hardware ({zoo.host.processor}, {zoo.host.threads} thread(s))"
        else:
            why = "--reprofile always"
        if background and cfg.reprofile == "auto":
            base = candidate if candidate is not None else zoo
            if speed is None:  # a foreign table: how far off it is here, measured the same way
                speed = profiling.check_speed(net, base, sample)
                self._warmed = True
            self._say(f"{why}; serving now with that table scaled by the measured {speed.ratio:.2f}x and "
                      f"re-profiling in the background (cached in {cached}; the new table is swapped in when done; "
                      f"--reprofile never skips this)")
            self.table = LiveTable("scaled", f"{source or cfg.zoo_path} x {speed.ratio:.2f}", speed.ratio)
            self._pending_reprofile = (here, cached, sample.device)
            return profiling.scaled_for_host(base, speed)
        self._say(f"{why}; re-profiling here once (cached in {cached}; --reprofile never skips this)")
        zoo = profiling.profile_zoo(net, zoo, here, progress=not cfg.quiet)
        cached.parent.mkdir(parents=True, exist_ok=True)
        zoo.save(cached)
        self.table = LiveTable("reprofiled", str(cached), 1.0)
        return zoo

    def _reprofile_in_background(self) -> None:
        """The re-profile `load_zoo(background=True)` left pending, then the swap: engine, metrics, log line."""
        here, cached, device = self._pending_reprofile  # type: ignore[misc]
        cfg = self.config
        t0 = time.perf_counter()
        try:
            zoo = self.background_profiler(Path(cfg.zoo_path), Path(cfg.checkpoint_path), here, cached,
                                           str(device), self._track_child)
        except Exception as exc:  # noqa: BLE001 - serving goes on with the scaled table; say why
            if not self._stopped:
                log.warning("background re-profile failed (%s); serving on with the scaled table", exc)
                self._say(f"superserve: WARNING: the background re-profile failed ({exc}); the scaled table stays "
                          f"live, corrected online")
            return
        if self._stopped:
            return
        self.engine.replace_table(zoo)
        self.zoo = zoo
        self.table = LiveTable("reprofiled", str(cached), 1.0)
        self.metrics.set_latency_table(self.table.kind, self.table.source, self.table.scale, swapped=True)
        took = time.perf_counter() - t0
        log.info("re-profiled latency table live after %.1f s: %s", took, cached)
        self._say(f"superserve: re-profiled latency table live ({took:.1f} s in the background): {cached}")
        self.table_swapped.set()

    def _track_child(self, proc: Any) -> None:
        self._child = proc
        if self._stopped:  # stop() ran while the child was starting
            proc.terminate()

    def load_model(self, background: bool = False) -> tuple[Any, Zoo, ModelSpec]:
        """(supernet, zoo for this host, protocol spec), checking that the checkpoint calibrated every zoo subnet.
        `background`: see `load_zoo`."""
        from supernet.checkpoint import load_checkpoint

        cfg = self.config
        device = resolve_device(cfg.device)  # a clear error at start when CUDA is asked for and absent
        if cfg.plain_model_dir is not None:
            return self._load_plain_model(device)
        net, data = load_checkpoint(cfg.checkpoint_path, map_location=device)
        space = net.space
        sample = torch.zeros(1, space.in_channels, space.image_size, space.image_size, device=device)
        # The spot check must time the subnets at the workers' thread count, as the table was profiled: a caller
        # outside start_model (frozen_host_zoo) runs at torch's default, all cores, and a table 1.75x too fast
        # for one thread passed the 1.5x check at two.
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads_per_worker)
        try:
            zoo = self.zoo = self.load_zoo(net, sample, background)
        finally:
            torch.set_num_threads(threads)
        missing = [e.subnet_id for e in zoo.entries if e.subnet_id not in net.norm_table.stats]
        if missing:
            raise ValueError(f"checkpoint {cfg.checkpoint_path} has no SubnetNorm statistics for zoo subnets "
                             f"{', '.join(missing)}: calibrate them (superserve zoo) or use the matching zoo")
        return net, zoo, model_spec(cfg.model_name, zoo, data.get("meta", {}), cfg.max_images)

    def _load_plain_model(self, device: torch.device) -> tuple[Any, Zoo, ModelSpec]:
        """A plain exported model as a one-subnet zoo (plain_model.py): its table measured here once, then cached."""
        from superserve.server.plain_model import load_plain_model

        cfg = self.config
        if cfg.workers > 0:
            raise ValueError(f"{cfg.plain_model_dir}: a plain exported model serves on embedded worker threads "
                             f"(--workers 0); worker processes load supernet checkpoints")
        net, zoo, decl, cached, reused = load_plain_model(Path(cfg.plain_model_dir), device, cfg.threads_per_worker,
                                                          self._say)
        self.zoo = zoo
        self.table = LiveTable("cached" if reused else "reprofiled", str(cached), 1.0)
        self._warmed = not reused  # profiling ran the model at every batch size just now
        meta = {"normalization": {"mean": list(decl.mean), "std": list(decl.std), "raw_max": decl.raw_max}}
        return net, zoo, model_spec(cfg.model_name, zoo, meta, cfg.max_images)

    def start(self) -> "Server":
        t_start = time.perf_counter()
        self._prepare_in_background()
        self.start_model()
        return self._start_transport(t_start)

    def _prepare_in_background(self) -> None:
        """In a thread while the model loads (its forwards release the GIL): import the HTTP door's modules and build
        its app (FastAPI's route set-up), then import the image decoder (which readiness waits for). Both were on the
        way to the first answer: 0.5-1.5 s on this 2-core host under load."""
        from concurrent.futures import Future

        from superserve.server.codec import load_decoder

        want_http = self.config.http_port is not None
        self._http_app = Future() if want_http else None

        def prepare() -> None:
            if want_http:
                try:
                    from superserve.server.http_app import LateDoor, build_app

                    slot = LateDoor()
                    self._http_app.set_result((build_app(slot), slot))  # type: ignore[arg-type, union-attr]
                except BaseException as exc:  # noqa: BLE001 - handed to _start_http, which reports it
                    self._http_app.set_exception(exc)  # type: ignore[union-attr]
            with contextlib.suppress(Exception):  # the service's own preload reports a failure
                load_decoder()
        threading.Thread(target=prepare, name="superserve-prepare", daemon=True).start()

    def _start_background_work(self) -> None:
        """What may wait until the doors are open: the background re-profile (its child process's start-up, `import
        torch` among it, competed with this process's own start for the CPU)."""
        if self._pending_reprofile is not None and not self._reprofile_started:
            self._reprofile_started = True
            threading.Thread(target=self._reprofile_in_background, name="superserve-reprofile", daemon=True).start()

    def start_model(self) -> "Server":
        """Everything but the transport: the model, its zoo, metrics, engine, workers and servicer (a repository
        server runs one of these per model behind its own transport; see repository.py)."""
        cfg = self.config
        torch.set_num_threads(cfg.threads_per_worker)
        if cfg.gil_switch_interval_s is not None:
            sys.setswitchinterval(cfg.gil_switch_interval_s)
        net, zoo, spec = self.load_model(background=cfg.reprofile == "auto")
        self.metrics = ServerMetrics(spec.name, spec.version)
        self.metrics.set_latency_table(self.table.kind, self.table.source, self.table.scale)
        records = RecordWriter(cfg.records_path) if cfg.records_path else None
        params = {"overhead_ms": cfg.rpc_overhead_ms, **cfg.policy_params}
        self.engine = Engine(zoo, lambda z: make_policy(cfg.policy, z, **params), cfg.engine, self.metrics, records)
        self.records = records
        configs = {e.subnet_id: e.config for e in zoo.entries}
        sample_shape = (1, spec.in_channels, spec.image_size, spec.image_size)
        device = next(net.parameters()).device
        if cfg.workers > 0:
            self.pool: Any = ProcessWorkerPool(Path(cfg.checkpoint_path), configs, cfg.workers,
                                               cfg.threads_per_worker, self.engine.on_result, sample_shape,
                                               on_worker_down=self.engine.worker_down,
                                               on_worker_up=self.engine.worker_up, device=cfg.device)
            if device.type == "cuda":  # this process's copy served the speed check only: give its memory back
                del net
                torch.cuda.empty_cache()
        else:
            self.pool = ThreadWorkerPool(net, configs, cfg.embedded_workers, cfg.threads_per_worker,
                                         self.engine.on_result, device=device)
            if not self._warmed:  # the speed check ran every subnet already
                self.pool.warm_up(torch.zeros(sample_shape))
        self.engine.start(self.pool)
        hook = None
        if cfg.security.hint_defense is not None:  # security (issue 7): noise on the requested metrics
            transform = cfg.security.hint_defense
            if isinstance(transform, str):  # a spec such as "noise:acc=0.01" or "pareto:p=0.3"
                from superserve.hint_defense import parse_defense

                transform = parse_defense(transform, zoo, cfg.rpc_overhead_ms)
            hook = HintDefenseHook(transform, cfg.engine.default_slo_ms,
                                   max(e.accuracy for e in zoo.entries), cfg.security.defense_seed,
                                   self.metrics.registry, lambda: self.engine.policy.zoo, cfg.rpc_overhead_ms)
        self.service = InferenceService(spec, self.engine, self.metrics, cfg.response_params, hint_hook=hook)
        return self

    def _start_transport(self, t_start: float) -> "Server":
        """Metrics endpoint, then the gRPC server on its own event-loop thread (shared with the cluster front end)."""
        cfg = self.config
        if cfg.metrics_port is not None:
            from prometheus_client import start_http_server

            self._http, _ = start_http_server(cfg.metrics_port, addr=cfg.host, registry=self.metrics.registry)
            self.metrics_port = self._http.server_port
        sec = cfg.security
        if sec.needs_interceptor:
            self.limiter = SecurityInterceptor(sec, self.metrics.registry)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="superserve-grpc", daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result()
        self.admitting = True  # calls are admitted from here on: a stop must drain them, not abandon the start
        if cfg.http_port is not None:  # the HTTP door, on the same loop: one request path, one offload
            self.http_port = asyncio.run_coroutine_threadsafe(self._start_http(), self._loop).result()
        self.startup_s = time.perf_counter() - t_start
        self._start_background_work()
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until the server reports ready (its background start-up work is done); True if it did in time.
        Calls are served before that; readiness says the start-up stalls are over."""
        return self.service.wait_warm(timeout_s)

    async def _start_grpc(self) -> int:
        options = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                   ("grpc.max_send_message_length", self.config.max_message_bytes),
                   ("grpc.so_reuseport", 0),
                   # a connection that has not finished its handshake (TLS, HTTP/2 preface and settings) within 10 s
                   # is closed, as the HTTP door's header deadline does (gRPC's own default let silent connections
                   # stay for 64-79 s here: a cheap way to hold file descriptors)
                   ("grpc.server_handshake_timeout_ms", int(HEADER_TIMEOUT_S * 1000))]
        sec = self.config.security
        interceptors: list[Any] = [EntryInterceptor(self.clock)]  # first: the SLO clock starts here
        if self.limiter is not None:
            interceptors.append(self.limiter)
        self._grpc = grpc.aio.server(options=options, interceptors=interceptors)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self._grpc)
        address = f"{self.config.host}:{self.config.port}"
        port = (self._grpc.add_secure_port(address, server_credentials(sec)) if sec.tls
                else self._grpc.add_insecure_port(address))
        if port == 0:
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port} (in use?)")
        await self._grpc.start()
        return port

    async def _start_http(self) -> int:
        from superserve.server.http_app import HttpDoor, HttpServer, LateDoor, build_app

        cfg, sec = self.config, self.config.security
        door = HttpDoor(self.service, self.limiter, max_body_bytes=cfg.max_http_body_bytes or cfg.max_message_bytes,
                        auth_health=sec.auth_health, clock=self.clock)
        if self._http_app is not None:  # built while the model loaded
            app, slot = await asyncio.wrap_future(self._http_app)
        else:
            slot = LateDoor()
            app = build_app(slot)  # type: ignore[arg-type]
        slot.door = door
        tls = (sec.tls_cert, sec.tls_key) if sec.tls else (None, None)
        self._http_door = HttpServer(app, cfg.host, cfg.http_port, *tls)  # type: ignore[arg-type]
        try:
            return await self._http_door.start()
        except OSError:
            if not cfg.http_port_fallback or cfg.http_port == 0:
                raise
            self._http_door = HttpServer(app, cfg.host, 0, *tls)
            return await self._http_door.start()

    async def _stop_grpc(self) -> None:
        if self._http_door is not None:
            await self._http_door.stop()
        await self._grpc.stop(grace=5.0)
        await asyncio.sleep(0.05)  # let gRPC's poller callbacks finish before the loop stops (else: EBADF noise)

    def stop(self, drain_timeout_s: float = 30.0) -> bool:
        """Drain and shut down: stop admitting, answer everything admitted, close. True if nothing was cut short."""
        if self._stopped:
            return True
        self._stopped = True
        drained = self._drain_models(drain_timeout_s)
        self._stop_transport()
        self._close_models()
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
        return drained

    @property
    def clock(self) -> Any:
        """The engines' clock (time.monotonic unless a test injects one): the doors stamp arrivals with it."""
        return self.engine.clock

    def _drain_models(self, timeout_s: float) -> bool:
        return self.engine.drain(timeout_s)

    def _stop_transport(self) -> None:
        if self._loop is not None and self._grpc is not None:
            # Calls already on the wire when draining began reach the handler within a moment and are answered
            # UNAVAILABLE; stopping gRPC at once would cancel them instead (seen: CANCELLED in the SIGTERM test).
            time.sleep(LATE_ARRIVAL_WINDOW_S)
            # The grace lets handlers whose answers are ready send them before connections close.
            asyncio.run_coroutine_threadsafe(self._stop_grpc(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _close_models(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.terminate()
        self.pool.close()
        self.service.close()
        if self.records is not None:
            self.records.close()
        self.metrics.close()
