"""Protocol tensors and parameters <-> model input and output, with validation that says what is wrong.

Inputs (exactly one per request; ModelMetadata declares all three):
- `INPUT`  FP32  [B, C, S, S]: images already normalised like the training data (what `DatasetSplits.prepare` makes);
- `IMAGE`  UINT8 [B, C, H, W] (or [B, H, W] for one channel): raw pixels in [0, raw_max], any H, W (resized to S);
- `IMAGE_BYTES` BYTES [B]: encoded PNG or JPEG files (decoded with torchvision.io, converted to the model's channels).
Raw pixels are prepared exactly as `training.data.DatasetSplits.prepare` prepares them: / raw_max, bilinear antialiased
resize to S x S, (x - mean) / std per channel, with the statistics stored in the checkpoint's meta.

Outputs: `PROBABILITIES` FP32 [B, num_classes] and `CLASS` INT64 [B], in `raw_output_contents` (tritonclient reads
only that), in the order the request asked for them (both, PROBABILITIES first, when it asked for none).

Request parameters: `slo_ms` (> 0, finite, at most MAX_SLO_MS) and `min_accuracy` (in [0, 1]), as double, int64 or
uint64 parameters; anything else that is not a number is rejected. Unknown parameters are ignored (clients add their
own), except `sequence_id`: this model is stateless.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import grpc
import numpy as np
import torch
import torch.nn.functional as F

INPUT_FP32, INPUT_UINT8, INPUT_BYTES = "INPUT", "IMAGE", "IMAGE_BYTES"
OUTPUT_PROBS, OUTPUT_CLASS = "PROBABILITIES", "CLASS"
OUTPUTS = (OUTPUT_PROBS, OUTPUT_CLASS)
MAX_SLO_MS = 600_000.0  # ten minutes: longer is surely a unit mistake (seconds given as ms would not be caught)
MAX_IMAGE_SIDE_PX = 4096  # decoded or raw images larger than this are refused rather than resized
_DTYPE_SIZE = {"FP32": 4, "UINT8": 1}


class InvalidRequest(Exception):
    """A request the server answers with `code` and `message` without queuing it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class ModelSpec:
    """What the served model accepts and returns, and how raw pixels become model input."""

    name: str  # the protocol model name
    version: str  # the only served version ("" in a request means this one)
    in_channels: int  # C
    image_size: int  # S: the model computes on S x S images
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units (after / raw_max)
    std: tuple[float, ...]
    raw_max: float = 255.0  # raw pixel value that maps to 1.0
    max_images: int = 64  # images per request (each is one request to the scheduler)

    def input_metadata(self) -> list[tuple[str, str, list[int]]]:
        c, s = self.in_channels, self.image_size
        return [(INPUT_FP32, "FP32", [-1, c, s, s]), (INPUT_UINT8, "UINT8", [-1, c, -1, -1]),
                (INPUT_BYTES, "BYTES", [-1])]

    def output_metadata(self) -> list[tuple[str, str, list[int]]]:
        return [(OUTPUT_PROBS, "FP32", [-1, self.num_classes]), (OUTPUT_CLASS, "INT64", [-1])]


@dataclass(frozen=True)
class Hints:
    slo_ms: float | None  # None: the server default
    min_accuracy: float  # 0 = no hint


@dataclass(frozen=True, eq=False)
class DecodedInputs:
    """A validated request, ready for the engine."""

    images: torch.Tensor | None  # (B, C, S, S) float32 normalised; None until `encoded` is decoded
    encoded: tuple[bytes, ...]  # BYTES input not yet decoded (decoding is slow: the caller runs it off-loop)
    hints: Hints
    outputs: tuple[str, ...]  # output names to return, in order


# --- parameters -----------------------------------------------------------------------------------------------------
def _number_param(name: str, param: Any) -> float:
    kind = param.WhichOneof("parameter_choice")
    if kind == "double_param":
        value = float(param.double_param)
    elif kind in ("int64_param", "uint64_param"):
        value = float(getattr(param, kind))
    else:
        shown = {"string_param": "a string", "bool_param": "a bool", None: "empty"}.get(kind, kind)
        raise _invalid(f"parameter {name!r} must be a number (double or int64 parameter), got {shown}")
    if not math.isfinite(value):
        raise _invalid(f"parameter {name!r} must be finite, got {value}")
    return value


