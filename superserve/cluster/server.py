"""`superserve serve --backend redis://...`: the embedded server's wiring (checkpoint and zoo checks, codec, servicer,
security, metrics, gRPC, drain on stop) with `RedisEngine` in place of the in-process engine and worker pool.

Every serving option either applies here as it does in the embedded server (API keys, rate limits, in-flight caps,
TLS, message and image limits, the hint defense, records, response parameters) or is refused at start with the reason:
the worker-side options (`--workers`, `--embedded-workers`, `--threads-per-worker`, `--no-correction`,
`--reprofile always`) belong to `superserve worker`, which runs the batches, and `--late serve` is embedded-only.

The latency table belongs to where the batches run: the front end publishes the zoo file's table as it is (it never
runs a batch, so a table re-profiled or spot-checked here would be this host's, not the workers'); each worker checks it
on its own device at start and scales it to its speed (`superserve worker --reprofile auto`). The front end still
checks the checkpoint against the zoo (every subnet calibrated), and admission and the hint defense use the published
table."""

from __future__ import annotations

import sys
import time
from typing import Any

from policies.base import make_policy
from superserve.cluster.frontend import FrontendConfig, RedisEngine
from superserve.cluster.redis_queue import ClusterConfig, parse_backend
from superserve.server.app import LiveTable, Server, ServeConfig
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.server.security import HintDefenseHook
from superserve.server.service import InferenceService
from superserve.zoo import Zoo

_DEFAULTS = ServeConfig()


def refused_options(cfg: ServeConfig) -> list[str]:
    """The serving options a front end cannot apply, each with where it belongs (empty: all apply)."""
    why = []
    if cfg.workers != _DEFAULTS.workers or cfg.embedded_workers != _DEFAULTS.embedded_workers:
        why.append("--workers/--embedded-workers: the batches run in `superserve worker --backend ...` processes; "
                   "start as many of those as you want")
    if cfg.threads_per_worker != _DEFAULTS.threads_per_worker:
        why.append("--threads-per-worker: pass --threads to `superserve worker`")
    if cfg.engine.correction_interval_s is None:
        why.append("--no-correction: each worker corrects its own latency table; pass --no-correction to "
                   "`superserve worker`")
    if cfg.reprofile == "always":
        why.append("--reprofile always: the front end publishes the zoo's table as it is; each `superserve worker` "
                   "checks it on its own device and scales it to its speed (its --reprofile auto, the default)")
    if cfg.engine.late != "shed":
        why.append("--late serve is not supported with --backend redis (requests that cannot meet their deadline "
                   "are shed)")
    return why


class ClusterServer(Server):
    """A stateless front end: `start()` returns once it answers requests; `stop()` drains like the embedded server."""

    def __init__(self, config: ServeConfig, backend: str, cluster: FrontendConfig = FrontendConfig()) -> None:
        super().__init__(config)
        self.backend_url = backend
        self.cluster = cluster

    def load_zoo(self, net: Any, sample: Any, background: bool = False) -> Zoo:
        """The zoo file's table as it is (no spot check, no re-profile, no per-host cache: this host runs no batch);
        the workers fit it to their devices."""
        cfg = self.config
        zoo = Zoo.load(cfg.zoo_path)
        self.table = LiveTable("file", str(cfg.zoo_path), 1.0)
        self._say(f"superserve: publishing the latency table of {cfg.zoo_path} as it is (profiled on "
                  f"{zoo.host.device}, {zoo.host.processor}, {zoo.host.threads} thread(s)): each `superserve worker` "
                  f"checks it on its own device at start and scales it to its speed")
        return zoo

    def start(self) -> "ClusterServer":
        cfg = self.config
        t_start = time.perf_counter()
        self.backend = parse_backend(self.backend_url)  # BackendError (a ValueError) for a malformed URL
        refused = refused_options(cfg)
        if refused:
            raise ValueError("with --backend redis these options do not apply on the front end: " + "; ".join(refused))
        if cfg.gil_switch_interval_s is not None:
            sys.setswitchinterval(cfg.gil_switch_interval_s)
        _, zoo, spec = self.load_model()  # the workers hold the weights; the front end only checks them
        params = {"overhead_ms": cfg.rpc_overhead_ms, **cfg.policy_params}
        make_policy(cfg.policy, zoo, **params)  # bad policy parameters fail here, not in every worker
        published = ClusterConfig(zoo.to_dict(), cfg.policy, params, cfg.model_name)
        self.metrics = ServerMetrics(spec.name, spec.version)
        self.records = RecordWriter(cfg.records_path) if cfg.records_path else None
        self.engine: RedisEngine = RedisEngine(zoo, self.backend, published, cfg.engine, self.cluster, self.metrics,
                                       self.records).start()
        self.pool = self.engine  # Server.stop() closes the "pool": the engine's threads and keys
        hook = None
        if cfg.security.hint_defense is not None:  # security (issue 7), as the embedded server applies it
            transform = cfg.security.hint_defense
            if isinstance(transform, str):
                from superserve.hint_defense import parse_defense

                transform = parse_defense(transform, zoo, cfg.rpc_overhead_ms)
            # The published zoo: each worker corrects its own latency table, which the front end does not see, so a
            # zoo-reading transform (pareto) works from the profiled latencies (the embedded server follows its
            # engine's corrected zoo).
            hook = HintDefenseHook(transform, cfg.engine.default_slo_ms, max(e.accuracy for e in zoo.entries),
                                   cfg.security.defense_seed, self.metrics.registry, lambda: zoo, cfg.rpc_overhead_ms)
        self.service = InferenceService(spec, self.engine, self.metrics, cfg.response_params, hint_hook=hook)
        return self._start_transport(t_start)  # type: ignore[return-value]
