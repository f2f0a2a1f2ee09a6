"""The per-request record: raw observed facts only, and its JSON Lines codec.

A record holds what was observed about one request (METRICS.md, "Raw record"): monotonic
nanosecond instants, one entry per token-bearing SSE event, usage as the server reported it, and
the outcome. Nothing derived (TTFT, ITL, ...) is stored: those are functions in
`summary.summary`, so a summary of a replayed records file equals the live one.

A records file is JSON Lines: one `header` line (run id, spec, clock anchor), one `request` line per
finished request, appended and flushed as each finishes, and a `footer` line (measurement window,
validity samples) when the run ends cleanly. A file without a footer is a run that was killed; every
request line in it is still valid.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import orjson

from latbench.shared.errors import ErrorKind, RecordsError

SCHEMA_VERSION = 1

Phase = Literal["warmup", "measure", "cooldown"]
REASONING = "r"
CONTENT = "c"
TOOL_CALL = "t"  # tool-call arguments (and name): generated, but not the answer


@dataclass(frozen=True, slots=True)
class Record:
    run_id: str
    seq: int
    phase: Phase
    api: str
    t_intended: int
    t_sent: int
    t_headers: int | None = None
    t_end: int | None = None
    # One entry per token-bearing event: arrival instant, kind ('r' reasoning, 'c' content), and
    # the event's token count when the server reported it (vLLM continuous usage stats), else None.
    # Records kept in memory (the runner's, a records file's) hold these as typed arrays
    # (`compact`): 8 bytes an instant, not a 32-byte int object and a pointer to it.
    ev_t: Sequence[int] = ()
    ev_kind: str = ""
    ev_n: Sequence[int] | None = None
    status: int | None = None
    finish_reason: str | None = None
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    max_tokens: int | None = None
    # The prompt length the request asked for, in the target's tokens (workload.WorkItem); None
    # when it asked for none (a prompt file). The summary sets usage_prompt_tokens against it.
    prompt_tokens: int | None = None
    error: ErrorKind | None = None
    error_detail: str | None = None
    # The server's Retry-After (or retry-after-ms), seconds, when it turned the request away.
    retry_after_s: float | None = None
    # Retries (opt-in, see docs/metrics.md): `t_sent` stays the first attempt's send, so every
    # latency counts the time lost to refusals and waits; the fields above describe the last
    # attempt. With more than one attempt, these keep the first one's outcome and the last send.
    attempts: int = 1
    first_status: int | None = None
    first_error: ErrorKind | None = None
    t_first_end: int | None = None
    t_last_sent: int | None = None
    # The measured error bound (METRICS.md, "Validity of the measurement"), ns. `sent_late`: how
    # much later `t_sent` may be than the moment the request's last byte left (0 with the
    # kernel's transmit stamp; with the fallback, the write's own duration). `ev_late`: per
    # token-bearing event (as ev_t), how much later its stamp may be than the arrival of the
    # bytes that complete it. None: not measured (no kernel stamps, or an older record). So
    # TTFT's true value lies in [TTFT - ev_late[0], TTFT + sent_late], and ITL gap i's in
    # [gap - ev_late[i], gap + ev_late[i-1]].
    sent_late: int | None = None
    ev_late: Sequence[int] | None = None
    # A multi-turn session's index and this request's turn in it (0 first; tool-answer steps
    # count as turns), None for a single request; the images its messages carried and their
    # decoded bytes.
    session: int | None = None
    turn: int | None = None
    images: int = 0
    image_bytes: int = 0
    # The W3C trace id (32 hex digits) sent in this request's `traceparent`; the server's span
    # for it (`ServerSpan`) carries the same id, which is how the two are joined. None: sent
    # without one (an older record).
    trace_id: str | None = None
    # Where the request was sent from, when an agent sent it (`latbench agent`,
    # docs/distributed.md); all None for a local run. Every instant above is on the
    # coordinator's clock: the runner took the agent's clock offset (agent minus coordinator,
    # NTP-style, from the minimum-RTT ping) off each one as the record arrived, so the raw stamp
    # the agent read is instant + clock_offset_ns, good to within clock_uncertainty_ns (the
    # estimate's half round trip). Latencies are differences on the agent's one clock and carry
    # no offset at all; only the placement of a record on the run's timeline does.
    agent: int | None = None
    location: str | None = None
    clock_offset_ns: int | None = None
    clock_uncertainty_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def unanswered(
        cls,
        run_id: str,
        seq: int,
        phase: Phase,
        api: str,
        t_intended: int,
        t_sent: int,
        error: ErrorKind,
        detail: str,
        *,
        t_end: int | None = None,
        max_tokens: int | None = None,
    ) -> Record:
        """A request that ended with no response read (its body could not be built, latbench
        failed around it, its worker died): its instants and why, nothing else measured."""
        return cls(
            run_id, seq, phase, api, t_intended, t_sent, t_end=t_end, max_tokens=max_tokens,
            error=error, error_detail=detail,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServerSpan:
    """The server's own account of one request, from the OpenTelemetry span it exported (vLLM's
    `llm_request`, `vllm/tracing`): what the receiver kept of it, as the server's clock saw it.
    Durations are seconds on the server's clock; `start_unix_ns`/`end_unix_ns` are its wall
    clock, never compared with the client's instants except to estimate the skew; `received_ns`
    is the client's monotonic instant the receiver got it. A field the span did not carry is
    None."""

    trace_id: str  # 32 lower-case hex digits
    span_id: str
    name: str
    received_ns: int
    start_unix_ns: int | None = None
    end_unix_ns: int | None = None
    request_id: str | None = None  # gen_ai.request.id (vLLM: "chatcmpl-" + our X-Request-Id)
    ttft_s: float | None = None  # gen_ai.latency.time_to_first_token
    e2e_s: float | None = None  # gen_ai.latency.e2e
    queue_s: float | None = None  # gen_ai.latency.time_in_queue
    prefill_s: float | None = None  # gen_ai.latency.time_in_model_prefill
    decode_s: float | None = None  # gen_ai.latency.time_in_model_decode
    inference_s: float | None = None  # gen_ai.latency.time_in_model_inference
    prompt_tokens: int | None = None  # gen_ai.usage.prompt_tokens
    completion_tokens: int | None = None  # gen_ai.usage.completion_tokens
    service: str | None = None  # the resource's service.name


GPU_SOURCES: tuple[str, ...] = ("nvml", "dcgm", "node")


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one GPU (or of a host-wide energy counter) during a run, as the sampler
    (`summary.gpu`) took it: NVML on this host, a DCGM exporter's page, or a node exporter's
    RAPL counter. Raw values only, in SI units; energy per token is `summary.energy`'s. A
    field the source does not give is None."""

    t_ns: int  # the client's monotonic instant of the reading (the middle of its request)
    source: str  # "nvml" | "dcgm" | "node"
    gpu: str  # NVML's index, DCGM's "Hostname/index" (its UUID without one), RAPL's "package-N"
    utilization: float | None = None  # 0..1, the share of the last sample period it was busy
    memory_used_bytes: int | None = None
    power_w: float | None = None
    # The source's cumulative energy counter as read (since boot or driver load), J; the
    # difference between two readings is the energy in between.
    energy_j: float | None = None


