"""Trace replay: request n of a public trace, with the trace's own arrival instant and lengths.

Three formats, their columns as their publishers define them (tests/data/traces/README.md):

- Mooncake (kvcache-ai/Mooncake, FAST25-release/traces/*.jsonl): one JSON object a line,
  `timestamp` (ms since the trace's start), `input_length`, `output_length` (tokens) and
  `hash_ids`, one id per block of 512 prompt tokens (the KV cache's page in Mooncake; NVIDIA
  dynamo's data_generator README states the 512), equal ids meaning an equal prefix block. The
  released traces give ceil(input_length / 512) ids a row (6758 tokens: 14 ids), so the last
  block is partial.
- Azure LLM inference traces 2023 and 2024 (Azure/AzurePublicDataset, data/AzureLLMInference
  Trace_*.csv, schema in AzureLLMInferenceDataset2023.md): a CSV with `TIMESTAMP` (the
  invocation time, `2023-11-16 18:15:46.6805900`, or with a UTC offset in 2024:
  `2024-05-12 00:00:00.001163+00:00`), `ContextTokens`, `GeneratedTokens`.
- BurstGPT (HPMLL/BurstGPT, README "Schema"): a CSV with `Timestamp` (seconds from 0:00:00 on
  the first day), `Model`, `Request tokens`, `Response tokens`, `Total tokens`, `Log Type`.
  Its files with failures mark a failed request by 0 response tokens.

A row whose output length is 0 (a BurstGPT failure) is skipped and counted (`describe()`'s
`skipped_zero_output`): no request can ask for 0 tokens, and what the failed one cost the server
is unknown; the `without_fails` files are the same trace without them. An input length of 0
gets a one-token prompt. Only the columns above are read (BurstGPT's `Model` and `Log Type`
are not filters: the trace is what both models' users sent to one service).

Arrivals: row n is sent (its trace instant - the first kept row's) / speed after the run's
start, exactly, in integer ns (`offsets_ns`; the trace pacer in load/pacers.py hands them to
the workers). `start` and `end` window the trace in its own seconds, counted from its first
row. Rows must be in time order (all three publishers' files are), so a window stops the read at
its end instead of reading days of trace past it.

Prompts are words as the synthetic workload's (workload/synthetic.py), in the target's tokens
when a `TokenScale` is given. A Mooncake row's prompt is its blocks in order: each distinct hash
id is always the same `block_tokens` run of words (seeded by (seed, id)), so rows with equal ids
share a prefix on the server, as they did in production; the rest of a row beyond its blocks
(and an Azure or BurstGPT row's whole prompt) is seeded by (seed, format, the row's line), so
no two rows, windows or traces share words by accident. Memory: the kept rows are five integer
arrays (~40 bytes a row) plus the hash ids (8 bytes each), capped below. Measured on this
project's 2-core machine: 200,000 Azure rows read in 0.7 s (9.6 MB pickled for the workers),
100,000 Mooncake rows with 2M hash ids in 0.8 s (21 MB), and a 20,000-token Mooncake prompt
built in 0.7 ms when its blocks are new (a shared block is built once and kept).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from latbench.shared.errors import SpecError
from latbench.workload.item import MAX_TOKENS, WorkItem, check_n, check_seed, rng_for, user_turn
from latbench.workload.reading import lines, open_prompts
from latbench.workload.synthetic import DEFAULT_VOCABULARY
from latbench.workload.tokens import TokenScale, check_scale, fill_words, words_text

TraceFormat = Literal["mooncake", "azure", "burstgpt"]
FORMATS: tuple[TraceFormat, ...] = ("mooncake", "azure", "burstgpt")
MOONCAKE_BLOCK_TOKENS = 512
# Every worker gets the kept rows pickled in one frame (load/wire.py MAX_FRAME, 256 MiB):
# 1M rows are ~40 MB, 8M hash ids 64 MB. A longer trace is replayed a window at a time.
MAX_TRACE_ROWS = 1_000_000
MAX_TRACE_HASH_IDS = 8_000_000
MAX_HASH_ID = 2**63 - 1
MAX_REPLAY_NS = 366 * 86_400 * 1_000_000_000  # a year: offsets stay far inside int64
MAX_INSTANT_NS = 2**62  # a trace instant, in ns (Azure's are since 1970: ~1.7e18)
NS_PER_S = 1_000_000_000
_ROW_STREAM = 0x5EED_0016  # a row's own words
_BLOCK_STREAM = 0x5EED_0017  # a hash id's block
_BLOCK_CACHE = 4096  # blocks kept built; a shared prefix is built once

# CSV columns: format -> (time, input, output), as the publishers name them.
_CSV_COLUMNS: dict[str, tuple[str, str, str]] = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
}
_AZURE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$"
)


@dataclasses.dataclass(frozen=True, slots=True)
class TraceRows:
    """The kept rows of a trace file, in its order. Instants are the trace's own, in ns."""

    format: TraceFormat
    path: str
    times_ns: np.ndarray  # int64, from the trace's first row (kept or not)
    inputs: np.ndarray  # int64, tokens
    outputs: np.ndarray  # int64, tokens, each >= 1
    lines: np.ndarray  # int64, the file line of each row, for messages
    block_starts: np.ndarray  # int64, row i's ids are hash_ids[block_starts[i]:block_starts[i+1]]
    hash_ids: np.ndarray  # int64
    read: int  # rows read, kept or not
    skipped_zero_output: int

    def __len__(self) -> int:
        return len(self.times_ns)


