"""The thin gRPC servicer of the Open Inference Protocol (`inference.GRPCInferenceService`, tritonclient's stubs).

Translates between protocol messages and engine calls; no scheduling or model logic here. Status codes:
unknown model or version -> NOT_FOUND; malformed tensor or parameter -> INVALID_ARGUMENT (the message says what);
queue full, or too many large inputs being decoded -> RESOURCE_EXHAUSTED; shed because no subnet can meet the
deadline -> DEADLINE_EXCEEDED; shutting down, or the capacity that held the call lost (a worker process died, Redis
gone) -> UNAVAILABLE; a worker failure -> INTERNAL. gRPC itself answers RESOURCE_EXHAUSTED for messages over the size
limit.

A call's SLO counts from its arrival: the moment `EntryInterceptor` sees it, before its message is received and
parsed (a 30 MB message takes a third of a second to receive on a slow host; under overload the handler starts late).
A call its client cancels (or whose gRPC deadline passes) is withdrawn from the engine: its queued images are not
computed, and the handler returns only once the engine holds none of its images, so per-tenant in-flight caps count
queued work, not just open calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from superserve.dispatch import CallResult
from superserve.records import OK
from superserve.server.calls import GRPC_STATUS, Refused, RequestPath
from superserve.server.codec import ModelSpec, encode_outputs, load_decoder
from superserve.server.engine_api import ServingEngine
from superserve.server.metrics import ServerMetrics
from superserve.server.offload import InputOffload, OffloadConfig
from superserve.server.security import unwrap_stream_request

SERVER_NAME = "superserve"
SERVER_VERSION = "0.1.0"
# Protocol datatypes -> model-config data types (ModelConfig; was referenced but never defined: ModelConfig raised
# NameError).
_CONFIG_TYPES = {"FP32": mc.TYPE_FP32, "UINT8": mc.TYPE_UINT8, "BYTES": mc.TYPE_STRING, "INT64": mc.TYPE_INT64}
# When the call reached the server (time.monotonic, the engines' clock), set by EntryInterceptor.
ARRIVAL_S: contextvars.ContextVar[float | None] = contextvars.ContextVar("superserve_arrival_s", default=None)


class Undecodable:
    """A request message that is not valid protobuf: the handler answers INVALID_ARGUMENT (gRPC alone answered
    UNKNOWN with a Python exception name)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @property
    def message(self) -> str:
        return f"the request is not a valid protobuf message ({self.reason[:120]})"


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - whatever bytes a client sends get a status, not a traceback
            return Undecodable(str(exc) or type(exc).__name__)
    return parse


