"""Multi-turn sessions in the summary: TTFT by turn index, and how the sessions ended.

A session's turn k resends its whole history, so its prompt grows turn by turn; with a prefix
cache the server prefills only what it has not seen (the new message and the reply it sent),
without one it prefills everything again. TTFT by turn index shows which: flat while the prompt
grows is the cache at work, rising with the prompt is its absence. The table sets each turn's
TTFT next to its mean prompt length (the server's `usage.prompt_tokens`) for that reason.

Counted over the measure-phase requests that carry a session (records `session`, `turn`): TTFT
percentiles over the succeeded ones, as the run's own TTFT is (summary/samples.py); failed
requests in each turn's count. A failed request ends its session (load/worker.py: the later
turns are not sent), so `ended_by_failure` counts the sessions whose last measured request
failed; one cancelled by an abort is not counted (as in the failed share, summary/validity.py).
Turns from MAX_TURN_ROWS on share one row, so a long conversation keeps the table short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latbench.records.record import Record
from latbench.shared.errors import ErrorKind
from latbench.summary.samples import Samples
from latbench.summary.validity import rounded

MAX_TURN_ROWS = 16  # turns 0..15 each a row; 16 and later one row
TURN_PERCENTILES = (50.0, 99.0)


@dataclass(frozen=True)
class TurnStats:
    turn: int  # the turn index; with `and_later`, this one and every later one
    and_later: bool
    requests: int  # measure-phase requests at this turn, failed ones too
    succeeded: int
    ttft_p50: float | None  # seconds, over the succeeded ones with a first token
    ttft_p99: float | None
    ttft_mean: float | None
    prompt_tokens_mean: float | None  # the server's usage, where it reported one

    @property
    def label(self) -> str:
        return f"{self.turn}+" if self.and_later else str(self.turn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "and_later": self.and_later,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "ttft": {
                "p50": rounded(self.ttft_p50, 9),
                "p99": rounded(self.ttft_p99, 9),
                "mean": rounded(self.ttft_mean, 9),
            },
            "prompt_tokens_mean": rounded(self.prompt_tokens_mean, 3),
        }


@dataclass(frozen=True)
class SessionStats:
    sessions: int  # sessions with a measure-phase request
    requests: int  # measure-phase requests of sessions
    ended_by_failure: int  # sessions whose last measured request failed: the rest unsent
    by_turn: tuple[TurnStats, ...]

    @property
    def requests_per_session(self) -> float:
        return self.requests / self.sessions if self.sessions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "requests": self.requests,
            "requests_per_session_mean": rounded(self.requests_per_session, 6),
            "ended_by_failure": self.ended_by_failure,
            "by_turn": [t.to_dict() for t in self.by_turn],
        }

    def describe(self) -> str:
        """One line for people (the terminal, HTML and Markdown summaries)."""
        cut = f"; {self.ended_by_failure:,} ended by a failed turn" if self.ended_by_failure else ""
        return (
            f"{self.sessions:,} sessions, {self.requests:,} requests "
            f"(mean {self.requests_per_session:.2f} a session{cut})"
        )


def session_stats(
    measured: Sequence[Record], ok: Sequence[Record], s: Samples
) -> SessionStats | None:
    """The sessions among the measure-phase requests (`measured`); `ok` are the succeeded ones
    and `s` their samples (`Samples.build(ok)`). None when no request was part of a session."""
    in_sessions = [r for r in measured if r.session is not None]
    if not in_sessions:
        return None
    last: dict[int, Record] = {}
    for r in in_sessions:
        assert r.session is not None
        seen = last.get(r.session)
        if seen is None or (r.turn or 0) > (seen.turn or 0):
            last[r.session] = r
    ttft = s.per_request["ttft"]
    ttft_of = {id(r): float(t) for r, t in zip(ok, ttft, strict=True) if not np.isnan(t)}
    rows: dict[int, list[Record]] = {}
    for r in in_sessions:
        rows.setdefault(min(r.turn or 0, MAX_TURN_ROWS), []).append(r)
    by_turn = []
    for k in sorted(rows):
        recs = rows[k]
        firsts = np.array([ttft_of[id(r)] for r in recs if id(r) in ttft_of], dtype=np.float64)
        p50, p99 = (
            (float(v) for v in np.percentile(firsts, TURN_PERCENTILES))
            if firsts.size
            else (None, None)
        )
        prompts = [
            r.usage_prompt_tokens for r in recs if r.ok and r.usage_prompt_tokens is not None
        ]
        by_turn.append(
            TurnStats(
                turn=k,
                and_later=k == MAX_TURN_ROWS,
                requests=len(recs),
                succeeded=sum(r.ok for r in recs),
                ttft_p50=p50,
                ttft_p99=p99,
                ttft_mean=float(firsts.mean()) if firsts.size else None,
                prompt_tokens_mean=sum(prompts) / len(prompts) if prompts else None,
            )
        )
    return SessionStats(
        sessions=len(last),
        requests=len(in_sessions),
        ended_by_failure=sum(
            r.error is not None and r.error != ErrorKind.CANCELLED for r in last.values()
        ),
        by_turn=tuple(by_turn),
    )
