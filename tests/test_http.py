"""The HTTP/REST door (KServe v2 JSON + Triton's binary extension): the stock tritonclient.http, plain JSON requests
as curl sends them (httpx), statuses and error bodies, hostile bodies, API keys and limits shared with gRPC, and a
client disconnect withdrawing the call. One real server on free ports, both doors."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tcg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from helpers import start_fixture_server

MODEL = "superserve"
SLO_MS = 600_000.0  # functional calls must never be shed on this shared, stalling host


@pytest.fixture(scope="module")
def server(serving_assets):
    from superserve.server.engine import EngineConfig

    srv = start_fixture_server(serving_assets, http_port=0, max_message_bytes=1 << 20,
                               engine=EngineConfig(default_slo_ms=SLO_MS))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(server):
    return f"http://127.0.0.1:{server.http_port}"


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def _grpc_probs(server, x: np.ndarray) -> np.ndarray:
    client = tcg.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = tcg.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        return client.infer(MODEL, [inp], parameters={"min_accuracy": 0.98}).as_numpy("PROBABILITIES")
    finally:
        client.close()


# --- the stock client ----------------------------------------------------------------------------------------------
def test_tritonclient_http_unchanged_health_metadata_index(server):
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and {t["name"] for t in meta["inputs"]} == {"INPUT", "IMAGE", "IMAGE_BYTES"}
    assert client.get_model_config(MODEL)["output"][1] == {"name": "CLASS", "data_type": "TYPE_INT64", "dims": [-1]}
    assert client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    client.close()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infer_matches_grpc(server, binary):
    """The same images through both doors, pinned to one subnet: the same probabilities; response parameters too."""
    x = _images(3, seed=int(binary))
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    inp = th.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [th.InferRequestedOutput("PROBABILITIES", binary_data=binary), th.InferRequestedOutput("CLASS",
                                                                                                      binary_data=binary)]
    result = client.infer(MODEL, [inp], outputs=outputs, request_id="r7", parameters={"min_accuracy": 0.98})
    probs = result.as_numpy("PROBABILITIES")
    np.testing.assert_allclose(probs, _grpc_probs(server, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("CLASS"), probs.argmax(axis=1))
    response = result.get_response()
    assert response["id"] == "r7" and response["parameters"]["subnet_accuracy"] == 0.98
    assert response["parameters"]["slo_met"] is True and response["parameters"]["subnet_id"]
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary
    client.close()


def test_tritonclient_http_encoded_png_binary(server):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 30), 200, np.uint8)).save(buf, format="PNG")
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    inp = th.InferInput("IMAGE_BYTES", [1], "BYTES")
    inp.set_data_from_numpy(np.array([buf.getvalue()], dtype=np.object_))
    assert client.infer(MODEL, [inp]).as_numpy("PROBABILITIES").shape == (1, 10)
    client.close()


# --- plain JSON (curl-style) ---------------------------------------------------------------------------------------
def test_plain_json_nested_uint8_with_parameters(http):
    pixels = np.arange(784, dtype=np.int64).reshape(1, 28, 28) % 256
    body = {"id": "a", "parameters": {"slo_ms": SLO_MS, "min_accuracy": 0.9},
            "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 28, 28], "data": pixels.tolist()}],
            "outputs": [{"name": "CLASS"}]}
    r = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["id"] == "a" and answer["model_name"] == MODEL
    assert [o["name"] for o in answer["outputs"]] == ["CLASS"] and answer["outputs"][0]["shape"] == [1]
    assert 0 <= answer["outputs"][0]["data"][0] < 10 and answer["parameters"]["subnet_accuracy"] >= 0.9
    # The versioned path is the same model.
    assert http.post(f"/v2/models/{MODEL}/versions/1/infer", json=body).json()["outputs"] == answer["outputs"]


def test_plain_json_base64_png(http):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    body = {"inputs": [{"name": "IMAGE_BYTES", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(buf.getvalue()).decode()]}]}
    r = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["PROBABILITIES", "CLASS"]


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'["a list"]', 400, "JSON object"),
    (b'{"inputs": []}', 400, "non-empty list"),
    (b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [1.0]}]}', 400,
     "needs 784 values, got 1"),
    (b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": ["x"]}]}', 400,
     "list of numbers"),
    (b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, -1], "data": []}]}', 400,
     "non-negative integers"),
    (b'{"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0, 1, 2, 300]}]}', 400,
     "outside [0, 255]"),
    (b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [' + b"1e39, " * 783
     + b'0]}]}', 400, "NaN or infinite"),
    (b'{"inputs": [{"name": "IMAGE_BYTES", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', 400, "base64"),
    (b'{"parameters": {"slo_ms": [1]}, "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 2, 2], '
     b'"data": [0, 0, 0, 0]}]}', 400, "must be a number"),
    (b'{"parameters": {"slo_ms": -5}, "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 2, 2], '
     b'"data": [0, 0, 0, 0]}]}', 400, "slo_ms"),
    (b'{"parameters": {"min_accuracy": 0.9999}, "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 2, 2],'
     b' "data": [0, 0, 0, 0]}]}', 400, "exceeds the most accurate subnet"),
    (b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [0]}]}', 400, "unknown input"),
])
def test_bad_bodies_get_400_with_a_message(http, body, status, says):
    r = http.post(f"/v2/models/{MODEL}/infer", content=body)
    assert r.status_code == status and says in r.json()["error"], r.text


def test_statuses_not_found_too_large_binary_mismatch_and_unknown_route(http):
    r = http.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    assert http.post(f"/v2/models/{MODEL}/versions/9/infer", json={}).status_code == 404
    r = http.post(f"/v2/models/{MODEL}/infer", content=b" " * ((1 << 20) + 1))
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    header = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                     "parameters": {"binary_data_size": 784 * 4}}]}).encode()
    r = http.post(f"/v2/models/{MODEL}/infer", content=header + bytes(10),
                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]
    r = http.get("/v2/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_a_missed_deadline_is_504(http):
    body = {"parameters": {"slo_ms": 0.001},
            "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]}
    r = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 504 and r.json()["error"]


def test_random_hostile_bodies_all_get_an_error_and_the_server_still_answers(http):
    """Mutations of a valid body (bytes flipped, cut, duplicated): every answer is a status with a JSON error body or
    a result, never a dropped connection; a good call afterwards is served."""
    rng = np.random.default_rng(7)
    good = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 4, 4],
                                   "data": list(range(16))}], "parameters": {"slo_ms": 100000}}).encode()
    statuses = set()
    for _ in range(150):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 6))):
            op = rng.integers(3)
            k = int(rng.integers(len(b)))
            if op == 0:
                b[k] = int(rng.integers(256))
            elif op == 1:
                del b[k:k + int(rng.integers(1, 8))]
            else:
                b[k:k] = b[max(0, k - 8):k]
        r = http.post(f"/v2/models/{MODEL}/infer", content=bytes(b))
        statuses.add(r.status_code)
        assert r.status_code == 200 or "error" in r.json()
    assert statuses <= {200, 400, 404} and 400 in statuses
    assert http.post(f"/v2/models/{MODEL}/infer", content=good).status_code == 200


# --- security shared with gRPC --------------------------------------------------------------------------------------
def test_api_keys_and_rate_limit_apply_to_http_with_one_budget_across_doors(serving_assets):
    from superserve.server.engine import EngineConfig
    from superserve.server.security import SecurityConfig

    keys = {"alice": "a" * 20}
    srv = start_fixture_server(serving_assets, http_port=0, engine=EngineConfig(default_slo_ms=SLO_MS),
                               security=SecurityConfig(api_keys=keys, rate_limit_images_per_s=0.001,
                                                       rate_burst_images=3))
    try:
        body = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [2, 28, 28], "data": [0] * 1568}]}
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=60) as http:
            assert http.get("/v2/health/ready").status_code == 200  # health stays open
            r = http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert http.get(f"/v2/models/{MODEL}").status_code == 401
            alice = {"x-api-key": keys["alice"]}
            assert http.post(f"/v2/models/{MODEL}/infer", json=body, headers=alice).status_code == 200  # 2 of 3
            # The third image goes over gRPC: the same tenant's bucket.
            client = tcg.InferenceServerClient(f"127.0.0.1:{srv.port}")
            one = tcg.InferInput("INPUT", [1, 1, 28, 28], "FP32")
            one.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
            client.infer(MODEL, [one], headers={"authorization": f"Bearer {keys['alice']}"})
            client.close()
            r = http.post(f"/v2/models/{MODEL}/infer", json=body, headers=alice)
            assert r.status_code == 429 and "rate limit" in r.json()["error"]
    finally:
        srv.stop()


# --- a client that goes away --------------------------------------------------------------------------------------
def test_a_disconnected_client_withdraws_its_queued_images(serving_assets, monkeypatch):
    from superserve.server import workers
    from superserve.server.engine import EngineConfig

    opened, entered, computed = threading.Event(), threading.Event(), []
    real = workers.run_batch

    def gated(net, configs, batch_id, subnet_id, inputs, worker_id, *device):
        entered.set()
        opened.wait(120)
        computed.append(inputs.shape[0])
        return real(net, configs, batch_id, subnet_id, inputs, worker_id, *device)
    monkeypatch.setattr(workers, "run_batch", gated)
    srv = start_fixture_server(serving_assets, http_port=0, engine=EngineConfig(default_slo_ms=SLO_MS))
    url = f"http://127.0.0.1:{srv.http_port}/v2/models/{MODEL}/infer"

    def body(n):
        return {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [n, 28, 28], "data": [0] * (784 * n)}]}
    try:
        first = []
        held = threading.Thread(target=lambda: first.append(httpx.post(url, json=body(1), timeout=120).status_code))
        held.start()
        assert entered.wait(60)  # the first call holds the only worker
        for _ in range(5):  # 5 calls of 8 images, each given up by its client after 0.3 s
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url, json=body(8), timeout=httpx.Timeout(60, read=0.3))
        deadline = time.monotonic() + 30
        while len(srv.engine._queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(srv.engine._queue) == 0  # withdrawn, not left to be computed for no one
        opened.set()
        held.join(60)
        assert first == [200]
        assert httpx.post(url, json=body(2), timeout=60).status_code == 200
        assert sum(computed) == 1 + 2  # none of the 40 abandoned images ran
    finally:
        opened.set()
        srv.stop()


# --- the command ---------------------------------------------------------------------------------------------------
def test_http_port_flag():
    from superserve.cli import build_parser
    from superserve.server.cli import config_from_args

    def cfg(*flags):
        return config_from_args(build_parser("serve").parse_args(["serve", *flags]))
    assert cfg("--http-port", "-1").http_port is None and cfg("--http-port", "9000").http_port == 9000
    assert not cfg("--http-port", "9000").http_port_fallback and cfg().http_port_fallback


@pytest.mark.slow  # end to end, 5-15 s on a 2-core host: the full run keeps it
def test_superserve_serve_answers_curl_on_its_http_port(serving_assets):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    zoo, ckpt = serving_assets
    proc = subprocess.Popen([sys.executable, "-m", "superserve.cli", "serve", "--zoo", str(zoo), "--checkpoint",
                             str(ckpt), "--port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", "-1",
                             "--reprofile", "never", "--default-slo-ms", str(SLO_MS)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ})
    try:
        line = proc.stdout.readline()
        assert f"HTTP/REST http://127.0.0.1:{ports[1]}/v2" in line, line + proc.stderr.read()
        body = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}],
                "outputs": [{"name": "CLASS"}]}
        r = httpx.post(f"http://127.0.0.1:{ports[1]}/v2/models/{MODEL}/infer", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_taken_http_port_is_an_error_at_start(serving_assets):
    import socket

    from superserve.server.app import Server, ServeConfig

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        zoo, ckpt = serving_assets
        srv = Server(ServeConfig(port=0, http_port=held.getsockname()[1], metrics_port=None, zoo_path=zoo,
                                 checkpoint_path=ckpt, quiet=True, reprofile="never"))
        with pytest.raises(OSError, match="for HTTP"):
            srv.start()
        srv.stop()
        # The command line's default port falls back to a free one instead (the port is printed).
        srv = Server(ServeConfig(port=0, http_port=held.getsockname()[1], http_port_fallback=True, metrics_port=None,
                                 zoo_path=zoo, checkpoint_path=ckpt, quiet=True, reprofile="never")).start()
        try:
            assert srv.http_port not in (None, held.getsockname()[1])
            assert httpx.get(f"http://127.0.0.1:{srv.http_port}/v2/health/live").json() == {"live": True}
        finally:
            srv.stop()


def test_tls_covers_the_http_door(serving_assets, tmp_path):
    import subprocess

    from superserve.server.security import SecurityConfig

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    srv = start_fixture_server(serving_assets, http_port=0, security=SecurityConfig(tls_cert=cert, tls_key=key))
    try:
        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{srv.http_port}/v2/health/live", verify=context).json() == {"live": True}
        with pytest.raises(httpx.HTTPError):  # plaintext is not served
            httpx.get(f"http://127.0.0.1:{srv.http_port}/v2/health/live", timeout=10)
    finally:
        srv.stop()


# --- connection limits below the handlers (server/http_guard.py) -------------------------------------------------
def _read_all(sock, timeout_s: float) -> bytes:
    """What the peer sends until it closes the connection; raises TimeoutError if it is still open after timeout_s."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@contextlib.contextmanager
