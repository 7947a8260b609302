"""Metrics from raw records equal hand computation; the JSONL record file round-trips and rejects bad lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from superserve.metrics import summarize, time_series
from superserve.records import RecordError, RecordTable, RequestRecord, read_jsonl, write_jsonl

RECORDS = [
    # id, arrival, deadline, status, dispatch, finish, subnet, accuracy
    RequestRecord(0, 0.0, 0.1, "ok", 0.0, 0.05, "a", 0.9, worker_id=0),
    RequestRecord(1, 0.5, 0.6, "ok", 0.5, 0.52, "b", 0.8, worker_id=1),
    RequestRecord(2, 1.2, 1.3, "late", 1.2, 1.5, "a", 0.9, worker_id=0),
    RequestRecord(3, 1.4, 1.5, "shed"),
    RequestRecord(4, 2.0, 2.1, "ok", 2.0, 2.09, "b", 0.8, min_accuracy=0.5, worker_id=1),
    RequestRecord(5, 2.5, 2.6, "rejected"),
]


def test_summary_equals_hand_computation() -> None:
    s = summarize(RECORDS)
    assert (s.requests, s.met, s.late, s.shed, s.rejected) == (6, 3, 1, 1, 1)
    assert s.slo_attainment == pytest.approx(3 / 6)
    assert s.mean_accuracy == pytest.approx((0.9 + 0.8 + 0.9 + 0.8) / 4)  # over served, late included
    assert s.duration_s == pytest.approx(2.5)  # first arrival 0.0 to last event 2.5
    assert s.goodput_qps == pytest.approx(3 / 2.5)
    lat = sorted([50.0, 20.0, 300.0, 90.0])  # ms, served requests
    assert s.p50_latency_ms == pytest.approx((50.0 + 90.0) / 2)
    assert s.p99_latency_ms == pytest.approx(lat[2] + 0.97 * (lat[3] - lat[2]))  # linear interpolation


def test_time_series_per_second() -> None:
    ts = time_series(RECORDS, bin_s=1.0)
    assert ts.start_s.tolist() == [0.0, 1.0, 2.0]
    assert ts.arrivals.tolist() == [2, 2, 2] and ts.met.tolist() == [2, 0, 1]
    assert ts.slo_attainment.tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert ts.mean_accuracy.tolist() == pytest.approx([0.85, 0.9, 0.8])
    assert ts.goodput_qps.tolist() == [2.0, 0.0, 1.0]  # on-time finishes at 0.05, 0.52 and 2.09 s
    assert ts.subnet_share["a"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert len(ts.rows()) == 3


def test_columnar_and_object_records_agree(tmp_path: Path) -> None:
    table = RecordTable.from_records(RECORDS)
    assert table.to_records() == RECORDS
    assert summarize(table) == summarize(RECORDS)
    path = tmp_path / "records.jsonl"
    assert write_jsonl(path, RECORDS) == 6
    assert read_jsonl(path) == RECORDS


@pytest.mark.parametrize("line,match", [
    ("not json", "records.jsonl:2: malformed"),
    ('{"request_id": 1}', "missing fields"),
    ('{"request_id": 1, "arrival_s": 0, "deadline_s": 1, "status": "lost"}', "status 'lost'"),
    ('{"request_id": 1, "arrival_s": 0, "deadline_s": 1, "status": "ok", "colour": 1}', "unknown fields"),
])
def test_malformed_record_lines_are_named(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "records.jsonl"
    write_jsonl(path, RECORDS[:1])
    with open(path, "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(RecordError, match=match):
        read_jsonl(path)


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError):
        summarize([])
    assert np.isnan(summarize([RequestRecord(0, 0.0, 1.0, "shed"), RequestRecord(1, 1.0, 2.0, "shed")]).mean_accuracy)