def decode_hints(parameters: Any) -> Hints:
    if "sequence_id" in parameters:
        raise _invalid("sequence requests are not supported: this model is stateless")
    slo_ms: float | None = None
    if "slo_ms" in parameters:
        slo_ms = _number_param("slo_ms", parameters["slo_ms"])
        if not 0 < slo_ms <= MAX_SLO_MS:
            raise _invalid(f"parameter 'slo_ms' must be in (0, {MAX_SLO_MS:g}] milliseconds, got {slo_ms:g}")
    min_accuracy = 0.0
    if "min_accuracy" in parameters:
        min_accuracy = _number_param("min_accuracy", parameters["min_accuracy"])
        if not 0.0 <= min_accuracy <= 1.0:
            raise _invalid(f"parameter 'min_accuracy' is a fraction in [0, 1], got {min_accuracy:g}")
    return Hints(slo_ms, min_accuracy)


# --- tensors ----------------------------------------------------------------------------------------------------------
def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _raw_or_typed(request: Any, index: int, tensor: Any, dtype: str) -> bytes | np.ndarray:
    """The tensor's payload: raw bytes from raw_input_contents, or a numpy array from typed contents."""
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise _invalid(f"{len(request.inputs)} inputs but {len(request.raw_input_contents)} raw_input_contents")
        return request.raw_input_contents[index]
    contents = tensor.contents
    if dtype == "FP32":
        return np.asarray(contents.fp32_contents, dtype=np.float32)
    if dtype == "UINT8":
        values = np.asarray(contents.uint_contents, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise _invalid("UINT8 contents outside [0, 255]")
        return values.astype(np.uint8)
    return b""  # BYTES is handled by the caller


def _check_image_shape(name: str, dtype: str, shape: tuple[int, ...], spec: ModelSpec) -> tuple[int, ...]:
    """(B, C, H, W) from the declared shape, or InvalidRequest saying what was expected."""
    c, s = spec.in_channels, spec.image_size
    if dtype == "FP32":
        if len(shape) != 4 or shape[1:] != (c, s, s):
            raise _invalid(f"input {name} (FP32) must have shape [B, {c}, {s}, {s}], got {_shape_str(shape)}")
        bchw = shape
    else:
        if len(shape) == 3 and c == 1:
            bchw = (shape[0], 1, shape[1], shape[2])
        elif len(shape) == 4 and shape[1] == c:
            bchw = shape
        else:
            grey = " or [B, H, W]" if c == 1 else ""
            raise _invalid(f"input {name} (UINT8) must have shape [B, {c}, H, W]{grey}, got {_shape_str(shape)}")
        if not (1 <= bchw[2] <= MAX_IMAGE_SIDE_PX and 1 <= bchw[3] <= MAX_IMAGE_SIDE_PX):
            raise _invalid(f"input {name}: image sides must be in [1, {MAX_IMAGE_SIDE_PX}] px, got "
                           f"{bchw[2]} x {bchw[3]}")
    if not 1 <= bchw[0] <= spec.max_images:
        raise _invalid(f"input {name}: batch dimension must be in [1, {spec.max_images}], got {bchw[0]}")
    return bchw


def decode_request(request: Any, spec: ModelSpec) -> DecodedInputs:
    """Validate a ModelInferRequest (model name/version are checked by the caller) and decode its tensor."""
    hints = decode_hints(request.parameters)
    if len(request.inputs) != 1:
        raise _invalid(f"expected exactly one input ({INPUT_FP32}, {INPUT_UINT8} or {INPUT_BYTES}), "
                       f"got {len(request.inputs)}")
    outputs = tuple(o.name for o in request.outputs) or OUTPUTS
    for name in outputs:
        if name not in OUTPUTS:
            raise _invalid(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
    if len(set(outputs)) != len(outputs):
        raise _invalid("an output is requested twice")
    tensor = request.inputs[0]
    name, dtype, shape = tensor.name, tensor.datatype, tuple(int(d) for d in tensor.shape)
    expected = {INPUT_FP32: "FP32", INPUT_UINT8: "UINT8", INPUT_BYTES: "BYTES"}
    if name not in expected:
        raise _invalid(f"unknown input {name!r}; this model takes one of {', '.join(expected)}")
    if dtype != expected[name]:
        raise _invalid(f"input {name} must be {expected[name]}, got datatype {dtype!r}")
    if any(d < 0 for d in shape):
        raise _invalid(f"input {name}: negative dimension in shape {_shape_str(shape)}")
    if name == INPUT_BYTES:
        return DecodedInputs(None, _split_bytes(request, tensor, shape, spec), hints, outputs)
    bchw = _check_image_shape(name, dtype, shape, spec)
    payload = _raw_or_typed(request, 0, tensor, dtype)
    count = bchw[0] * bchw[1] * bchw[2] * bchw[3]
    if isinstance(payload, bytes):
        want = count * _DTYPE_SIZE[dtype]
        if len(payload) != want:
            raise _invalid(f"input {name}: shape {_shape_str(shape)} of {dtype} needs {want} bytes, got {len(payload)}")
        array = np.frombuffer(payload, dtype=np.float32 if dtype == "FP32" else np.uint8)
    else:
        if payload.size != count:
            raise _invalid(f"input {name}: shape {_shape_str(shape)} needs {count} values, got {payload.size}")
        array = payload
    if dtype == "FP32" and not np.isfinite(array).all():  # numpy: a tenth of torch's per-call overhead here
        raise _invalid(f"input {name} holds NaN or infinite values")
    x = torch.from_numpy(array.reshape(bchw).copy())  # copy: frombuffer views are read-only
    if dtype == "FP32":
        return DecodedInputs(x, (), hints, outputs)
    return DecodedInputs(prepare_raw(x, spec), (), hints, outputs)


def _split_bytes(request: Any, tensor: Any, shape: tuple[int, ...], spec: ModelSpec) -> tuple[bytes, ...]:
    if len(shape) != 1 or not 1 <= shape[0] <= spec.max_images:
        raise _invalid(f"input {INPUT_BYTES} must have shape [B] with 1 <= B <= {spec.max_images} encoded images, "
                       f"got {_shape_str(shape)}")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise _invalid(f"1 input but {len(request.raw_input_contents)} raw_input_contents")
        raw, items, pos = request.raw_input_contents[0], [], 0
        while pos < len(raw):  # the protocol's BYTES layout: 4-byte little-endian length, then the bytes
            if pos + 4 > len(raw):
                raise _invalid(f"input {INPUT_BYTES}: truncated length prefix at byte {pos}")
            (length,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + length > len(raw):
                raise _invalid(f"input {INPUT_BYTES}: element {len(items)} claims {length} bytes, "
                               f"only {len(raw) - pos - 4} remain")
            items.append(bytes(raw[pos + 4:pos + 4 + length]))
            pos += 4 + length
    else:
        items = list(tensor.contents.bytes_contents)
    if len(items) != shape[0]:
        raise _invalid(f"input {INPUT_BYTES}: shape [{shape[0]}] but {len(items)} elements")
    return tuple(items)


def decoder_ready() -> bool:
    """Whether torchvision.io is imported (importing it takes seconds on a busy CPU, so it is done lazily)."""
    return "torchvision.io" in sys.modules


def load_decoder() -> None:
    import torchvision.io  # noqa: F401


def decode_images(encoded: Sequence[bytes], spec: ModelSpec) -> torch.Tensor:
    """Encoded PNG/JPEG files -> (B, C, S, S) model input. Slow (milliseconds): call it off the event loop."""
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.GRAY if spec.in_channels == 1 else ImageReadMode.RGB
    prepared = []
    for k, data in enumerate(encoded):
        if not data:
            raise _invalid(f"input {INPUT_BYTES}: element {k} is empty")
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)  # (C, H, W) uint8
        except (RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _invalid(f"input {INPUT_BYTES}: element {k} is not a decodable PNG/JPEG image ({first_line[:120]})")
        if img.dim() != 3 or img.shape[0] != spec.in_channels:
            raise _invalid(f"input {INPUT_BYTES}: element {k} decoded to shape {tuple(img.shape)}")
        if max(img.shape[1:]) > MAX_IMAGE_SIDE_PX:
            raise _invalid(f"input {INPUT_BYTES}: element {k} is {img.shape[2]} x {img.shape[1]} px, more than "
                           f"{MAX_IMAGE_SIDE_PX} on a side")
        prepared.append(prepare_raw(img[None], spec))
    return torch.cat(prepared)


def prepare_raw(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(B, C, H, W) raw pixels -> (B, C, S, S) normalised: the same arithmetic as `DatasetSplits.prepare`."""
    x = x.to(torch.float32) / float(spec.raw_max)
    s = spec.image_size
    if x.shape[-2:] != (s, s):
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def encode_outputs(response: Any, outputs: Sequence[str], probabilities: np.ndarray) -> None:
    """Fill `response.outputs` and `raw_output_contents` from (B, num_classes) float32 probabilities."""
    batch = probabilities.shape[0]
    for name in outputs:
        out = response.outputs.add()
        out.name = name
        if name == OUTPUT_PROBS:
            out.datatype = "FP32"
            out.shape.extend(probabilities.shape)
            response.raw_output_contents.append(np.ascontiguousarray(probabilities, dtype=np.float32).tobytes())
        else:
            out.datatype = "INT64"
            out.shape.append(batch)
            response.raw_output_contents.append(probabilities.argmax(axis=1).astype(np.int64).tobytes())
