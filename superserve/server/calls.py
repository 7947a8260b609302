"""The request path both doors share: one inference call from a parsed protocol request to the engine's answer.

The gRPC door (`service.py`) and the HTTP/REST door (`http_app.py`) each turn their wire format into a
`ModelInferRequest` (the HTTP door converts KServe v2 JSON into one), call `RequestPath.infer`, and turn the result or
the refusal into their own answer. A refusal is a value, `Refusal(reason, message)`; each door maps the reason to its
status (`GRPC_STATUS` here, `HTTP_STATUS` in http_app.py), so both answer the same call the same way.

Everything issue 16 hardened lives here once: validation from sizes alone (`codec.parse_request`), the bulk input work
in the lane its cost calls for (`offload.InputOffload`), the SLO counted from the arrival stamp each door takes, and
cancellation: a caller that goes away (gRPC cancel or deadline, HTTP client disconnect) cancels the awaiting task, its
queued images are withdrawn, and `infer` returns only once the engine holds none of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from superserve.records import CANCELLED, LATE, OK, REJECTED, SHED
from superserve.records import UNAVAILABLE as LOST
from superserve.server.codec import DecodedInputs, InvalidRequest, ModelSpec, parse_request, show
from superserve.server.engine import CallResult
from superserve.server.offload import InputOffload
from superserve.server.security import submit_per_image

# Why a call was answered without a result. Each door maps these to its own status.
NOT_FOUND = "not_found"  # unknown model or version
INVALID = "invalid"  # malformed tensor, parameter or body
TOO_LARGE = "too_large"  # the message or body is over the size limit
BUSY = "busy"  # queue full, rate limited, in-flight cap, too many large inputs being decoded
DEADLINE = "deadline"  # shed: no subnet can meet the deadline
UNAVAILABLE = "unavailable"  # shutting down, or the capacity that held the call was lost
CANCELLED_BY_CLIENT = "cancelled"
UNAUTHENTICATED = "unauthenticated"
INTERNAL = "internal"

GRPC_STATUS = {NOT_FOUND: grpc.StatusCode.NOT_FOUND, INVALID: grpc.StatusCode.INVALID_ARGUMENT,
               TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
               DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED, UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
               CANCELLED_BY_CLIENT: grpc.StatusCode.CANCELLED, UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
               INTERNAL: grpc.StatusCode.INTERNAL}
# codec and engine raise InvalidRequest with a gRPC code (their historical interface); read back as reasons here.
_REASON_OF_CODE = {grpc.StatusCode.INVALID_ARGUMENT: INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED: BUSY,
                   grpc.StatusCode.UNAVAILABLE: UNAVAILABLE, grpc.StatusCode.NOT_FOUND: NOT_FOUND}
# Failed engine outcomes -> reason; anything else is INTERNAL. LOST: the capacity that held the call was lost (a
# worker process died, Redis is gone or stalled); REJECTED: refused after submission (a Redis queue found full).
_REASON_OF_OUTCOME = {SHED: DEADLINE, LOST: UNAVAILABLE, REJECTED: BUSY, CANCELLED: CANCELLED_BY_CLIENT}


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of the reasons above
    message: str  # for the client: says what was wrong


class Refused(Exception):
    """A call answered with `refusal` instead of a result."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.refusal = Refusal(reason, message)

    @property
    def reason(self) -> str:
        return self.refusal.reason

    @property
    def message(self) -> str:
        return self.refusal.message


def reason_of(exc: InvalidRequest) -> str:
    return _REASON_OF_CODE.get(exc.code, INTERNAL)


@dataclass(frozen=True, eq=False)
class Answer:
    """A served call: what the request asked for and what the engine computed."""

    request_id: str
    outputs: tuple[str, ...]
    result: CallResult


class RequestPath:
    """Model lookup, parsing, off-loop input work, submission and the wait for the answer. Use from one event loop
    (the offload's admission counter is touched only there)."""

    def __init__(self, spec: ModelSpec, engine: Any, metrics: Any, offload: InputOffload,
                 hint_hook: Any = None) -> None:
        self.spec, self.engine, self.metrics, self.offload = spec, engine, metrics, offload
        self.hint_hook = hint_hook  # security: a HintDefenseHook transforming each image's hints (None = off)

    def require_model(self, name: str, version: str) -> None:
        if name != self.spec.name:
            raise Refused(NOT_FOUND, f"unknown model {show(name)}; this server serves {self.spec.name!r}")
        if version not in ("", self.spec.version):
            raise Refused(NOT_FOUND, f"model {show(name)} has no version {show(version)}; available: "
                                     f"{self.spec.version}")

    def count_refused(self, exc: InvalidRequest) -> None:
        if self.metrics is not None:
            self.metrics.call_done("invalid" if exc.code == grpc.StatusCode.INVALID_ARGUMENT else "rejected", 0.0)

    async def infer(self, request: Any, arrival_s: float) -> Answer:
        """One call start to end (`request`: a ModelInferRequest); raises Refused. Cancelling the awaiting task
        withdraws the call from the engine and returns (re-raising CancelledError) once the engine holds none of it."""
        self.require_model(request.model_name, request.model_version)
        loop = asyncio.get_running_loop()
        try:
            decoded: DecodedInputs = parse_request(request, self.spec)
            images = await self.offload.run(decoded.pending)
            answer: asyncio.Future[CallResult] = loop.create_future()

            def on_done(result: CallResult) -> None:  # runs on an engine/worker thread, exactly once
                loop.call_soon_threadsafe(_resolve, answer, result)

            if self.hint_hook is None:
                cancel = self.engine.submit(images, decoded.hints.slo_ms, decoded.hints.min_accuracy, on_done,
                                            arrival_s)
            else:  # security (issue 7): per-image transformed hints; see superserve/server/security.py
                slo, acc = self.hint_hook(images.shape[0], decoded.hints.slo_ms, decoded.hints.min_accuracy)
                cancel = submit_per_image(self.engine, images, slo, acc, on_done, arrival_s)
        except InvalidRequest as exc:
            self.count_refused(exc)
            raise Refused(reason_of(exc), exc.message) from None
        try:
            result = await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The client went away (gRPC cancel or deadline, HTTP disconnect): withdraw the call's queued images, and
            # return only once the engine holds none of them (its answer, CANCELLED or computed meanwhile, is dropped).
            if cancel is not None:
                cancel()
                await asyncio.shield(answer)
            raise
        if result.outcome not in (OK, LATE):
            raise Refused(_REASON_OF_OUTCOME.get(result.outcome, INTERNAL), result.message)
        return Answer(request.id, decoded.outputs, result)


def _resolve(future: asyncio.Future[CallResult], result: CallResult) -> None:
    if not future.done():  # the client may have cancelled the call
        future.set_result(result)