@dataclass(frozen=True, slots=True)
class RunHeader:
    run_id: str
    latbench_version: str
    # One instant read from both clocks, so monotonic instants can be shown as wall time.
    clock_monotonic_ns: int
    clock_wall_ns: int
    spec: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunFooter:
    # [start, end) of the measurement window, monotonic ns; warm-up and cool-down lie outside.
    window_start: int
    window_end: int
    ended: str  # "completed" | "stopped" | "aborted" | "oversaturated" | "incomplete"
    validity: dict[str, Any] = field(default_factory=dict)
    # What stopped an over-saturated run (summary.saturation.Oversaturation.to_dict), else None.
    oversaturation: dict[str, Any] | None = None
    # When a stop (over-saturation's too) ended the sending, monotonic ns; None: nothing did.
    stopped_ns: int | None = None
    # What the run's OTLP span receiver saw (`run.spans`: its endpoint, payloads and spans
    # accepted, rejected and why, spans of no request); None when the run had no receiver. In
    # the file, so that `latbench summary` says what results.json says.
    span_receiver: dict[str, Any] | None = None


_RECORD_FIELDS = tuple(f.name for f in fields(Record))
# Integer fields that summaries do arithmetic on. Anything else in them (a float, a string, a
# bool, an integer past int64, which JSON readers hand back as a float) is refused where a record
# is read, before it can reach an array or a total.
INT_FIELDS: tuple[str, ...] = (
    "seq", "t_intended", "t_sent", "t_headers", "t_end", "status", "usage_prompt_tokens",
    "usage_completion_tokens", "max_tokens", "prompt_tokens", "attempts", "first_status",
    "t_first_end",
    "t_last_sent", "sent_late", "session", "turn", "images", "image_bytes",
    "agent", "clock_offset_ns", "clock_uncertainty_ns",
)  # fmt: skip
# Of those, the ones that cannot be negative: counts (a negative one would subtract from totals)
# and the send's error bound.
_COUNT_FIELDS = frozenset(
    {"status", "usage_prompt_tokens", "usage_completion_tokens", "max_tokens", "prompt_tokens",
     "attempts",
     "first_status", "sent_late", "session", "turn", "images", "image_bytes",
     "agent", "clock_uncertainty_ns"}
)  # fmt: skip
_I64 = 1 << 63
# Where an agent sent the request from: a local run leaves them out of its records file, which
# reads exactly as it did before agents existed.
_AGENT_FIELDS = ("agent", "location", "clock_offset_ns", "clock_uncertainty_ns")
MAX_LOCATION = 64  # a location is a label (a region, a data centre), not free text
# The `location` label values latbench's metrics give load that no single location sent (its
# own workers, agents without a location, several locations, past the bound): an agent named
# one of them would export as something it is not. exporter/series.py holds the same set.
RESERVED_LOCATIONS = frozenset({"local", "remote", "mixed", "other"})


