"""Session workloads: synthetic conversations, and ShareGPT conversations replayed whole.

Both map a session index s to a `SessionPlan` (workload/session.py), deterministically in
(seed, s): its user messages, the output length each asks for, and the think time before each.
The replies resent in later turns are the server's own, read at run time by the worker
(load/worker.py), never the recorded ones: a recorded reply would not be what the server's
prefix cache holds, and a conversation's cost is its history as the server produced it.

Synthetic: every turn's new message is `input_tokens` of random words (in the target's tokens
with a `TokenScale`, as synthetic.py builds single prompts), each asks for `output_tokens`, and an
optional system prompt of `system_tokens` is the same for every session (one application's
prompt, so a prefix cache may share it across sessions, as it would in production).

ShareGPT: each conversation is a session, its human turns in order the user messages, each
asking for as many tokens as the recorded reply after it has words (as files.py does for the
first turn), unless `output_tokens` is given. A conversation is kept up to its first human turn
without a non-empty reply; one with none is skipped. The same caps as a prompt file bound what
is kept (files.py: every worker receives it all, pickled in one frame).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.workload.files import MAX_PROMPT_ITEMS, MAX_PROMPT_TEXT_BYTES
from latbench.workload.item import (
    MAX_TOKENS,
    as_dist,
    as_dist_or_none,
    check_n,
    check_seed,
    dist_json,
    draw_count,
    rng_for,
    seeded_order,
)
from latbench.workload.reading import json_list, open_prompts
from latbench.workload.session import MAX_WAIT_S, SessionPlan, Turn, wait_seconds
from latbench.workload.synthetic import DEFAULT_VOCABULARY
from latbench.workload.tokens import TokenScale, check_scale, words_text

# Kept apart from the item and pacer streams (workload/item.py, load/pacers.py), so a session's
# draws are unrelated to request n's and to the arrival gaps from the same seed.
SESSION_STREAM = 0x5EED_0011
_SYSTEM_STREAM = 0x5EED_0012
_SHUFFLE_STREAM = 0x5EED_0013

MAX_TURNS = 1024  # user turns in one session; a drawn count is clamped to it
MAX_THINK_S = MAX_WAIT_S  # a drawn think time is clamped to a day
_TURN_OVERHEAD = 64  # bytes a kept turn costs in the worker's frame beyond its text, roughly
_HUMAN = frozenset({"human", "user"})


def _seconds(dist: Dist, rng: np.random.Generator) -> float:
    return wait_seconds(dist.sample_one(rng))


class SyntheticSessions:
    """Conversations of random-word messages: `turns` user turns each (drawn per session), each
    message `input_tokens` long asking for `output_tokens`, `think_time` seconds before each
    turn after the first; an optional system prompt of `system_tokens`, shared by all."""

    def __init__(
        self,
        turns: Dist | float | str,
        input_tokens: Dist | float | str,
        output_tokens: Dist | float | str,
        think_time: Dist | float | str = 0.0,
        seed: int = 0,
        system_tokens: int = 0,
        vocabulary: Sequence[str] = DEFAULT_VOCABULARY,
        scale: TokenScale | None = None,
    ) -> None:
        self.turns = as_dist("turns", turns)
        self.input_tokens = as_dist("input_tokens", input_tokens)
        self.output_tokens = as_dist("output_tokens", output_tokens)
        self.think_time = as_dist("think_time", think_time)
        self.seed = check_seed(seed)
        if not 0 <= system_tokens <= MAX_TOKENS:
            raise ValueError(f"system_tokens must be 0..{MAX_TOKENS}, got {system_tokens}")
        if isinstance(vocabulary, str) or not vocabulary:
            raise ValueError("vocabulary must be a non-empty sequence of words")
        self._words = np.array(tuple(vocabulary), dtype=object)
        self.scale = check_scale(scale, len(self._words))
        self.system_tokens = system_tokens
        self.system = (
            self._text(system_tokens, rng_for(self.seed, _SYSTEM_STREAM)) if system_tokens else None
        )

    def _text(self, n: int, rng: np.random.Generator) -> str:
        return words_text(self._words, n, rng, self.scale)

    def session(self, s: int) -> SessionPlan:
        check_n(s)
        rng = rng_for(self.seed, SESSION_STREAM, s)
        # Draw order (turn count; then per turn: input, output, think time, words) is part of
        # what a seed means.
        k = min(MAX_TURNS, draw_count(self.turns, rng))
        turns = []
        for j in range(k):
            n_in = draw_count(self.input_tokens, rng)
            n_out = draw_count(self.output_tokens, rng)
            think = 0.0 if j == 0 else _seconds(self.think_time, rng)
            # In the target's tokens a later turn's prompt is no sum of its parts (the chat
            # template adds role tokens to every message, the server re-tokenises each reply's
            # text), so only turn 0 asks a length; a word a token (no scale), as the simulator
            # counts, the sum is exact and every turn asks it.
            asked = n_in if j == 0 or self.scale is None else None
            turns.append(Turn(self._text(n_in, rng), n_out, think, prompt_tokens=asked))
        return SessionPlan(
            tuple(turns),
            system=self.system,
            system_tokens=self.system_tokens if self.system is not None else None,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic_sessions",
            "turns": dist_json(self.turns),
            "input_tokens": dist_json(self.input_tokens),
            "output_tokens": dist_json(self.output_tokens),
            "think_time_s": dist_json(self.think_time),
            "system_tokens": self.system_tokens,
            "seed": self.seed,
            "vocabulary_size": len(self._words),
            "prompt_tokens": {"source": "words"} if self.scale is None else self.scale.describe(),
        }


class ShareGPTSessions:
    """ShareGPT conversations as sessions, in a seeded shuffled order, cycling past the end.
    Build with `from_file`."""

    def __init__(
        self,
        conversations: Sequence[tuple[tuple[str, int], ...]],
        *,
        output_tokens: Dist | float | str | None = None,
        think_time: Dist | float | str = 0.0,
        seed: int = 0,
        source: dict[str, Any] | None = None,
    ) -> None:
        if not conversations:
            raise ValueError("a ShareGPT session workload needs at least one conversation")
        self._conversations = tuple(conversations)
        self.output_tokens = as_dist_or_none("output_tokens", output_tokens)
        self.think_time = as_dist("think_time", think_time)
        self.seed = check_seed(seed)
        self._source = dict(source or {})
        self._order = seeded_order(len(self._conversations), self.seed, _SHUFFLE_STREAM)

    def __len__(self) -> int:
        return len(self._conversations)

    def session(self, s: int) -> SessionPlan:
        check_n(s)
        conversation = self._conversations[int(self._order[s % len(self._conversations)])]
        rng = rng_for(self.seed, SESSION_STREAM, s)
        turns = []
        for j, (text, reply_words) in enumerate(conversation):
            # Drawn for every turn, whether used or not, so one setting leaves the other's
            # draws as they were.
            out = reply_words if self.output_tokens is None else draw_count(self.output_tokens, rng)
            think = _seconds(self.think_time, rng)
            turns.append(Turn(text, out, 0.0 if j == 0 else think))
        return SessionPlan(tuple(turns))

    def describe(self) -> dict[str, Any]:
        return {
            **self._source,
            "conversations": len(self._conversations),
            "turns": sum(len(c) for c in self._conversations),
            "output_tokens": dist_json(self.output_tokens),
            "think_time_s": dist_json(self.think_time),
            "seed": self.seed,
        }

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        output_tokens: Dist | float | str | None = None,
        think_time: Dist | float | str = 0.0,
        seed: int = 0,
    ) -> ShareGPTSessions:
        """ShareGPT JSON: a list of `{"conversations": [{"from": ..., "value": ...}, ...]}`,
        read an entry at a time (workload/reading.py)."""
        p = Path(path)
        kept: list[tuple[tuple[str, int], ...]] = []
        size = turns = entries = 0
        with open_prompts(p) as f:
            for index, entry in json_list(f, p):
                entries += 1
                where = f"{p}, entry {index}"
                conversation = _conversation(entry, where)
                if not conversation:
                    continue
                size += sum(_TURN_OVERHEAD + len(t.encode()) for t, _ in conversation)
                turns += len(conversation)
                if len(kept) >= MAX_PROMPT_ITEMS or turns > MAX_PROMPT_ITEMS:
                    raise SpecError(
                        f"{where}: the file holds more than {MAX_PROMPT_ITEMS:,} turns, the "
                        "most a run takes; use a sample of it"
                    )
                if size > MAX_PROMPT_TEXT_BYTES:
                    raise SpecError(
                        f"{where}: the conversations read so far hold over "
                        f"{MAX_PROMPT_TEXT_BYTES >> 20} MiB of text, the most a run takes "
                        "(every worker gets them all); use a sample"
                    )
                kept.append(conversation)
        if not kept:
            raise SpecError(
                f"{p}: no usable conversations among {entries} entries "
                "(each needs a human turn followed by a non-empty reply)"
            )
        return cls(
            kept,
            output_tokens=output_tokens,
            think_time=think_time,
            seed=seed,
            source={
                "kind": "sharegpt_sessions",
                "path": str(p),
                "entries": entries,
                "skipped": entries - len(kept),
            },
        )


def _conversation(entry: object, where: str) -> tuple[tuple[str, int], ...]:
    """An entry's (user message, recorded reply's word count) pairs, in order: from its first
    human turn, while each human turn has a non-empty reply after it. Empty when unusable."""
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(turns, list):
        raise SpecError(f'{where}: expected an object with a "conversations" list of turns')
    for i, t in enumerate(turns):
        if not (isinstance(t, dict) and isinstance(t.get("from"), str)):
            raise SpecError(f'{where}: conversations[{i}] must be an object with a string "from"')
        if not isinstance(t.get("value"), str):
            raise SpecError(f'{where}: conversations[{i}] must have a string "value"')
    pairs: list[tuple[str, int]] = []
    j = next((i for i, t in enumerate(turns) if t["from"] in _HUMAN), len(turns))
    while j + 1 < len(turns):
        asked, reply = turns[j], turns[j + 1]
        words = len(reply["value"].split())
        if asked["from"] not in _HUMAN or reply["from"] in _HUMAN:
            break
        if not asked["value"].split() or not words:
            break
        pairs.append((asked["value"], min(words, MAX_TOKENS)))
        j += 2
    return tuple(pairs)
