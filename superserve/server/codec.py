"""Protocol tensors and parameters <-> model input and output, with validation that says what is wrong.

Inputs (exactly one per request; ModelMetadata declares all three):
- `INPUT`  FP32  [B, C, S, S]: images already normalised like the training data (what `DatasetSplits.prepare` makes),
  finite and within +-MAX_ABS_INPUT;
- `IMAGE`  UINT8 [B, C, H, W] (or [B, H, W] for one channel): raw pixels in [0, raw_max], any H, W (resized to S);
- `IMAGE_BYTES` BYTES [B]: encoded PNG or JPEG files, decoded with Pillow and converted to the model's channels.
Raw pixels are prepared exactly as `superserve.data.DatasetSplits.prepare` prepares them: / raw_max, bilinear antialiased
resize to S x S, (x - mean) / std per channel, with the statistics stored in the checkpoint's meta.

Hostile input is bounded before it costs anything: `parse_request` checks structure, shapes and sizes from lengths
alone (no bulk conversion), and returns the bulk work (typed-contents conversion, resizing, image decoding) as a
`PendingInputs` with its cost, for the caller to run off the event loop. Encoded images are checked from their headers
before any pixel is decoded: each side at most MAX_IMAGE_SIDE_PX and at most MAX_DECODED_PIXELS_PER_CALL pixels in
one call, so a decompression bomb (a 30000 x 30000 all-zero PNG is 0.87 MB on the wire) is refused unread, and a
truncated or corrupt file is an INVALID_ARGUMENT from Pillow, never a crash (torchvision 0.29's libpng path
segfaulted on a truncated PNG). Decoding one image holds at most its uint8 pixels plus two float32 copies:
about 9 x C x 4096^2 bytes (150 MB grey, 450 MB RGB) for the largest image admitted.

Outputs: `PROBABILITIES` FP32 [B, num_classes] and `CLASS` INT64 [B], in `raw_output_contents` (tritonclient reads
only that), in the order the request asked for them (both, PROBABILITIES first, when it asked for none).

Request parameters: `slo_ms` (> 0, finite, at most MAX_SLO_MS) and `min_accuracy` (in [0, 1]), as double, int64 or
uint64 parameters; anything else that is not a number is rejected. Unknown parameters are ignored (clients add their
own), except `sequence_id`: this model is stateless. Names a client sent are echoed in messages cut to MAX_ECHO_CHARS,
so that a 1 MB model name does not become a 1 MB error (the stock client then reports RESOURCE_EXHAUSTED instead).
"""

from __future__ import annotations

import io
import math
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import grpc
import numpy as np
import torch
import torch.nn.functional as F

INPUT_FP32, INPUT_UINT8, INPUT_BYTES = "INPUT", "IMAGE", "IMAGE_BYTES"
OUTPUT_PROBS, OUTPUT_CLASS = "PROBABILITIES", "CLASS"
OUTPUTS = (OUTPUT_PROBS, OUTPUT_CLASS)
MAX_SLO_MS = 600_000.0  # ten minutes: longer is surely a unit mistake (seconds given as ms would not be caught)
MAX_IMAGE_SIDE_PX = 4096  # decoded or raw images larger than this are refused rather than resized
MAX_DECODED_PIXELS_PER_CALL = 1 << 25  # 33.5 M pixels (two 4096 x 4096 images) per call, checked from the headers
MAX_ABS_INPUT = 1e6  # FP32 inputs are normalised pixels (about -3..3); beyond this the logits overflow to NaN
MAX_ECHO_CHARS = 64  # client-chosen names are cut to this in error messages
TYPED_CHUNK = 1 << 16  # typed contents are converted in chunks: the GIL is free between them (see _typed_array)
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
class PendingInputs:
    """The bulk work of a validated request, not yet done: `run()` returns the (B, C, S, S) float32 model input or
    raises InvalidRequest. `cost` is how many values or pixels it touches (the caller runs costly work off the event
    loop); `encoded` is True for PNG/JPEG bytes, whose cost is known only once their headers are read."""

    run: Callable[[], torch.Tensor]
    cost: int
    encoded_items: tuple[bytes, ...] | None = None  # PNG/JPEG files: their headers tell the real cost

    @property
    def encoded(self) -> bool:
        return self.encoded_items is not None


