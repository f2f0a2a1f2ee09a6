"""How a worker and its parent talk: length-prefixed frames over a byte stream.

The stream is a pipe today; nothing in it depends on being one, so a shard could run on another
machine over a socket (a later issue spreads shards over a cluster). Each frame is a 4-byte
big-endian length and a payload: the first frame from the parent is the pickled `Shard`, every
other frame in either direction is one orjson array whose first element names it.

A finished request travels as one positional array (no field names), with its event instants
relative to its own send instant: a 128-event record is about 1.2 kB on the wire instead of 4 kB
of named JSON.

Neither side trusts the other's frames further than it must: a record the worker cannot encode
travels as a `client_error` record instead (`unsendable`), and one the parent cannot decode
raises `ValueError` from `unpack_record`, which the runner turns into a record of its own.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import fields, replace
from typing import Any

import orjson

from latbench._errors import ErrorKind
from latbench._record import INT_FIELDS, Record, check_int, counts, instants

_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a shard with a large prompt file; anything bigger is corruption


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def message(*parts: Any) -> bytes:
    return frame(orjson.dumps(parts))


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ConnectionError("the stream ended inside a frame header") from None
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise ConnectionError(f"frame of {size} bytes is over the {MAX_FRAME} byte limit")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ConnectionError("the stream ended inside a frame") from None


# Record fields in wire order; the run id is the parent's already. Derived from the dataclass, so
# a field added to Record travels without a change here.
_FIELDS = tuple(f.name for f in fields(Record) if f.name != "run_id")
_EV_T = _FIELDS.index("ev_t")
_EV_N = _FIELDS.index("ev_n")
_T_SENT = _FIELDS.index("t_sent")
_SEQ = _FIELDS.index("seq")
_INTS = tuple((i, name) for i, name in enumerate(_FIELDS) if name in INT_FIELDS)
_ERROR_KINDS = tuple(
    i
    for i, f in enumerate(f for f in fields(Record) if f.name != "run_id")
    if str(f.type).startswith("ErrorKind")
)


def unsendable(r: Record, e: Exception) -> Record:
    """What travels instead of a record that cannot be encoded: its instants and outcome, none
    of the values that failed, and a detail that says so."""
    return replace(
        r,
        ev_t=(),
        ev_kind="",
        ev_n=None,
        usage_prompt_tokens=None,
        usage_completion_tokens=None,
        finish_reason=None,
        error=ErrorKind.CLIENT_ERROR,
        error_detail=f"the worker could not encode this record ({type(e).__name__}: {e}); "
        f"it had ended as {r.error or 'ok'}",
        first_error=None,
    )


def record_seq(m: Any) -> int | None:
    """The request number of a record frame, if it can be read at all."""
    if isinstance(m, list) and len(m) > 1 + _SEQ:
        seq = m[1 + _SEQ]
        if isinstance(seq, int) and not isinstance(seq, bool):
            return seq
    return None


def pack_record(r: Record) -> list[Any]:
    m: list[Any] = ["r"]
    m.extend(getattr(r, name) for name in _FIELDS)
    base = r.t_sent
    m[1 + _EV_T] = [t - base for t in r.ev_t]
    if r.ev_n is not None:
        m[1 + _EV_N] = list(r.ev_n)
    return m


def unpack_record(run_id: str, m: list[Any]) -> Record:
    """The runner keeps every record of a run: event instants and counts as typed arrays."""
    v = m[1:]
    if len(v) != len(_FIELDS):
        raise ValueError(f"a record of {len(v)} fields, not {len(_FIELDS)}")
    for i, name in _INTS:
        check_int(name, v[i])
    for name in ("seq", "t_intended", "t_sent"):
        if v[_FIELDS.index(name)] is None:
            raise ValueError(f"{name} is missing")
    base = v[_T_SENT]
    v[_EV_T] = instants([base + t for t in v[_EV_T]])
    v[_EV_N] = counts(v[_EV_N])
    for i in _ERROR_KINDS:
        if v[i] is not None:
            v[i] = ErrorKind(v[i])
    return Record(run_id, *v)
