"""The spec's `workload.sessions`: multi-turn sessions instead of single requests.

Each session resends its conversation every turn (workload/session.py); with `source:
synthetic` each turn's new message has `workload.input_tokens` and asks for
`workload.output_tokens`, `turns` user turns a session; with `source: sharegpt` the file's
conversations are replayed whole (their own turn counts). `think_time` is the user's pause
between a reply's end and the next message, in seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from latbench.shared.dist import Dist
from latbench.spec.fields import StrictModel
from latbench.workload import MAX_TOKENS
from latbench.workload.session import SessionWorkload
from latbench.workload.sessions import (
    MAX_THINK_S,
    MAX_TURNS,
    ShareGPTSessions,
    SyntheticSessions,
)
from latbench.workload.tokens import TokenScale

if TYPE_CHECKING:
    from latbench.spec.workload import WorkloadSpec


class SessionsSpec(StrictModel):
    turns: Dist | None = Field(
        default=None,
        description="user turns a session, with source synthetic (default 4); a ShareGPT "
        "conversation has its own",
    )
    think_time: Dist = Field(
        default_factory=lambda: Dist(mean=0.0),
        description="seconds between a reply's end and the next user message",
    )
    system_tokens: int = Field(
        default=0,
        ge=0,
        le=MAX_TOKENS,
        description="synthetic: a system prompt of this many tokens, the same in every session",
    )

    @field_validator("turns")
    @classmethod
    def _turns(cls, d: Dist | None) -> Dist | None:
        if d is None:
            return d
        for part in ("mean", "min", "max"):
            v = getattr(d, part)
            if v is not None and v > MAX_TURNS:
                raise ValueError(f"{part} {v:g} is over {MAX_TURNS} turns, the most a session has")
        if d.mean < 1 and d.kind == "fixed":
            raise ValueError("a session has at least one turn")
        return d

    @field_validator("think_time")
    @classmethod
    def _think(cls, d: Dist) -> Dist:
        for part in ("mean", "std", "min", "max"):
            v = getattr(d, part)
            if v is not None and v > MAX_THINK_S:
                raise ValueError(f"{part} {v:g} s is over a day ({MAX_THINK_S:g} s)")
        return d


DEFAULT_TURNS = 4


def check_sessions(w: WorkloadSpec) -> None:
    """`workload.sessions` against the rest of the workload section (a ValueError naming the
    field); fills in the synthetic default turn count."""
    s = w.sessions
    if s is None:
        return
    if w.source not in ("synthetic", "sharegpt"):
        raise ValueError(
            f"sessions is for source synthetic or sharegpt, not {w.source!r}: a session's later "
            "turns resend its own conversation"
        )
    if w.source == "sharegpt":
        if s.turns is not None:
            raise ValueError(
                "sessions.turns is for synthetic sessions: a ShareGPT conversation is replayed "
                "whole, with its own turns"
            )
        if s.system_tokens:
            raise ValueError("sessions.system_tokens is for synthetic sessions")
    elif s.turns is None:
        s.turns = Dist(mean=DEFAULT_TURNS)


def session_workload(
    w: WorkloadSpec, output_tokens: Dist, scale: TokenScale | None = None
) -> SessionWorkload:
    """The spec's session workload; synthetic messages counted with `scale` (None: a word a
    token), asking for `output_tokens` (a ShareGPT conversation's own reply lengths unless the
    spec gives `workload.output_tokens`)."""
    s = w.sessions
    assert s is not None
    if w.source == "sharegpt":
        assert w.path is not None
        return ShareGPTSessions.from_file(w.path, w.output_tokens, s.think_time, seed=w.seed)
    assert s.turns is not None  # check_sessions fills it in
    return SyntheticSessions(
        s.turns,
        w.input_tokens,
        output_tokens,
        s.think_time,
        seed=w.seed,
        system_tokens=s.system_tokens,
        scale=scale,
    )
