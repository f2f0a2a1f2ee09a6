"""Shared-prefix prompts (workload/prefix.py) and their spec (spec/prefix.py): groups repeat one
prefix exactly, suffixes are each request's own, the mix is what the spec states, lengths are
the target's tokens, and the same seed gives the same requests in any process."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from latbench import SpecError
from latbench.run.benchmark import make_workload
from latbench.spec import load_spec
from latbench.workload import DEFAULT_VOCABULARY
from latbench.workload.prefix import SharedPrefixWorkload
from latbench.workload.tokens import TOKENIZER, TokenScale

V = DEFAULT_VOCABULARY


def split(w: SharedPrefixWorkload, n: int) -> tuple[str, str]:
    """Request n's prefix and suffix, from its chat messages (system placement)."""
    system, user = w.item(n).messages
    assert (system["role"], user["role"]) == ("system", "user")
    return system["content"], user["content"]


def test_a_group_repeats_its_prefix_and_every_suffix_is_its_own() -> None:
    w = SharedPrefixWorkload(4, 32, 8, 16, seed=3)
    items = [split(w, n) for n in range(40)]
    prefixes = Counter(p for p, _ in items)
    assert len(prefixes) == 4 and set(prefixes.values()) == {10}
    assert len({s for _, s in items}) == 40
    for n, (prefix, suffix) in enumerate(items):
        it = w.item(n)
        assert it.prompt == f"{prefix} {suffix}"  # completions: prefix, then the suffix
        assert len(prefix.split()) == 32 and len(suffix.split()) == 8  # a word a token
        assert it.prompt_tokens == 40 and it.max_tokens == 16


def test_groups_are_balanced_in_every_block_of_g_requests() -> None:
    w = SharedPrefixWorkload(5, 4, 2, 1, seed=9)
    for block in range(6):
        seen = {split(w, n)[0] for n in range(5 * block, 5 * block + 5)}
        assert seen == {w.prefix(g) for g in range(5)}
    # In a seeded order, not the same one each block (a cache would see a fixed cycle).
    orders = {tuple(split(w, n)[0] for n in range(5 * b, 5 * b + 5)) for b in range(6)}
    assert len(orders) > 1


def test_weights_choose_the_groups() -> None:
    w = SharedPrefixWorkload(3, 4, 2, 1, weights=[0, 1, 3], seed=1)
    counts = Counter(split(w, n)[0] for n in range(2000))
    assert w.prefix(0) not in counts
    assert 0.7 < counts[w.prefix(2)] / 2000 < 0.8  # 3/4 expected; 2000 draws: sd ~1 %


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_share_leaves_the_rest_a_prefix_of_their_own_of_the_same_length(share: float) -> None:
    w = SharedPrefixWorkload(2, 16, 4, 1, share=share, seed=5)
    groups = {w.prefix(0), w.prefix(1)}
    prefixes = [split(w, n)[0] for n in range(1000)]
    shared = sum(p in groups for p in prefixes)
    assert abs(shared / 1000 - share) < 0.05
    unique = [p for p in prefixes if p not in groups]
    assert len(set(unique)) == len(unique)  # never repeated
    assert {len(p.split()) for p in prefixes} == {16}


def test_prefix_as_user_is_one_message_as_vllm_sends_it() -> None:
    w = SharedPrefixWorkload(2, 6, 3, 1, prefix_as="user", seed=2)
    it = w.item(0)
    assert it.messages == ({"role": "user", "content": it.prompt},)
    assert it.prompt.startswith(w.prefix(0)) or it.prompt.startswith(w.prefix(1))


def test_the_same_seed_gives_the_same_requests_in_any_process() -> None:
    a = SharedPrefixWorkload(7, 20, "uniform:1,30", "normal:20,5", share=0.6, seed=11)
    b = SharedPrefixWorkload(7, 20, "uniform:1,30", "normal:20,5", share=0.6, seed=11)
    order = [5, 900, 0, 33, 900, 1]
    first = [a.item(n) for n in order]
    assert first == [b.item(n) for n in reversed(order)][::-1]
    # A worker gets it pickled, without the prefixes built so far, and builds the same ones.
    c = pickle.loads(pickle.dumps(a))
    assert c._prefixes == {} and [c.item(n) for n in order] == first
    other = SharedPrefixWorkload(7, 20, "uniform:1,30", "normal:20,5", share=0.6, seed=12)
    assert other.prefix(0) != a.prefix(0)


