"""The HTTP/REST door: the Open Inference Protocol's KServe v2 REST API (FastAPI on uvicorn, as KServe and MLServer
serve it), beside the gRPC door, sharing its engine, request path, security limits and metrics.

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    200, or 503 while not ready (start-up warm-up, draining, no worker)
    GET  /v2/models/{name}[/versions/{v}]      model metadata (inputs, outputs)
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2/models/{name}[/versions/{v}]/config
    POST /v2/models/{name}[/versions/{v}]/infer
    POST /v2/repository/index                  (GET too) the served models and their state
    POST /v2/repository/models/{name}/load | /unload   (a repository server: --model / --model-repository)

Bodies and tensors are described in http_codec.py. Refusals are answered with a JSON body `{"error": "..."}` and
the status for their reason (`HTTP_STATUS`): 400 bad input, 401 no or unknown API key, 404 unknown model or version,
413 body over the limit, 408 body not received in time, 429 queue full / rate limited / in-flight cap / too many large
inputs being decoded, 504 shed because no subnet could meet the deadline (Triton answers a request whose timeout
expired in its queue with an error too; 504 says "deadline" to any HTTP client), 503 shutting down or no worker.
Below the handlers (http_guard.py): request headers not complete within 10 s are answered 408 and the connection
closed, and a connection beyond the open-connection cap is answered 503 and closed.

What the gRPC door does, this one does the same way: the SLO counts from the moment the handler starts (before the
body is received); API keys (`authorization: Bearer <key>` or `x-api-key` headers) and per-tenant rate limits and
in-flight caps are the gRPC door's own `SecurityInterceptor` (one budget per tenant across both doors); bodies are
bounded (`max_body_bytes`, checked from Content-Length and while reading) and large ones are parsed off the event loop
in the offload lanes (the heavy lane's admission limit applies); a client that disconnects cancels its call, whose
queued images are withdrawn before the handler returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from superserve.server.calls import (BUSY, CANCELLED_BY_CLIENT, DEADLINE, INTERNAL, INVALID, NOT_FOUND, TOO_LARGE,
                                     UNAUTHENTICATED, UNAVAILABLE, Refused, reason_of)
from superserve.server.codec import InvalidRequest
from superserve.server.http_guard import HEADER_TIMEOUT_S, default_max_connections, guarded_protocol
from superserve.server.http_codec import HEADER_LENGTH, encode_infer_response, parse_infer_body
from superserve.server.security import LimitExceeded, _images_in

HTTP_STATUS = {NOT_FOUND: 404, INVALID: 400, TOO_LARGE: 413, BUSY: 429, DEADLINE: 504, UNAVAILABLE: 503,
               CANCELLED_BY_CLIENT: 499, UNAUTHENTICATED: 401, INTERNAL: 500}
JSON_PARSE_COST_PER_BYTE = 4  # offload cost units per JSON byte: 16 KB bodies parse on the loop, 512 KB in the light pool


class HttpDoor:
    """The handlers, over an `InferenceService` (its spec, readiness and `RequestPath`)."""

    def __init__(self, service: Any, limiter: Any = None, *, max_body_bytes: int = 16 << 20,
                 body_timeout_s: float = 30.0, auth_health: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        self.service, self.limiter = service, limiter
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.auth_health = auth_health
        self.clock = clock or service.engine.clock

    # --- refusals ---------------------------------------------------------------------------------------------------
    def _authenticate(self, request: Request, health: bool = False) -> str:
        """The tenant the call is counted against; Refused(UNAUTHENTICATED) when keys are required and missing."""
        limiter = self.limiter
        if limiter is not None and limiter.keys_required and (not health or self.auth_health):
            tenant = limiter.tenant_of(request.headers.items())
            if tenant is None:
                limiter.count_denied("unauthenticated", "-")
                raise Refused(UNAUTHENTICATED, "missing or unknown API key (send header 'authorization: Bearer <key>' "
                                               "or 'x-api-key: <key>')")
            return tenant
        return "ip:" + (request.client.host if request.client else "-")

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Refused(TOO_LARGE, f"body of {declared} bytes is over the limit of {self.max_body_bytes}")
        chunks, total = [], 0
        async with asyncio.timeout(self.body_timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > self.max_body_bytes:
                    raise Refused(TOO_LARGE, f"body is over the limit of {self.max_body_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    # --- inference --------------------------------------------------------------------------------------------------
    async def infer(self, request: Request, name: str, version: str = "") -> Response:
        arrival_s = self.clock()  # the SLO counts from here: receiving and parsing the body are part of the latency
        try:
            tenant = self._authenticate(request)
            service = self.service.model_service(name, version)
            try:
                body = await self._read_body(request)
            except TimeoutError:
                return _error(408, f"the body was not received within {self.body_timeout_s:g} s")
            header_length = _header_length(request)
            json_bytes = len(body) if header_length is None else header_length
            try:
                parsed = await service.path.offload.run_costly(lambda: parse_infer_body(body, header_length),
                                                               JSON_PARSE_COST_PER_BYTE * json_bytes)
            except InvalidRequest as exc:
                service.path.count_refused(exc)
                raise Refused(reason_of(exc), exc.message) from None
            parsed.request.model_name, parsed.request.model_version = name, version
            return await self._limited(request, tenant, service, parsed, arrival_s)
        except Refused as exc:
            return _error(HTTP_STATUS[exc.reason], exc.message)

    async def _limited(self, request: Request, tenant: str, service: Any, parsed: Any, arrival_s: float) -> Response:
        limiter = self.limiter
        if limiter is not None:
            try:
                limiter.admit(tenant, _images_in(parsed.request))
            except LimitExceeded as exc:
                raise Refused(BUSY, str(exc)) from None
        try:
            answer = await _until_disconnect(request, service.path.infer(parsed.request, arrival_s))
        finally:
            if limiter is not None:
                limiter.release(tenant)
        spec, result = service.spec, answer.result
        params: dict[str, Any] = {}
        if service.response_params:
            ids = result.subnet_ids if len(set(result.subnet_ids)) > 1 else result.subnet_ids[:1]
            params = {"subnet_id": ",".join(ids), "subnet_accuracy": result.accuracy,
                      "slo_met": result.outcome == "ok"}
        body, header_length = encode_infer_response(spec.name, spec.version, answer.request_id, answer.outputs,
                                                    result.probabilities, params, parsed)
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_length)})

    # --- health and metadata ----------------------------------------------------------------------------------------
    def health(self, request: Request, ready: bool) -> Response:
        try:
            self._authenticate(request, health=True)
        except Refused as exc:
            return _error(HTTP_STATUS[exc.reason], exc.message)
        if not ready:
            return JSONResponse({"live": True})
        ok = self.service.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def model(self, request: Request, name: str, version: str, what: str) -> Response:
        try:
            self._authenticate(request)
            service = self.service.model_service(name, version)
        except Refused as exc:
            return _error(HTTP_STATUS[exc.reason], exc.message)
        spec = service.spec
        if what == "ready":
            ok = service.ready
            return JSONResponse({"name": spec.name, "ready": ok}, status_code=200 if ok else 503)
        inputs = [{"name": n, "datatype": d, "shape": s} for n, d, s in spec.input_metadata()]
        outputs = [{"name": n, "datatype": d, "shape": s} for n, d, s in spec.output_metadata()]
        if what == "config":
            return JSONResponse({"name": spec.name, "platform": "superserve_supernet", "max_batch_size": 0,
                                 "input": [{"name": t["name"], "data_type": "TYPE_" + _config_type(t["datatype"]),
                                            "dims": t["shape"]} for t in inputs],
                                 "output": [{"name": t["name"], "data_type": "TYPE_" + _config_type(t["datatype"]),
                                             "dims": t["shape"]} for t in outputs]})
        return JSONResponse({"name": spec.name, "versions": [spec.version], "platform": "superserve_supernet",
                             "inputs": inputs, "outputs": outputs})

    def repository_index(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except Refused as exc:
            return _error(HTTP_STATUS[exc.reason], exc.message)
        return JSONResponse([{"name": m.name, "version": m.version, "state": m.state,
                              **({"reason": m.reason} if m.reason else {})} for m in self.service.repository_index()])

    async def repository_control(self, request: Request, name: str, action: str) -> Response:
        """POST /v2/repository/models/{name}/load|unload: a repository server loads or unloads the model (seconds,
        off the event loop); a one-model server answers 400."""
        try:
            self._authenticate(request)
        except Refused as exc:
            return _error(HTTP_STATUS[exc.reason], exc.message)
        control = getattr(self.service, action + "_model", None)
        if control is None:
            return _error(400, f"this server serves one model; start it with --model NAME=DIR (repeated) or "
                               f"--model-repository DIR to {action} models")
        try:
            await control(name)
        except Refused as exc:
            return _error(HTTP_STATUS[exc.reason], exc.message)
        return JSONResponse({})


def _config_type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise Refused(INVALID, "Inference-Header-Content-Length must be a non-negative integer")
    return int(raw)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (after its body was read, the ASGI server's next message is the
    disconnect: uvicorn sends it when the connection closes, or once the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(request: Request, call: Any) -> Any:
    """Await `call` (a coroutine); if the client disconnects first, cancel it (RequestPath withdraws its images and
    returns once the engine holds none) and answer CANCELLED_BY_CLIENT (no one reads it)."""
    task = asyncio.ensure_future(call)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Refused):
            await task
        raise Refused(CANCELLED_BY_CLIENT, "the client disconnected")
    except asyncio.CancelledError:  # the handler itself was cancelled (the server is stopping)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Refused):
            await task
        raise
    finally:
        watcher.cancel()


class LateDoor:
    """The door an app calls, set after the app is built: the server builds the app (FastAPI's route set-up, 0.3-0.8 s
    of pydantic work on this 2-core host) in a thread while the model loads, before the service the door serves
    exists. `door` is set before the app serves its first request."""

    door: HttpDoor | None = None

    def __getattr__(self, name: str) -> Any:  # only for what the slot itself lacks: the door's handlers
        return getattr(self.door, name)


def build_app(door: HttpDoor | LateDoor) -> FastAPI:
    app = FastAPI(title="superserve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:  # unknown routes, methods
        return _error(exc.status_code, str(exc.detail))

    @app.get("/v2")
    async def server_metadata() -> Response:
        from superserve.server.service import SERVER_NAME, SERVER_VERSION

        return JSONResponse({"name": SERVER_NAME, "version": SERVER_VERSION,
                             "extensions": ["model_repository", "parameters", "binary_tensor_data"]})

    @app.get("/v2/health/live")
    async def live(request: Request) -> Response:
        return door.health(request, ready=False)

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        return door.health(request, ready=True)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        async def metadata(request: Request, name: str, version: str = "") -> Response:
            return door.model(request, name, version, "metadata")

        async def model_ready(request: Request, name: str, version: str = "") -> Response:
            return door.model(request, name, version, "ready")

        async def config(request: Request, name: str, version: str = "") -> Response:
            return door.model(request, name, version, "config")

        async def infer(request: Request, name: str, version: str = "") -> Response:
            return await door.infer(request, name, version)

        app.add_api_route(prefix, metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/config", config, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])

    @app.post("/v2/repository/models/{name}/load")
    async def load(request: Request, name: str) -> Response:
        return await door.repository_control(request, name, "load")

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(request: Request, name: str) -> Response:
        return await door.repository_control(request, name, "unload")

    @app.api_route("/v2/repository/index", methods=["GET", "POST"])
    async def repository_index(request: Request) -> Response:
        return door.repository_index(request)

    return app


class HttpServer:
    """uvicorn serving `app` on the caller's event loop (the gRPC door's, so that the request path and its offload
    lanes are used from one loop). `start()` and `stop()` run on that loop."""

    def __init__(self, app: FastAPI, host: str, port: int, tls_cert: Any = None, tls_key: Any = None,
                 header_timeout_s: float = HEADER_TIMEOUT_S, max_connections: int | None = None) -> None:
        import uvicorn

        # log_config=None: leave the process's logging alone; access logs off (one line per call is too costly).
        # uvicorn binds the port itself: handing it a bound socket (`serve(sockets=...)`) made every answer wait
        # ~44 ms here (measured: 44 ms vs 0.35 ms for the same app; the cause was not found).
        # ws="none": no websocket routes (and no wsproto import at start). http: uvicorn's own protocol plus a deadline
        # on request headers and a cap on open connections (http_guard.py).
        self._config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None,
                                      log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                      ssl_certfile=tls_cert, ssl_keyfile=tls_key, ws="none",
                                      http=guarded_protocol(header_timeout_s,
                                                            max_connections or default_max_connections()))
        self.host, self.port = host, port
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        import uvicorn

        if self.port != 0:  # uvicorn raises SystemExit when it cannot bind, which would end this loop: check first
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, self.port))
                except OSError as exc:
                    raise OSError(f"cannot listen on {self.host}:{self.port} for HTTP ({exc.strerror or exc})") \
                        from None
        self._server = uvicorn.Server(self._config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                try:
                    self._task.result()
                except SystemExit:  # uvicorn exits when it cannot bind; the reason went to its (silenced) log
                    pass
                raise OSError(f"cannot listen on {self.host}:{self.port} for HTTP (in use?)")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=10)
