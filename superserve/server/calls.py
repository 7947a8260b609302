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

from superserve.dispatch import CallResult
from superserve.outcomes import Outcome, Reason, Refusal, Refused, reason_of_outcome  # noqa: F401 - re-exported
from superserve.server.codec import DecodedInputs, InvalidRequest, ModelSpec, parse_request, show
from superserve.server.engine_api import ServingEngine
from superserve.server.offload import InputOffload
from superserve.server.security import submit_per_image

# Why a call was answered without a result: `superserve.outcomes.Reason`, re-exported under the names the doors use.
# Each door maps these to its own status.
NOT_FOUND, INVALID, TOO_LARGE, BUSY = Reason.NOT_FOUND, Reason.INVALID, Reason.TOO_LARGE, Reason.BUSY
DEADLINE, UNAVAILABLE, CANCELLED_BY_CLIENT = Reason.DEADLINE, Reason.UNAVAILABLE, Reason.CANCELLED
UNAUTHENTICATED, INTERNAL = Reason.UNAUTHENTICATED, Reason.INTERNAL

GRPC_STATUS = {NOT_FOUND: grpc.StatusCode.NOT_FOUND, INVALID: grpc.StatusCode.INVALID_ARGUMENT,
               TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
               DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED, UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
               CANCELLED_BY_CLIENT: grpc.StatusCode.CANCELLED, UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
               INTERNAL: grpc.StatusCode.INTERNAL}
# The codec and the offload raise InvalidRequest with a gRPC code (their historical interface); read back as reasons
# here. The engines raise Refused with a reason.
_REASON_OF_CODE = {grpc.StatusCode.INVALID_ARGUMENT: INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED: BUSY,
                   grpc.StatusCode.UNAVAILABLE: UNAVAILABLE, grpc.StatusCode.NOT_FOUND: NOT_FOUND}


def reason_of(exc: InvalidRequest) -> Reason:
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

    def __init__(self, spec: ModelSpec, engine: ServingEngine, metrics: Any, offload: InputOffload,
                 hint_hook: Any = None) -> None:
        self.spec, self.engine, self.metrics, self.offload = spec, engine, metrics, offload
        self.hint_hook = hint_hook  # security: a HintDefenseHook transforming each image's hints (None = off)

    def require_model(self, name: str, version: str) -> None:
        if name != self.spec.name:
            raise Refused(NOT_FOUND, f"unknown model {show(name)}; this server serves {self.spec.name!r}")
        if version not in ("", self.spec.version):
            raise Refused(NOT_FOUND, f"model {show(name)} has no version {show(version)}; available: "
                                     f"{self.spec.version}")

    def count_refused(self, reason: Reason) -> None:
        if self.metrics is not None:
            self.metrics.call_done("invalid" if reason == INVALID else "rejected", 0.0)

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
            self.count_refused(reason_of(exc))
            raise Refused(reason_of(exc), exc.message) from None
        except Refused as exc:  # the engine's refusals (queue full, shutting down, no worker, hint too high)
            self.count_refused(exc.reason)
            raise
        try:
            result = await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The client went away (gRPC cancel or deadline, HTTP disconnect): withdraw the call's queued images, and
            # return only once the engine holds none of them (its answer, CANCELLED or computed meanwhile, is dropped).
            if cancel is not None:
                cancel()
                await asyncio.shield(answer)
            raise
        if not Outcome(result.outcome).served:
            raise Refused(reason_of_outcome(result.outcome), result.message)
        return Answer(request.id, decoded.outputs, result)


def _resolve(future: asyncio.Future[CallResult], result: CallResult) -> None:
    if not future.done():  # the client may have cancelled the call
        future.set_result(result)