@dataclass(frozen=True, eq=False)
class DecodedInputs:
    """A validated request, ready for the engine once `pending` has run."""

    pending: PendingInputs
    hints: Hints
    outputs: tuple[str, ...]  # output names to return, in order

    @property
    def images(self) -> torch.Tensor:
        """The model input, computed here (on the caller's thread)."""
        return self.pending.run()


def show(name: str) -> str:
    """A client-chosen name for a message: repr'd, cut to MAX_ECHO_CHARS."""
    if len(name) <= MAX_ECHO_CHARS:
        return repr(name)
    return repr(name[:MAX_ECHO_CHARS]) + f"... ({len(name)} characters)"


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


_TYPED_FIELD = {"FP32": "fp32_contents", "UINT8": "uint_contents", "BYTES": "bytes_contents"}


def _typed_count(contents: Any) -> int:
    """Values in all typed-contents fields (len() of a repeated field is O(1))."""
    return sum(len(getattr(contents, f)) for f in ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                                                   "uint64_contents", "fp32_contents", "fp64_contents",
                                                   "bytes_contents"))


def _typed_array(values: Any, count: int, dtype: str) -> np.ndarray:
    """A repeated protobuf field -> numpy, chunk by chunk: converting 16 M values at once holds the GIL for 0.8 s
    (numpy walks the sequence in C), which froze the event loop even from another thread; between chunks of
    TYPED_CHUNK values (about 1.5 ms each) the GIL is released and the loop runs."""
    out = np.empty(count, dtype=np.float32 if dtype == "FP32" else np.uint8)
    for start in range(0, count, TYPED_CHUNK):
        chunk = np.asarray(values[start:start + TYPED_CHUNK], dtype=np.float64 if dtype == "FP32" else np.int64)
        if dtype == "UINT8" and chunk.size and (chunk.min() < 0 or chunk.max() > 255):
            raise _invalid("UINT8 contents outside [0, 255]")
        out[start:start + chunk.size] = chunk
    return out


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


