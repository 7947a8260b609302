"""The per-request record every part writes (simulator, server, load generator, security module), and its JSONL file.

One JSON object per line, the fields of `RequestRecord`; a request that was never dispatched has null dispatch/finish
times, subnet and accuracy. `RecordTable` is the same data by column (numpy), which the simulator fills directly and
`superserve.metrics` computes from, so a million-request run never builds a million Python objects unless asked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from superserve.outcomes import Outcome

# Status of a request at the end of a run: the shared `Outcome` enum (its members equal the strings in the files).
OK, LATE, SHED, REJECTED = Outcome.OK, Outcome.LATE, Outcome.SHED, Outcome.REJECTED
ERROR, CANCELLED, UNAVAILABLE = Outcome.ERROR, Outcome.CANCELLED, Outcome.UNAVAILABLE
STATUSES = tuple(Outcome)  # the order is the int8 code of `RecordTable.status`: never reorder
_CODE = {s: i for i, s in enumerate(STATUSES)}


class RecordError(ValueError):
    """A record file or value that does not follow the schema."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: int
    arrival_s: float  # when the request entered the system (seconds, run clock)
    deadline_s: float  # absolute deadline, arrival_s + SLO (seconds)
    status: str  # one of STATUSES
    dispatch_s: float | None = None  # when its batch went to a worker; None if never dispatched
    finish_s: float | None = None  # when its result was ready; None if never served
    subnet_id: str | None = None  # subnet that served it
    accuracy: float | None = None  # profiled accuracy of that subnet, fraction
    min_accuracy: float = 0.0  # the request's accuracy hint (0 = none)
    worker_id: int | None = None  # worker that ran its batch

    def __post_init__(self) -> None:
        if self.status not in _CODE:
            raise RecordError(f"request {self.request_id}: status {self.status!r} not one of {STATUSES}")

    @property
    def met(self) -> bool:
        """Served by its deadline."""
        return self.status == OK

    @property
    def latency_ms(self) -> float | None:
        return None if self.finish_s is None else (self.finish_s - self.arrival_s) * 1e3


@dataclass
class RecordTable:
    """Records by column; float columns use NaN and `subnet` uses -1 for "none"."""

    request_id: np.ndarray  # int64
    arrival_s: np.ndarray  # float64
    deadline_s: np.ndarray  # float64
    dispatch_s: np.ndarray  # float64, NaN = never dispatched
    finish_s: np.ndarray  # float64, NaN = never served
    subnet: np.ndarray  # int32 index into subnet_ids, -1 = none
    accuracy: np.ndarray  # float64, NaN = not served
    status: np.ndarray  # int8 index into STATUSES
    min_accuracy: np.ndarray  # float64
    worker_id: np.ndarray  # int32, -1 = none
    subnet_ids: tuple[str, ...]  # names for the `subnet` column

    def __len__(self) -> int:
        return len(self.request_id)

    def status_is(self, status: str) -> np.ndarray:
        return self.status == _CODE[status]

    @property
    def met(self) -> np.ndarray:
        return self.status_is(OK)

    @property
    def served(self) -> np.ndarray:
        return self.status_is(OK) | self.status_is(LATE)

    def to_records(self) -> list[RequestRecord]:
        def opt(x: float) -> float | None:
            return None if math.isnan(x) else x

        out = []
        for k in range(len(self)):
            s = int(self.subnet[k])
            w = int(self.worker_id[k])
            out.append(RequestRecord(int(self.request_id[k]), float(self.arrival_s[k]), float(self.deadline_s[k]),
                                     STATUSES[self.status[k]], opt(float(self.dispatch_s[k])),
                                     opt(float(self.finish_s[k])), self.subnet_ids[s] if s >= 0 else None,
                                     opt(float(self.accuracy[k])), float(self.min_accuracy[k]),
                                     w if w >= 0 else None))
        return out

    @classmethod
    def from_records(cls, records: Sequence[RequestRecord]) -> RecordTable:
        ids = tuple(sorted({r.subnet_id for r in records if r.subnet_id is not None}))
        index = {s: i for i, s in enumerate(ids)}
        nan = float("nan")

        def col(values: Iterable[float | None]) -> np.ndarray:
            return np.array([nan if v is None else v for v in values], dtype=np.float64)

        return cls(
            np.array([r.request_id for r in records], dtype=np.int64),
            col(r.arrival_s for r in records), col(r.deadline_s for r in records),
            col(r.dispatch_s for r in records), col(r.finish_s for r in records),
            np.array([index[r.subnet_id] if r.subnet_id is not None else -1 for r in records], dtype=np.int32),
            col(r.accuracy for r in records),
            np.array([_CODE[r.status] for r in records], dtype=np.int8),
            col(r.min_accuracy for r in records),
            np.array([r.worker_id if r.worker_id is not None else -1 for r in records], dtype=np.int32),
            ids)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[RequestRecord]) -> int:
    """Write one JSON object per record; returns the count."""
    n = 0
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(asdict(r), separators=(",", ":")) + "\n")
            n += 1
    return n


_FIELDS = set(RequestRecord.__dataclass_fields__)
_REQUIRED = {"request_id", "arrival_s", "deadline_s", "status"}


def read_jsonl(path: str | os.PathLike[str]) -> list[RequestRecord]:
    """Read a record file; a malformed line raises RecordError naming the file and line number."""
    out = []
    with open(Path(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise RecordError("not a JSON object")
                unknown, missing = set(data) - _FIELDS, _REQUIRED - set(data)
                if unknown or missing:
                    raise RecordError(f"unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
                out.append(RequestRecord(**data))
            except (json.JSONDecodeError, RecordError, TypeError) as exc:
                raise RecordError(f"{path}:{lineno}: malformed record: {exc}") from None
    return out
