"""The EDF (earliest-deadline-first) request queue shared by the simulator and the server.

No locks inside: the simulator is single-threaded and the server wraps every call in its own lock. Every operation is
O(log n) amortised in the queue length n (a snapshot of the first k requests costs O(k + k log n)), so a backlog of
100k requests under overload does not slow each scheduling decision down.

How: a binary heap holds the bulk of the queue and a short sorted list, `_front`, holds the current EDF head. Every
entry in `_front` is <= every live entry in the heap, so the head is read without touching the heap; a snapshot tops
`_front` up from the heap; removed requests are deleted from `_front` at once and from the heap lazily (skipped when
popped, compacted when they outnumber the live ones).
"""

from __future__ import annotations

import bisect
import enum
import heapq
from typing import Iterable

from superserve.types import QueueSnapshot, Request

_Key = tuple[float, int, Request]  # (deadline_s, push sequence number for FIFO ties, request)


class PushResult(enum.Enum):
    OK = "ok"
    FULL = "full"  # the queue holds `capacity` requests already: the caller rejects this one
    DUPLICATE = "duplicate"  # a request with this id is queued already


class EdfQueue:
    """Requests ordered by `deadline_s` (ties: arrival order), bounded by `capacity` (None = unbounded)."""

    def __init__(self, capacity: int | None = None, front_max: int = 1024) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"queue capacity must be >= 1 or None, got {capacity}")
        self.capacity = capacity
        self._front_max = front_max  # bound on the sorted head so inserting into it stays cheap
        self._front: list[_Key] = []
        self._heap: list[_Key] = []
        self._live: dict[int, Request] = {}
        self._seq = 0
        self._stale_in_heap = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._live

    def push(self, request: Request) -> PushResult:
        if request.request_id in self._live:
            return PushResult.DUPLICATE
        if self.capacity is not None and len(self._live) >= self.capacity:
            return PushResult.FULL
        self._live[request.request_id] = request
        key = (request.deadline_s, self._seq, request)
        self._seq += 1
        front = self._front
        if front and key < front[-1]:
            # Earlier than part of the head: it belongs in the head to keep every front entry <= the heap.
            bisect.insort(front, key)
            if len(front) > self._front_max:
                heapq.heappush(self._heap, front.pop())
        else:
            heapq.heappush(self._heap, key)
        return PushResult.OK

    def _fill_front(self, count: int) -> None:
        front, heap, live = self._front, self._heap, self._live
        while len(front) < count and heap:
            key = heapq.heappop(heap)
            if live.get(key[2].request_id) is key[2]:
                front.append(key)
            else:
                self._stale_in_heap -= 1

    def peek(self) -> Request | None:
        """The earliest-deadline request, or None when empty."""
        self._fill_front(1)
        return self._front[0][2] if self._front else None

    def snapshot(self, limit: int) -> QueueSnapshot:
        """An immutable view of the first `limit` requests in EDF order plus the total length."""
        if limit < 1:
            raise ValueError(f"snapshot limit must be >= 1, got {limit}")
        self._fill_front(limit)
        front = self._front
        head = front if len(front) <= limit else front[:limit]
        return QueueSnapshot(tuple([k[2] for k in head]), len(self._live))

    def pop_ids(self, request_ids: Iterable[int]) -> list[Request]:
        """Remove the given queued requests and return them in the order asked. Unknown ids raise KeyError."""
        live = self._live
        removed = []
        for rid in request_ids:
            try:
                removed.append(live.pop(rid))
            except KeyError:
                raise KeyError(f"request {rid} is not queued") from None
        if not removed:
            return removed
        front = self._front
        before = len(front)
        # Fast path: a batch is nearly always the EDF prefix of the head.
        n = len(removed)
        if n <= before and all(front[i][2] is removed[i] for i in range(n)):
            del front[:n]
            return removed
        self._front = [k for k in front if k[2].request_id in live]
        self._stale_in_heap += n - (before - len(self._front))
        if self._stale_in_heap > 64 and self._stale_in_heap > len(self._heap) // 2:
            self._heap = [k for k in self._heap if live.get(k[2].request_id) is k[2]]
            heapq.heapify(self._heap)
            self._stale_in_heap = 0
        return removed

    def pop_batch(self, count: int) -> list[Request]:
        """Remove and return up to `count` earliest-deadline requests."""
        self._fill_front(count)
        return self.pop_ids([k[2].request_id for k in self._front[:count]])

    def drain(self) -> list[Request]:
        """Remove everything, EDF order."""
        return self.pop_batch(len(self._live)) if self._live else []
