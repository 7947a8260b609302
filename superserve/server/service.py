"""The thin gRPC servicer of the Open Inference Protocol (`inference.GRPCInferenceService`, tritonclient's stubs).

Translates between protocol messages and engine calls; no scheduling or model logic here. Status codes:
unknown model or version -> NOT_FOUND; malformed tensor or parameter -> INVALID_ARGUMENT (the message says what);
queue full -> RESOURCE_EXHAUSTED; shed because no subnet can meet the deadline -> DEADLINE_EXCEEDED; shutting down
-> UNAVAILABLE; a worker failure -> INTERNAL. gRPC itself answers RESOURCE_EXHAUSTED for messages over the size limit.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from superserve.records import LATE, OK, SHED
from superserve.server.codec import (InvalidRequest, ModelSpec, decode_images, decode_request, decoder_ready,
                                     encode_outputs, load_decoder)
from superserve.server.engine import CallResult, Engine
from superserve.server.metrics import ServerMetrics
from superserve.server.security import submit_per_image, unwrap_stream_request

SERVER_NAME = "superserve"
SERVER_VERSION = "0.1.0"
# Failed outcomes -> status; anything else is INTERNAL. "unavailable": calls the Redis front end lost with Redis or
# that no worker picked up (superserve.cluster.frontend.UNAVAILABLE).
_FAILED = {SHED: grpc.StatusCode.DEADLINE_EXCEEDED, "unavailable": grpc.StatusCode.UNAVAILABLE}
_CONFIG_TYPES = {"FP32": mc.TYPE_FP32, "UINT8": mc.TYPE_UINT8, "BYTES": mc.TYPE_STRING, "INT64": mc.TYPE_INT64}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, spec: ModelSpec, engine: Engine, metrics: ServerMetrics | None,
                 response_params: bool = True, preload_decoder: bool = True, *,
                 hint_hook: Any = None) -> None:
        self.spec, self.engine, self.metrics = spec, engine, metrics
        self.response_params = response_params
        self.hint_hook = hint_hook  # security: a HintDefenseHook transforming each image's hints (None = off)
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="superserve-decode")
        # In the background: the first PNG/JPEG request then rarely waits for the import.
        self._warming = self._decoder.submit(load_decoder) if preload_decoder else None

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
        return self.engine.accepting and self.warm

    # --- health and metadata --------------------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        known = request.name == self.spec.name and request.version in ("", self.spec.version)
        return pb.ModelReadyResponse(ready=known and self.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                         extensions=["model_repository", "parameters", "statistics"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._check_model(request.name, request.version, context)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.spec.name, versions=[self.spec.version], platform="superserve_supernet",
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in self.spec.input_metadata()],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in self.spec.output_metadata()])

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        await self._check_model(request.name, request.version, context)
        config = mc.ModelConfig(name=self.spec.name, platform="superserve_supernet", max_batch_size=0)
        for n, d, s in self.spec.input_metadata():
            config.input.add(name=n, data_type=_CONFIG_TYPES[d], dims=s)
        for n, d, s in self.spec.output_metadata():
            config.output.add(name=n, data_type=_CONFIG_TYPES[d], dims=s)
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        state = "READY" if self.ready else "UNAVAILABLE"
        model = pb.RepositoryIndexResponse.ModelIndex(name=self.spec.name, version=self.spec.version, state=state)
        return pb.RepositoryIndexResponse(models=[model])

    async def _check_model(self, name: str, version: str, context: Any) -> None:
        try:
            self._require_model(name, version)
        except _CallFailed as exc:
            await context.abort(exc.code, exc.message)

    def _require_model(self, name: str, version: str) -> None:
        if name != self.spec.name:
            raise _CallFailed(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; this server serves {self.spec.name!r}")
        if version not in ("", self.spec.version):
            raise _CallFailed(grpc.StatusCode.NOT_FOUND,
                              f"model {name!r} has no version {version!r}; available: {self.spec.version}")

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

        async def one(item: Any) -> None:
            request, refused, release = unwrap_stream_request(item)  # per-request limits (security.py)
            try:
                if refused is not None:
                    raise _CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=await self._infer(request)))
            except _CallFailed as exc:
                answers.put_nowait(_stream_error(request, exc.code, exc.message))
            except Exception as exc:  # noqa: BLE001 - every request of the stream gets its one answer
                answers.put_nowait(_stream_error(request, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            finally:
                if release is not None:
                    release()

        async def read() -> None:
            async for item in request_iterator:
                task = asyncio.create_task(one(item))
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

    async def _infer(self, request: Any) -> Any:
        """One inference call start to end; raises _CallFailed with the status and message to answer."""
        arrival_s = self.engine.clock()  # the SLO counts from here: decoding is part of the request's latency
        self._require_model(request.model_name, request.model_version)
        loop = asyncio.get_running_loop()
        try:
            decoded = decode_request(request, self.spec)
            images = decoded.images
            if images is None:  # encoded PNG/JPEG: decode off the event loop
                if not decoder_ready():  # a one-time import, not this request's latency: the SLO starts after it
                    await loop.run_in_executor(self._decoder, load_decoder)
                    arrival_s = self.engine.clock()
                images = await loop.run_in_executor(self._decoder, decode_images, decoded.encoded, self.spec)
            answer: asyncio.Future[CallResult] = loop.create_future()

            def on_done(result: CallResult) -> None:  # runs on an engine/worker thread, exactly once
                loop.call_soon_threadsafe(_resolve, answer, result)

            if self.hint_hook is None:
                self.engine.submit(images, decoded.hints.slo_ms, decoded.hints.min_accuracy, on_done, arrival_s)
            else:  # security (issue 7): per-image transformed hints; see superserve/server/security.py
                slo, acc = self.hint_hook(images.shape[0], decoded.hints.slo_ms, decoded.hints.min_accuracy)
                submit_per_image(self.engine, images, slo, acc, on_done, arrival_s)
        except InvalidRequest as exc:
            if self.metrics is not None:
                outcome = "invalid" if exc.code == grpc.StatusCode.INVALID_ARGUMENT else "rejected"
                self.metrics.call_done(outcome, 0.0)
            raise _CallFailed(exc.code, exc.message) from None
        result = await answer
        if result.outcome not in (OK, LATE):
            raise _CallFailed(_FAILED.get(result.outcome, grpc.StatusCode.INTERNAL), result.message)
        return build_response(self.spec, request.id, decoded.outputs, result, self.response_params)

    def close(self) -> None:
        self._decoder.shutdown(wait=False)


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
    return pb.ModelStreamInferResponse(error_message=f"[{code.name}] {message}",
                                       infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                                            id=request.id))


def _resolve(future: asyncio.Future[CallResult], result: CallResult) -> None:
    if not future.done():  # the client may have cancelled the call
        future.set_result(result)
