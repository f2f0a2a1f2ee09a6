"""The record's error-bound fields (`sent_late`, `ev_late`) through both of its codecs: the
records file (JSON Lines, which anyone can write, so checked in full) and the worker pipe."""

from __future__ import annotations

from array import array

import orjson
import pytest

from latbench import RecordsError
from latbench.load.wire import pack_record, unpack_record
from latbench.records import Record
from latbench.records.record import encode_record, iter_lines


def bounded(**fields: object) -> Record:
    base: dict[str, object] = dict(
        run_id="r", seq=3, phase="measure", api="chat", t_intended=1_000, t_sent=2_000,
        t_end=9_000, ev_t=(5_000, 6_000, 7_000), ev_kind="ccc", ev_n=(1, 1, 1),
        sent_late=0, ev_late=(0, 250_000, 0),
    )  # fmt: skip
    base.update(fields)
    return Record(**base)  # type: ignore[arg-type]


def line(**changes: object) -> bytes:
    d = orjson.loads(encode_record(bounded()))
    d.update(changes)
    for k in [k for k, v in changes.items() if v is ...]:
        del d[k]
    return orjson.dumps(d)


def decoded(raw: bytes) -> Record:
    (rec,) = list(iter_lines([raw]))
    assert isinstance(rec, Record)
    return rec


def test_the_bounds_round_trip_through_the_records_file() -> None:
    rec = decoded(encode_record(bounded()))
    assert rec.sent_late == 0
    assert isinstance(rec.ev_late, array) and list(rec.ev_late) == [0, 250_000, 0]
    # A fallback send is late by its write's duration; no bound measured is null on both.
    rec = decoded(encode_record(bounded(sent_late=41_000, ev_late=None)))
    assert rec.sent_late == 41_000 and rec.ev_late is None
    assert b'"ev_late":null' in encode_record(bounded(ev_late=None))


def test_a_record_written_before_the_bounds_reads_as_not_measured() -> None:
    rec = decoded(line(sent_late=..., ev_late=...))
    assert rec.sent_late is None and rec.ev_late is None
    assert list(rec.ev_t) == [5_000, 6_000, 7_000]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"ev_late": [0, 1]}, "ev_late holds 2 values for 3 events"),
        ({"ev_late": [0, -1, 0]}, "ev_late holds a bound that is not a non-negative"),
        ({"ev_late": [0, 1.5, 0]}, "ev_late holds a value that is not a 64-bit integer"),
        ({"ev_late": [0, "1", 0]}, "ev_late holds a value that is not a 64-bit integer"),
        ({"ev_late": [0, 2**63, 0]}, "ev_late holds a value that is not a 64-bit integer"),
        ({"sent_late": -5}, "sent_late is -5, not a non-negative integer"),
        ({"sent_late": 0.5}, "sent_late is 0.5, not a non-negative integer"),
        ({"sent_late": True}, "sent_late is True, not a non-negative integer"),
    ],
)
def test_a_malformed_bound_is_refused_by_name(changes: dict[str, object], named: str) -> None:
    with pytest.raises(RecordsError, match=f"run.jsonl:1: not a latbench records line.*{named}"):
        list(iter_lines([line(**changes)], "run.jsonl"))


def test_the_bounds_cross_the_worker_pipe() -> None:
    rec = unpack_record("r", orjson.loads(orjson.dumps(pack_record(bounded()))))
    assert rec == bounded(ev_t=array("q", (5_000, 6_000, 7_000)), ev_n=array("q", (1, 1, 1)),
                          ev_late=array("q", (0, 250_000, 0)))  # fmt: skip
    rec = unpack_record("r", orjson.loads(orjson.dumps(pack_record(bounded(ev_late=None)))))
    assert rec.ev_late is None and rec.sent_late == 0
