"""Trace files read into requests: each format's columns and units against the samples in
tests/data/traces (hand arithmetic from their own lines), the replay's offsets (speed, window),
the lengths each request asks for, Mooncake's hash ids as shared prompt prefixes, and every
malformed line named by file, line and column."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from latbench.shared.errors import SpecError
from latbench.workload.synthetic import DEFAULT_VOCABULARY
from latbench.workload.tokens import TokenScale
from latbench.workload.trace import TraceWorkload, detect_format, read_trace

TRACES = Path(__file__).parents[1] / "data" / "traces"
MOONCAKE, AZURE, BURSTGPT = TRACES / "mooncake.jsonl", TRACES / "azure.csv", TRACES / "burstgpt.csv"
MS, S = 1_000_000, 1_000_000_000


def mooncake_rows() -> list[dict]:
    return [json.loads(line) for line in MOONCAKE.read_text().splitlines()]


def csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()[1:]]


def azure_ns(stamp: str) -> int:
    whole, frac = stamp.split(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * S + int(frac.ljust(9, "0"))


# --- formats: columns and units ---------------------------------------------------------------


def test_formats_are_detected_from_the_first_line() -> None:
    assert detect_format(MOONCAKE) == "mooncake"
    assert detect_format(AZURE) == "azure"
    assert detect_format(BURSTGPT) == "burstgpt"


def test_mooncake_timestamps_are_milliseconds_and_lengths_tokens() -> None:
    rows = mooncake_rows()
    w = TraceWorkload.from_file(MOONCAKE)
    assert len(w) == len(rows) == 32
    t0 = rows[0]["timestamp"]
    assert w.offsets_ns.tolist() == [(r["timestamp"] - t0) * MS for r in rows]
    for n, r in enumerate(rows):
        item = w.item(n)
        assert item.prompt_tokens == r["input_length"] == len(item.prompt.split())
        assert item.max_tokens == r["output_length"]
        assert w.hash_ids(n).tolist() == r["hash_ids"]


def test_azure_timestamps_are_instants_to_the_100_ns() -> None:
    rows = csv_rows(AZURE)
    w = TraceWorkload.from_file(AZURE)
    t0 = azure_ns(rows[0][0])
    assert w.offsets_ns.tolist() == [azure_ns(r[0]) - t0 for r in rows]
    assert w.offsets_ns[1] == 47_500_300  # .7785907 -> .8260910: to the 7th digit
    for n, r in enumerate(rows):
        assert (w.item(n).prompt_tokens, w.item(n).max_tokens) == (int(r[1]), int(r[2]))


def test_azure_2024_times_with_an_offset_and_without_a_fraction(tmp_path: Path) -> None:
    p = tmp_path / "azure24.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-12 00:00:00+00:00,1452,3\n"
        "2024-05-12 00:00:00.041683+00:00,584,3\n"
        "2024-05-12 02:00:01.5+02:00,10,1\n"  # the same instant as 00:00:01.5 UTC
    )
    assert TraceWorkload.from_file(p).offsets_ns.tolist() == [0, 41_683_000, 1_500_000_000]


def test_burstgpt_seconds_and_its_failures_skipped() -> None:
    rows = csv_rows(BURSTGPT)
    kept = [r for r in rows if r[3] != "0"]
    w = TraceWorkload.from_file(BURSTGPT)
    assert len(rows) - len(kept) == 3 == w.describe()["skipped_zero_output"]
    assert w.describe()["rows_read"] == 30 and len(w) == 27
    t0 = int(rows[0][0])  # the trace's first row, here kept
    assert w.offsets_ns.tolist() == [(int(r[0]) - t0) * S for r in kept]
    # Request tokens, Response tokens: the columns by name, not Total tokens
    assert [(w.item(n).prompt_tokens, w.item(n).max_tokens) for n in range(len(w))] == [
        (int(r[2]), int(r[3])) for r in kept
    ]


def test_columns_are_found_by_name_in_any_order(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_text(
        "Log Type,Response tokens,Request tokens,Model,Timestamp,Total tokens\n"
        "API log,7,30,GPT-4,2.5,37\n"
        "API log,9,40,GPT-4,3.75,49\n"
    )
    w = TraceWorkload.from_file(p)
    assert w.format == "burstgpt"
    assert w.offsets_ns.tolist() == [0, 1_250_000_000]
    assert (w.item(1).prompt_tokens, w.item(1).max_tokens) == (40, 9)


# --- the replay: speed and window --------------------------------------------------------------


def test_speed_divides_the_gaps_exactly() -> None:
    rows = mooncake_rows()
    t0 = rows[0]["timestamp"]
    w = TraceWorkload.from_file(MOONCAKE, speed=2.5)
    # (t - t0) ms / 2.5 = (t - t0) * 400 us, exactly
    assert w.offsets_ns.tolist() == [(r["timestamp"] - t0) * 400_000 for r in rows]
    assert TraceWorkload.from_file(MOONCAKE, speed=3).offsets_ns[-1] == (1610 - 40) * MS // 3


def test_a_window_keeps_its_rows_and_starts_at_the_first_kept() -> None:
    rows = mooncake_rows()
    t0 = rows[0]["timestamp"]
    inside = [r for r in rows if 500 <= r["timestamp"] - t0 < 1000]
    w = TraceWorkload.from_file(MOONCAKE, start_s=0.5, end_s=1.0, speed=2)
    assert len(w) == len(inside) > 0
    first = inside[0]["timestamp"]
    assert w.offsets_ns.tolist() == [(r["timestamp"] - first) * MS // 2 for r in inside]
    assert w.item(0).max_tokens == inside[0]["output_length"]
    assert w.hash_ids(0).tolist() == inside[0]["hash_ids"]


def test_an_empty_window_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"no rows to replay in the window \[100 s, end\) of 32"):
        TraceWorkload.from_file(MOONCAKE, start_s=100)


# --- prompts: lengths and shared prefixes ------------------------------------------------------


def common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_equal_hash_ids_are_equal_prompt_blocks() -> None:
    w = TraceWorkload.from_file(MOONCAKE)
    words = {n: w.item(n).prompt.split() for n in range(len(w))}
    pairs = 0
    for a in range(len(w)):
        for b in range(a + 1, len(w)):
            common = common_prefix(w.hash_ids(a).tolist(), w.hash_ids(b).tolist())
            shared = common_prefix(words[a], words[b])
            # Equal ids: equal 512-word blocks (the last may be partial); after the first
            # different id the prompts part (a random 512-word block never matches another).
            full = min(common * 512, len(words[a]), len(words[b]))
            assert full <= shared < full + 8, (a, b)
            pairs += common > 0
    assert pairs > 100  # the sample's three trees share a lot


def test_a_row_past_its_blocks_and_an_empty_prompt(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"timestamp": 0, "input_length": 1100, "output_length": 3, "hash_ids": [7]}\n'
        '{"timestamp": 5, "input_length": 300, "output_length": 4, "hash_ids": [7]}\n'
        '{"timestamp": 6, "input_length": 0, "output_length": 1, "hash_ids": []}\n'
    )
    w = TraceWorkload.from_file(p)
    a, b = w.item(0).prompt.split(), w.item(1).prompt.split()
    assert len(a) == 1100 and len(b) == 300
    assert a[:300] == b  # a partial block is the start of the full one
    assert len(w.item(2).prompt.split()) == 1 and w.item(2).prompt_tokens == 1


def test_block_tokens_sets_the_block_size(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"timestamp": 0, "input_length": 40, "output_length": 1, "hash_ids": [1, 2, 3]}\n'
        '{"timestamp": 1, "input_length": 40, "output_length": 1, "hash_ids": [1, 2, 9]}\n'
    )
    w = TraceWorkload.from_file(p, block_tokens=16)
    a, b = w.item(0).prompt.split(), w.item(1).prompt.split()
    assert a[:32] == b[:32] and a[32:] != b[32:]


def test_prompts_are_reproducible_by_seed_and_survive_pickling() -> None:
    w = TraceWorkload.from_file(AZURE, seed=3)
    again = pickle.loads(pickle.dumps(w))
    assert [w.item(n) for n in range(5)] == [again.item(n) for n in range(5)]
    other = TraceWorkload.from_file(AZURE, seed=4)
    assert w.item(0).prompt != other.item(0).prompt
    assert w.item(0).prompt_tokens == other.item(0).prompt_tokens


def test_prompts_in_the_targets_tokens_with_a_scale() -> None:
    # A made-up exact scale: every word costs 1, 2 or 3 tokens, a lead alone 2.
    costs = tuple(float(1 + i % 3) for i in range(len(DEFAULT_VOCABULARY)))
    scale = TokenScale("tokenizer", ("the",), (2.0,), costs, True)
    index = {word: i for i, word in enumerate(DEFAULT_VOCABULARY)}
    w = TraceWorkload.from_file(MOONCAKE, scale=scale)
    prompts = {}
    for n in range(len(w)):
        lead, *rest = w.item(n).prompt.split()
        assert lead == "the"  # one lead for every row, so equal blocks are equal from token 0
        assert 2 + sum(costs[index[x]] for x in rest) == w.item(n).prompt_tokens
        prompts[n] = w.item(n).prompt
    # Rows 0 and 1 share ids [0, 2, 3]: their first 3 x 512 tokens are the same words.
    a, b = prompts[0].split(), prompts[1].split()
    spent, same = 2.0, 0
    while spent < 3 * 512:
        assert a[same + 1] == b[same + 1]
        spent += costs[index[a[same + 1]]]
        same += 1
    assert spent == 3 * 512  # blocks are built to their tokens exactly


# --- errors: file, line, column ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json\n", r"m\.jsonl, line 1: not valid JSON"),
        ("[1, 2]\n", r"m\.jsonl, line 1: expected a JSON object"),
        ('{"timestamp": 0, "output_length": 1}\n', r"line 1, column input_length: missing"),
        (
            '{"timestamp": "0", "input_length": 5, "output_length": 1}\n',
            r"line 1, column timestamp: expected a number of milliseconds",
        ),
        (
            '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
            '{"timestamp": 1, "input_length": -5, "output_length": 1}\n',
            r"line 2, column input_length: a token count must be a whole number",
        ),
        (
            '{"timestamp": 0, "input_length": 5, "output_length": 2.5}\n',
            r"line 1, column output_length: a token count",
        ),
        (
            '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": ["a"]}\n',
            r"line 1, column hash_ids: expected a list of whole numbers",
        ),
        (
            '{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2, 3]}\n',
            r"line 1, column hash_ids: 3 blocks, but input_length 600 fills only 2 of 512",
        ),
        (
            '{"timestamp": 10, "input_length": 5, "output_length": 1}\n\n'
            '{"timestamp": 4, "input_length": 5, "output_length": 1}\n',
            r"line 3, column timestamp: -0\.006 s into the trace, before line 1's 0 s; a trace "
            r"must be in time order",
        ),
    ],
)
def test_mooncake_errors_name_the_line_and_column(tmp_path: Path, text: str, error: str) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(text)
    with pytest.raises(SpecError, match=error):
        read_trace(p, "mooncake")


@pytest.mark.parametrize(
    ("fmt", "text", "error"),
    [
        (
            "azure",
            "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,374\n",
            r"c\.csv, line 1: the azure header needs the columns TIMESTAMP, ContextTokens, "
            r"GeneratedTokens; missing GeneratedTokens",
        ),
        (
            "azure",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n16/11/2023,1,1\n",
            r"c\.csv, line 3, column TIMESTAMP: expected a time such as 2023-11-16",
        ),
        (
            "azure",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374\n",
            r"c\.csv, line 2: 2 columns, the header has 3",
        ),
        (
            "azure",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,many,44\n",
            r"c\.csv, line 2, column ContextTokens: a token count must be a whole number",
        ),
        (
            "burstgpt",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,GPT-4,10,x,10,API log\n",
            r"c\.csv, line 2, column Response tokens: a token count",
        ),
        (
            "burstgpt",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "-5,GPT-4,10,2,12,API log\n",
            r"c\.csv, line 2, column Timestamp: expected a number of seconds from 0 to",
        ),
        (
            "burstgpt",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "9,GPT-4,10,2,12,API log\n8,GPT-4,10,2,12,API log\n",
            r"c\.csv, line 3, column Timestamp: -1 s into the trace, before line 2's 0 s",
        ),
        ("burstgpt", "", r"c\.csv: the trace file is empty"),
    ],
)
def test_csv_errors_name_the_line_and_column(
    tmp_path: Path, fmt: str, text: str, error: str
) -> None:
    p = tmp_path / "c.csv"
    p.write_text(text)
    with pytest.raises(SpecError, match=error):
        read_trace(p, fmt)  # type: ignore[arg-type]


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing\.csv: cannot read"):
        TraceWorkload.from_file(tmp_path / "missing.csv")
    p = tmp_path / "x.csv"
    p.write_text("time,prompt,output\n1,2,3\n")
    with pytest.raises(SpecError, match=r"x\.csv, line 1: not a trace this reads"):
        TraceWorkload.from_file(p)
    p.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n\xff\xfe,1,1\n")
    with pytest.raises(SpecError, match=r"x\.csv, line 2: not UTF-8 text"):
        TraceWorkload.from_file(p)


def test_rows_never_share_words_by_accident() -> None:
    # A row's own words are keyed by its file line: the second half of a trace replayed as its
    # own window does not resend the first half's prompts, nor does another format's row n.
    whole = TraceWorkload.from_file(AZURE)
    later = TraceWorkload.from_file(AZURE, start_s=0.8)
    skipped = len(whole) - len(later)
    assert skipped > 0
    assert later.item(0).prompt == whole.item(skipped).prompt
    assert later.item(0).prompt.split()[:16] != whole.item(0).prompt.split()[:16]
    burst = TraceWorkload.from_file(BURSTGPT)
    assert burst.item(0).prompt.split()[:16] != whole.item(0).prompt.split()[:16]


def test_instants_and_replays_out_of_range(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 1e300, "input_length": 5, "output_length": 1}\n')
    with pytest.raises(SpecError, match=r"line 1, column timestamp: expected a number of milli"):
        read_trace(p)
    forty_days = tmp_path / "b.csv"
    forty_days.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "0,GPT-4,10,2,12,API log\n"
        "3456000,GPT-4,10,2,12,API log\n"
    )
    with pytest.raises(SpecError, match=r"would last 400 days at speed 0\.1, over the 366"):
        TraceWorkload.from_file(forty_days, speed=0.1)
    assert TraceWorkload.from_file(forty_days, speed=1).offsets_ns[-1] == 3456000 * S
