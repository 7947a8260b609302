"""KServe v2 / Open Inference Protocol JSON (and Triton's binary tensor extension) <-> the gRPC messages.

The HTTP door turns a request body into the `ModelInferRequest` the gRPC door receives, so both doors share one
validation (`codec.parse_request`) and one request path (`calls.RequestPath`). Every input ends up in
`raw_input_contents`: JSON `data` is converted with numpy here (off the event loop when the body is large: the caller
runs `parse_infer_body` in the offload lanes), binary tensors are sliced from the body as they are.

Request body (`Content-Type: application/json`):

    {"id": "r1", "parameters": {"slo_ms": 50, "min_accuracy": 0.9},
     "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0, 12, ...]}],
     "outputs": [{"name": "CLASS"}]}

`data` may be flat or nested (row-major). IMAGE_BYTES elements in JSON are base64 strings (a PNG is not text; MLServer
does the same); with the binary extension they are the protocol's length-prefixed bytes, as over gRPC.
Binary extension (what tritonclient.http sends by default): the header `Inference-Header-Content-Length: N` says the
first N bytes are the JSON; each binary input carries `"parameters": {"binary_data_size": K}` and its K bytes follow
in input order. Outputs are returned binary when the output asks (`"parameters": {"binary_data": true}`) or the
request does (`"parameters": {"binary_data_output": true}`); the answer then carries the same header.

Hostile bodies get `InvalidRequest` with a message: not JSON, too deeply nested, wrong types, sizes that do not add up.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from superserve.server.codec import OUTPUT_PROBS, InvalidRequest, show

HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 8
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True, eq=False)
class HttpInferRequest:
    """A parsed HTTP inference body: the gRPC request it stands for, and which outputs to answer in binary."""

    request: Any  # ModelInferRequest (model name and version are set by the caller from the URL)
    binary_outputs: frozenset[str]  # output names answered with the binary extension
    binary_default: bool  # outputs not named in the request: binary?


def parse_infer_body(body: bytes, header_length: int | None) -> HttpInferRequest:
    """Body bytes -> HttpInferRequest, or InvalidRequest saying what is wrong. CPU-bound for large bodies."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 <= header_length <= len(body):
            raise _invalid(f"Inference-Header-Content-Length {header_length} is outside the body's {len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        doc = json.loads(header)
    except RecursionError:
        raise _invalid("request body: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"request body is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(doc, dict):
        raise _invalid("request body must be a JSON object with an 'inputs' list")
    request = pb.ModelInferRequest()
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise _invalid("'id' must be a string")
    request.id = rid
    params = doc.get("parameters", {})
    binary_default = _set_parameters(request.parameters, params, "request")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _invalid("'inputs' must be a non-empty list of tensors")
    pos = 0
    for k, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise _invalid(f"inputs[{k}] must be an object with name, datatype, shape and data")
        name, datatype, shape = _tensor_head(tensor, f"inputs[{k}]")
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        tparams = tensor.get("parameters", {})
        if not isinstance(tparams, dict):
            raise _invalid(f"input {show(name)}: 'parameters' must be an object")
        size = tparams.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise _invalid(f"input {show(name)} has binary_data_size but the request has no "
                               "Inference-Header-Content-Length header")
            if not _is_int(size) or size < 0 or pos + size > len(binary):
                raise _invalid(f"input {show(name)}: binary_data_size {size!r} does not fit the {len(binary) - pos} "
                               "binary bytes left")
            if "data" in tensor:
                raise _invalid(f"input {show(name)} has both binary data and 'data'; send one of them")
            request.raw_input_contents.append(bytes(binary[pos:pos + size]))
            pos += size
        else:
            if "data" not in tensor:
                raise _invalid(f"input {show(name)} has no 'data' (and no binary_data_size)")
            request.raw_input_contents.append(_json_data(name, datatype, shape, tensor["data"]))
    if pos != len(binary):
        raise _invalid(f"{len(binary) - pos} binary bytes after the inputs' binary_data_size add up")
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise _invalid("'outputs' must be a list")
    binary_outputs = set()
    for k, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise _invalid(f"outputs[{k}] must be an object with a string 'name'")
        request.outputs.add(name=out["name"])
        oparams = out.get("parameters", {})
        if not isinstance(oparams, dict):
            raise _invalid(f"output {show(out['name'])}: 'parameters' must be an object")
        if oparams.get("binary_data", binary_default) is True:
            binary_outputs.add(out["name"])
    return HttpInferRequest(request, frozenset(binary_outputs), binary_default)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_head(tensor: dict, where: str) -> tuple[str, str, list[int]]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise _invalid(f"{where}: 'name' and 'datatype' must be strings")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
        raise _invalid(f"input {show(name)}: 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    if any(d > _INT64[1] for d in shape):
        raise _invalid(f"input {show(name)}: dimension too large")
    return name, datatype, shape


def _json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """A tensor's JSON `data` -> the raw bytes the gRPC door would have received for it."""
    if not isinstance(data, list):
        raise _invalid(f"input {show(name)}: 'data' must be a list")
    if datatype == "BYTES":
        flat = data if all(isinstance(x, str) for x in data) else None
        if flat is None:
            raise _invalid(f"input {show(name)}: BYTES data must be a flat list of base64 strings")
        out = []
        for k, item in enumerate(flat):
            try:
                raw = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(f"input {show(name)}: element {k} is not valid base64") from None
            out.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(out)
    if datatype not in ("FP32", "UINT8"):
        return b""  # codec.parse_request names the datatype this input needs
    try:
        array = np.asarray(data, dtype=np.float64 if datatype == "FP32" else np.int64)
    except (ValueError, TypeError, OverflowError):
        raise _invalid(f"input {show(name)}: 'data' must be a flat or nested list of numbers") from None
    count = math.prod(shape)
    if array.size != count:
        raise _invalid(f"input {show(name)}: shape {shape} needs {count} values, got {array.size}")
    if datatype == "UINT8":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise _invalid(f"input {show(name)}: UINT8 data outside [0, 255]")
        return array.astype(np.uint8).tobytes()
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which parse_request refuses by name
        return array.astype(np.float32).tobytes()


def _set_parameters(target: Any, params: Any, where: str) -> bool:
    """JSON parameters -> protobuf InferParameters; returns the request's `binary_data_output`. Non-scalar values of
    unknown names are ignored, as unknown parameters are over gRPC."""
    if not isinstance(params, dict):
        raise _invalid(f"{where} 'parameters' must be an object")
    for key, value in params.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise _invalid(f"parameter {show(key)} is out of the int64 range")
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        elif key in ("slo_ms", "min_accuracy", "sequence_id"):
            raise _invalid(f"parameter {key!r} must be a number, got {type(value).__name__}")
    return params.get("binary_data_output") is True


def encode_infer_response(model_name: str, model_version: str, request_id: str, outputs: tuple[str, ...],
                          probabilities: np.ndarray, parameters: dict[str, Any], parsed: HttpInferRequest,
                          ) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when nothing is binary) of a served call."""
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        answer["id"] = request_id
    if parameters:
        answer["parameters"] = parameters
    tensors, blobs = [], []
    for name in outputs:
        if name == OUTPUT_PROBS:
            array = np.ascontiguousarray(probabilities, dtype=np.float32)
            tensor: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        else:
            array = probabilities.argmax(axis=1).astype(np.int64)
            tensor = {"name": name, "datatype": "INT64", "shape": [int(array.shape[0])]}
        binary = name in parsed.binary_outputs or (parsed.binary_default and
                                                   not any(o.name == name for o in parsed.request.outputs))
        if binary:
            blob = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    answer["outputs"] = tensors
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
