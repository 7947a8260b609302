"""Where a request's bulk input work runs, so that no request stalls the event loop or waits behind a huge one.

Three lanes, chosen by the work's cost (values or pixels it touches, `PendingInputs.cost`):
- inline on the event loop: small tensors (a 28 x 28 image in raw bytes costs microseconds; a thread hop costs more);
- the light pool (threads): medium tensors, and every PNG/JPEG call: its headers are read there (microseconds, no
  pixels) and, when they declare few pixels, it is decoded there too;
- the heavy pool (one thread): large conversions and large images, behind an admission limit. When
  `max_heavy_pending` calls are already waiting for or in it, the next is refused RESOURCE_EXHAUSTED at once rather
  than queued: memory and waiting stay bounded, and small calls never queue behind big ones (measured before this
  existed: a valid 28 x 28 PNG behind two calls of 64 PNGs of 4096 x 4096 waited 4.8 s and was shed).
Pillow's decoders and torch's resize release the GIL; typed-contents conversion releases it between chunks
(`codec._typed_array`), so the loop keeps answering health checks while the pools work.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import grpc
import torch

from superserve.server.codec import InvalidRequest, PendingInputs, read_headers

T = TypeVar("T")


@dataclass(frozen=True)
class OffloadConfig:
    inline_max_cost: int = 1 << 16  # values: at most 64 K raw values (or ~3 K typed ones) are converted on the loop
    light_max_cost: int = 1 << 21  # values: up to 2 M (and PNG/JPEG calls up to light_max_pixels) in the light pool
    light_max_pixels: int = 1 << 20  # declared pixels of a PNG/JPEG call decoded in the light pool
    light_threads: int = 2
    heavy_threads: int = 1  # large work competes with the model for the cores: one at a time
    max_heavy_pending: int = 4  # large calls waiting for or in the heavy pool; more are refused

    def __post_init__(self) -> None:
        if min(self.light_threads, self.heavy_threads, self.max_heavy_pending) < 1:
            raise ValueError("offload pools need at least one thread and one pending slot")


class InputOffload:
    """Runs `PendingInputs` in the lane its cost calls for. Use from one event loop."""

    def __init__(self, config: OffloadConfig = OffloadConfig()) -> None:
        self.config = config
        self._light = ThreadPoolExecutor(config.light_threads, thread_name_prefix="superserve-decode")
        self._heavy = ThreadPoolExecutor(config.heavy_threads, thread_name_prefix="superserve-decode-large")
        self.heavy_pending = 0  # touched only on the loop's thread
        self.heavy_refused = 0

    def submit_light(self, fn, *args):  # type: ignore[no-untyped-def]
        """Start-up work (the decoder's import) on the light pool."""
        return self._light.submit(fn, *args)

    async def run(self, pending: PendingInputs) -> torch.Tensor:
        cfg = self.config
        if pending.encoded:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(self._light, _decode_if_small, pending, cfg.light_max_pixels)
            if done is not None:
                return done
            return await self._heavy_lane(pending.run)
        return await self.run_costly(pending.run, pending.cost)

    async def run_costly(self, fn: Callable[[], T], cost: int) -> T:
        """`fn()` inline, in the light pool or behind the heavy pool's admission limit, by its `cost` (for other
        bulk work of a request too: the HTTP door parses large JSON bodies here)."""
        cfg = self.config
        if cost <= cfg.inline_max_cost:
            return fn()
        if cost <= cfg.light_max_cost:
            return await asyncio.get_running_loop().run_in_executor(self._light, fn)
        return await self._heavy_lane(fn)

    async def _heavy_lane(self, fn: Callable[[], T]) -> T:
        cfg = self.config
        if self.heavy_pending >= cfg.max_heavy_pending:
            self.heavy_refused += 1
            raise InvalidRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"busy: {self.heavy_pending} large inputs are being converted or decoded (the "
                                 "limit); retry, or send smaller images")
        self.heavy_pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._heavy, fn)
        finally:
            self.heavy_pending -= 1

    def close(self) -> None:
        self._light.shutdown(wait=False, cancel_futures=True)
        self._heavy.shutdown(wait=False, cancel_futures=True)


def _decode_if_small(pending: PendingInputs, max_pixels: int) -> torch.Tensor | None:
    """On a light thread: read the headers; decode here when they declare at most `max_pixels`, else None (the
    caller sends it to the heavy pool). Raises InvalidRequest for a bad header."""
    assert pending.encoded_items is not None
    declared = sum(h.width_px * h.height_px for h in read_headers(pending.encoded_items))
    return pending.run() if declared <= max_pixels else None
