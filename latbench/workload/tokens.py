"""Prompt lengths in the target's tokens: what each vocabulary word costs, and prompts built to
a drawn count.

A synthetic prompt is random vocabulary words, and the target's tokenizer decides what they
cost. Taken as one token a word, `--input-tokens 128` sent 468 prompt tokens to the e2e stage's
vLLM (its byte-level BPE, trained on 46 words, splits the default vocabulary into 3.6 tokens a
word, 1 to 7), while `vllm bench serve --random-input-len 128` sends 128. A `TokenScale` holds
what the target charges: the tokens of a prompt that is only a lead word (with whatever the
server adds around a prompt: a BOS token, a chat template), and what each vocabulary word adds
after a space. Tokenizers that split text at spaces before merging (byte-level BPE as in GPT-2,
Llama 3 or Qwen; SentencePiece, which splits at whitespace too) are additive in such words: the
count of "lead w1 w2 ..." is the lead's count plus the words' costs (exact on the e2e tokenizer
over the whole vocabulary, 0 of 4,500 prompts off), so a prompt is built to its drawn count
exactly, and `client.tokenize` checks a few built prompts against the tokenizer to say so.

Every calibrated prompt starts with one of a few lead words whose count alone was measured,
because the first word of a text is tokenised without a leading space (the e2e tokenizer takes
" the" and "the" apart) and a known first word keeps the count exact. There are 16 (one for
probes), drawn per request, so two prompts share their first word once in 16: a prefix cache
keeps blocks of 16 tokens (vLLM), and one shared lead word beside a shared chat template could
complete a block that random prompts would not share.

Without a scale (`None`: a workload made in code, or `--tokenizer words`) a word is a token, as
the built-in simulator counts, and prompts are the same words as before calibration existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Where a scale's costs come from, as results.json names it.
SERVER = "server"  # the target's /tokenize (vLLM, SGLang, latbench sim)
TOKENIZER = "tokenizer"  # a local tokenizer (--tokenizer)
PROBE = "probe"  # the usage of requests with max_tokens=1: a mean cost, not each word's
WORDS = "words"  # no calibration: a word is a token


@dataclass(frozen=True, slots=True)
class TokenScale:
    """What the target charges for a synthetic prompt, in its tokens."""

    source: str  # SERVER, TOKENIZER or PROBE
    leads: tuple[str, ...]  # the words a prompt may start with
    # Tokens of a prompt that is each lead word alone, everything around it included (a BOS, a
    # chat template).
    lead_costs: tuple[float, ...]
    costs: tuple[float, ...]  # tokens each vocabulary word adds after a space, in its order
    exact: bool  # every cost measured for its word (a whole number); False: one mean for all
    detail: str = ""  # the tokenizer's path or name, the endpoint, why it is approximate
    checked: tuple[int, int] = (0, 0)  # built prompts counted by the tokenizer: (exact, of)
    # The words of each cost, to fill a prompt's last tokens (exact scales only); derived.
    _by_cost: dict[int, np.ndarray] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_cost: dict[int, np.ndarray] = {}
        if self.exact:
            costs = np.asarray(self.costs, dtype=np.int64)
            by_cost = {int(c): np.flatnonzero(costs == c) for c in np.unique(costs)}
        object.__setattr__(self, "_by_cost", by_cost)

    def describe(self) -> dict[str, Any]:
        costs = np.asarray(self.costs, dtype=np.float64)
        return {
            "source": self.source,
            "detail": self.detail,
            "exact": self.exact,
            "lead_words": list(self.leads),
            "lead_tokens": [min(self.lead_costs), max(self.lead_costs)],
            "tokens_per_word": round(float(costs.mean()), 4),
            "checked": {"exact": self.checked[0], "of": self.checked[1]},
        }


def check_scale(scale: TokenScale | None, vocabulary_size: int) -> TokenScale | None:
    """`scale` when it prices each of the vocabulary's words (a scale measured on another
    vocabulary would price the wrong words), else a one-line ValueError."""
    if scale is not None and len(scale.costs) != vocabulary_size:
        raise ValueError(
            f"the token scale prices {len(scale.costs)} words, the vocabulary has {vocabulary_size}"
        )
    return scale


def pick_words(
    scale: TokenScale, target: int, rng: np.random.Generator
) -> tuple[str, np.ndarray, float]:
    """A prompt of `target` tokens: its lead word, the indices of the vocabulary words that
    follow it, and the count the scale expects (below `target` only when no word is cheap
    enough to fill the rest, or when the lead alone is over it)."""
    i = int(rng.integers(0, len(scale.leads)))
    if scale.lead_costs[i] > target:  # a very short prompt: the cheapest lead comes closest
        i = int(np.argmin(scale.lead_costs))
    lead, lead_cost = scale.leads[i], scale.lead_costs[i]
    picked, spent = fill_words(scale, target - lead_cost, rng)
    return lead, picked, lead_cost + spent


def fill_words(
    scale: TokenScale, rest: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Vocabulary words that cost `rest` tokens after a space (each word's cost adds, see the
    module's docstring): their indices and what they cost (below `rest` only when no word is
    cheap enough to fill it). A prompt's words after its lead, or a suffix after a shared
    prefix (workload/prefix.py)."""
    if rest <= 0:
        return np.empty(0, dtype=np.int64), 0.0
    vocab = len(scale.costs)
    if not scale.exact:
        n = max(0, round(rest / scale.costs[0]))
        return rng.integers(0, vocab, n), n * scale.costs[0]
    costs = np.asarray(scale.costs, dtype=np.int64)
    # Candidates in one draw, taken in order while they fit; enough for the cheapest words.
    cand = rng.integers(0, vocab, int(rest // costs.min()) + 1)
    spent = np.cumsum(costs[cand])
    taken = cand[: int(np.searchsorted(spent, rest, side="right"))]
    left = int(rest - (costs[taken].sum() if taken.size else 0))
    fill: list[int] = []
    # The rest, with the dearest words that still fit (one of exactly that cost when there is).
    while left > 0:
        fits = [c for c in scale._by_cost if c <= left]
        if not fits:
            break
        c = max(fits)
        words = scale._by_cost[c]
        fill.append(int(words[rng.integers(0, words.size)]))
        left -= c
    return np.concatenate([taken, np.asarray(fill, dtype=np.int64)]), float(rest - left)


def words_text(
    words: np.ndarray,
    n_tokens: int,
    rng: np.random.Generator,
    scale: TokenScale | None,
    *,
    lead: bool = True,
) -> str:
    """`n_tokens` of random vocabulary words (`words`, an object array in the scale's order) as
    one text: a word a token without a scale; with one, a lead word and the words that fill the
    rest (a prompt's start), or with `lead=False` words after a space (a suffix after a shared
    prefix: at least one word, the cheapest, when none is cheap enough). Every synthetic text
    (prompts, session messages, prefixes and suffixes) is built here, so its draws are the same
    for the same seed wherever it is built."""
    if scale is None:
        return " ".join(words[rng.integers(0, len(words), n_tokens)])
    if lead:
        first, picked, _ = pick_words(scale, n_tokens, rng)
        return " ".join((first, *words[picked]))
    picked, _ = fill_words(scale, n_tokens, rng)
    if not picked.size:  # no word that cheap: the cheapest, a token or two over
        picked = np.array([int(np.argmin(scale.costs))])
    return " ".join(words[picked])


def probe_scale(
    vocabulary: Sequence[str], lead_word: str, lead: int, sample: int, sample_tokens: int
) -> TokenScale:
    """A mean cost from two counts: the lead alone, and the lead with `sample` words after it."""
    mean = max((sample_tokens - lead) / sample, 1e-3)
    return TokenScale(
        PROBE,
        (lead_word,),
        (float(lead),),
        (mean,) * len(vocabulary),
        exact=False,
        detail=f"mean of {sample} words from the usage of 2 requests",
    )