def _where(path: Path, lineno: int, column: str) -> str:
    return f"{path}, line {lineno}, column {column}"


def _count(v: object, path: Path, lineno: int, column: str) -> int:
    """A token count: a whole number 0..MAX_TOKENS (CSV text or a JSON number)."""
    n: object = v
    if isinstance(v, str):
        s = v.strip()
        n = int(s) if s.isdigit() else s
        if isinstance(n, str):  # "12.0" from a spreadsheet: whole numbers only
            try:
                f = float(n)
                n = int(f) if f.is_integer() else n
            except ValueError:
                pass
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TOKENS:
        raise SpecError(
            f"{_where(path, lineno, column)}: a token count must be a whole number from 0 to "
            f"{MAX_TOKENS}, found {v!r:.40}"
        )
    return n


def _seconds_ns(text: str, scale_ns: int, path: Path, lineno: int, column: str) -> int:
    """A decimal number of seconds (BurstGPT) or ms (Mooncake) -> ns, exactly."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        d = Decimal("NaN")
    if not d.is_finite() or d < 0 or d * scale_ns >= MAX_INSTANT_NS:
        unit = "seconds" if scale_ns == NS_PER_S else "milliseconds"
        raise SpecError(
            f"{_where(path, lineno, column)}: expected a number of {unit} from 0 to "
            f"{MAX_INSTANT_NS // scale_ns:.3g}, found {text!r:.40}"
        )
    return int(d * scale_ns)


@lru_cache(maxsize=256)
def _azure_base_ns(date: str, clock: str, tz: str) -> int:
    """ns since the epoch of a whole second; cached, since a second holds many rows."""
    dt = datetime.fromisoformat(f"{date} {clock}{tz}")
    if dt.tzinfo is None:  # the 2023 files have no offset: UTC, as the 2024 files state
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS_PER_S


def _azure_ns(text: str, path: Path, lineno: int) -> int:
    m = _AZURE_TIME.match(text.strip())
    try:
        if m is None:
            raise ValueError
        date, clock, frac, tz = m.groups()
        base = _azure_base_ns(date, clock, tz or "")
    except ValueError:
        raise SpecError(
            f"{_where(path, lineno, 'TIMESTAMP')}: expected a time such as "
            f"2023-11-16 18:15:46.6805900, found {text!r:.40}"
        ) from None
    return base + (int(frac.ljust(9, "0")) if frac else 0)


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode().rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}, line {lineno}: not UTF-8 text ({e.reason})") from None


def detect_format(path: str | os.PathLike[str]) -> TraceFormat:
    """The format of a trace file from its first line: a JSON object is Mooncake's, a CSV header
    names Azure's or BurstGPT's columns."""
    p = Path(path)
    with open_prompts(p) as f:
        for lineno, raw in lines(f, p):
            text = _decode(raw, p, lineno).strip()
            if not text:
                continue
            if text.startswith("{"):
                return "mooncake"
            header = [c.strip() for c in text.split(",")]
            for fmt, cols in _CSV_COLUMNS.items():
                if all(c in header for c in cols):
                    return fmt  # type: ignore[return-value]
            raise SpecError(
                f"{p}, line {lineno}: not a trace this reads: neither a Mooncake JSON line nor "
                "a CSV header with Azure's TIMESTAMP,ContextTokens,GeneratedTokens or BurstGPT's "
                "Timestamp,...,Request tokens,Response tokens; give trace.format"
            )
    raise SpecError(f"{p}: the trace file is empty")


def _mooncake(p: Path, block_tokens: int) -> Iterator[tuple[int, int, int, int, list[int]]]:
    """(line, time ns, input, output, hash ids) of each row."""
    with open_prompts(p) as f:
        for lineno, raw in lines(f, p):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw.rstrip(b"\r\n"))
            except orjson.JSONDecodeError as e:
                raise SpecError(f"{p}, line {lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise SpecError(f"{p}, line {lineno}: expected a JSON object (a Mooncake row)")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in obj:
                    raise SpecError(f"{_where(p, lineno, key)}: missing")
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float):
                raise SpecError(
                    f"{_where(p, lineno, 'timestamp')}: expected a number of milliseconds, "
                    f"found {ts!r:.40}"
                )
            t = _seconds_ns(repr(ts), 1_000_000, p, lineno, "timestamp")
            n_in = _count(obj["input_length"], p, lineno, "input_length")
            n_out = _count(obj["output_length"], p, lineno, "output_length")
            ids = obj.get("hash_ids", [])
            if not isinstance(ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= MAX_HASH_ID
                for h in ids
            ):
                raise SpecError(
                    f"{_where(p, lineno, 'hash_ids')}: expected a list of whole numbers >= 0, "
                    f"found {ids!r:.60}"
                )
            blocks = -(-max(n_in, 1) // block_tokens)
            if len(ids) > blocks:
                raise SpecError(
                    f"{_where(p, lineno, 'hash_ids')}: {len(ids)} blocks, but input_length "
                    f"{n_in} fills only {blocks} of {block_tokens} tokens (is trace.block_tokens "
                    "the block size the trace was made with?)"
                )
            yield lineno, t, n_in, n_out, ids


def _csv(p: Path, fmt: TraceFormat) -> Iterator[tuple[int, int, int, int, list[int]]]:
    time_col, in_col, out_col = _CSV_COLUMNS[fmt]
    with open_prompts(p) as f:
        header: list[str] | None = None
        at: tuple[int, int, int] = (0, 0, 0)
        for lineno, raw in lines(f, p):
            text = _decode(raw, p, lineno)
            if not text.strip():
                continue
            cells = text.split(",")
            if header is None:
                header = [c.strip() for c in cells]
                missing = [c for c in (time_col, in_col, out_col) if c not in header]
                if missing:
                    raise SpecError(
                        f"{p}, line {lineno}: the {fmt} header needs the columns "
                        f"{', '.join((time_col, in_col, out_col))}; missing {', '.join(missing)}"
                    )
                at = (header.index(time_col), header.index(in_col), header.index(out_col))
                continue
            if len(cells) != len(header):
                raise SpecError(
                    f"{p}, line {lineno}: {len(cells)} columns, the header has {len(header)}"
                )
            if fmt == "azure":
                t = _azure_ns(cells[at[0]], p, lineno)
            else:
                t = _seconds_ns(cells[at[0]], NS_PER_S, p, lineno, time_col)
            n_in = _count(cells[at[1]], p, lineno, in_col)
            n_out = _count(cells[at[2]], p, lineno, out_col)
            yield lineno, t, n_in, n_out, []
        if header is None:
            raise SpecError(f"{p}: the trace file is empty")


def read_trace(
    path: str | os.PathLike[str],
    fmt: TraceFormat | Literal["auto"] = "auto",
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
) -> TraceRows:
    """The rows of a trace file inside [start_s, end_s) of its own time (from its first row),
    read a line at a time; every malformed line a SpecError naming the file, line and column."""
    p = Path(path)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt not in FORMATS:
        raise SpecError(f"trace format {fmt!r}: use one of {', '.join(FORMATS)}")
    if block_tokens < 1:
        raise SpecError(f"block_tokens must be 1 or more, got {block_tokens}")
    rows = _mooncake(p, block_tokens) if fmt == "mooncake" else _csv(p, fmt)
    start_ns = round(start_s * NS_PER_S)
    end_ns = None if end_s is None else round(end_s * NS_PER_S)
    times: list[int] = []
    inputs: list[int] = []
    outputs: list[int] = []
    linenos: list[int] = []
    starts: list[int] = [0]
    ids: list[int] = []
    first: int | None = None
    prev, prev_line = 0, 0
    read = skipped = 0
    time_col = "timestamp" if fmt == "mooncake" else _CSV_COLUMNS[fmt][0]
    for lineno, t, n_in, n_out, hashes in rows:
        read += 1
        if first is None:
            first = prev = t
        if t < prev:
            raise SpecError(
                f"{_where(p, lineno, time_col)}: {(t - first) / NS_PER_S:.9g} s into the trace, "
                f"before line {prev_line}'s {(prev - first) / NS_PER_S:.9g} s; a trace must be in "
                "time order (sort it by time first)"
            )
        prev, prev_line = t, lineno
        rel = t - first
        if end_ns is not None and rel >= end_ns:
            break  # in time order: nothing after this is inside the window
        if rel < start_ns:
            continue
        if n_out == 0:
            skipped += 1
            continue
        if len(times) >= MAX_TRACE_ROWS:
            raise SpecError(
                f"{p}, line {lineno}: over {MAX_TRACE_ROWS:,} rows in the window, the most a run "
                "replays (every worker gets them all); narrow it with trace.start/trace.end"
            )
        if len(ids) + len(hashes) > MAX_TRACE_HASH_IDS:
            raise SpecError(
                f"{p}, line {lineno}: over {MAX_TRACE_HASH_IDS:,} hash ids in the window, the "
                "most a run replays; narrow it with trace.start/trace.end"
            )
        times.append(rel)
        inputs.append(n_in)
        outputs.append(n_out)
        linenos.append(lineno)
        ids.extend(hashes)
        starts.append(len(ids))
    if not times:
        window = f"[{start_s:g} s, {'end' if end_s is None else f'{end_s:g} s'})"
        why = f" ({skipped} with 0 output tokens skipped)" if skipped else ""
        raise SpecError(f"{p}: no rows to replay in the window {window} of {read} rows{why}")
    i64 = np.int64
    return TraceRows(
        format=fmt,
        path=str(p),
        times_ns=np.asarray(times, dtype=i64),
        inputs=np.asarray(inputs, dtype=i64),
        outputs=np.asarray(outputs, dtype=i64),
        lines=np.asarray(linenos, dtype=i64),
        block_starts=np.asarray(starts, dtype=i64),
        hash_ids=np.asarray(ids, dtype=i64),
        read=read,
        skipped_zero_output=skipped,
    )


@lru_cache(maxsize=1)
def _read_cached(
    path: str, mtime_ns: int, size: int, fmt: str, start_s: float, end_s: float | None, block: int
) -> TraceRows:
    return read_trace(path, fmt, start_s=start_s, end_s=end_s, block_tokens=block)  # type: ignore[arg-type]


def offsets_ns(times_ns: np.ndarray, speed: float) -> np.ndarray:
    """Each row's send offset: (its instant - the first's) / speed, floored to whole ns, in exact
    rational arithmetic on the speed as written (2.5, not its binary neighbour)."""
    frac = Fraction(repr(float(speed)))
    if frac <= 0:
        raise ValueError(f"speed must be above 0, got {speed!r}")
    t0 = int(times_ns[0])
    num, den = frac.numerator, frac.denominator
    span = (int(times_ns[-1]) - t0) * den // num
    if span > MAX_REPLAY_NS:
        raise SpecError(
            f"the replay would last {span / NS_PER_S / 86_400:.4g} days at speed {speed:g}, "
            f"over the {MAX_REPLAY_NS // NS_PER_S // 86_400} a run may; raise trace.speed or "
            "narrow trace.start/trace.end"
        )
    return np.fromiter(
        ((int(t) - t0) * den // num for t in times_ns.tolist()), dtype=np.int64, count=len(times_ns)
    )


class TraceWorkload:
    """A trace's rows as requests: item(n) is row n's lengths (and its prefix blocks), and
    `offsets_ns[n]` its send offset. Build with `from_file`."""

    def __init__(
        self,
        rows: TraceRows,
        *,
        speed: float = 1.0,
        start_s: float = 0.0,
        end_s: float | None = None,
        block_tokens: int = MOONCAKE_BLOCK_TOKENS,
        seed: int = 0,
        scale: TokenScale | None = None,
    ) -> None:
        if not (isinstance(speed, int | float) and 0 < speed < float("inf")):
            raise ValueError(f"speed must be a finite number above 0, got {speed!r}")
        self.rows = rows
        self.format = rows.format
        self.speed = float(speed)
        self.start_s = start_s
        self.end_s = end_s
        self.block_tokens = block_tokens
        self.seed = check_seed(seed)
        self.scale = check_scale(scale, len(DEFAULT_VOCABULARY))
        self.offsets_ns = offsets_ns(rows.times_ns, self.speed)
        self._words = np.array(DEFAULT_VOCABULARY, dtype=object)
        self._costs = (
            np.ones(len(DEFAULT_VOCABULARY))
            if scale is None
            else np.asarray(scale.costs, dtype=np.float64)
        )
        self._blocks: dict[tuple[int, bool], np.ndarray] = {}

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        fmt: TraceFormat | Literal["auto"] = "auto",
        *,
        speed: float = 1.0,
        start_s: float = 0.0,
        end_s: float | None = None,
        block_tokens: int = MOONCAKE_BLOCK_TOKENS,
        seed: int = 0,
        scale: TokenScale | None = None,
    ) -> TraceWorkload:
        """The trace read once per file version (a workload is built again with the target's
        token scale after calibration: the rows are not read twice)."""
        p = Path(path)
        try:
            st = p.stat()
            key = (st.st_mtime_ns, st.st_size)
        except (OSError, ValueError):
            key = (0, 0)  # open_prompts says what is wrong with it
        rows = _read_cached(str(p), *key, fmt, start_s, end_s, block_tokens)
        return cls(
            rows,
            speed=speed,
            start_s=start_s,
            end_s=end_s,
            block_tokens=block_tokens,
            seed=seed,
            scale=scale,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # Built blocks are a cache: each worker builds its own rather than receive the parent's.
        state = {k: getattr(self, k) for k in self.__dict__}
        state["_blocks"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def hash_ids(self, n: int) -> np.ndarray:
        r = self.rows
        i = n % len(r)
        return r.hash_ids[int(r.block_starts[i]) : int(r.block_starts[i + 1])]

    def _fill(self, tokens: float, rng: np.random.Generator) -> np.ndarray:
        """Word indices worth `tokens` of the target's tokens (words without a scale)."""
        if tokens <= 0:
            return np.empty(0, dtype=np.int64)
        if self.scale is None:
            return rng.integers(0, len(self._words), int(tokens))
        return fill_words(self.scale, round(tokens), rng)[0]

    def _block(self, h: int, first: bool) -> np.ndarray:
        """Hash id h's words: the same wherever h appears (the first block pays for the lead)."""
        key = (h, first)
        got = self._blocks.get(key)
        if got is None:
            lead = self.scale.lead_costs[0] if self.scale is not None and first else 0.0
            got = self._fill(self.block_tokens - lead, rng_for(self.seed, _BLOCK_STREAM, h))
            if len(self._blocks) >= _BLOCK_CACHE:
                self._blocks.clear()
            self._blocks[key] = got
        return got

    def _blocks_prompt(self, ids: np.ndarray, asked: int, rng: np.random.Generator) -> str:
        """A Mooncake row's prompt: its hash blocks' words, cut at `asked` tokens, then words of
        its own for the rest. Built from word indices, not words_text's text: the blocks are cut
        by the sum of their words' costs, and each block fills its count with no lead word."""
        # One lead for every row, so that equal first blocks are equal from the first token.
        lead = "" if self.scale is None else self.scale.leads[0]
        need = asked - (0.0 if self.scale is None else self.scale.lead_costs[0])
        blocks = np.concatenate([self._block(int(h), j == 0) for j, h in enumerate(ids)])
        spent = np.cumsum(self._costs[blocks])
        keep = int(np.searchsorted(spent, need, side="right"))
        rest = need - (float(spent[keep - 1]) if keep else 0.0)
        text = " ".join(self._words[np.concatenate([blocks[:keep], self._fill(rest, rng)])])
        return f"{lead} {text}".strip() if lead else text

    def item(self, n: int) -> WorkItem:
        check_n(n)
        i = n % len(self.rows)
        asked = max(1, int(self.rows.inputs[i]))
        # Keyed by the row's line, not its index in the window: a row asks for the same words
        # in every window, and two windows (or two traces) never repeat one another's prompts.
        rng = rng_for(self.seed, _ROW_STREAM, FORMATS.index(self.format), int(self.rows.lines[i]))
        ids = self.hash_ids(i)
        if ids.size == 0:  # a prompt of its own, as a synthetic one is built
            prompt = words_text(self._words, asked, rng, self.scale)
        else:
            prompt = self._blocks_prompt(ids, asked, rng)
        return WorkItem(
            prompt=prompt,
            messages=user_turn(prompt),
            prompt_tokens=asked,
            max_tokens=int(self.rows.outputs[i]),
        )

    def describe(self) -> dict[str, Any]:
        r = self.rows
        return {
            "kind": "trace",
            "format": r.format,
            "path": r.path,
            "rows": len(r),
            "rows_read": r.read,
            "skipped_zero_output": r.skipped_zero_output,
            "speed": self.speed,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "span_s": int(self.offsets_ns[-1]) / NS_PER_S,
            "block_tokens": self.block_tokens,
            "hash_ids": len(r.hash_ids),
            "distinct_hash_ids": len(np.unique(r.hash_ids)),
            "seed": self.seed,
            "prompt_tokens": {"source": "words"} if self.scale is None else self.scale.describe(),
        }


def trace_of(workload: object) -> TraceWorkload | None:
    """The trace inside a workload, through the wrappers that decorate one (`inner`)."""
    seen = 0
    while workload is not None and seen < 8:
        if isinstance(workload, TraceWorkload):
            return workload
        workload = getattr(workload, "inner", None)
        seen += 1
    return None
