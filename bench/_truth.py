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
# What the truth puts in an error that no client bound can hold: the simulator stamps each event
# before its write, and the request's arrival at its kernel's read, so the server's own write path
# and loopback's delivery (10-40 us per event, 2-10 us per send, measured by `decompose` on the
# 2-core machine) count as error. A bound is judged to hold when it covers the error less this.
SLACK_MS = 0.1


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


def pairs(
    records: Sequence[Any], entries: Sequence[dict[str, Any]], window: tuple[int, int] | None
) -> list[tuple[Any, dict[str, Any]]]:
    """Pairs latbench records with truth entries by order (sends and arrivals keep their order
    on loopback); a pair is kept only when its arrival follows its send within 1 s and both
    stream the same number of events, so a mismatch cannot pass for a large error. A send
    stamped by the kernel as it left may read a few microseconds after the server's arrival
    stamp of the same bytes (two processes' clock conversions): 0.1 ms of slack."""
    lo, hi = window if window is not None else (0, 2**63)
    recs = sorted((r for r in records if r.ev_t and lo <= r.t_sent <= hi), key=lambda r: r.t_sent)
    truth = sorted(
        (e for e in entries if e["events_ns"] and lo <= e["arrival_ns"] <= hi),
        key=lambda e: e["arrival_ns"],
    )
    out = []
    j = 0
    for r in recs:
        while j < len(truth) and truth[j]["arrival_ns"] < r.t_sent - 100_000:
            j += 1
        if j == len(truth):
            break
        e = truth[j]
        if e["arrival_ns"] - r.t_sent < 1_000_000_000 and len(e["events_ns"]) == len(r.ev_t):
            out.append((r, e))
            j += 1
    return out


def decompose(
    records: Sequence[Any], entries: Sequence[dict[str, Any]], window: tuple[int, int] | None
) -> Decomposition:
    """The send leg (t_sent -> the server's arrival), the server's intake and the receive leg
    (each event's server write -> latbench's stamp) of the matched requests."""
    matched = pairs(records, entries, window)
    up = [e["arrival_ns"] - r.t_sent for r, e in matched]
    intake = [e.get("handler_ns", e["arrival_ns"]) - e["arrival_ns"] for _, e in matched]
    down = [np.asarray(r.ev_t, dtype=np.int64) - np.asarray(e["events_ns"]) for r, e in matched]
    reads = np.concatenate(down) if down else np.empty(0, dtype=np.int64)
    return Decomposition(
        len(up),
        _pct(np.asarray(up, dtype=np.int64)),
        _pct(np.asarray(intake, dtype=np.int64)),
        _pct(reads),
    )


@dataclass(frozen=True)
class BoundCheck:
    """latbench's figures, their true error and their measured bound, over the same requests:
    the matched ones, so the truth's percentile and latbench's come from one set of samples and
    their difference is the error of the stamps alone (not of two different windows)."""

    matched: int
    ttft_err_ms: dict[float, float]  # latbench's percentile - the truth's
    itl_err_ms: dict[float, float]
    ttft_bound_ms: dict[float, float] | None  # summary.bound over the matched records
    itl_bound_ms: dict[float, float] | None

    def holds(self) -> bool | None:
        """Every bound at or above its error's size, less the transport's SLACK_MS (None: no
        bound measured)."""
        if self.ttft_bound_ms is None or self.itl_bound_ms is None:
            return None
        return all(
            bound[p] + SLACK_MS >= abs(err[p])
            for err, bound in ((self.ttft_err_ms, self.ttft_bound_ms),
                               (self.itl_err_ms, self.itl_bound_ms))
            for p in PCTS
        )  # fmt: skip


def check_bound(
    records: Sequence[Any], entries: Sequence[dict[str, Any]], window: tuple[int, int] | None
) -> BoundCheck:
    return check_pairs(pairs(records, entries, window))


def check_pairs(pairs_: Sequence[tuple[Any, dict[str, Any]]]) -> BoundCheck:
    """`check_bound` over pairs already matched (`pairs`): a subset of them (one agent's
    requests) is checked alone, after the pairing that needs every request."""
    from latbench.summary.bound import error_bounds
    from latbench.summary.samples import NS_PER_S, Samples

    matched = [(r, e) for r, e in pairs_ if r.ok]
    nan = {p: float("nan") for p in PCTS}
    if not matched:
        return BoundCheck(0, nan, nan, None, None)
    recs = [r for r, _ in matched]
    # latbench's side is the summary's own samples (seconds): each metric's arithmetic lives in
    # latbench.summary.samples only. Every matched record has events, so none is left out.
    samples = Samples.build(recs)
    true_ttft = np.array([e["events_ns"][0] - e["arrival_ns"] for _, e in matched], np.int64)
    true_gaps = np.concatenate([np.diff(np.asarray(e["events_ns"], np.int64)) for _, e in matched])
    b = error_bounds(recs, samples)

    def ms(metric: Any) -> dict[float, float] | None:
        if not metric.known:
            return None
        return {50.0: metric.p50.bound_ns / 1e6, 99.0: metric.p99.bound_ns / 1e6}

    def err(metric: str, truth_ns: np.ndarray) -> dict[float, float]:
        qm = np.percentile(samples.samples(metric), PCTS)
        qt = np.percentile(truth_ns / NS_PER_S, PCTS)
        return {p: (a - b) * 1e3 for p, a, b in zip(PCTS, qm, qt, strict=True)}

    ttft_err, itl_err = err("ttft", true_ttft), err("itl", true_gaps)
    return BoundCheck(len(recs), ttft_err, itl_err, ms(b.ttft), ms(b.itl))
