"""`superserve serve --backend redis://...`: the embedded server's wiring (checkpoint and zoo checks, codec, servicer,
metrics, gRPC, drain on stop) with `RedisEngine` in place of the in-process engine and worker pool."""

from __future__ import annotations

import time
from typing import Any

import grpc

from policies.base import make_policy
from superserve.cluster.frontend import UNAVAILABLE, FrontendConfig, RedisEngine
from superserve.cluster.redis_queue import ClusterConfig, parse_backend
from superserve.server.app import Server, ServeConfig, model_spec
from superserve.server.metrics import RecordWriter, ServerMetrics
from superserve.server.service import InferenceService

# NOTE(cluster): the servicer maps failed outcomes to status codes with a table that has no entry for calls lost with
# Redis; they reach `context.abort` as INTERNAL with this prefix, which `_Context` turns into UNAVAILABLE.
_UNAVAILABLE_PREFIX = "\0unavailable\0"


class _Context:
    """A gRPC servicer context whose `abort` reports lost calls as UNAVAILABLE; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def abort(self, code: grpc.StatusCode, details: str = "", *args: Any) -> None:
        if code == grpc.StatusCode.INTERNAL and details.startswith(_UNAVAILABLE_PREFIX):
            code, details = grpc.StatusCode.UNAVAILABLE, details[len(_UNAVAILABLE_PREFIX):]
        await self._inner.abort(code, details, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ClusterService(InferenceService):
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await super().ModelInfer(request, _Context(context))


class _Engine(RedisEngine):
    def _finish_locked(self, call, outcome, message, now):  # noqa: ANN001, ANN202 - see _UNAVAILABLE_PREFIX
        if outcome == UNAVAILABLE:
            message = _UNAVAILABLE_PREFIX + message
        return super()._finish_locked(call, outcome, message, now)


class ClusterServer(Server):
    """A stateless front end: `start()` returns once it answers requests; `stop()` drains like the embedded server."""

    def __init__(self, config: ServeConfig, backend: str, cluster: FrontendConfig = FrontendConfig()) -> None:
        super().__init__(config)
        self.backend_url = backend
        self.cluster = cluster

    def start(self) -> "ClusterServer":
        from supernet.checkpoint import load_checkpoint

        cfg = self.config
        t_start = time.perf_counter()
        self.backend = parse_backend(self.backend_url)  # BackendError (a ValueError) for a malformed URL
        if cfg.engine.late != "shed":
            raise ValueError("--late serve is not supported with --backend redis (requests that cannot meet their "
                             "deadline are shed)")
        net, data = load_checkpoint(cfg.checkpoint_path)
        zoo = self.zoo = self.load_zoo(net)
        missing = [e.subnet_id for e in zoo.entries if e.subnet_id not in net.norm_table.stats]
        if missing:
            raise ValueError(f"checkpoint {cfg.checkpoint_path} has no SubnetNorm statistics for zoo subnets "
                             f"{', '.join(missing)}: calibrate them (superserve zoo) or use the matching zoo")
        spec = model_spec(cfg.model_name, zoo, data.get("meta", {}), cfg.max_images)
        del net
        params = {"overhead_ms": cfg.rpc_overhead_ms, **cfg.policy_params}
        make_policy(cfg.policy, zoo, **params)  # bad policy parameters fail here, not in every worker
        published = ClusterConfig(zoo.to_dict(), cfg.policy, params, cfg.model_name)
        self.metrics = ServerMetrics(spec.name, spec.version)
        self.records = RecordWriter(cfg.records_path) if cfg.records_path else None
        self.engine: Any = _Engine(zoo, self.backend, published, cfg.engine, self.cluster, self.metrics,
                                   self.records).start()
        self.pool = self.engine  # Server.stop() closes the "pool": the engine's threads and keys
        self.service = ClusterService(spec, self.engine, self.metrics, cfg.response_params)
        return self._start_transport(t_start)  # type: ignore[return-value]
