"""How a worker and its parent talk: length-prefixed frames over a byte stream.

The stream is a pipe (`load.channel.PipeChannel`); nothing in it depends on being one, and an
agent on another machine relays the same payloads over a WebSocket (`latbench.agents`), one
message each. Each frame is a 4-byte big-endian length and a payload: the first frame from the
parent is the pickled `Shard`, every other frame in either direction is one orjson array whose
first element names it.

Instants in frames are on the sender's CLOCK_MONOTONIC. Between processes of one machine that is
one clock; an agent's is another, so its channel moves every instant a frame carries by the
measured offset (`shift_instants`, `unpack_record`'s `origin`), and the runner sees one
timeline.

A finished request travels as one positional array (no field names), with its event instants
relative to its own send instant: a 128-event record is about 1.2 kB on the wire instead of 4 kB
of named JSON.

Neither side trusts the other's frames further than it must: a record the worker cannot encode
travels as a `client_error` record instead (`unsendable`), and one the parent cannot decode
raises from `unpack_record`, which the runner turns into a record of its own. The parent checks
only what a frame from its own worker can still get wrong: the record's shape, the instants
every latency is computed from, event values (an int64 array refuses anything else) and error
kinds. Usage counts were validated by the API parsers before the record was made (non-negative
integers up to 2**53), so they are not checked again per record on this hot path; a records
file, which anyone can write, is checked in full (`records.record.iter_lines`).
"""

from __future__ import annotations

import asyncio
import struct
from array import array
from dataclasses import dataclass, fields, replace
from typing import Any

import orjson

from latbench.records.record import Record
from latbench.shared.errors import ErrorKind

_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a shard with a large prompt file; anything bigger is corruption


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def payload(*parts: Any) -> bytes:
    """A control frame's payload (what a `load.channel.Channel` sends), without its length."""
    return orjson.dumps(parts)


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
_EV_LATE = _FIELDS.index("ev_late")
_T_SENT = _FIELDS.index("t_sent")
_SEQ = _FIELDS.index("seq")
# Every latency is a difference of these: a non-integer one is a frame to refuse, and so is a
# missing one where every record has it (index, name, may be None).
_OPTIONAL = ("t_headers", "t_end", "t_first_end", "t_last_sent")
_INSTANTS = tuple(
    (_FIELDS.index(name), name, name in _OPTIONAL)
    for name in ("seq", "t_intended", "t_sent", *_OPTIONAL)
)
# The instants a clock offset moves (the events travel relative to t_sent, so they follow it).
_CLOCKED = tuple(_FIELDS.index(name) for name in ("t_intended", "t_sent", *_OPTIONAL))
_AGENT = _FIELDS.index("agent")
_LOCATION = _FIELDS.index("location")
_OFFSET = _FIELDS.index("clock_offset_ns")
_UNCERTAINTY = _FIELDS.index("clock_uncertainty_ns")
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
        ev_late=None,
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
    if r.ev_late is not None:
        m[1 + _EV_LATE] = list(r.ev_late)
    return m


@dataclass(frozen=True, slots=True)
class Origin:
    """The agent a channel's frames come from, as the coordinator measured it: its index and
    location, and its clock's offset (agent minus coordinator) and the offset's uncertainty at
    the moment, ns. Every record the channel brings is stamped with these and moved onto the
    coordinator's clock."""

    agent: int
    location: str | None
    offset_ns: int
    uncertainty_ns: int


def shift_instants(m: list[Any], delta: int) -> None:
    """Move every instant a decoded frame carries by `delta` ns, in place: a record's, a send's
    (`s`), a heartbeat's lag ticks (`h`), and the parent's `go` and `overtime`. Other frames
    carry none. Raises TypeError on a frame whose instants are not numbers."""
    kind = m[0]
    if kind == "r":
        for i in _CLOCKED:
            if m[1 + i] is not None:
                m[1 + i] += delta
    elif kind == "s":
        m[2] += delta
        m[3] += delta
    elif kind == "h":
        m[2] = [t + delta for t in m[2]]
    elif kind in ("go", "overtime"):
        m[1] += delta


def unpack_record(run_id: str, m: list[Any], origin: Origin | None = None) -> Record:
    """The runner keeps every record of a run: event instants and counts as typed arrays.
    With an `origin` (an agent's channel) the record is stamped with it, whatever the frame
    said, and its instants are moved onto this host's clock. Raises (ValueError, TypeError,
    OverflowError) on a frame it cannot take as it is."""
    v = m[1:]
    if len(v) != len(_FIELDS):
        raise ValueError(f"a record of {len(v)} fields, not {len(_FIELDS)}")
    for i, name, optional in _INSTANTS:
        t = v[i]
        if type(t) is not int and not (optional and t is None):
            raise ValueError(f"{name} is {t!r}, not an integer")
    if origin is not None:
        off = origin.offset_ns
        for i in _CLOCKED:
            if v[i] is not None:
                v[i] -= off
        v[_AGENT] = origin.agent
        v[_LOCATION] = origin.location
        v[_OFFSET] = off
        v[_UNCERTAINTY] = origin.uncertainty_ns
    base = v[_T_SENT]
    v[_EV_T] = array("q", [base + t for t in v[_EV_T]])  # a float or past int64: raises
    if v[_EV_N] is not None:
        v[_EV_N] = array("q", v[_EV_N])
    if v[_EV_LATE] is not None:
        v[_EV_LATE] = array("q", v[_EV_LATE])
    for i in _ERROR_KINDS:
        if v[i] is not None:
            v[i] = ErrorKind(v[i])
    return Record(run_id, *v)