def parse_request(request: Any, spec: ModelSpec) -> DecodedInputs:
    """Validate a ModelInferRequest's structure (model name/version are checked by the caller) from sizes alone;
    the bulk conversion is returned undone, in `pending`. Raises InvalidRequest."""
    hints = decode_hints(request.parameters)
    if len(request.inputs) != 1:
        raise _invalid(f"expected exactly one input ({INPUT_FP32}, {INPUT_UINT8} or {INPUT_BYTES}), "
                       f"got {len(request.inputs)}")
    outputs = tuple(o.name for o in request.outputs) or OUTPUTS
    for name in outputs:
        if name not in OUTPUTS:
            raise _invalid(f"unknown output {show(name)}; this model has {', '.join(OUTPUTS)}")
    if len(set(outputs)) != len(outputs):
        raise _invalid("an output is requested twice")
    tensor = request.inputs[0]
    name, dtype = tensor.name, tensor.datatype
    expected = {INPUT_FP32: "FP32", INPUT_UINT8: "UINT8", INPUT_BYTES: "BYTES"}
    if name not in expected:
        raise _invalid(f"unknown input {show(name)}; this model takes one of {', '.join(expected)}")
    if dtype != expected[name]:
        raise _invalid(f"input {name} must be {expected[name]}, got datatype {show(dtype)}")
    if len(tensor.shape) > 8:
        raise _invalid(f"input {name}: {len(tensor.shape)} dimensions; at most 4 are meaningful here")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise _invalid(f"input {name}: negative dimension in shape {_shape_str(shape)}")
    typed = _typed_count(tensor.contents)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise _invalid(f"{len(request.inputs)} inputs but {len(request.raw_input_contents)} raw_input_contents")
        if typed:
            raise _invalid(f"input {name} has both raw_input_contents and typed contents; send one of them")
    elif typed != len(getattr(tensor.contents, _TYPED_FIELD[dtype])):
        raise _invalid(f"input {name} ({dtype}) carries typed contents of another type; use "
                       f"{_TYPED_FIELD[dtype]}")
    if name == INPUT_BYTES:
        items = _split_bytes(request, tensor, shape, spec)
        return DecodedInputs(PendingInputs(lambda: decode_images(items, spec), sum(map(len, items)), items),
                             hints, outputs)
    bchw = _check_image_shape(name, dtype, shape, spec)
    count = bchw[0] * bchw[1] * bchw[2] * bchw[3]
    if request.raw_input_contents:
        payload = request.raw_input_contents[0]
        want = count * _DTYPE_SIZE[dtype]
        if len(payload) != want:
            raise _invalid(f"input {name}: shape {_shape_str(shape)} of {dtype} needs {want} bytes, got {len(payload)}")

        def convert() -> np.ndarray:
            return np.frombuffer(payload, dtype=np.float32 if dtype == "FP32" else np.uint8)
        cost = count
    else:
        values = getattr(tensor.contents, _TYPED_FIELD[dtype])
        if len(values) != count:
            raise _invalid(f"input {name}: shape {_shape_str(shape)} needs {count} values, got {len(values)}")

        def convert() -> np.ndarray:
            return _typed_array(values, count, dtype)
        cost = 20 * count  # a typed value costs about what 20 raw ones do (a Python-level object each)

    def run() -> torch.Tensor:
        array = convert()
        if dtype == "FP32":
            if not np.isfinite(array).all():  # numpy: a tenth of torch's per-call overhead here
                raise _invalid(f"input {name} holds NaN or infinite values")
            if count and float(np.abs(array).max()) > MAX_ABS_INPUT:
                raise _invalid(f"input {name} holds values beyond +-{MAX_ABS_INPUT:g}; INPUT takes normalised "
                               "pixels (send raw pixels as IMAGE)")
        x = torch.from_numpy(array.reshape(bchw).copy())  # copy: frombuffer views are read-only
        return x if dtype == "FP32" else prepare_raw(x, spec)
    resize = 0 if dtype == "FP32" or bchw[2:] == (spec.image_size, spec.image_size) else 4 * count
    return DecodedInputs(PendingInputs(run, cost + resize), hints, outputs)


def decode_request(request: Any, spec: ModelSpec) -> DecodedInputs:
    """`parse_request` with the bulk work done at once (for callers that are not an event loop)."""
    parsed = parse_request(request, spec)
    images = parsed.pending.run()
    return DecodedInputs(PendingInputs(lambda: images, 0), parsed.hints, parsed.outputs)