def check_int(name: str, value: Any) -> None:
    """ValueError naming the field unless `value` is None or an int in int64's range (a count:
    not negative)."""
    if value is None:
        return
    low = 0 if name in _COUNT_FIELDS else -_I64
    if type(value) is not int or not low <= value < _I64:
        kind = "a non-negative integer" if low == 0 else "an integer"
        raise ValueError(f"{name} is {value!r}, not {kind}")


_HEX = frozenset("0123456789abcdef")


def is_trace_id(value: object) -> bool:
    """A W3C trace id as latbench writes it: 32 lower-case hex digits, not all zero."""
    return (
        isinstance(value, str) and len(value) == 32 and _HEX.issuperset(value) and value != "0" * 32
    )


def location_problem(value: object) -> str | None:
    """What is wrong with `value` as the location an agent registers with (the words that follow
    the value in an error), or None when it is fine: a label (`is_location`) and not reserved."""
    if not is_location(value):
        return f"is not a label of 1 to {MAX_LOCATION} printable characters"
    if value in RESERVED_LOCATIONS:
        return (
            f"is reserved: {', '.join(sorted(RESERVED_LOCATIONS))} are the location label's "
            "values for load no single location sent; choose another name"
        )
    return None


def is_location(value: object) -> bool:
    """An agent's location as latbench takes it: a short printable label with no spaces at its
    ends (it becomes a Prometheus label value and a table cell)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_LOCATION
        and value.isprintable()
        and value == value.strip()
    )


def instants(values: Iterable[int]) -> array[int]:
    return array("q", values)


def counts(values: Iterable[int] | None) -> array[int] | None:
    return None if values is None else array("q", values)


def encode_record(rec: Record) -> bytes:
    # A flat dict, not `asdict`: asdict deep-copies every tuple element, and on a 128-event
    # record that was most of the runner's CPU. orjson writes tuples and enums the same way.
    d = {name: getattr(rec, name) for name in _RECORD_FIELDS}
    if rec.agent is None:
        for name in _AGENT_FIELDS:
            del d[name]
    d["ev_t"] = list(rec.ev_t)  # orjson writes lists and tuples, not arrays
    if rec.ev_n is not None:
        d["ev_n"] = list(rec.ev_n)
    if rec.ev_late is not None:
        d["ev_late"] = list(rec.ev_late)
    d["type"] = "request"
    d["schema"] = SCHEMA_VERSION
    return orjson.dumps(d) + b"\n"


def encode_span(span: ServerSpan) -> bytes:
    d = asdict(span)
    d["type"] = "span"
    d["schema"] = SCHEMA_VERSION
    return orjson.dumps(d) + b"\n"


SPAN_DURATIONS: tuple[str, ...] = (
    "ttft_s", "e2e_s", "queue_s", "prefill_s", "decode_s", "inference_s",
)  # fmt: skip
SPAN_COUNTS: tuple[str, ...] = ("prompt_tokens", "completion_tokens")
_SPAN_FIELDS = frozenset(f.name for f in fields(ServerSpan))


def check_span(d: dict[str, Any]) -> None:
    """ValueError naming the field unless `d` (a `ServerSpan`'s fields) is one a records file
    can hold and every reader can do arithmetic on: the receiver refuses a span this refuses
    (`otlp.receiver`), so a records file it writes always reads back. Times are int64 (OTLP's
    are uint64: a time at 2^63 or later is no time this file can hold), token counts
    non-negative int64, durations finite and non-negative seconds."""
    if not is_trace_id(d.get("trace_id")):
        raise ValueError(f"span trace_id is {d.get('trace_id')!r}, not 32 lower-case hex digits")
    for name in ("span_id", "name"):
        if not isinstance(d.get(name), str):
            raise ValueError(f"span {name} is {d.get(name)!r}, not a string")
    for name in ("request_id", "service"):
        value = d.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"span {name} is {value!r}, not a string")
    if d.get("received_ns") is None:
        raise ValueError("span received_ns is missing")
    for name in ("received_ns", "start_unix_ns", "end_unix_ns"):
        value = d.get(name)
        if value is not None and (type(value) is not int or not -_I64 <= value < _I64):
            raise ValueError(f"span {name} is {value!r}, not a 64-bit integer")
    for name in SPAN_COUNTS:
        value = d.get(name)
        if value is not None and (type(value) is not int or not 0 <= value < _I64):
            raise ValueError(f"span {name} is {value!r}, not a non-negative 64-bit integer")
    for name in SPAN_DURATIONS:
        value = d.get(name)
        # NaN fails `0 <= value`; an infinite duration is no measurement either.
        if value is not None and (type(value) not in (int, float) or not 0 <= value < float("inf")):
            raise ValueError(f"span {name} is {value!r}, not a non-negative number of seconds")


def _decode_span(d: dict[str, Any]) -> ServerSpan:
    check_span(d)
    # A field a later latbench adds is left out, as a request line's are: the file stays
    # readable by this one.
    return ServerSpan(**{k: v for k, v in d.items() if k in _SPAN_FIELDS})


def encode_gpu(sample: GpuSample) -> bytes:
    d = asdict(sample)
    d["type"] = "gpu"
    d["schema"] = SCHEMA_VERSION
    return orjson.dumps(d) + b"\n"


def _decode_gpu(d: dict[str, Any]) -> GpuSample:
    t_ns = d.get("t_ns")
    if type(t_ns) is not int or not -_I64 <= t_ns < _I64:
        raise ValueError(f"gpu t_ns is {t_ns!r}, not an integer")
    if d.get("source") not in GPU_SOURCES:
        raise ValueError(f"gpu source is {d.get('source')!r}, not one of {', '.join(GPU_SOURCES)}")
    if not isinstance(d.get("gpu"), str):
        raise ValueError(f"gpu gpu is {d.get('gpu')!r}, not a string")
    mem = d.get("memory_used_bytes")
    if mem is not None and (type(mem) is not int or not 0 <= mem < _I64):
        raise ValueError(f"gpu memory_used_bytes is {mem!r}, not a non-negative integer")
    for name in ("utilization", "power_w", "energy_j"):
        value = d.get(name)
        # NaN fails `0 <= value`; infinity is no reading either.
        if value is not None and (type(value) not in (int, float) or not 0 <= value < float("inf")):
            raise ValueError(f"gpu {name} is {value!r}, not a non-negative number")
    util = d.get("utilization")
    if util is not None and util > 1:
        raise ValueError(f"gpu utilization is {util!r}, not a share between 0 and 1")
    return GpuSample(**d)


def encode_header(h: RunHeader) -> bytes:
    d = asdict(h)
    d["type"] = "header"
    d["schema"] = SCHEMA_VERSION
    return orjson.dumps(d) + b"\n"


def encode_footer(f: RunFooter) -> bytes:
    d = asdict(f)
    d["type"] = "footer"
    d["schema"] = SCHEMA_VERSION
    return orjson.dumps(d) + b"\n"


def _event_array(d: dict[str, Any], name: str, default: Any) -> array[int] | None:
    """A record's per-event values as an int64 array; ValueError naming the field for a value
    that is not an integer or does not fit (array raises OverflowError at 2**63 and up)."""
    values = d.get(name, default)
    if values is None:
        return None
    try:
        return array("q", values)
    except (TypeError, OverflowError) as e:
        raise ValueError(f"{name} holds a value that is not a 64-bit integer ({e})") from None


def _decode_record(d: dict[str, Any]) -> Record:
    for name in INT_FIELDS:
        check_int(name, d.get(name))
    ev_t = _event_array(d, "ev_t", ())
    ev_n = _event_array(d, "ev_n", None)
    if ev_n and min(ev_n) < 0:  # one pass in C, not a Python generator over every count
        raise ValueError("ev_n holds a count that is not a non-negative integer")
    ev_late = _event_array(d, "ev_late", None)
    if ev_late is not None:
        if len(ev_late) != len(ev_t):
            raise ValueError(f"ev_late holds {len(ev_late)} values for {len(ev_t)} events")
        if ev_late and min(ev_late) < 0:
            raise ValueError("ev_late holds a bound that is not a non-negative integer")
    trace_id = d.get("trace_id")
    if trace_id is not None and not is_trace_id(trace_id):
        raise ValueError(f"trace_id is {trace_id!r}, not 32 lower-case hex digits")
    location = d.get("location")
    if location is not None and not is_location(location):
        raise ValueError(
            f"location is {location!r:.80}, not a label of 1 to {MAX_LOCATION} printable characters"
        )
    err = d.get("error")
    first_err = d.get("first_error")
    return Record(
        run_id=d["run_id"],
        seq=d["seq"],
        phase=d["phase"],
        api=d["api"],
        t_intended=d["t_intended"],
        t_sent=d["t_sent"],
        t_headers=d.get("t_headers"),
        t_end=d.get("t_end"),
        ev_t=ev_t,
        ev_kind=d.get("ev_kind", ""),
        ev_n=ev_n,
        status=d.get("status"),
        finish_reason=d.get("finish_reason"),
        usage_prompt_tokens=d.get("usage_prompt_tokens"),
        usage_completion_tokens=d.get("usage_completion_tokens"),
        max_tokens=d.get("max_tokens"),
        prompt_tokens=d.get("prompt_tokens"),
        error=None if err is None else ErrorKind(err),
        error_detail=d.get("error_detail"),
        # Absent from records written before retries existed; the defaults describe them.
        retry_after_s=d.get("retry_after_s"),
        attempts=d.get("attempts", 1),
        first_status=d.get("first_status"),
        first_error=None if first_err is None else ErrorKind(first_err),
        t_first_end=d.get("t_first_end"),
        t_last_sent=d.get("t_last_sent"),
        # Absent from records written before the error bound was measured: not known.
        sent_late=d.get("sent_late"),
        ev_late=ev_late,
        # Absent from records written before sessions and images: single text requests.
        session=d.get("session"),
        turn=d.get("turn"),
        images=d.get("images", 0),
        image_bytes=d.get("image_bytes", 0),
        trace_id=d.get("trace_id"),
        # Absent from a local run's records (and from any written before agents).
        agent=d.get("agent"),
        location=location,
        clock_offset_ns=d.get("clock_offset_ns"),
        clock_uncertainty_ns=d.get("clock_uncertainty_ns"),
    )


@dataclass(slots=True)
class RecordsFile:
    """Everything a records file holds. `footer` is None when the run did not end cleanly.
    `spans` are the server's spans the run received (their lines come between the requests, as
    they arrive, and before the footer). `gpu` are the GPU samples taken during the run, in the
    order taken (`GpuSample`)."""

    header: RunHeader | None
    records: list[Record]
    footer: RunFooter | None
    spans: list[ServerSpan] = field(default_factory=list)
    gpu: list[GpuSample] = field(default_factory=list)


def iter_lines(
    lines: Iterable[bytes], source: str = "<records>"
) -> Iterator[RunHeader | Record | RunFooter | ServerSpan | GpuSample]:
    for lineno, raw in enumerate(lines, 1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            d = orjson.loads(raw)
            if d.get("schema") != SCHEMA_VERSION:
                raise RecordsError(
                    f"{source}:{lineno}: schema {d.get('schema')!r}, "
                    f"this latbench reads {SCHEMA_VERSION}"
                )
            kind = d.pop("type")
            d.pop("schema")
            if kind == "request":
                yield _decode_record(d)
            elif kind == "span":
                yield _decode_span(d)
            elif kind == "gpu":
                yield _decode_gpu(d)
            elif kind == "header":
                yield RunHeader(**d)
            elif kind == "footer":
                check_int("stopped_ns", d.get("stopped_ns"))  # the stairs do arithmetic on it
                receiver = d.get("span_receiver")
                if receiver is not None and not isinstance(receiver, dict):
                    raise ValueError(f"span_receiver is {receiver!r}, not an object")
                yield RunFooter(**d)
            else:
                raise RecordsError(f"{source}:{lineno}: unknown line type {kind!r}")
        except RecordsError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as e:
            # A killed run can leave a half-written last line; everything before it is kept.
            raise RecordsError(f"{source}:{lineno}: not a latbench records line ({e})") from e


def read_records(path: str | Path) -> RecordsFile:
    """Read a records file. A torn final line (a run killed mid-write) is skipped, not fatal."""
    p = Path(path)
    data = p.read_bytes()
    lines = data.splitlines()
    if lines and not data.endswith(b"\n"):
        lines = lines[:-1]  # the last line was never completed
    out = RecordsFile(header=None, records=[], footer=None)
    for item in iter_lines(lines, str(p)):
        if isinstance(item, Record):
            out.records.append(item)
        elif isinstance(item, ServerSpan):
            out.spans.append(item)
        elif isinstance(item, GpuSample):
            out.gpu.append(item)
        elif isinstance(item, RunHeader):
            out.header = item
        else:
            out.footer = item
    return out
