"""Shared-prefix prompts: G groups, each with one prefix of P tokens (a system prompt, a
document) that its requests repeat, followed by a suffix of S tokens unique to each request.

Production traffic repeats itself at the front: an application's system prompt, a document
asked several questions, a few-shot preamble. A server with a prefix cache (vLLM's automatic
prefix caching, on by default) computes such a prefix once and then only the suffix, so TTFT
depends on how often prefixes repeat. Synthetic prompts (synthetic.py) share nothing; this
workload states how much is shared:

- `groups` prefixes, chosen uniformly (balanced: every block of G consecutive requests has each
  group once, in a seeded order, so N requests give each group N/G of them, as `vllm bench
  serve --dataset-name prefix_repetition` does) or by `weights` (drawn per request);
- `share`: the fraction of requests that carry a group's prefix at all; the others get a prefix
  of the same length of their own, so `share` moves the cache's hit rate and not the prompt
  length;
- `prefix_as`: "system" sends the prefix as a system message before the user's suffix (chat-like
  APIs); "user" sends one user message, prefix then suffix, as vLLM's prefix-repetition dataset
  does. A completions API gets the prefix, a space and the suffix either way.

Lengths are in the target's tokens with a `TokenScale` (tokens.py): a prefix is built like a
synthetic prompt (its lead word, whose count includes a BOS and a chat template), the suffix is
words after a space, whose costs add, so "prefix suffix" holds P + S tokens exactly for
tokenizers that split at spaces. As a system message the prefix sits in a second message of the
chat template, which adds its few tokens (the summary's asked-vs-got line shows them).

Deterministic in (seed, n): a group's prefix depends only on (seed, group), request n's choices
and suffix only on (seed, n).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from latbench.shared.dist import Dist
from latbench.workload.item import (
    WorkItem,
    as_dist,
    check_n,
    check_seed,
    dist_json,
    draw_count,
    rng_for,
    user_turn,
)
from latbench.workload.synthetic import DEFAULT_VOCABULARY
from latbench.workload.tokens import TokenScale, check_scale, words_text

PrefixAs = Literal["system", "user"]
# Streams of our own, apart from the pacer's and the other workloads' (item.ITEM_STREAM).
_PREFIX_STREAM = 0x5EED_B201  # a group's prefix, by (seed, group)
_ITEM_STREAM = 0x5EED_B202  # request n's choices and suffix, by (seed, n)
_ORDER_STREAM = 0x5EED_B203  # the order of the groups in each block of G requests


class SharedPrefixWorkload:
    """Requests that repeat one of `groups` prefixes of `prefix_tokens` tokens, each followed by
    a suffix of its own (`suffix_tokens`, drawn per request); see the module's docstring."""

    def __init__(
        self,
        groups: int,
        prefix_tokens: int,
        suffix_tokens: Dist | float | str,
        output_tokens: Dist | float | str,
        *,
        share: float = 1.0,
        weights: Sequence[float] | None = None,
        prefix_as: PrefixAs = "system",
        seed: int = 0,
        preset: str | None = None,
        scale: TokenScale | None = None,
    ) -> None:
        if groups < 1 or prefix_tokens < 1:
            raise ValueError(
                f"groups and prefix_tokens must be >= 1, got {groups}, {prefix_tokens}"
            )
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be from 0 to 1, got {share}")
        if prefix_as not in ("system", "user"):
            raise ValueError(f"prefix_as must be 'system' or 'user', got {prefix_as!r}")
        self.groups = groups
        self.prefix_tokens = prefix_tokens
        self.suffix_tokens = as_dist("suffix_tokens", suffix_tokens)
        self.output_tokens = as_dist("output_tokens", output_tokens)
        self.share = share
        self.weights: tuple[float, ...] | None = None
        self._p: np.ndarray | None = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (groups,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {groups} finite numbers >= 0, not all 0 (one per group)"
                )
            self.weights = tuple(float(x) for x in w)
            self._p = w / w.sum()
        self.prefix_as: PrefixAs = prefix_as
        self.seed = check_seed(seed)
        self.preset = preset
        self.vocabulary = DEFAULT_VOCABULARY
        self._words = np.array(self.vocabulary, dtype=object)
        self.scale = check_scale(scale, len(self._words))
        # Built on first use in each process (a prefix can be long, and most runs touch every
        # group): never pickled to the workers, who rebuild the same text from the seed.
        self._prefixes: dict[int, str] = {}
        self._order: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_prefixes"], state["_order"] = {}, None
        return state

    def _text(self, n_tokens: int, rng: np.random.Generator, lead: bool) -> str:
        """`n_tokens` of words: with a lead word (a prompt's start) or after a space."""
        return words_text(self._words, n_tokens, rng, self.scale, lead=lead)

    def prefix(self, group: int) -> str:
        """Group `group`'s prefix, the same text in every process and run with this seed."""
        text = self._prefixes.get(group)
        if text is None:
            rng = rng_for(self.seed, _PREFIX_STREAM, group)
            text = self._prefixes[group] = self._text(self.prefix_tokens, rng, lead=True)
        return text

    def group_of(self, n: int, rng: np.random.Generator) -> int:
        if self._p is not None:
            return int(rng.choice(self.groups, p=self._p))
        block, at = divmod(n, self.groups)
        if self._order is None or self._order[0] != block:
            order = rng_for(self.seed, _ORDER_STREAM, block).permutation(self.groups)
            self._order = (block, order)
        return int(self._order[1][at])

    def item(self, n: int) -> WorkItem:
        check_n(n)
        rng = rng_for(self.seed, _ITEM_STREAM, n)
        # Draw order (shared or not, group, suffix and output lengths, then words) is part of
        # what a seed means.
        shared = self.share >= 1.0 or rng.random() < self.share
        group = self.group_of(n, rng) if shared else None
        n_suffix = draw_count(self.suffix_tokens, rng)
        n_out = draw_count(self.output_tokens, rng)
        if group is None:  # a prefix of the same length, its own
            prefix = self._text(self.prefix_tokens, rng, lead=True)
        else:
            prefix = self.prefix(group)
        suffix = self._text(n_suffix, rng, lead=False)
        # The space between them is what the scale's word costs are measured after.
        prompt = f"{prefix} {suffix}"
        if self.prefix_as == "system":
            messages: tuple[dict[str, Any], ...] = (
                {"role": "system", "content": prefix},
                {"role": "user", "content": suffix},
            )
        else:
            messages = user_turn(prompt)
        return WorkItem(
            prompt=prompt,
            messages=messages,
            prompt_tokens=self.prefix_tokens + n_suffix,
            max_tokens=n_out,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "shared_prefix",
            "preset": self.preset,
            "groups": self.groups,
            "prefix_tokens": self.prefix_tokens,
            "suffix_tokens": dist_json(self.suffix_tokens),
            "output_tokens": dist_json(self.output_tokens),
            "share": self.share,
            "weights": None if self.weights is None else list(self.weights),
            "prefix_as": self.prefix_as,
            "seed": self.seed,
            "vocabulary_size": len(self.vocabulary),
            "prompt_tokens": {"source": "words"} if self.scale is None else self.scale.describe(),
        }
