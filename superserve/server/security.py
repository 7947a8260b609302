"""Serving hardening: API keys per tenant, per-tenant rate limits and in-flight caps, TLS, and the hint-defense hook.

Everything here is opt-in and the defaults are the localhost defaults of `ServeConfig` (listen on 127.0.0.1, no keys,
no limits, plaintext). What each option does:

- API keys (`api_keys`: tenant -> key). A call must carry `authorization: Bearer <key>` or `x-api-key: <key>` gRPC
  metadata, else UNAUTHENTICATED. Keys are compared in constant time against their SHA-256. Health checks
  (ServerLive/ServerReady) stay open unless `auth_health` is set, so orchestrator probes need no key.
  Without keys every peer address is its own tenant (`ip:<address>`), so the limits below still apply per client.
- Rate limit (`rate_limit_images_per_s`, `rate_burst_images`): a token bucket per tenant counted in *images*
  (the first dimension of a ModelInfer input), since that is what an extraction budget is made of; a call that would
  overdraw it is answered RESOURCE_EXHAUSTED without queuing. Other calls cost one token.
- In-flight cap (`max_inflight_per_tenant`): calls of one tenant being handled at once; more -> RESOURCE_EXHAUSTED.
- TLS (`tls_cert`, `tls_key`: PEM paths): the port is served with TLS only.
- Message size limits and hiding `subnet_id`/`subnet_accuracy` are `ServeConfig.max_message_bytes`/`max_images` and
  `response_params` (flags `--max-message-bytes`, `--max-images`, `--no-response-params`).
- Hint defense (`hint_defense`): a `superserve.hint_defense.HintTransform` applied to each image's
  (slo_ms, min_accuracy) before queueing (PSML-style noise or the Pareto-neighbour defense). Calls of B images are
  split into B single-image submissions so that every image draws its own noise (one draw per call would let a
  client bundle fingerprint inputs with each query and discard the calls the noise moved).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import grpc
import numpy as np

_SERVICE = "/inference.GRPCInferenceService/"
_HEALTH = frozenset({_SERVICE + "ServerLive", _SERVICE + "ServerReady"})
_INFER = _SERVICE + "ModelInfer"
_STREAM_INFER = _SERVICE + "ModelStreamInfer"


class LimitExceeded(Exception):
    """A call refused by a rate limit or in-flight cap: answered RESOURCE_EXHAUSTED with this message."""


@dataclass(frozen=True)
class SecurityConfig:
    api_keys: Mapping[str, str] | None = None  # tenant -> key; None = no authentication
    auth_health: bool = False  # also require a key for ServerLive/ServerReady
    rate_limit_images_per_s: float | None = None  # per tenant; None = unlimited
    rate_burst_images: float | None = None  # bucket size; None = one second's worth (at least 64)
    max_inflight_per_tenant: int | None = None  # concurrent calls per tenant; None = unlimited
    tls_cert: Path | None = None  # PEM certificate chain
    tls_key: Path | None = None  # PEM private key
    hint_defense: Any = None  # superserve.hint_defense.HintTransform or None
    defense_seed: int | None = None  # seeds the defense's np.random.Generator (None = from the OS)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.api_keys is not None:
            if not self.api_keys:
                raise ValueError("api_keys is empty: give at least one tenant, or None for no authentication")
            keys = list(self.api_keys.values())
            if any(not isinstance(k, str) or len(k) < 16 for k in keys):
                raise ValueError("every API key must be a string of at least 16 characters")
            if len(set(keys)) != len(keys):
                raise ValueError("two tenants share an API key")
        if self.rate_limit_images_per_s is not None and not self.rate_limit_images_per_s > 0:
            raise ValueError(f"rate limit must be > 0 images/s, got {self.rate_limit_images_per_s}")
        if self.rate_burst_images is not None and not self.rate_burst_images >= 1:
            raise ValueError(f"rate burst must be >= 1 image, got {self.rate_burst_images}")
        if self.max_inflight_per_tenant is not None and self.max_inflight_per_tenant < 1:
            raise ValueError(f"in-flight cap must be >= 1, got {self.max_inflight_per_tenant}")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def needs_interceptor(self) -> bool:
        return (self.api_keys is not None or self.rate_limit_images_per_s is not None
                or self.max_inflight_per_tenant is not None)


def load_api_keys(path: str | Path) -> dict[str, str]:
    """A JSON object {tenant: key}. Raises ValueError saying what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read API key file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"API key file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"API key file {path} must be a JSON object of tenant name -> key string")
    return data


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials:
    key = Path(config.tls_key).read_bytes()  # type: ignore[arg-type]
    cert = Path(config.tls_cert).read_bytes()  # type: ignore[arg-type]
    return grpc.ssl_server_credentials([(key, cert)])


