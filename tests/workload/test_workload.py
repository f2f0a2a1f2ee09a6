from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kit import paths

from latbench import SpecError
from latbench.shared.dist import Dist
from latbench.workload import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_VOCABULARY,
    MAX_PROMPT_ITEMS,
    MAX_PROMPT_LINE_BYTES,
    MAX_PROMPT_TEXT_BYTES,
    MAX_TOKENS,
    FileWorkload,
    SyntheticWorkload,
    WorkItem,
    Workload,
)

DATA = paths.DATA
JSONL = DATA / "prompts.jsonl"
SHAREGPT = DATA / "sharegpt_tiny.json"


# --- synthetic ------------------------------------------------------------------------------


def test_vocabulary_is_single_lowercase_words_without_repeats() -> None:
    assert len(DEFAULT_VOCABULARY) >= 256
    assert len(set(DEFAULT_VOCABULARY)) == len(DEFAULT_VOCABULARY)
    assert all(w.isalpha() and w.islower() for w in DEFAULT_VOCABULARY)


@pytest.mark.parametrize(("input_tokens", "output_tokens"), [(1, 1), (17, 40), (512, 2048)])
def test_synthetic_fixed_lengths(input_tokens: int, output_tokens: int) -> None:
    w = SyntheticWorkload(Dist.model_validate(input_tokens), Dist.model_validate(output_tokens))
    for n in (0, 1, 999):
        item = w.item(n)
        assert len(item.prompt.split()) == item.prompt_tokens == input_tokens
        assert item.max_tokens == output_tokens


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    n=st.integers(min_value=0, max_value=10**9),
)
@settings(max_examples=50)
def test_synthetic_word_count_is_the_drawn_length(seed: int, n: int) -> None:
    w = SyntheticWorkload(Dist.model_validate("normal:64,40"), Dist.model_validate(32), seed=seed)
    item = w.item(n)
    words = item.prompt.split()
    assert len(words) == item.prompt_tokens >= 1
    assert set(words) <= set(DEFAULT_VOCABULARY)
    assert item.messages == ({"role": "user", "content": item.prompt},)


def test_synthetic_lengths_follow_the_distribution() -> None:
    w = SyntheticWorkload("normal:128,32", "uniform:10,20", seed=5)
    items = [w.item(n) for n in range(600)]
    ins = [i.prompt_tokens for i in items]
    outs = [i.max_tokens for i in items]
    # Mean of 600 draws with sd 32: standard error 1.3, so 6 is more than 4 of them.
    assert abs(sum(ins) / len(ins) - 128) < 6
    assert len(set(ins)) > 50  # really drawn, not fixed
    assert min(outs) >= 10 and max(outs) <= 20 and len(set(outs)) == 11


def test_synthetic_counts_are_at_least_one() -> None:
    w = SyntheticWorkload("normal:1,5", 0, seed=1)
    items = [w.item(n) for n in range(200)]
    assert min(i.prompt_tokens for i in items) == 1
    assert all(i.max_tokens == 1 for i in items)
    assert all(len(i.prompt.split()) == i.prompt_tokens for i in items)


def test_synthetic_deterministic_per_seed_and_n() -> None:
    a = SyntheticWorkload("normal:50,20", "normal:100,30", seed=7)
    b = SyntheticWorkload("normal:50,20", "normal:100,30", seed=7)
    c = SyntheticWorkload("normal:50,20", "normal:100,30", seed=8)
    ns = [0, 1, 2, 3, 10_000, 5, 1]
    # b is asked in a different order: request n's item must not depend on what came before.
    assert [a.item(n) for n in ns] == [b.item(n) for n in reversed(ns)][::-1]
    assert all(a.item(n) != c.item(n) for n in range(5))


def test_synthetic_prompts_differ_across_requests() -> None:
    w = SyntheticWorkload(32, 16, seed=0)
    prompts = [w.item(n).prompt for n in range(500)]
    assert len(set(prompts)) == len(prompts)
    # Different from the first words on, so a prefix cache cannot share them.
    assert len({tuple(p.split()[:4]) for p in prompts}) > 490


