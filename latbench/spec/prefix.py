"""The spec's `workload.shared_prefix` (with `workload.source: shared_prefix`): how many groups
share a prefix, how long prefixes and suffixes are, and how requests are spread over the groups
(latbench/workload/prefix.py says what each field does to the prompts).

`preset: vllm` is `vllm bench serve --dataset-name prefix_repetition`'s shape (vLLM 0.32,
vllm/benchmarks/datasets/datasets.py, PrefixRepetitionRandomDataset): every request carries one
of `groups` prefixes (its --prefix-repetition-num-prefixes, default 10), each equally often,
prefix (--prefix-repetition-prefix-len, 256) then suffix (--prefix-repetition-suffix-len, 256)
in one user message. Its defaults are ours, so the preset only fixes what it fixes: the prefix in
the user message, every request sharing one, the groups balanced.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from latbench.shared.dist import Dist
from latbench.spec.fields import StrictModel
from latbench.workload import MAX_TOKENS

MAX_GROUPS = 100_000
# Every group's prefix is kept in each worker once built: groups * prefix_tokens words, ~6 bytes
# a word, so 16 Mi tokens is ~100 MB a worker at most.
MAX_PREFIX_TOKENS_TOTAL = 1 << 24


class SharedPrefixSpec(StrictModel):
    preset: Literal["vllm"] | None = Field(
        default=None,
        description="vllm: vllm bench serve's prefix_repetition shape (prefix in the user "
        "message, every request sharing a prefix, groups equally often)",
    )
    groups: int = Field(default=10, ge=1, le=MAX_GROUPS, description="how many prefixes")
    prefix_tokens: int = Field(
        default=256, ge=1, le=MAX_TOKENS, description="each prefix's length, target tokens"
    )
    suffix_tokens: Dist = Field(
        default_factory=lambda: Dist(mean=256),
        description="each request's own suffix after the prefix, target tokens",
    )
    share: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="the fraction of requests carrying a group's prefix; the rest get a prefix "
        "of the same length of their own",
    )
    weights: list[float] | None = Field(
        default=None,
        description="how often each group is chosen, one weight per group (default: equally "
        "often, every group once in each block of `groups` requests)",
    )
    prefix_as: Literal["system", "user"] | None = Field(
        default=None,
        description="system: the prefix as a system message, the suffix as the user's "
        "(default); user: both in one user message (preset vllm). Completions: prefix then suffix",
    )

    @model_validator(mode="after")
    def _check(self) -> SharedPrefixSpec:
        from latbench.spec.workload import check_token_dist  # the one check, where it lives

        try:
            check_token_dist(self.suffix_tokens, MAX_TOKENS, "the most latbench sends")
        except ValueError as e:
            raise ValueError(f"suffix_tokens: {e}") from None
        if self.groups * self.prefix_tokens > MAX_PREFIX_TOKENS_TOTAL:
            raise ValueError(
                f"groups * prefix_tokens is {self.groups * self.prefix_tokens:,} tokens, over "
                f"{MAX_PREFIX_TOKENS_TOTAL:,}: every worker keeps every prefix"
            )
        if self.weights is not None:
            if len(self.weights) != self.groups:
                raise ValueError(
                    f"weights: {len(self.weights)} given for {self.groups} groups; give one each"
                )
            if min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError("weights: each must be >= 0, and not all 0")
        if self.preset == "vllm":
            if self.share != 1.0 or self.weights is not None:
                raise ValueError(
                    "preset vllm: every request shares a prefix, each group equally often; "
                    "share and weights are not part of it"
                )
            if self.prefix_as == "system":
                raise ValueError(
                    "preset vllm sends the prefix in the user message (prefix_as user)"
                )
            self.prefix_as = "user"
        elif self.prefix_as is None:
            self.prefix_as = "system"
        return self