def _split_bytes(request: Any, tensor: Any, shape: tuple[int, ...], spec: ModelSpec) -> tuple[bytes, ...]:
    if len(shape) != 1 or not 1 <= shape[0] <= spec.max_images:
        raise _invalid(f"input {INPUT_BYTES} must have shape [B] with 1 <= B <= {spec.max_images} encoded images, "
                       f"got {_shape_str(shape)}")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise _invalid(f"1 input but {len(request.raw_input_contents)} raw_input_contents")
        raw, items, pos = request.raw_input_contents[0], [], 0
        while pos < len(raw):  # the protocol's BYTES layout: 4-byte little-endian length, then the bytes
            if len(items) == shape[0]:
                raise _invalid(f"input {INPUT_BYTES}: shape [{shape[0]}] but more elements follow at byte {pos}")
            if pos + 4 > len(raw):
                raise _invalid(f"input {INPUT_BYTES}: truncated length prefix at byte {pos}")
            (length,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + length > len(raw):
                raise _invalid(f"input {INPUT_BYTES}: element {len(items)} claims {length} bytes, "
                               f"only {len(raw) - pos - 4} remain")
            items.append(bytes(raw[pos + 4:pos + 4 + length]))
            pos += 4 + length
    else:
        if len(tensor.contents.bytes_contents) != shape[0]:
            raise _invalid(f"input {INPUT_BYTES}: shape [{shape[0]}] but {len(tensor.contents.bytes_contents)} "
                           "elements")
        items = list(tensor.contents.bytes_contents)
    if len(items) != shape[0]:
        raise _invalid(f"input {INPUT_BYTES}: shape [{shape[0]}] but {len(items)} elements")
    return tuple(items)


# --- encoded images ---------------------------------------------------------------------------------------------------
def decoder_ready() -> bool:
    """Whether Pillow's PNG and JPEG plugins are imported (done once, in the background at start)."""
    return "PIL.JpegImagePlugin" in sys.modules and "PIL.PngImagePlugin" in sys.modules


def load_decoder() -> None:
    _pil()


def _pil() -> Any:
    """PIL.Image, with its decompression-bomb warning (over 89 M pixels) made an error: refused, not logged."""
    from PIL import Image, JpegImagePlugin, PngImagePlugin  # noqa: F401

    if not getattr(_pil, "done", False):
        import warnings

        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _pil.done = True  # type: ignore[attr-defined]
    return Image


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header declares, read before any pixel is decoded."""

    format: str  # "PNG" or "JPEG"
    width_px: int
    height_px: int


def read_headers(encoded: Sequence[bytes]) -> list[ImageHeader]:
    """The headers of a call's encoded images, checked against MAX_IMAGE_SIDE_PX and MAX_DECODED_PIXELS_PER_CALL.
    Costs microseconds per image and no pixel memory; raises InvalidRequest naming the element and the problem."""
    Image = _pil()  # noqa: N806

    headers, total = [], 0
    for k, data in enumerate(encoded):
        if not data:
            raise _invalid(f"input {INPUT_BYTES}: element {k} is empty")
        try:
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
                header = ImageHeader(str(img.format), int(img.size[0]), int(img.size[1]))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _invalid(f"input {INPUT_BYTES}: element {k} declares too many pixels ({_reason(exc)[:60]}...); "
                           f"each side must be in [1, {MAX_IMAGE_SIDE_PX}] (refused before decoding)") from None
        except Exception as exc:  # noqa: BLE001 - any failure to parse a client's bytes is the client's error
            raise _invalid(f"input {INPUT_BYTES}: element {k} is not a decodable PNG or JPEG image "
                           f"({_reason(exc)})") from None
        w, h = header.width_px, header.height_px
        if not (1 <= w <= MAX_IMAGE_SIDE_PX and 1 <= h <= MAX_IMAGE_SIDE_PX):
            raise _invalid(f"input {INPUT_BYTES}: element {k} declares {w} x {h} px; each side must be in "
                           f"[1, {MAX_IMAGE_SIDE_PX}] (refused before decoding)")
        total += w * h
        if total > MAX_DECODED_PIXELS_PER_CALL:
            raise _invalid(f"input {INPUT_BYTES}: the images of this call declare more than "
                           f"{MAX_DECODED_PIXELS_PER_CALL} pixels in all (refused before decoding)")
        headers.append(header)
    return headers


def decode_images(encoded: Sequence[bytes], spec: ModelSpec) -> torch.Tensor:
    """Encoded PNG/JPEG files -> (B, C, S, S) model input. Slow (milliseconds to seconds): call it off the event
    loop. Headers are checked first (`read_headers`); truncated or corrupt data raises InvalidRequest."""
    Image = _pil()  # noqa: N806

    read_headers(encoded)
    mode = "L" if spec.in_channels == 1 else "RGB"
    prepared = []
    for k, data in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
                img.load()  # the decode: a truncated file raises OSError here (LOAD_TRUNCATED_IMAGES stays off)
                pixels = np.asarray(img.convert(mode) if img.mode != mode else img)
        except Exception as exc:  # noqa: BLE001
            raise _invalid(f"input {INPUT_BYTES}: element {k} could not be decoded ({_reason(exc)})") from None
        if pixels.ndim == 2:
            pixels = pixels[None]
        else:
            pixels = pixels.transpose(2, 0, 1)
        if pixels.shape[0] != spec.in_channels or pixels.dtype != np.uint8:
            raise _invalid(f"input {INPUT_BYTES}: element {k} decoded to {pixels.dtype} {tuple(pixels.shape)}")
        prepared.append(prepare_raw(torch.from_numpy(np.array(pixels))[None], spec))  # a writable copy
    return torch.cat(prepared)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:120]


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
