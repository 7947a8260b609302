"""`superserve serve --backend redis://...`: the embedded server's wiring (checkpoint and zoo checks, codec, servicer,
metrics, gRPC, drain on stop) with `RedisEngine` in place of the in-process engine and worker pool."""

from __future__ import annotations

import time
from typing import Any

from policies.base import make_policy
from superserve.cluster.frontend import FrontendConfig, RedisEngine
from superserve.cluster.redis_queue import ClusterConfig, parse_backend
from superserve.server.app import Server, ServeConfig
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.server.service import InferenceService

class ClusterServer(Server):
    """A stateless front end: `start()` returns once it answers requests; `stop()` drains like the embedded server."""

    def __init__(self, config: ServeConfig, backend: str, cluster: FrontendConfig = FrontendConfig()) -> None:
        super().__init__(config)
        self.backend_url = backend
        self.cluster = cluster

    def start(self) -> "ClusterServer":
        cfg = self.config
        t_start = time.perf_counter()
        self.backend = parse_backend(self.backend_url)  # BackendError (a ValueError) for a malformed URL
        if cfg.engine.late != "shed":
            raise ValueError("--late serve is not supported with --backend redis (requests that cannot meet their "
                             "deadline are shed)")
        _, zoo, spec = self.load_model()  # the workers hold the weights; the front end only checks them
        params = {"overhead_ms": cfg.rpc_overhead_ms, **cfg.policy_params}
        make_policy(cfg.policy, zoo, **params)  # bad policy parameters fail here, not in every worker
        published = ClusterConfig(zoo.to_dict(), cfg.policy, params, cfg.model_name)
        self.metrics = ServerMetrics(spec.name, spec.version)
        self.records = RecordWriter(cfg.records_path) if cfg.records_path else None
        self.engine: Any = RedisEngine(zoo, self.backend, published, cfg.engine, self.cluster, self.metrics,
                                   self.records).start()
        self.pool = self.engine  # Server.stop() closes the "pool": the engine's threads and keys
        self.service = InferenceService(spec, self.engine, self.metrics, cfg.response_params)
        return self._start_transport(t_start)  # type: ignore[return-value]