def test_synthetic_custom_vocabulary_and_describe() -> None:
    w = SyntheticWorkload(8, 4, seed=3, vocabulary=["alpha", "beta"])
    assert set(w.item(0).prompt.split()) <= {"alpha", "beta"}
    d = w.describe()
    assert orjson.loads(orjson.dumps(d)) == d
    assert d["kind"] == "synthetic" and d["seed"] == 3 and d["vocabulary_size"] == 2
    assert d["input_tokens"]["mean"] == 8
    assert isinstance(w, Workload)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vocabulary": []}, "vocabulary"),
        ({"vocabulary": "abc"}, "vocabulary"),
        ({"vocabulary": ["ok", "two words"]}, "vocabulary"),
        ({"vocabulary": ["ok", ""]}, "vocabulary"),
        ({"seed": -1}, "seed"),
        ({"input_tokens": "bogus:1"}, "input_tokens"),
        ({"output_tokens": "normal:1,2,3"}, "output_tokens"),
    ],
)
def test_synthetic_bad_parameters(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"input_tokens": 10, "output_tokens": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        SyntheticWorkload(**args)  # type: ignore[arg-type]


def test_negative_index_rejected() -> None:
    with pytest.raises(ValueError, match=r"\bn\b"):
        SyntheticWorkload(1, 1).item(-1)
    with pytest.raises(ValueError, match=r"\bn\b"):
        FileWorkload.from_jsonl(JSONL).item(-1)


# --- JSONL ----------------------------------------------------------------------------------

# A prompt file asks for no prompt length: its texts are sent as they are.
_JSONL_ITEMS = [
    WorkItem(
        "Write a haiku about the sea.",
        ({"role": "user", "content": "Write a haiku about the sea."},),
        None,
        32,
    ),
    WorkItem(
        "You are terse.\n\nName three primes.",
        (
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three primes."},
        ),
        None,
        16,
    ),
    WorkItem(
        "Explain what a mutex is in two sentences.",
        ({"role": "user", "content": "Explain what a mutex is in two sentences."},),
        None,
        64,
    ),
    WorkItem("Say hello.", ({"role": "user", "content": "Say hello."},), None, DEFAULT_MAX_TOKENS),
]


def test_jsonl_loads_in_file_order_and_cycles() -> None:
    w = FileWorkload.from_jsonl(JSONL, shuffle=False)
    assert len(w) == 4
    assert [w.item(n) for n in range(4)] == _JSONL_ITEMS
    assert [w.item(n) for n in range(4, 12)] == _JSONL_ITEMS * 2
    d = w.describe()
    assert orjson.loads(orjson.dumps(d)) == d
    assert d["kind"] == "jsonl" and d["items"] == 4 and d["path"] == str(JSONL)


def test_jsonl_shuffle_is_a_seeded_permutation() -> None:
    orders = {
        seed: [FileWorkload.from_jsonl(JSONL, seed=seed).item(n).prompt for n in range(8)]
        for seed in range(12)
    }
    for order in orders.values():
        assert sorted(order[:4]) == sorted(i.prompt for i in _JSONL_ITEMS)
        assert order[4:] == order[:4]  # the same order on every pass
    again = [FileWorkload.from_jsonl(JSONL, seed=3).item(n).prompt for n in range(8)]
    assert again == orders[3]
    assert len({tuple(o[:4]) for o in orders.values()}) > 1  # seeds do shuffle


def test_jsonl_output_tokens_override() -> None:
    w = FileWorkload.from_jsonl(JSONL, output_tokens=Dist.model_validate(7), shuffle=False)
    assert [w.item(n).max_tokens for n in range(4)] == [7, 7, 7, 7]
    assert w.item(0).prompt == _JSONL_ITEMS[0].prompt
    drawn = FileWorkload.from_jsonl(JSONL, output_tokens="uniform:100,200", seed=2)
    values = [drawn.item(n).max_tokens for n in range(40)]
    assert all(100 <= v <= 200 for v in values) and len(set(values)) > 10
    assert values == [drawn.item(n).max_tokens for n in range(40)]


def _write(tmp_path: Path, text: str, name: str = "p.jsonl") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ('{"prompt": "ok"}\n{"prompt": "broken"\n', 2, "not valid JSON"),
        ('{"prompt": "ok"}\n\n["a list"]\n', 3, "expected a JSON object, found a list"),
        ('{"text": "no prompt"}\n', 1, 'needs a "prompt" or a "messages"'),
        ('{"prompt": 42}\n', 1, '"prompt" must be a non-empty string'),
        ('{"prompt": "   "}\n', 1, '"prompt" must be a non-empty string'),
        ('{"messages": []}\n', 1, '"messages" must be a non-empty list'),
        ('{"messages": "hi"}\n', 1, '"messages" must be a non-empty list'),
        (
            '{"messages": [{"role": "user"}]}\n',
            1,
            'messages[0] must be an object with string "role"',
        ),
        ('{"messages": [{"role": "user", "content": ""}]}\n', 1, "hold no text"),
        (
            '{"prompt": "x", "max_tokens": 0}\n',
            1,
            '"max_tokens" must be an integer from 1 to 4194304',
        ),
        (
            '{"prompt": "x", "max_tokens": "9"}\n',
            1,
            '"max_tokens" must be an integer from 1 to 4194304',
        ),
        (
            '{"prompt": "x", "output_tokens": 1.5}\n',
            1,
            '"output_tokens" must be an integer from 1 to 4194304',
        ),
        (
            '{"prompt": "x", "max_tokens": true}\n',
            1,
            '"max_tokens" must be an integer from 1 to 4194304',
        ),
        # Over the cap every other length has; 2**63 would even be refused by the runner.
        ('{"prompt": "x", "max_tokens": 4194305}\n', 1, "from 1 to 4194304, found 4194305"),
        ('{"prompt": "x", "max_tokens": 9223372036854775808}\n', 1, "found 9223372036854775808"),
    ],
)
def test_jsonl_errors_name_file_line_and_problem(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        FileWorkload.from_jsonl(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}, line {line}: ")
    assert what in msg


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_jsonl_empty_file(tmp_path: Path, text: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(SpecError, match="empty") as exc:
        FileWorkload.from_jsonl(p)
    assert str(p) in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.jsonl"
    for load in (FileWorkload.from_jsonl, FileWorkload.from_sharegpt):
        with pytest.raises(SpecError, match="cannot read") as exc:
            load(p)
        assert str(p) in str(exc.value)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"prompt": "hi there"}\n')
    assert FileWorkload.from_jsonl(p).item(0).prompt == "hi there"


def test_a_jsonl_line_may_ask_for_its_prompt_length(tmp_path: Path) -> None:
    # A dataset built with the target's tokenizer can say how long each prompt is meant to be;
    # the summary then sets it against the server's count. Without it, nothing is asked.
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"prompt": "a b c", "prompt_tokens": 7}\n{"prompt": "d e"}\n')
    w = FileWorkload.from_jsonl(p, shuffle=False)
    assert [w.item(n).prompt_tokens for n in range(2)] == [7, None]
    for bad in ("0", "true", '"7"', "4194305"):
        p.write_bytes(b'{"prompt": "a", "prompt_tokens": ' + bad.encode() + b"}\n")
        with pytest.raises(SpecError, match=r'line 1: "prompt_tokens" must be an integer from 1'):
            FileWorkload.from_jsonl(p)