def test_with_an_exact_scale_prefix_and_suffix_cost_what_they_asked_for() -> None:
    costs = [int(c) for c in np.random.default_rng(4).integers(1, 6, len(V))]
    leads = {V[0]: 3, V[1]: 5}
    scale = TokenScale(TOKENIZER, tuple(leads), tuple(map(float, leads.values())),
                       tuple(map(float, costs)), exact=True)  # fmt: skip
    index = {word: i for i, word in enumerate(V)}

    def cost(text: str, lead: bool) -> int:
        words = text.split()
        first = leads[words[0]] if lead else costs[index[words[0]]]
        return first + sum(costs[index[x]] for x in words[1:])

    w = SharedPrefixWorkload(3, 100, "uniform:10,60", 4, scale=scale, seed=8)
    for n in range(30):
        prefix, suffix = split(w, n)
        it = w.item(n)
        assert cost(prefix, lead=True) == 100
        assert cost(prefix, lead=True) + cost(suffix, lead=False) == it.prompt_tokens
        assert cost(it.prompt, lead=True) == it.prompt_tokens  # counted whole, as /tokenize does
    assert w.describe()["prompt_tokens"]["source"] == TOKENIZER


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="weights must be 2"):
        SharedPrefixWorkload(2, 4, 4, 4, weights=[1.0])
    with pytest.raises(ValueError, match="not all 0"):
        SharedPrefixWorkload(2, 4, 4, 4, weights=[0, 0])
    with pytest.raises(ValueError, match="share"):
        SharedPrefixWorkload(2, 4, 4, 4, share=1.5)


# --- the spec ---------------------------------------------------------------------------------


def spec_error(workload: dict) -> str:
    with pytest.raises(SpecError) as e:
        load_spec({"workload": workload}, source="test.yaml")
    return str(e.value)


def test_the_spec_builds_the_workload_and_survives_its_own_dump() -> None:
    spec = load_spec({
        "workload": {
            "source": "shared_prefix",
            "seed": 4,
            "output_tokens": 32,
            "shared_prefix": {"groups": 3, "prefix_tokens": 64, "suffix_tokens": "uniform:8,16",
                              "share": 0.5, "weights": [1, 2, 3]},
        }
    })  # fmt: skip
    w = make_workload(spec.workload)
    assert isinstance(w, SharedPrefixWorkload)
    d = w.describe()
    assert (d["kind"], d["groups"], d["prefix_tokens"], d["share"]) == ("shared_prefix", 3, 64, 0.5)
    assert (d["weights"], d["prefix_as"], d["seed"]) == ([1.0, 2.0, 3.0], "system", 4)
    assert w.item(0).max_tokens == 32
    # The records header stores the spec dumped whole; reading it back must give the same run.
    again = load_spec(spec.model_dump(mode="json"))
    assert make_workload(again.workload).item(5) == w.item(5)


def test_the_vllm_preset_is_prefix_repetition_s_shape() -> None:
    spec = load_spec({"workload": {"source": "shared_prefix", "shared_prefix": {"preset": "vllm"}}})
    p = spec.workload.shared_prefix
    assert p is not None
    assert (p.groups, p.prefix_tokens, p.suffix_tokens.mean, p.share) == (10, 256, 256, 1.0)
    assert p.prefix_as == "user" and p.weights is None
    w = make_workload(spec.workload)
    assert w.item(0).max_tokens == 128 and len(w.item(0).messages) == 1
    # Without the preset the same lengths, the prefix as a system message.
    plain = load_spec({"workload": {"source": "shared_prefix"}}).workload.shared_prefix
    assert plain is not None and plain.prefix_as == "system"


@pytest.mark.parametrize(
    ("workload", "needle"),
    [
        ({"source": "shared_prefix", "shared_prefix": {"groups": 0}}, "shared_prefix.groups"),
        ({"source": "shared_prefix", "shared_prefix": {"weights": [1, 2]}}, "2 given for 10"),
        ({"source": "shared_prefix", "shared_prefix": {"weights": [0] * 10}}, "not all 0"),
        ({"source": "shared_prefix", "shared_prefix": {"share": 2}}, "shared_prefix.share"),
        (
            {"source": "shared_prefix", "shared_prefix": {"preset": "vllm", "share": 0.5}},
            "preset vllm",
        ),
        (
            {"source": "shared_prefix", "shared_prefix": {"preset": "vllm", "prefix_as": "system"}},
            "preset vllm",
        ),
        (
            {
                "source": "shared_prefix",
                "shared_prefix": {"groups": 100_000, "prefix_tokens": 1000},
            },
            "every worker keeps every prefix",
        ),
        ({"source": "shared_prefix", "shared_prefix": {"suffix_tokens": "normal:1e9,1"}}, "suffix"),
        ({"source": "shared_prefix", "shared_prefix": {"bogus": 1}}, "shared_prefix.bogus"),
        ({"shared_prefix": {"groups": 2}}, "shared_prefix is for source shared_prefix"),
        ({"source": "shared_prefix", "input_tokens": 64}, "input_tokens is not for source"),
        ({"source": "shared_prefix", "path": "x.jsonl"}, "path is not for source"),
    ],
)
def test_spec_errors_name_the_field(workload: dict, needle: str) -> None:
    msg = spec_error(workload)
    assert needle in msg, msg
    assert "test.yaml" in msg