def _ping_door(**limits):
    """A standalone HTTP door (the server's HttpServer) on a one-route app, on its own event loop; yields its port."""
    import asyncio

    from fastapi import FastAPI

    from superserve.server.http_app import HttpServer

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    door = HttpServer(app, "127.0.0.1", 0, **limits)
    try:
        yield asyncio.run_coroutine_threadsafe(door.start(), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(door.stop(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)


def test_the_http_door_times_out_stalled_headers():
    """A connection that sends nothing, or half a request a byte at a time, is answered 408 and closed once its
    headers are late, also for the second request of a keep-alive connection; a normal client is served."""
    import socket

    with _ping_door(header_timeout_s=0.6) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"GET /ping HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        for _ in range(3):  # each byte before the deadline: the deadline holds all the same
            time.sleep(0.15)
            trickle.sendall(b"s")
        reply = _read_all(trickle, 3.0)
        assert reply.startswith(b"HTTP/1.1 408") and b"not received within 0.6 s" in reply, reply
        assert 0.5 < time.monotonic() - t0 < 2.5
        assert _read_all(silent, 3.0).startswith(b"HTTP/1.1 408")
        keep = socket.create_connection(("127.0.0.1", port))  # a served request, then a stalled second one
        keep.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        keep.settimeout(3.0)
        first = b""
        while not first.endswith(b'{"ok":true}'):  # the whole first answer: headers and body may come apart
            first += keep.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        keep.sendall(b"GET /pi")
        assert _read_all(keep, 3.0).startswith(b"HTTP/1.1 408")
        for s in (silent, trickle, keep):
            s.close()
        with httpx.Client(timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{port}/ping").json() == {"ok": True}


def test_the_http_door_caps_open_connections():
    """Beyond the cap a new connection is answered 503 and closed; once others close, clients are served again."""
    import socket

    with _ping_door(header_timeout_s=60.0, max_connections=3) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)
        over = socket.create_connection(("127.0.0.1", port))
        reply = _read_all(over, 5.0)
        assert reply.startswith(b"HTTP/1.1 503") and b"too many open connections (at most 3)" in reply, reply
        for s in (*held, over):
            s.close()
        with httpx.Client(timeout=5) as client:
            for _ in range(50):  # until the door has seen the three close
                answer = client.get(f"http://127.0.0.1:{port}/ping")
                if answer.status_code == 200:
                    assert answer.json() == {"ok": True}
                    break
                assert answer.status_code == 503
                time.sleep(0.1)
            else:
                raise AssertionError("no client served after the held connections closed")


def test_the_servers_doors_close_silent_connections(server):
    """The doors `superserve serve` starts bound a connection that never sends a request: HTTP answers 408 after its
    headers deadline, 10 s; gRPC closes one that has not finished its handshake in the same time."""
    import socket

    from superserve.server.http_guard import HEADER_TIMEOUT_S, default_max_connections

    assert HEADER_TIMEOUT_S == 10.0 and 16 <= default_max_connections() <= 2048
    http_silent = socket.create_connection(("127.0.0.1", server.http_port))
    grpc_silent = socket.create_connection(("127.0.0.1", server.port))
    t0 = time.monotonic()
    assert _read_all(http_silent, 20.0).startswith(b"HTTP/1.1 408")
    assert 9.0 < time.monotonic() - t0 < 15.0
    said = _read_all(grpc_silent, 20.0 - (time.monotonic() - t0))  # closed (else TimeoutError)
    assert said == b"" or b"handshake timeout" in said, said  # gRPC's GOAWAY frame says why
    for s in (http_silent, grpc_silent):
        s.close()
