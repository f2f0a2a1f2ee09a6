"""What each request asks for: its prompt (or chat messages) and its max_tokens.

A workload maps a request index n to a `WorkItem`, deterministically in (seed, n), so request n
asks for the same thing in every run with the same seed, however the runner interleaves them.
This module holds the item, the protocol every workload meets, and the seeded draws that the
synthetic (synthetic.py) and file (files.py) workloads share, so both mean the same by a seed.

`prompt_tokens` is the prompt length a request asks for, in the target's tokens: synthetic
prompts are built to it with the target's tokenizer (workload/tokens.py; without one a word
counts as a token, as the built-in simulator counts). A prompt file asks for none (None): its
texts are what they are. The server's `usage.prompt_tokens` is the measured truth, and the
summary sets one against the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from latbench.shared.dist import Dist

DEFAULT_MAX_TOKENS = 128
# The most tokens a request may ask for or send: ~4M tokens is far beyond any served context, and
# it keeps a synthetic prompt to tens of MB. The spec refuses a distribution whose mean, std or
# bounds are above it, and every drawn length is clamped to it (a heavy tail could draw beyond).
MAX_TOKENS = 1 << 22

# Kept apart from the pacer's stream (see load.pacers) so arrival gaps and request lengths drawn
# from the same user seed are independent.
ITEM_STREAM = 0x5EED_0002


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request's input. `prompt` feeds completions APIs, `messages` chat APIs.

    `messages` are in the Chat Completions format, the neutral form every chat-like API kind
    converts from (client/apis): a string or a list of content parts (text, `image_url` with a
    data URL) as content, an assistant's `tool_calls`, `tool` messages answering them. `tools`
    are function definitions in the same format. `session` and `turn` place the request in a
    multi-turn session (workload/session.py), None for single requests; `images` and
    `image_bytes` count the images the messages carry (their decoded bytes), for the record.
    """

    prompt: str
    messages: tuple[dict[str, Any], ...]
    prompt_tokens: int | None  # asked-for input length, target tokens; None: not asked
    max_tokens: int
    tools: tuple[dict[str, Any], ...] = ()
    session: int | None = None
    turn: int | None = None
    images: int = 0
    image_bytes: int = 0


@runtime_checkable
class Workload(Protocol):
    def item(self, n: int) -> WorkItem:
        """Request n's input; the same for the same (seed, n)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, stored in results files."""
        ...


def rng_for(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *key)))


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    return int(seed)


def check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"request index n must be >= 0, got {n}")


def as_dist(name: str, value: Dist | float | str) -> Dist:
    if isinstance(value, Dist):
        return value
    try:
        return Dist.model_validate(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def as_dist_or_none(name: str, value: Dist | float | str | None) -> Dist | None:
    """`as_dist`, or None when unset (a file's own lengths stand)."""
    return None if value is None else as_dist(name, value)


def seeded_order(count: int, seed: int, stream: int) -> np.ndarray:
    """0..count-1 shuffled by (seed, stream): the order a file's items or conversations are
    sent in, the same in every run with this seed."""
    order = np.arange(count)
    rng_for(seed, stream).shuffle(order)
    return order


def draw_count(dist: Dist, rng: np.random.Generator) -> int:
    # A request must ask for at least one token, whatever the distribution's tail does, and at
    # most MAX_TOKENS (a lognormal's tail, or a nan from extreme parameters, is clamped).
    x = dist.sample_one(rng)
    if not math.isfinite(x):
        return MAX_TOKENS
    return min(MAX_TOKENS, max(1, round(x)))


def user_turn(prompt: str) -> tuple[dict[str, Any], ...]:
    return ({"role": "user", "content": prompt},)


def dist_json(dist: Dist | None) -> dict[str, Any] | None:
    return None if dist is None else dist.model_dump(mode="json", exclude_none=True)
