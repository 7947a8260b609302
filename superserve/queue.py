"""The EDF (earliest-deadline-first) request queue shared by the simulator and the server.

No locks inside: the simulator is single-threaded and the server wraps every call in its own lock. Every operation is
O(log n) amortised in the queue length n (a snapshot of the first k requests costs O(k + k log n)), so a backlog of
100k requests under overload does not slow each scheduling decision down.

How: a short sorted list, `_front`, holds the current EDF head; the rest of the queue is split between a sorted
deque, `_tail`, and a binary heap. Every entry in `_front` is <= every live entry behind it, so the head is read
without touching the rest; a snapshot tops `_front` up from whichever of the tail's and the heap's first entries is
earlier; removed requests are deleted from `_front` at once and from the tail and heap lazily (skipped when reached,
compacted when they outnumber the live ones).

Why the tail: requests of one SLO class arrive in deadline order (deadline = arrival + SLO), so nearly every push
is at or after the latest deadline queued. Those appends and their later removal from the tail's left end are O(1);
only pushes that land inside the queue (a shorter SLO class overtaking a longer one) pay the heap's O(log n). With one
SLO class the heap stays empty.
"""

from __future__ import annotations

import bisect
import enum
import heapq
from collections import deque
from collections.abc import Iterable

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
        self._tail: deque[_Key] = deque()  # sorted: entries pushed at or after the latest one in it
        self._heap: list[_Key] = []  # the other entries behind the front
        self._live: dict[int, Request] = {}
        self._seq = 0
        self._stale = 0  # removed requests still in the tail or the heap

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
        front, tail = self._front, self._tail
        if front and key < front[-1]:
            # Earlier than part of the head: it belongs in the head to keep every front entry <= the rest.
            bisect.insort(front, key)
            if len(front) > self._front_max:
                tail.appendleft(front.pop())  # <= everything behind the front, so the tail stays sorted
        elif not tail or key >= tail[-1]:
            tail.append(key)
        else:
            heapq.heappush(self._heap, key)
        return PushResult.OK

    def _fill_front(self, count: int) -> None:
        front, tail, heap, live = self._front, self._tail, self._heap, self._live
        while len(front) < count and (tail or heap):
            key = heapq.heappop(heap) if heap and (not tail or heap[0] < tail[0]) else tail.popleft()
            if live.get(key[2].request_id) is key[2]:
                front.append(key)
            else:
                self._stale -= 1

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
        # (List equality tests identity first; distinct live requests never compare equal, their ids differ.)
        if n <= before and [k[2] for k in front[:n]] == removed:
            del front[:n]
            return removed
        self._front = [k for k in front if k[2].request_id in live]
        self._stale += n - (before - len(self._front))
        if self._stale > 64 and self._stale > (len(self._heap) + len(self._tail)) // 2:
            self._heap = [k for k in self._heap if live.get(k[2].request_id) is k[2]]
            heapq.heapify(self._heap)
            self._tail = deque(k for k in self._tail if live.get(k[2].request_id) is k[2])
            self._stale = 0
        return removed

    def pop_batch(self, count: int) -> list[Request]:
        """Remove and return up to `count` earliest-deadline requests."""
        self._fill_front(count)
        return self.pop_ids([k[2].request_id for k in self._front[:count]])

    def drain(self) -> list[Request]:
        """Remove everything, EDF order."""
        return self.pop_batch(len(self._live)) if self._live else []
