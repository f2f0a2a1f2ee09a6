"""Synthetic prompts: random common words, with input and output lengths drawn per request.

Lengths are in the target's tokens when the workload has a `TokenScale` (workload/tokens.py,
measured before the run by client/tokenize.py); without one a word counts as a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latbench.shared.dist import Dist
from latbench.workload.item import (
    ITEM_STREAM,
    WorkItem,
    as_dist,
    check_n,
    check_seed,
    dist_json,
    draw_count,
    rng_for,
    user_turn,
)
from latbench.workload.tokens import TokenScale, check_scale, words_text

# Frequent one-syllable words, letters only, no repeats. Any edit to this list, even appending,
# changes every synthetic prompt for a given seed, so published results could not be rerun.
_VOCABULARY_TEXT = """
    the and of to in is it that was for on are as with his they at be this have from or one
    had by but not what all were we when your can said there use an each which she do how
    their if will up out them then so some her would make like him time has look two more
    write go see way could no than first been call who its now find long down day did get
    come made may part new sound take only work know place year live me back give most good
    man think say great where help through much line right too mean old same tell boy turn
    want show also three small set put end does well large must big such why ask went men
    read need land here home us move try kind hand off play spell air port change light house
    page world near build self earth head stand own should found grew food sun four state keep
    eye last thought tree cross farm hard start might saw far sea draw left late run while
    press close night real life few north book took stop seem next white walk ease both mark
    mile car feet care group rock thing hear fish race stay hold half shape beach wave road
    cat dog red blue green black gray brown bird leaf rain snow wind cloud star moon sky hill
    lake bridge town street door wall floor roof bed chair desk cup plate bread milk egg salt
    corn rice meat fruit grape plum pear lamb goat horse cow pig duck frog bear wolf fox deer
    mouse king queen friend child girl son wife job task plan test map note word song game
    team club park shop bank school church ship boat train plane truck bike wheel warm cold
    hot cool dry wet soft loud quick slow fast bright dark clean clear deep high low short
    tall thin thick wide young strong weak rich poor full sweet sour jump swim sing climb
    smile laugh cry sleep wake eat drink cook wash paint teach learn watch speak lift pull
    push throw catch fly drive ride sit rest wait hope love wish dream grow fall rise
"""
DEFAULT_VOCABULARY: tuple[str, ...] = tuple(_VOCABULARY_TEXT.split())


class SyntheticWorkload:
    """Prompts of random words, with input and output lengths drawn per request.

    Each request draws its own words, so a server's prefix cache cannot serve prompts from one
    another. With `scale`, each prompt holds its drawn count of the target's tokens (see
    workload/tokens.py) and starts with one of the scale's lead words; without, it is that many
    words.
    """

    def __init__(
        self,
        input_tokens: Dist | float | str,
        output_tokens: Dist | float | str,
        seed: int = 0,
        vocabulary: Sequence[str] = DEFAULT_VOCABULARY,
        scale: TokenScale | None = None,
    ) -> None:
        self.input_tokens = as_dist("input_tokens", input_tokens)
        self.output_tokens = as_dist("output_tokens", output_tokens)
        self.seed = check_seed(seed)
        if isinstance(vocabulary, str) or not vocabulary:
            raise ValueError("vocabulary must be a non-empty sequence of words")
        bad = [w for w in vocabulary if not isinstance(w, str) or not w or len(w.split()) != 1]
        if bad:
            # A word with a space inside would break "one word, one token" and the word counts.
            raise ValueError(f"vocabulary words must be non-empty and without spaces: {bad[:5]!r}")
        self.vocabulary = tuple(vocabulary)
        self._words = np.array(self.vocabulary, dtype=object)
        self.scale = check_scale(scale, len(self.vocabulary))

    def item(self, n: int) -> WorkItem:
        check_n(n)
        rng = rng_for(self.seed, ITEM_STREAM, n)
        # Draw order (input length, output length, words) is part of what a seed means.
        n_in = draw_count(self.input_tokens, rng)
        n_out = draw_count(self.output_tokens, rng)
        prompt = words_text(self._words, n_in, rng, self.scale)
        return WorkItem(
            prompt=prompt, messages=user_turn(prompt), prompt_tokens=n_in, max_tokens=n_out
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "input_tokens": dist_json(self.input_tokens),
            "output_tokens": dist_json(self.output_tokens),
            "seed": self.seed,
            "vocabulary_size": len(self.vocabulary),
            "prompt_tokens": {"source": "words"} if self.scale is None else self.scale.describe(),
        }