# --- ShareGPT -------------------------------------------------------------------------------


def test_sharegpt_first_human_turn_and_reply_length() -> None:
    w = FileWorkload.from_sharegpt(SHAREGPT, shuffle=False)
    got = [(i.prompt, i.prompt_tokens, i.max_tokens) for i in (w.item(n) for n in range(3))]
    assert got == [
        ("What is the capital of France?", None, 6),
        ("Count to five.", None, 5),  # a system turn before the human one is passed over
        ("Tell me a joke about cats please.", None, 15),  # so is an opening gpt greeting
    ]
    assert w.item(0).messages == ({"role": "user", "content": "What is the capital of France?"},)
    assert w.item(3) == w.item(0)
    d = w.describe()
    assert orjson.loads(orjson.dumps(d)) == d
    assert (d["kind"], d["entries"], d["skipped"], d["items"]) == ("sharegpt", 5, 2, 3)


def test_sharegpt_output_tokens_override_and_shuffle() -> None:
    w = FileWorkload.from_sharegpt(SHAREGPT, output_tokens=Dist.model_validate(50), seed=1)
    assert {w.item(n).max_tokens for n in range(6)} == {50}
    assert sorted(w.item(n).prompt for n in range(3)) == sorted(
        ["What is the capital of France?", "Count to five.", "Tell me a joke about cats please."]
    )


