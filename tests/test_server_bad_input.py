"""Malformed requests of many kinds, interleaved with good ones: each bad one gets the right status and a message
saying what is wrong, every good one succeeds, and the server keeps serving."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402

from superserve.server.app import Server, ServeConfig  # noqa: E402
from superserve.server.engine import EngineConfig  # noqa: E402

MODEL = "superserve"
INVALID, NOT_FOUND, TOO_BIG = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                               grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.fixture(scope="module")
def stub(serving_assets):
    zoo, ckpt = serving_assets
    srv = Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True,
                             reprofile="never", max_message_bytes=1 << 20,
                             engine=EngineConfig(default_slo_ms=10_000.0, queue_capacity=4096))).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}", options=[("grpc.max_send_message_length", 8 << 20)])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel), srv
    channel.close()
    srv.stop()


def request(name="INPUT", dtype="FP32", shape=(1, 1, 28, 28), payload=None, model=MODEL, version="",
            params=None, outputs=()) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = req.inputs.add(name=name, datatype=dtype, shape=list(shape))
    del tensor
    if payload is None:
        count = int(np.prod(shape)) if shape else 0
        payload = np.zeros(count, dtype=np.float32 if dtype == "FP32" else np.uint8).tobytes()
    req.raw_input_contents.append(payload)
    for key, (kind, value) in (params or {}).items():
        setattr(req.parameters[key], kind, value)
    for out in outputs:
        req.outputs.add(name=out)
    return req


def good(k: int) -> pb.ModelInferRequest:
    x = np.random.default_rng(k).standard_normal((1, 1, 28, 28)).astype(np.float32)
    return request(payload=x.tobytes(), params={"slo_ms": ("double_param", 10_000.0)})


def typed_good() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=MODEL)
    t = req.inputs.add(name="IMAGE", datatype="UINT8", shape=[1, 28, 28])
    t.contents.uint_contents.extend([7] * 784)
    return req


def bytes_input(items: list[bytes], shape=None) -> pb.ModelInferRequest:
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    return request(name="IMAGE_BYTES", dtype="BYTES", shape=shape or (len(items),), payload=raw)


def two_inputs() -> pb.ModelInferRequest:
    req = request()
    req.inputs.add(name="IMAGE", datatype="UINT8", shape=[1, 28, 28])
    req.raw_input_contents.append(bytes(784))
    return req


# (kind, request builder, expected status, a word the message must contain)
BAD = [
    ("wrong dtype", lambda: request(dtype="FP64", payload=bytes(784 * 8)), INVALID, "FP32"),
    ("int dtype", lambda: request(dtype="INT32"), INVALID, "datatype"),
    ("wrong shape", lambda: request(shape=(1, 1, 27, 28)), INVALID, "shape"),
    ("missing batch dim", lambda: request(shape=(1, 28, 28)), INVALID, "shape"),
    ("batch zero", lambda: request(shape=(0, 1, 28, 28)), INVALID, "batch"),
    ("batch too large", lambda: request(shape=(65, 1, 28, 28)), INVALID, "batch"),
    ("negative dim", lambda: request(shape=(-1, 1, 28, 28), payload=b""), INVALID, "negative"),
    ("short payload", lambda: request(payload=bytes(784 * 4 - 4)), INVALID, "bytes"),
    ("long payload", lambda: request(payload=bytes(784 * 4 + 1)), INVALID, "bytes"),
    ("uint8 wrong bytes", lambda: request(name="IMAGE", dtype="UINT8", shape=(1, 28, 28), payload=bytes(10)),
     INVALID, "bytes"),
    ("uint8 huge side", lambda: request(name="IMAGE", dtype="UINT8", shape=(1, 1, 1, 5000), payload=bytes(5000)),
     INVALID, "sides"),
    ("nan pixels", lambda: request(payload=np.full(784, np.nan, np.float32).tobytes()), INVALID, "NaN"),
    ("undecodable image", lambda: bytes_input([b"this is not a jpeg"]), INVALID, "decodable"),
    ("empty image", lambda: bytes_input([b""]), INVALID, "empty"),
    ("truncated bytes", lambda: request(name="IMAGE_BYTES", dtype="BYTES", shape=(1,), payload=b"\x10\x00"),
     INVALID, "truncated"),
    ("bytes count mismatch", lambda: bytes_input([b"x"], shape=(2,)), INVALID, "elements"),
    ("unknown input", lambda: request(name="PIXELS"), INVALID, "unknown input"),
    ("two inputs", two_inputs, INVALID, "exactly one"),
    ("unknown output", lambda: request(outputs=("LOGITS",)), INVALID, "unknown output"),
    ("unknown model", lambda: request(model="resnet50"), NOT_FOUND, "unknown model"),
    ("unknown version", lambda: request(version="3"), NOT_FOUND, "version"),
    ("negative slo", lambda: request(params={"slo_ms": ("double_param", -5.0)}), INVALID, "slo_ms"),
    ("zero slo", lambda: request(params={"slo_ms": ("int64_param", 0)}), INVALID, "slo_ms"),
    ("string slo", lambda: request(params={"slo_ms": ("string_param", "fast")}), INVALID, "number"),
    ("bool slo", lambda: request(params={"slo_ms": ("bool_param", True)}), INVALID, "number"),
    ("nan slo", lambda: request(params={"slo_ms": ("double_param", float("nan"))}), INVALID, "finite"),
    ("accuracy above 1", lambda: request(params={"min_accuracy": ("double_param", 1.5)}), INVALID, "[0, 1]"),
    ("negative accuracy", lambda: request(params={"min_accuracy": ("double_param", -0.1)}), INVALID, "[0, 1]"),
    ("unreachable accuracy", lambda: request(params={"min_accuracy": ("double_param", 0.999)}), INVALID,
     "most accurate"),
    ("sequence request", lambda: request(params={"sequence_id": ("int64_param", 3)}), INVALID, "stateless"),
    ("oversize message", lambda: request(shape=(1, 1, 28, 28), payload=bytes(2 << 20)), TOO_BIG, ""),
]


def test_malformed_requests_interleaved_with_good_ones(stub):
    stub, srv = stub
    futures, futures_request = [], {}

    def send(req):
        fut = stub.ModelInfer.future(req, timeout=60)
        futures_request[id(fut)] = req
        return fut

    rounds = 1100 // len(BAD) + 1  # >= 1,000 malformed requests
    k = 0
    for r in range(rounds):
        for kind, build, code, word in BAD:
            if kind == "oversize message" and r % 10:
                continue  # 2 MB each: a few are enough
            futures.append((kind, code, word, send(build())))
            k += 1
            if k % 4 == 0:
                futures.append(("good", grpc.StatusCode.OK, "", send(good(k))))
            if k % 50 == 0:
                futures.append(("typed good", grpc.StatusCode.OK, "", send(typed_good())))
    bad = sum(1 for f in futures if f[1] != grpc.StatusCode.OK)
    assert bad >= 1000
    goods = cancelled = 0
    for kind, code, word, fut in futures:
        try:
            try:
                response = fut.result()
            except grpc.RpcError as err:
                # grpc.aio itself (not our code, which never answers CANCELLED) answers a handful of ~1,400
                # concurrent calls CANCELLED now and then: a race in its Cython layer, reproduced with a bare
                # grpc.aio server. A client resends those; we do once and bound how often it happens.
                if err.code() != grpc.StatusCode.CANCELLED:
                    raise
                cancelled += 1
                response = stub.ModelInfer(futures_request[id(fut)], timeout=60)
            assert code == grpc.StatusCode.OK, f"{kind}: accepted"
            assert np.frombuffer(response.raw_output_contents[0], np.float32).shape == (10,)
            goods += 1
        except grpc.RpcError as err:
            assert err.code() == code, f"{kind}: {err.code()} {err.details()}"
            assert word in err.details(), f"{kind}: message {err.details()!r} lacks {word!r}"
    assert goods == sum(1 for f in futures if f[1] == grpc.StatusCode.OK) > 250
    assert cancelled <= len(futures) // 100, f"{cancelled} of {len(futures)} calls answered CANCELLED by gRPC"
    # still serving normally afterwards
    assert stub.ModelInfer(good(0), timeout=60).raw_output_contents
