"""Generated hostile requests for the Open Inference Protocol: what a fuzzing client sends, interleaved with good calls.

`hostile_calls(count, seed, ...)` yields `HostileCall`s, seeded and reproducible. Each is either a ModelInferRequest
or raw wire bytes (a message gRPC must deserialize itself), with what the server must do with it:
- `GOOD`: served (OK);
- `BAD`: refused with one of `REFUSAL_CODES` and a non-empty message;
- `EITHER`: a random mutation of a good message that may still be valid: served, or refused as `BAD` is.
Families (`HostileCall.family`): structure (inputs, outputs, names), datatypes, shapes, parameters, payloads (sizes,
NaN, huge values, raw and typed both), images (truncated, corrupt, declared huge, real decompression bombs, other
formats, bad length prefixes) and wire (random bytes, bit-flipped serialized requests). Used by the fuzz tests and
`benchmarks/robustness.py`.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from tritonclient.grpc import service_pb2 as pb

GOOD, BAD, EITHER = "good", "bad", "either"
# Statuses a refusal may carry: bad input, unknown model, too big or too busy (a client-side timeout is not one).
REFUSAL_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True, eq=False)
class HostileCall:
    family: str
    kind: str  # what was done to it, for messages
    expect: str  # GOOD, BAD or EITHER
    request: pb.ModelInferRequest | None = None
    wire: bytes | None = None  # raw bytes sent as the message instead of `request`


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares width x height (8-bit grey) followed by `idat` as its only data: a decoder that
    trusts the header allocates for it; a truncated `idat` is what crashed torchvision's libpng path."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zero_bomb_png(side: int) -> bytes:
    """A real all-zero side x side grey PNG: tiny on the wire (a 4096 x 4096 one is about 16 kB), side^2 bytes
    decoded."""
    row = b"\x00" + bytes(side)  # filter byte + pixels
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_claiming(side, side, data)


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


class _Builder:
    def __init__(self, model: str, image_size: int, in_channels: int, max_images: int, rng: np.random.Generator):
        self.model, self.s, self.c, self.max_images, self.rng = model, image_size, in_channels, max_images, rng
        side = image_size
        digit = (rng.random((side, side)) * 255).astype(np.uint8) if in_channels == 1 else \
            (rng.random((side, side, 3)) * 255).astype(np.uint8)
        self.png, self.jpeg = png_bytes(digit), jpeg_bytes(digit)
        self.bomb = zero_bomb_png(4096)  # three in one call exceed the per-call pixel budget

    def base(self, name: str, dtype: str, shape: list[int], raw: bytes | None,
             slo_ms: float = 60_000.0) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name=self.model, id=f"r{int(self.rng.integers(1 << 30))}")
        req.inputs.add(name=name, datatype=dtype, shape=shape)
        if raw is not None:
            req.raw_input_contents.append(raw)
        req.parameters["slo_ms"].double_param = slo_ms
        return req

    # --- good calls -------------------------------------------------------------------------------------------------
    def good(self) -> HostileCall:
        s, c, rng = self.s, self.c, self.rng
        b = int(rng.integers(1, 4))
        pick = int(rng.integers(5))
        if pick == 0:
            x = rng.standard_normal((b, c, s, s)).astype(np.float32)
            return HostileCall("good", "fp32", GOOD, self.base("INPUT", "FP32", [b, c, s, s], x.tobytes()))
        if pick == 1:
            x = rng.integers(0, 256, (b, c, s + 3, s + 5), dtype=np.uint8)
            return HostileCall("good", "uint8 resize", GOOD, self.base("IMAGE", "UINT8", list(x.shape), x.tobytes()))
        if pick == 2:
            req = self.base("IMAGE", "UINT8", [1, c, s, s], None)
            req.inputs[0].contents.uint_contents.extend(rng.integers(0, 256, c * s * s).tolist())
            return HostileCall("good", "typed uint8", GOOD, req)
        items = [self.png if pick == 3 else self.jpeg] * b
        return HostileCall("good", "png" if pick == 3 else "jpeg", GOOD,
                           self.base("IMAGE_BYTES", "BYTES", [b], bytes_tensor(items)))

    # --- hostile ones -----------------------------------------------------------------------------------------------
    def structure(self) -> HostileCall:
        rng, s, c = self.rng, self.s, self.c
        req = self.good().request
        assert req is not None
        kind = int(rng.integers(8))
        if kind == 0:
            req.model_name = "m" * int(rng.choice([0, 1, 300, 1 << 20]))
            if not req.model_name:
                req.model_name = "nope"
            return HostileCall("structure", "unknown or huge model name", BAD, req)
        if kind == 1:
            req.model_version = str(int(rng.integers(2, 1 << 40)))
            return HostileCall("structure", "unknown version", BAD, req)
        if kind == 2:
            del req.inputs[:]
            del req.raw_input_contents[:]
            return HostileCall("structure", "no input", BAD, req)
        if kind == 3:
            req.inputs.add(name="INPUT", datatype="FP32", shape=[1, c, s, s])
            return HostileCall("structure", "two inputs", BAD, req)
        if kind == 4:
            req.inputs[0].name = _garbage_text(rng)
            return HostileCall("structure", "unknown input name", BAD, req)
        if kind == 5:
            req.outputs.add(name=_garbage_text(rng))
            return HostileCall("structure", "unknown output", BAD, req)
        if kind == 6:
            req.outputs.add(name="CLASS")
            req.outputs.add(name="CLASS")
            return HostileCall("structure", "output twice", BAD, req)
        req.raw_input_contents.append(b"\x00" * int(rng.integers(0, 64)))
        return HostileCall("structure", "more raw contents than inputs", BAD, req)

    def datatype(self) -> HostileCall:
        rng, s, c = self.rng, self.s, self.c
        dtype = str(rng.choice(["FP64", "FP16", "INT32", "INT64", "BOOL", "BYTES", "UINT8", "", "fp32",
                                _garbage_text(rng)]))
        req = self.base("INPUT", dtype, [1, c, s, s], bytes(4 * c * s * s))
        return HostileCall("datatype", f"INPUT as {dtype[:10]!r}", BAD, req)

    def shape(self) -> HostileCall:
        rng, s, c = self.rng, self.s, self.c
        choice = int(rng.integers(7))
        shapes = {0: [0, c, s, s], 1: [self.max_images + int(rng.integers(1, 1 << 20)), c, s, s],
                  2: [-1, c, s, s], 3: [1, c, s, s + 1], 4: [1 << 62, 1 << 62, 2, 2], 5: [1] * 64,
                  6: [1, c, s]}
        shape = shapes[choice]
        if choice == 6 and c == 1:
            shape = [1, s, s, s]
        req = self.base("INPUT", "FP32", shape, bytes(4 * c * s * s))
        if int(rng.integers(2)):  # the same on the raw-pixel input
            req.inputs[0].name, req.inputs[0].datatype = "IMAGE", "UINT8"
            if choice == 3:
                req.inputs[0].shape[:] = [1, c, 5000, 2]
        return HostileCall("shape", f"shape {shape[:6]}", BAD, req)

    def parameter(self) -> HostileCall:
        rng = self.rng
        req = self.good().request
        assert req is not None
        key = str(rng.choice(["slo_ms", "min_accuracy", "sequence_id"]))
        p = req.parameters[key]
        kind = int(rng.integers(6))
        if key == "sequence_id":
            p.int64_param = int(rng.integers(1, 1 << 40))
        elif kind == 0:
            p.string_param = _garbage_text(rng)
        elif kind == 1:
            p.bool_param = True
        elif kind == 2:
            p.double_param = float(rng.choice([np.nan, np.inf, -np.inf]))
        elif kind == 3:
            p.double_param = -float(rng.random()) if key == "slo_ms" else 1.0 + float(rng.random()) + 1e-6
        elif kind == 4:
            p.double_param = 1e300 if key == "slo_ms" else -1e-3
        else:
            p.int64_param = -int(rng.integers(1, 1 << 62))
        return HostileCall("parameter", f"{key} kind {kind}", BAD, req)

    def payload(self) -> HostileCall:
        rng, s, c = self.rng, self.s, self.c
        kind = int(rng.integers(7))
        if kind == 0:
            n = 4 * c * s * s + int(rng.choice([-4, -1, 1, 4, 1000]))
            return HostileCall("payload", "raw size mismatch", BAD, self.base("INPUT", "FP32", [1, c, s, s],
                                                                             bytes(max(n, 0))))
        if kind in (1, 2):
            value = float(rng.choice([np.nan, np.inf, -np.inf])) if kind == 1 else float(rng.choice([3e38, -1e30,
                                                                                                      2e6]))
            x = np.zeros((1, c, s, s), np.float32)
            x.flat[int(rng.integers(x.size))] = value
            return HostileCall("payload", f"fp32 value {value:g}", BAD,
                               self.base("INPUT", "FP32", [1, c, s, s], x.tobytes()))
        if kind == 3:
            req = self.base("IMAGE", "UINT8", [1, c, s, s], bytes(c * s * s))
            req.inputs[0].contents.uint_contents.extend([1, 2, 3])
            return HostileCall("payload", "raw and typed both", BAD, req)
        if kind == 4:
            req = self.base("IMAGE", "UINT8", [1, c, s, s], None)
            req.inputs[0].contents.uint_contents.extend([256 + int(rng.integers(1 << 20))] * (c * s * s))
            return HostileCall("payload", "uint8 typed out of range", BAD, req)
        if kind == 5:
            req = self.base("INPUT", "FP32", [1, c, s, s], None)
            req.inputs[0].contents.int_contents.extend([1] * (c * s * s))
            return HostileCall("payload", "typed contents of another type", BAD, req)
        req = self.base("IMAGE", "UINT8", [1, c, s, s], None)
        req.inputs[0].contents.uint_contents.extend([7] * int(rng.integers(0, c * s * s)))
        return HostileCall("payload", "typed count mismatch", BAD, req)

    def image(self) -> HostileCall:
        rng = self.rng
        kind = int(rng.integers(10))
        good = self.png if int(rng.integers(2)) else self.jpeg
        if kind == 0:
            cut = int(rng.integers(1, len(good)))
            expect = BAD if cut < 0.8 * len(good) else EITHER  # a cut CRC or end marker alone may decode
            return HostileCall("image", "truncated image", expect,
                               self.base("IMAGE_BYTES", "BYTES", [1], bytes_tensor([good[:cut]])))
        elif kind == 1:
            item = png_claiming(int(rng.choice([64, 1000, 100_000])), int(rng.choice([64, 1000, 100_000])),
                                bytes(int(rng.integers(0, 40))))
            what = "header claims a large image, data cut short"
        elif kind == 2:
            item = png_claiming(30_000, 30_000, zlib.compress(bytes(1 << 16)))
            what = "decompression bomb by its header"
        elif kind == 3:
            return HostileCall("image", "three 4096^2 zero PNGs (pixel budget)", BAD,
                               self.base("IMAGE_BYTES", "BYTES", [3], bytes_tensor([self.bomb] * 3)))
        elif kind == 4:
            arr = bytearray(good)
            for _ in range(int(rng.integers(1, 20))):
                arr[int(rng.integers(len(arr)))] = int(rng.integers(256))
            return HostileCall("image", "bit-flipped image", EITHER,
                               self.base("IMAGE_BYTES", "BYTES", [1], bytes_tensor([bytes(arr)])))
        elif kind == 5:
            item = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
            what = "random bytes"
        elif kind == 6:
            item = b"GIF89a" + bytes(int(rng.integers(10, 200)))
            what = "a GIF"
        elif kind == 7:
            raw = bytes_tensor([good]) + struct.pack("<I", 1 << 30)
            return HostileCall("image", "length prefix beyond the data", BAD,
                               self.base("IMAGE_BYTES", "BYTES", [2], raw))
        elif kind == 8:
            return HostileCall("image", "empty element", BAD,
                               self.base("IMAGE_BYTES", "BYTES", [1], bytes_tensor([b""])))
        else:
            return HostileCall("image", "more elements than the shape", BAD,
                               self.base("IMAGE_BYTES", "BYTES", [1], bytes_tensor([good, good])))
        return HostileCall("image", what, BAD, self.base("IMAGE_BYTES", "BYTES", [1], bytes_tensor([item])))

    def wire(self) -> HostileCall:
        rng = self.rng
        if int(rng.integers(3)) == 0:
            return HostileCall("wire", "random bytes", EITHER,
                               wire=rng.integers(0, 256, int(rng.integers(1, 2048)), dtype=np.uint8).tobytes())
        req = self.good().request
        assert req is not None
        arr = bytearray(req.SerializeToString())
        for _ in range(int(rng.integers(1, 8))):
            arr[int(rng.integers(len(arr)))] = int(rng.integers(256))
        return HostileCall("wire", "bit-flipped message", EITHER, wire=bytes(arr))


FAMILIES = ("structure", "datatype", "shape", "parameter", "payload", "image", "wire")


def hostile_calls(count: int, seed: int = 0, *, good_every: int = 4, model: str = "superserve",
                  image_size: int = 28, in_channels: int = 1, max_images: int = 64) -> Iterator[HostileCall]:
    """`count` hostile calls (families in turn), with a good call after every `good_every` of them."""
    rng = np.random.default_rng(seed)
    builder = _Builder(model, image_size, in_channels, max_images, rng)
    for k in range(count):
        yield getattr(builder, FAMILIES[k % len(FAMILIES)])()
        if good_every and (k + 1) % good_every == 0:
            yield builder.good()


def _garbage_text(rng: np.random.Generator) -> str:
    size = int(rng.choice([0, 1, 17, 300, 5000]))
    return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, size))


@dataclass
class HostileReport:
    """What a server did with a run of `HostileCall`s."""

    sent: int = 0
    answered: int = 0  # calls that got their (one) answer before the client's timeout
    good_served: int = 0
    good_total: int = 0
    refused_total: int = 0  # BAD and EITHER calls answered with a status in REFUSAL_CODES
    hostile_total: int = 0
    wrong: list[str] | None = None  # what went wrong, one line each (empty when all is well)
    codes: dict[str, int] | None = None  # status name -> calls

    @property
    def ok(self) -> bool:
        return not self.wrong and self.answered == self.sent


def send_hostile(target: str, calls: Iterator[HostileCall], max_outstanding: int = 32,
                 timeout_s: float = 120.0, on_answer=None) -> HostileReport:  # type: ignore[no-untyped-def]
    """Send `calls` to the server at `target` (host:port), at most `max_outstanding` at once, and check each answer
    against its expectation. `on_answer()` runs after each answer (e.g. to sample the server's memory)."""
    import threading

    import grpc

    report = HostileReport(wrong=[], codes={})
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.insecure_channel(target, options=options)
    method = "/inference.GRPCInferenceService/ModelInfer"
    typed = channel.unary_unary(method, request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelInferResponse.FromString)
    raw = channel.unary_unary(method)  # bytes as they are
    slots = threading.Semaphore(max_outstanding)
    lock = threading.Lock()
    futures = []

    def check(call: HostileCall, future) -> None:  # type: ignore[no-untyped-def]
        try:
            exc = future.exception()
            code = "OK" if exc is None else exc.code().name
            details = "" if exc is None else (exc.details() or "")
            with lock:
                report.answered += 1
                report.codes[code] = report.codes.get(code, 0) + 1  # type: ignore[index]
                where = f"{call.family}/{call.kind}"
                if call.expect == GOOD:
                    if code == "OK":
                        report.good_served += 1
                    else:
                        report.wrong.append(f"{where}: good call answered {code} {details[:200]}")  # type: ignore
                elif code != "OK":
                    if code in REFUSAL_CODES and details:
                        report.refused_total += 1
                    else:
                        report.wrong.append(f"{where}: answered {code} {details[:200]!r}")  # type: ignore[union-attr]
                elif call.expect == BAD:
                    report.wrong.append(f"{where}: malformed call served")  # type: ignore[union-attr]
        finally:
            slots.release()
            if on_answer is not None:
                on_answer()

    try:
        for call in calls:
            slots.acquire()
            report.sent += 1
            report.good_total += call.expect == GOOD
            report.hostile_total += call.expect != GOOD
            if call.wire is not None:
                future = raw.future(call.wire, timeout=timeout_s)
            else:
                future = typed.future(call.request, timeout=timeout_s)
            future.add_done_callback(lambda f, call=call: check(call, f))
            futures.append(future)
        for _ in range(max_outstanding):  # every answer in
            slots.acquire()
    finally:
        channel.close()
    return report