def _conv(*turns: tuple[str, str]) -> dict[str, object]:
    return {"id": "x", "conversations": [{"from": f, "value": v} for f, v in turns]}


_GOOD = _conv(("human", "hi there"), ("gpt", "hello"))


@pytest.mark.parametrize(
    ("data", "where", "what"),
    [
        ({"not": "a list"}, "", "must hold a JSON list of conversations, found an object"),
        ([_GOOD, "text"], ", entry 1", "expected an object, found a string"),
        ([_GOOD, {"id": "y"}], ", entry 1", '"conversations" must be a list of turns, found null'),
        ([{"conversations": {}}], ", entry 0", '"conversations" must be a list'),
        (
            [_GOOD, _GOOD, {"conversations": [{"from": "human"}]}],
            ", entry 2",
            'conversations[0] must be an object with string "from" and "value"',
        ),
        (
            [{"conversations": [{"from": "human", "value": "a"}, {"from": 1, "value": "b"}]}],
            ", entry 0",
            "conversations[1] must be",
        ),
        ([], "", "no usable conversations among 0 entries"),
        (
            [
                _conv(("human", "only one turn")),
                _conv(("gpt", "a"), ("gpt", "b")),
                _conv(("gpt", "a"), ("human", "question left unanswered")),
                _conv(("human", "   "), ("gpt", "empty prompt")),
                _conv(("human", "empty reply"), ("gpt", "")),
            ],
            "",
            "no usable conversations among 5 entries",
        ),
    ],
)
def test_sharegpt_errors_name_file_entry_and_problem(
    tmp_path: Path, data: object, where: str, what: str
) -> None:
    p = tmp_path / "sg.json"
    p.write_bytes(orjson.dumps(data))
    with pytest.raises(SpecError) as exc:
        FileWorkload.from_sharegpt(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}{where}: ")
    assert what in msg


def test_sharegpt_bad_json(tmp_path: Path) -> None:
    p = _write(tmp_path, '[{"conversations": [}', "sg.json")
    with pytest.raises(SpecError, match="not valid JSON") as exc:
        FileWorkload.from_sharegpt(p)
    assert str(exc.value).startswith(f"{p}: ")


# --- prompt files are streamed, and what is kept is bounded (issue 13) -----------------------

_PEAK = """
import resource, sys, time
from latbench.shared.errors import SpecError
from latbench.workload import FileWorkload
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.monotonic()
try:
    getattr(FileWorkload, sys.argv[2])(sys.argv[1])
    print("accepted")
except SpecError as e:
    print(e)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"{time.monotonic() - t:.3f} {grew // 1024}")
"""