class EntryInterceptor(grpc.aio.ServerInterceptor):
    """The first thing a call meets: stamps its arrival (ARRIVAL_S) before its message is received, the earliest
    moment the server's Python code sees it (the handler runs in the same context), and makes an undecodable message
    an INVALID_ARGUMENT answer (in a stream: that request's error answer; the stream stays open)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, its tolerant wrapper)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        ARRIVAL_S.set(self.clock())
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _tolerant_handler(handler)
        if len(self._wrapped) < 64:  # one entry per method of the service (a per-call handler is not cached)
            self._wrapped[details.method] = (handler, wrapped)
        return wrapped


def _tolerant_handler(handler: Any) -> Any:
    kw = dict(request_deserializer=_tolerant(handler.request_deserializer),
              response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await inner(request, context)
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.stream_stream is not None:  # ModelStreamInfer skips Undecodable items itself
        return grpc.stream_stream_rpc_method_handler(handler.stream_stream, **kw)
    return handler  # no other kind exists in this service


@dataclass(frozen=True)
class ModelState:
    """A model of the repository index: READY, UNAVAILABLE (not ready, or failed to load: `reason` says why) or
    UNLOADED."""

    name: str
    version: str
    state: str
    reason: str = ""


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, spec: ModelSpec, engine: ServingEngine, metrics: ServerMetrics | None,
                 response_params: bool = True, preload_decoder: bool = True, *,
                 hint_hook: Any = None, offload: OffloadConfig = OffloadConfig()) -> None:
        self.spec, self.engine, self.metrics = spec, engine, metrics
        self.response_params = response_params
        self.offload = InputOffload(offload)
        self.path = RequestPath(spec, engine, metrics, self.offload, hint_hook)  # shared with the HTTP door
        # In the background: the first PNG/JPEG request then rarely waits for the import.
        self._warming = self.offload.submit_light(load_decoder) if preload_decoder else None

    @property
    def warm(self) -> bool:
        """Start-up work still running in the background is done: the image decoder's import (2.6 s on a slow
        vCPU, holding the GIL in long stretches, which delayed every call in those seconds: the demo's first burst
        missed its SLO on both policies). Until then ServerReady and ModelReady answer not ready, like Triton before
        its models are loaded, so that load balancers and load generators that honour readiness hold their traffic;
        calls sent anyway are served."""
        return self._warming is None or self._warming.done()

    def wait_warm(self, timeout_s: float) -> bool:
        """Block until `warm` (True) or `timeout_s` passes (False)."""
        return self._warming is None or not wait([self._warming], timeout=timeout_s).not_done

    @property
    def ready(self) -> bool:
        """Accepting calls, start-up done, and able to serve: no worker alive (all being replaced) is not ready."""
        return self.engine.accepting and self.warm and self.engine.serving

    # --- health and metadata --------------------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            service = self.model_service(request.name, request.version)
        except Refused:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=service.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                         extensions=["model_repository", "parameters", "statistics"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        spec = (await self._check_model(request.name, request.version, context)).spec
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=spec.name, versions=[spec.version], platform="superserve_supernet",
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in spec.input_metadata()],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in spec.output_metadata()])

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        spec = (await self._check_model(request.name, request.version, context)).spec
        config = mc.ModelConfig(name=spec.name, platform="superserve_supernet", max_batch_size=0)
        for n, d, s in spec.input_metadata():
            config.input.add(name=n, data_type=_CONFIG_TYPES[d], dims=s)
        for n, d, s in spec.output_metadata():
            config.output.add(name=n, data_type=_CONFIG_TYPES[d], dims=s)
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(name=m.name, version=m.version, state=m.state,
                                                        reason=m.reason) for m in self.repository_index()])

    # --- the model behind a name (a repository's router overrides these) -------------------------------------------
    def model_service(self, name: str, version: str = "") -> "InferenceService":
        """The service of model `name` (this one); raises Refused(NOT_FOUND)."""
        self.path.require_model(name, version)
        return self

    def repository_index(self) -> list["ModelState"]:
        return [ModelState(self.spec.name, self.spec.version, "READY" if self.ready else "UNAVAILABLE", "")]

    async def _check_model(self, name: str, version: str, context: Any) -> "InferenceService":
        try:
            return self.model_service(name, version)
        except Refused as exc:
            await context.abort(GRPC_STATUS[exc.reason], exc.message)
            raise  # abort raises; never reached

    # --- inference ------------------------------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            return await self._infer(request)
        except _CallFailed as exc:
            # Status set and an empty message returned rather than context.abort(): under ~1,000 concurrent calls
            # grpc.aio's abort path answered a few of them CANCELLED instead of the status it was given.
            context.set_code(exc.code)
            context.set_details(exc.message)
            return pb.ModelInferResponse()

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        """Triton's bidirectional stream: each request is scheduled as it arrives (the EDF queue orders them, not the
        stream), and each answer is sent as soon as it is ready, so answers may overtake one another; clients match
        them by request id, as tritonclient's stream callback does. A failed request does not end the stream: its
        answer carries `error_message` (and the request id), as Triton's does."""
        answers: asyncio.Queue[Any] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(item: Any, arrival_s: float) -> None:
            request, refused, release = unwrap_stream_request(item)  # per-request limits (security.py)
            try:
                if isinstance(request, Undecodable):
                    raise _CallFailed(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                if refused is not None:
                    raise _CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=await self._infer(request, arrival_s)))
            except _CallFailed as exc:
                answers.put_nowait(_stream_error(request, exc.code, exc.message))
            except Exception as exc:  # noqa: BLE001 - every request of the stream gets its one answer
                answers.put_nowait(_stream_error(request, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            finally:
                if release is not None:
                    release()

        async def read() -> None:
            async for item in request_iterator:
                task = asyncio.create_task(one(item, self.engine.clock()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:  # the client half-closed: finish what it sent
                await asyncio.gather(*list(pending))
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # re-raises a broken stream
        finally:
            reader.cancel()
            for task in list(pending):  # the stream ended early (cancelled): withdraw what it still has queued
                task.cancel()

    async def _infer(self, request: Any, arrival_s: float | None = None) -> Any:
        """One inference call start to end (the shared `RequestPath`); raises _CallFailed with the status and
        message to answer."""
        if arrival_s is None:  # the SLO counts from arrival: receiving and decoding are part of the latency
            arrival_s = ARRIVAL_S.get()
            if arrival_s is None:  # served without EntryInterceptor (an embedding that built its own gRPC server)
                arrival_s = self.engine.clock()
        try:
            service = self.model_service(request.model_name, request.model_version)
            answer = await service.path.infer(request, arrival_s)
        except Refused as exc:
            raise _CallFailed(GRPC_STATUS[exc.reason], exc.message) from None
        return build_response(service.spec, answer.request_id, answer.outputs, answer.result,
                              service.response_params)

    def close(self) -> None:
        self.offload.close()


def build_response(spec: ModelSpec, request_id: str, outputs: tuple[str, ...], result: CallResult,
                   response_params: bool = True) -> Any:
    """The ModelInferResponse of a served call: the requested outputs and, with `response_params`, which subnet served
    it. One id when every image ran on the same subnet, else one per image (a call's images may be split across
    batches); subnet_accuracy is the lowest among them."""
    response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request_id)
    if response_params:
        ids = result.subnet_ids if len(set(result.subnet_ids)) > 1 else result.subnet_ids[:1]
        response.parameters["subnet_id"].string_param = ",".join(ids)
        response.parameters["subnet_accuracy"].double_param = result.accuracy
        response.parameters["slo_met"].bool_param = result.outcome == OK
    encode_outputs(response, outputs, result.probabilities)  # type: ignore[arg-type]
    return response


class _CallFailed(Exception):
    """A call answered with a non-OK status (`code`, `message`): an abort for ModelInfer, an error_message in a stream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _stream_error(request: Any, code: grpc.StatusCode, message: str) -> Any:
    if isinstance(request, Undecodable):
        return pb.ModelStreamInferResponse(error_message=f"[{code.name}] {message}")
    return pb.ModelStreamInferResponse(error_message=f"[{code.name}] {message}",
                                       infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                                            id=request.id))