class TokenBucket:
    """Per-tenant token buckets on an injected monotonic clock (seconds)."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self._state: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, tenant: str, cost: float) -> float:
        """Take `cost` tokens; returns 0 when granted, else the seconds until they would be available."""
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(tenant, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if cost > self.burst:
                self._state[tenant] = (tokens, now)
                return math.inf
            if tokens >= cost:
                self._state[tenant] = (tokens - cost, now)
                return 0.0
            self._state[tenant] = (tokens, now)
            return (cost - tokens) / self.rate


def _images_in(request: Any) -> int:
    """Images in a ModelInferRequest: the first dimension of its (first) input, at least 1."""
    try:
        shape = request.inputs[0].shape
        return max(1, int(shape[0])) if len(shape) else 1
    except (AttributeError, IndexError):
        return 1


class SecurityInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, per-tenant rate limits and in-flight caps, in front of the servicer."""

    def __init__(self, config: SecurityConfig, registry: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._digests = None if config.api_keys is None else {
            hashlib.sha256(k.encode()).digest(): t for t, k in config.api_keys.items()}
        rate = config.rate_limit_images_per_s
        self.bucket = None if rate is None else TokenBucket(
            rate, config.rate_burst_images or max(64.0, rate), clock)
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()
        self.denied = None
        if registry is not None:
            from prometheus_client import Counter

            self.denied = Counter("superserve_security_denied", "Calls refused by the security layer",
                                  ("reason", "tenant"), registry=registry)

    def _tenant(self, metadata: Any) -> str | None:
        """The tenant named by the call's key, or None when keys are required and none matches."""
        items = {k.lower(): v for k, v in (metadata or ())}
        key = items.get("x-api-key")
        auth = items.get("authorization")
        if key is None and isinstance(auth, str) and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if self._digests is None or key is None:
            return None
        digest = hashlib.sha256(str(key).encode()).digest()
        for known, tenant in self._digests.items():
            if hmac.compare_digest(known, digest):
                return tenant
        return None

    def _deny(self, reason: str, tenant: str) -> None:
        if self.denied is not None:
            self.denied.labels(reason, tenant).inc()

    # The HTTP door (http_app.py) applies this same limiter: one budget per tenant across both doors.
    @property
    def keys_required(self) -> bool:
        return self._digests is not None

    def tenant_of(self, metadata: Any) -> str | None:
        """The tenant named by (key, value) headers or metadata, or None when none matches."""
        return self._tenant(metadata)

    def count_denied(self, reason: str, tenant: str) -> None:
        self._deny(reason, tenant)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        cfg = self.config
        if self._digests is not None and (method not in _HEALTH or cfg.auth_health):
            tenant = self._tenant(details.invocation_metadata)
            if tenant is None:
                self._deny("unauthenticated", "-")
                return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                                 "missing or unknown API key (send metadata 'authorization: Bearer <key>' or "
                                 "'x-api-key: <key>')")
        elif method in _HEALTH:
            return handler
        else:
            tenant = None  # anonymous: the peer address, known only inside the call
        if self.bucket is None and cfg.max_inflight_per_tenant is None:
            return handler
        if method == _STREAM_INFER and handler.stream_stream is not None:
            # Each request of a stream is limited like a unary call (rate and in-flight cap), and a refused one is
            # answered with an error message in the stream, which stays open: see InferenceService.ModelStreamInfer.
            return grpc.stream_stream_rpc_method_handler(self._limited_stream(handler.stream_stream, tenant),
                                                         request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        if handler.unary_unary is None:  # no other streaming method exists
            return handler
        return grpc.unary_unary_rpc_method_handler(self._limited(handler.unary_unary, tenant, method == _INFER),
                                                   request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def admit(self, who: str, cost: int) -> None:
        """Take one in-flight slot and `cost` images from `who`'s rate budget, or raise LimitExceeded (nothing
        taken: a call the cap refuses spends no rate tokens). Pair every admitted call with `release(who)`. A slot is
        held until the handler returns, which is only once the engine holds none of the call's images (a cancelled
        call's queued images are withdrawn first), so the cap counts queued work, not just open calls."""
        cfg = self.config
        cap = cfg.max_inflight_per_tenant
        if cap is not None:
            with self._lock:
                busy = self._inflight.get(who, 0)
                admitted = busy < cap
                if admitted:
                    self._inflight[who] = busy + 1
            if not admitted:
                self._deny("inflight", who)
                raise LimitExceeded(f"tenant {who!r} already has {cap} call(s) in flight (the cap)")
        if self.bucket is not None:
            wait_s = self.bucket.take(who, cost)
            if wait_s > 0:
                self.release(who)
                self._deny("rate", who)
                more = "exceeds the burst size" if math.isinf(wait_s) else f"retry in {wait_s * 1e3:.0f} ms"
                raise LimitExceeded(f"rate limit of {cfg.rate_limit_images_per_s:g} images/s for tenant {who!r}: "
                                    f"this call of {cost} image(s) {more}")

    def release(self, who: str) -> None:
        if self.config.max_inflight_per_tenant is not None:
            with self._lock:
                left = self._inflight[who] - 1
                if left:
                    self._inflight[who] = left
                else:
                    del self._inflight[who]  # a tenant per peer address: do not keep one entry per address seen

    def _limited(self, inner: Any, tenant: str | None, is_infer: bool) -> Any:
        async def call(request: Any, context: Any) -> Any:
            who = tenant or "ip:" + _peer_host(context.peer())
            try:
                self.admit(who, _images_in(request) if is_infer else 1)
            except LimitExceeded as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            try:
                return await inner(request, context)
            finally:
                self.release(who)
        return call

    def _limited_stream(self, inner: Any, tenant: str | None) -> Any:
        interceptor = self

        async def stream(request_iterator: Any, context: Any) -> Any:
            who = tenant or "ip:" + _peer_host(context.peer())

            async def admitted_requests() -> Any:
                async for request in request_iterator:
                    try:
                        interceptor.admit(who, _images_in(request))
                    except LimitExceeded as exc:
                        yield _Refused(request, str(exc))
                        continue
                    yield _Admitted(request, lambda: interceptor.release(who))

            async for answer in inner(admitted_requests(), context):
                yield answer
        return stream


@dataclass(frozen=True)
class _Refused:
    """A stream request the limiter refused: the servicer answers it with `message` (RESOURCE_EXHAUSTED)."""

    request: Any
    message: str


@dataclass(frozen=True)
class _Admitted:
    """A stream request the limiter admitted: the servicer calls `release` once it is answered."""

    request: Any
    release: Callable[[], None]


def unwrap_stream_request(item: Any) -> tuple[Any, str | None, Callable[[], None] | None]:
    """(request, refusal message or None, release or None) for an item of a (possibly limited) request stream."""
    if isinstance(item, _Refused):
        return item.request, item.message, None
    if isinstance(item, _Admitted):
        return item.request, None, item.release
    return item, None, None


def _peer_host(peer: str) -> str:
    # "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555" -> the address without the port
    body = peer.split(":", 1)[1] if ":" in peer else peer
    return body.rsplit(":", 1)[0] if body.count(":") >= 1 else body


def _refusing(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as `handler` that answers `code` at once."""
    async def unary(request: Any, context: Any) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: Any) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


# --- the hint-defense hook (called by the servicer before queueing) -----------------------------------------------
@dataclass
class HintDefenseHook:
    """Applies a `HintTransform` per image, with its own seeded generator and Prometheus metrics."""

    transform: Any
    default_slo_ms: float  # what a request without slo_ms gets (the noise applies to the effective value)
    max_accuracy: float  # hints above the best subnet would be refused; the transform's output is clipped to it
    seed: int | None = None
    registry: Any = None
    # The zoo the live policy was built from (the engine rebuilds it from corrected latencies): a transform that
    # reads the zoo (ParetoDefense) is re-derived from it whenever it changes, so its idea of which subnets a hint
    # admits matches the policy's.
    current_zoo: Callable[[], Any] | None = None
    overhead_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._zoo_seen: Any = None
        self.changed = self.acc_delta = None
        if self.registry is not None:
            from prometheus_client import Counter, Histogram

            self.changed = Counter("superserve_defense_images", "Images whose hints the defense transformed, by "
                                   "whether the hints changed", ("changed",), registry=self.registry)
            self.acc_delta = Histogram("superserve_defense_accuracy_hint_delta",
                                       "Transformed minus requested accuracy hint (fraction)",
                                       buckets=(-0.05, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02, 0.05),
                                       registry=self.registry)

    def __call__(self, images: int, slo_ms: float | None, min_accuracy: float) -> tuple[np.ndarray, np.ndarray]:
        """(slo_ms, min_accuracy) per image, shape (images,), after the transform."""
        slo = np.full(images, self.default_slo_ms if slo_ms is None else slo_ms, dtype=np.float64)
        acc = np.full(images, min_accuracy, dtype=np.float64)
        with self._lock:  # np.random.Generator is not thread-safe
            if self.current_zoo is not None and hasattr(self.transform, "zoo"):
                zoo = self.current_zoo()
                if zoo is not self._zoo_seen:
                    from dataclasses import replace

                    from superserve.hint_defense import ZooView

                    self.transform = replace(self.transform, zoo=ZooView.from_zoo(zoo, self.overhead_ms))
                    self._zoo_seen = zoo
            new_slo, new_acc = self.transform(slo, acc, self.rng)
        new_acc = np.clip(new_acc, 0.0, self.max_accuracy)
        if self.changed is not None:
            changed = (new_slo != slo) | (new_acc != acc)
            self.changed.labels("yes").inc(int(changed.sum()))
            self.changed.labels("no").inc(int((~changed).sum()))
            for d in new_acc - acc:
                self.acc_delta.observe(float(d))
        return new_slo, new_acc


def submit_per_image(engine: Any, images: Any, slo_ms: np.ndarray, min_accuracy: np.ndarray,
                     on_done: Callable[[Any], None], arrival_s: float) -> Callable[[], bool]:
    """Submit a call's B images as B single-image calls with their own hints; `on_done` gets one combined
    CallResult (in image order) once all B are answered: served if every part was (late if any was), else the first
    failed part's failure. Returns a `cancel()` that cancels every part. Raises `Refused` like the engine's
    `submit`: the parts submitted before the refusal are cancelled."""
    from superserve.dispatch import CallTracker

    count = images.shape[0]
    tracker = CallTracker(count, arrival_s, on_done)
    latest = [arrival_s]  # the call is answered when its slowest part was
    lock = threading.Lock()

    def part_done(k: int, result: Any) -> None:
        with lock:
            latest[0] = max(latest[0], arrival_s + result.latency_s)
            if result.outcome in ("ok", "late"):
                last = tracker.add(k, result.probabilities[0], result.subnet_ids[0], result.accuracy,
                                   result.outcome == "ok")
            else:
                last = tracker.add_failure(k, result.outcome, result.message)
            if not last:
                return
            answer = tracker.result(latest[0])
        on_done(answer)

    cancels: list[Callable[[], bool]] = []

    def cancel() -> bool:
        return any([c() for c in cancels])  # a list, not a generator: every part is cancelled

    try:
        for k in range(count):
            cancels.append(engine.submit(images[k:k + 1], float(slo_ms[k]), float(min_accuracy[k]),
                                         lambda result, k=k: part_done(k, result), arrival_s))
    except Exception:
        cancel()  # the parts already queued run for nobody otherwise
        raise
    return cancel