def _load_measured(path: Path, how: str) -> tuple[str, float, int]:
    """(error, seconds, peak RSS growth in MiB) of loading `path` in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path), how],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    seconds, mib = out[-1].split()
    return out[0], float(seconds), int(mib)


def _big(path: Path, head: bytes, unit: bytes, size: int, tail: bytes = b"") -> Path:
    with path.open("wb") as f:
        f.write(head)
        block = unit * max(1, (1 << 20) // len(unit))
        for _ in range(size // len(block)):
            f.write(block)
        f.write(tail)
    return path


def test_jsonl_bad_first_line_fails_at_once_with_bounded_memory(tmp_path: Path) -> None:
    """A 64 MiB file whose line 1 is bad: it was read whole (twice, as bytes and as lines)
    before failing; now line 1 fails before line 2 is read."""
    line = b'{"prompt": "' + b"word " * 200 + b'"}\n'
    p = _big(tmp_path / "bad.jsonl", b'{"prompt": "oops"\n', line, 64 << 20)
    error, seconds, grew = _load_measured(p, "from_jsonl")
    assert error.startswith(f"{p}, line 1: not valid JSON"), error
    assert seconds < 2.0 and grew < 16, (seconds, grew)


def test_jsonl_line_cap(tmp_path: Path) -> None:
    p = _big(tmp_path / "one.jsonl", b'{"prompt": "', b"a", MAX_PROMPT_LINE_BYTES + (1 << 20))
    error, _, grew = _load_measured(p, "from_jsonl")
    assert error == (
        f"{p}, line 1: longer than 4 MiB, the most one prompt line may hold "
        "(is it JSON Lines, one object a line?)"
    )
    assert grew < 16, grew


def test_prompt_files_kept_text_is_capped(tmp_path: Path) -> None:
    """Valid lines past the text a run takes (each worker gets it in one frame) fail, naming
    the line, long before the frame limit; memory holds what was kept."""
    line = b'{"prompt": "' + b"word " * 200_000 + b'"}\n'  # ~1 MB a line
    p = _big(tmp_path / "many.jsonl", b"", line, 200 << 20)
    error, _, grew = _load_measured(p, "from_jsonl")
    # 1,000,064 bytes a line as counted (the text and an item's overhead): over 160 MiB at 168.
    assert error.startswith(f"{p}, line 168: ") and "over 160 MiB of text" in error, error
    assert grew < 3 * (MAX_PROMPT_TEXT_BYTES >> 20), grew


def test_sharegpt_is_read_an_entry_at_a_time(tmp_path: Path) -> None:
    """A 64 MiB ShareGPT file with a bad entry 0 fails at it without parsing the rest (it was
    parsed whole: several times its size in memory)."""
    entry = orjson.dumps(_conv(("human", "word " * 200), ("gpt", "ok"))) + b","
    p = _big(
        tmp_path / "sg.json", b'[{"conversations": [{"from": "human", "value": 1}]},', entry,
        64 << 20, orjson.dumps(_GOOD) + b"]",
    )  # fmt: skip
    error, seconds, grew = _load_measured(p, "from_sharegpt")
    assert error.startswith(f"{p}, entry 0: conversations[0] must be"), error
    assert seconds < 2.0 and grew < 16, (seconds, grew)
    # The same file with a good entry 0 is read whole, an entry at a time.
    p.write_bytes(b"[" + entry * 3 + b"\n " + orjson.dumps(_GOOD) + b"\n]\n")
    w = FileWorkload.from_sharegpt(p)
    assert w.describe()["entries"] == 4 and len(w) == 4


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("[" + orjson.dumps(_GOOD).decode() + ', {"conv', "not valid JSON at entry 1"),
        ("[" + orjson.dumps(_GOOD).decode() + " 2]", "not valid JSON after entry 0"),
        ("[" + orjson.dumps(_GOOD).decode() + "] x", "more after the list's closing ]"),
        ("", "found nothing"),
        ('"text"', "found a string"),
    ],
)
def test_sharegpt_stream_errors(tmp_path: Path, text: str, what: str) -> None:
    p = _write(tmp_path, text, "sg.json")
    with pytest.raises(SpecError, match=re.escape(what)):
        FileWorkload.from_sharegpt(p)


def test_sharegpt_entry_cap(tmp_path: Path) -> None:
    p = _big(tmp_path / "sg.json", b'[{"conversations": [{"from": "human", "value": "', b"a",
             MAX_PROMPT_LINE_BYTES + (2 << 20))  # fmt: skip
    with pytest.raises(SpecError, match="entry 0: over 4 MiB of JSON"):
        FileWorkload.from_sharegpt(p)


def test_drawn_lengths_are_clamped() -> None:
    """A heavy tail cannot ask for more than MAX_TOKENS (a draw of 1e13 tried to allocate tens
    of TiB)."""
    w = SyntheticWorkload(1, "normal:4000000,4000000", seed=3)
    drawn = [w.item(n).max_tokens for n in range(64)]
    assert max(drawn) == MAX_TOKENS and min(drawn) >= 1
    with pytest.raises(ValueError, match="seed"):
        SyntheticWorkload(1, 1, seed=2**63)


def test_prompt_count_is_capped(tmp_path: Path) -> None:
    p = tmp_path / "tiny.jsonl"
    p.write_bytes(b'{"prompt": "a"}\n' * (MAX_PROMPT_ITEMS + 1))
    with pytest.raises(SpecError) as exc:
        FileWorkload.from_jsonl(p)
    assert str(exc.value) == (
        f"{p}, line {MAX_PROMPT_ITEMS + 1}: the file holds more than 500,000 prompts, the most a "
        "run takes; use a sample of it"
    )
