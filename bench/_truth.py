"""Server truth: what the simulator saw, as distributions to score a client against.

The simulator stamps each request's arrival (the kernel's stamp of the read that brought its first
bytes: latbench/sim/arrival.py) and each event as it hands it to the socket, on CLOCK_MONOTONIC.
A client's TTFT error is its reported percentile minus the truth's percentile of the same metric
over the same stretch of time; both sides exclude the same warm-up, so the connection set-up that
every tool pays at its start counts for none of them. The error therefore holds the transport
(loopback, the kernels' network processing on a shared machine) and the client's own delays: its
work between its send stamp and the bytes leaving, its event loop's lag where its stamps wait for
the loop, its queueing. At low load the transport part is well under 1 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PCTS = (50.0, 99.0)


@dataclass(frozen=True)
class TruthStats:
    requests: int
    ttft_ms: dict[float, float]  # percentile -> ms
    itl_ms: dict[float, float]
    tpot_ms: dict[float, float]  # per request: (last - first event) / (events - 1)
    ingest_tok_s: float  # tokens written per second inside the window
    window_s: float
    window: tuple[int, int] | None = None  # [lo, hi], CLOCK_MONOTONIC ns


def _pct(a: np.ndarray) -> dict[float, float]:
    if a.size == 0:
        return {p: float("nan") for p in PCTS}
    return dict(zip(PCTS, (np.percentile(a, PCTS) / 1e6).tolist(), strict=True))


def score(entries: Sequence[dict[str, Any]], skip_s: float, tail_s: float) -> TruthStats:
    """Truth over requests that arrived between `skip_s` after the first arrival and `tail_s`
    before the last one; ingest counts every event written in that same span."""
    with_events = [e for e in entries if e["events_ns"]]
    if not with_events:
        nan = {p: float("nan") for p in PCTS}
        return TruthStats(0, nan, nan, nan, 0.0, 0.0)
    first = min(e["arrival_ns"] for e in with_events)
    last = max(e["arrival_ns"] for e in with_events)
    lo, hi = first + int(skip_s * 1e9), last - int(tail_s * 1e9)
    if hi <= lo:
        lo, hi = first, last
    chosen = [e for e in with_events if lo <= e["arrival_ns"] <= hi]
    ttft = np.array([e["events_ns"][0] - e["arrival_ns"] for e in chosen], dtype=np.int64)
    gaps = [np.diff(np.asarray(e["events_ns"], dtype=np.int64)) for e in chosen]
    itl = np.concatenate(gaps) if gaps else np.empty(0, dtype=np.int64)
    tpot = np.array([g.mean() for g in gaps if g.size], dtype=np.float64)
    # Ingest: events written in [lo, hi] by any request (one token per event in the harness).
    every = np.concatenate([np.asarray(e["events_ns"], dtype=np.int64) for e in with_events])
    written = int(np.count_nonzero((every >= lo) & (every <= hi)))
    span = (hi - lo) / 1e9
    return TruthStats(
        requests=len(chosen),
        ttft_ms=_pct(ttft),
        itl_ms=_pct(itl),
        tpot_ms=_pct(tpot),
        ingest_tok_s=written / span if span > 0 else 0.0,
        window_s=span,
        window=(lo, hi),
    )


@dataclass(frozen=True)
class Decomposition:
    """latbench's records matched to the server's requests: where an error comes from."""

    matched: int
    send_to_arrival_ms: dict[float, float]  # client t_sent -> the server's read of the request
    arrival_to_handler_ms: dict[float, float]  # that read -> handler entry (server intake)
    write_to_read_ms: dict[float, float]  # server event write -> latbench's stamp, per event


def decompose(
    records: Sequence[Any], entries: Sequence[dict[str, Any]], window: tuple[int, int] | None
) -> Decomposition:
    """Pairs latbench records with truth entries by order (sends and arrivals keep their order
    on loopback); a pair is kept only when its arrival follows its send within 1 s and both
    stream the same number of events, so a mismatch cannot pass for a large error."""
    lo, hi = window if window is not None else (0, 2**63)
    recs = sorted((r for r in records if r.ev_t and lo <= r.t_sent <= hi), key=lambda r: r.t_sent)
    truth = sorted(
        (e for e in entries if e["events_ns"] and lo <= e["arrival_ns"] <= hi),
        key=lambda e: e["arrival_ns"],
    )
    up: list[int] = []
    intake: list[int] = []
    down: list[np.ndarray] = []
    j = 0
    for r in recs:
        while j < len(truth) and truth[j]["arrival_ns"] < r.t_sent:
            j += 1
        if j == len(truth):
            break
        e = truth[j]
        if e["arrival_ns"] - r.t_sent < 1_000_000_000 and len(e["events_ns"]) == len(r.ev_t):
            up.append(e["arrival_ns"] - r.t_sent)
            intake.append(e.get("handler_ns", e["arrival_ns"]) - e["arrival_ns"])
            down.append(np.asarray(r.ev_t, dtype=np.int64) - np.asarray(e["events_ns"]))
            j += 1
    reads = np.concatenate(down) if down else np.empty(0, dtype=np.int64)
    return Decomposition(
        len(up),
        _pct(np.asarray(up, dtype=np.int64)),
        _pct(np.asarray(intake, dtype=np.int64)),
        _pct(reads),
    )
