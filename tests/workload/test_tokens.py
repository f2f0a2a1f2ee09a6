"""Prompt lengths in the target's tokens (workload/tokens.py, client/tokenize.py): the arithmetic
of building a prompt to a drawn count, a real local tokenizer built here with the `tokenizers`
library, and whole runs against the simulator, whose /tokenize and usage count words."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from kit import hostile
from kit.cli import latbench
from kit.client import options
from kit.paths import DATA

from latbench.client import API_KINDS, Endpoint, Timeouts
from latbench.client.tokenize import Uncountable, calibrate, check, local_counter, measure
from latbench.records import Record, read_records
from latbench.sim import SimProcess
from latbench.summary import summarize
from latbench.workload import DEFAULT_VOCABULARY, SyntheticWorkload
from latbench.workload.item import ITEM_STREAM, as_dist, draw_count, rng_for
from latbench.workload.tokens import PROBE, SERVER, TOKENIZER, TokenScale, pick_words

V = DEFAULT_VOCABULARY


def scale_of(costs: list[int], leads: dict[str, int]) -> TokenScale:
    lead_costs = tuple(map(float, leads.values()))
    return TokenScale(TOKENIZER, tuple(leads), lead_costs, tuple(map(float, costs)), exact=True)


def test_built_prompts_cost_exactly_what_they_asked_for() -> None:
    costs = [int(c) for c in np.random.default_rng(1).integers(1, 8, len(V))]
    leads = {"a": 3, "b": 4, "c": 2}
    scale = scale_of(costs, leads)
    rng = np.random.default_rng(2)
    seen = set()
    for target in [*range(4, 60), 128, 1000, 5000]:
        lead, picked, expected = pick_words(scale, target, rng)
        assert expected == target
        assert leads[lead] + sum(costs[i] for i in picked) == target, target
        seen.add(lead)
    assert seen == set(leads)  # each prompt draws its lead word


def test_a_remainder_no_word_fits_is_left_short_and_said() -> None:
    # Every word costs 3 after a 2-token lead: 10 tokens cannot be made, 8 can.
    scale = scale_of([3] * len(V), {"x": 2})
    rng = np.random.default_rng(0)
    _, picked, expected = pick_words(scale, 10, rng)
    assert (len(picked), expected) == (2, 8.0)
    _, picked, expected = pick_words(scale, 1, rng)
    assert (len(picked), expected) == (0, 2.0)  # the lead alone is over


def test_without_a_scale_prompts_are_the_words_they_always_were() -> None:
    # The same seed gives the same words as before calibration existed: a word is a token.
    item = SyntheticWorkload(12, 4, seed=7).item(3)
    assert len(item.prompt.split()) == item.prompt_tokens == 12
    rng = rng_for(7, ITEM_STREAM, 3)
    draw_count(as_dist("in", 12), rng), draw_count(as_dist("out", 4), rng)
    assert item.prompt == " ".join(np.array(V, dtype=object)[rng.integers(0, len(V), 12)])


def test_a_probe_scale_builds_prompts_from_the_mean() -> None:
    scale = TokenScale(PROBE, ("the",), (2.0,), (2.5,) * len(V), exact=False)
    w = SyntheticWorkload(102, 4, scale=scale)
    assert len(w.item(0).prompt.split()) == 1 + 40  # (102 - 2) / 2.5 words after the lead


# --- a real tokenizer -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained here on a few words, so most vocabulary words take several
    tokens and their costs differ, as the e2e stage's tiny model's do."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    words = "the latency of a token stream is the time from request to response in a batch"
    tok.train_from_iterator([words] * 50, trainer)
    # A BOS on every text, as Llama's tokenizers add: one more token the count must include.
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_a_local_tokenizer_calibrates_every_prompt_to_its_count(tokenizer_json: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    count = local_counter(str(tokenizer_json.parent))  # the folder that holds it works too

    async def calibrated() -> TokenScale:
        scale = await measure(count, V, V[:16], TOKENIZER, str(tokenizer_json))
        w = SyntheticWorkload("normal:256,80", 4, scale=scale)
        return await check(scale, w.item, count)

    scale = asyncio.run(calibrated())
    assert scale.exact and scale.checked == (4, 4)
    costs = np.array(scale.costs)
    assert costs.mean() > 2 and costs.min() >= 1 and costs.max() > costs.min()  # not a word each
    w = SyntheticWorkload("normal:256,80", 4, seed=5, scale=scale)
    asked = got = 0
    for n in range(300):
        item = w.item(n)
        n_tokens = len(tok.encode(item.prompt).ids)
        assert n_tokens == item.prompt_tokens, (n, item.prompt)
        asked, got = asked + item.prompt_tokens, got + len(item.prompt.split())
    assert got < asked / 2  # far fewer words than tokens: the words were not taken as tokens


def test_a_tokenizer_that_cannot_be_loaded_is_a_named_error(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from latbench.shared.errors import SpecError

    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match=r"workload.tokenizer .*tokenizer.json.*cannot load it"):
        local_counter(str(bad))
    with pytest.raises(SpecError, match=r"workload.tokenizer .*missing.json': no such file$"):
        local_counter(str(tmp_path / "missing.json"))


# --- whole runs against the simulator -------------------------------------------------------


def run(tmp_path: Path, *args: str) -> tuple[dict, list]:
    out = tmp_path / "out"
    p = latbench(
        "run", "--requests", "12", "--concurrency", "3", "--output-tokens", "2",
        "--input-tokens", "normal:96,30", "--server-metrics", "off", "--out", str(out), *args,
    )  # fmt: skip
    assert p.returncode in (0, 4), p.stderr  # 4: a loaded box may judge the run client-bound
    (run_dir,) = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    return results, read_records(run_dir / "records.jsonl").records


def test_against_the_simulator_the_prompts_are_exact_by_its_tokenize(
    sim_url: str, tmp_path: Path
) -> None:
    results, records = run(tmp_path, "--target", sim_url)
    assert results["environment"]["prompt_tokens"]["source"] == SERVER
    assert results["workload"]["prompt_tokens"]["checked"] == {"exact": 4, "of": 4}
    assert all(r.prompt_tokens == r.usage_prompt_tokens for r in records)
    prompt = results["summary"]["tokens"]["prompt"]
    assert prompt == {
        "requested": 12, "reported": 12, "exact": 12, "fewer": 0, "more": 0,
        "mean_ratio": 1.0, "tolerance": 0.05, "warning": None,
    }  # fmt: skip
    assert results["warnings"] == []
    # The records file alone replays to the same section.
    (records_path,) = (tmp_path / "out").glob("*/records.jsonl")
    replay = latbench("summary", str(records_path), "--json")
    assert json.loads(replay.stdout)["tokens"]["prompt"] == prompt
    shown = latbench("summary", str(records_path)).stdout
    assert "prompt tokens asked vs got" in shown and "12 exact, 0 fewer, 0 more" in shown


def test_a_prompt_file_asks_for_no_length(sim_url: str, tmp_path: Path) -> None:
    results, records = run(tmp_path, "--target", sim_url, "--prompts", str(DATA / "prompts.jsonl"))
    assert results["environment"]["prompt_tokens"] is None
    assert all(r.prompt_tokens is None and r.usage_prompt_tokens for r in records)
    assert results["summary"]["tokens"]["prompt"]["requested"] == 0
    (records_path,) = (tmp_path / "out").glob("*/records.jsonl")
    shown = " ".join(latbench("summary", str(records_path)).stdout.split())
    assert "prompt tokens asked vs got not requested" in shown


def test_a_server_without_tokenize_is_probed(
    sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    # The simulator playing Anthropic serves no /tokenize, as Anthropic does not.
    proc = sim(api="anthropic", ttft=0.005, itl=0.002)
    results, records = run(
        tmp_path, "--target", proc.url, "--api", "anthropic", "--model", "sim-model"
    )
    assert results["environment"]["prompt_tokens"]["source"] == PROBE
    assert all(r.prompt_tokens == r.usage_prompt_tokens for r in records)
    assert results["summary"]["tokens"]["prompt"]["exact"] == 12


def test_a_wrong_tokenizer_is_caught_by_the_usage_and_warned_about(
    sim: Callable[..., SimProcess], tokenizer_json: Path, tmp_path: Path
) -> None:
    # The tokenizer counts several tokens a word; the simulator counts one: the prompts hold
    # far fewer tokens than asked, the summary says so, and results.json carries the warning.
    proc = sim(api="anthropic", ttft=0.005, itl=0.002)
    results, _ = run(
        tmp_path, "--target", proc.url, "--api", "anthropic", "--model", "sim-model",
        "--tokenizer", str(tokenizer_json),
    )  # fmt: skip
    assert results["environment"]["prompt_tokens"]["source"] == TOKENIZER
    prompt = results["summary"]["tokens"]["prompt"]
    assert prompt["fewer"] == 12 and prompt["mean_ratio"] < 0.6
    assert prompt["warning"] and prompt["warning"] in results["warnings"]


def test_words_turns_calibration_off(sim_url: str, tmp_path: Path) -> None:
    results, records = run(tmp_path, "--target", sim_url, "--tokenizer", "words")
    assert results["environment"]["prompt_tokens"] == {"source": "words"}
    # A word is a token, and the simulator counts words: the old prompts, still exact there.
    assert all(r.prompt_tokens == r.usage_prompt_tokens for r in records)


async def test_nothing_to_count_with_falls_back_to_words_and_says_so(
    http: aiohttp.ClientSession,
) -> None:
    # Nothing listens: no /tokenize, no probe answers; the run goes on in words, and says so.
    ep = Endpoint(
        "http://127.0.0.1:9", API_KINDS["chat"], options(), {}, Timeouts(connect=2, total=5)
    )
    scale, notes = await calibrate(http, ep, None, V, lambda s: SyntheticWorkload(8, 1).item)
    assert scale is None
    (note,) = notes
    assert note.startswith("prompt lengths are in words, not the target's tokens")
    assert "/tokenize" in note and "a probe request" in note


def test_probes_whose_usage_counts_no_words_are_not_believed(tmp_path: Path) -> None:
    # The hostile server serves no /tokenize and reports 3 prompt tokens whatever the prompt:
    # the probes' usage gives no cost a word, so the run goes on in words and says so.
    running, srv, _ = hostile.start()
    try:
        results, records = run(tmp_path, "--target", srv.url, "--model", hostile.MODEL)
    finally:
        running.close()
    assert results["environment"]["prompt_tokens"] == {"source": "words"}
    (note, *_) = results["warnings"]
    assert note.startswith("prompt lengths are in words, not the target's tokens")
    assert "3 and 3 prompt tokens for 1 and 129 words" in note
    assert all(r.usage_prompt_tokens == 3 for r in records)
    # The server's fixed count is far below what was asked: the summary warns of that too.
    assert results["summary"]["tokens"]["prompt"]["warning"] in results["warnings"]


def scale_from(counts: Callable[[str], int]) -> TokenScale:
    async def count(text: str) -> int:
        return counts(text)

    return asyncio.run(measure(count, V, V[:16], SERVER, "test"))


def test_counts_that_do_not_add_up_give_a_mean_and_no_count_at_all_gives_none() -> None:
    # Two tokens a word, but a "the" after the first word costs nothing.
    scale = scale_from(lambda t: 2 * len(t.split()) - 2 * t.split()[1:].count("the"))
    assert not scale.exact and "mean cost" in scale.detail
    assert len(set(scale.costs)) == 1 and 1.9 < scale.costs[0] < 2
    with pytest.raises(Uncountable, match="no count of words"):
        scale_from(lambda t: 7)  # a fixed count: every word costs nothing


# --- the summary's comparison ----------------------------------------------------------------


def asked_got(pairs: list[tuple[int | None, int | None]]) -> dict:
    base = {"run_id": "t", "phase": "measure", "api": "chat", "t_intended": 0, "t_sent": 0}
    records = [
        Record(seq=i, ev_t=(5,), t_end=9, prompt_tokens=a, usage_prompt_tokens=g, **base)
        for i, (a, g) in enumerate(pairs)
    ]
    return summarize(records).tokens.prompt.to_dict()


def test_asked_and_reported_prompt_tokens_are_set_side_by_side() -> None:
    # One exact, one short, one long, one with no usage, one that asked for no length.
    got = asked_got([(100, 100), (100, 90), (100, 120), (100, None), (None, 55)])
    assert got == {
        "requested": 4, "reported": 3, "exact": 1, "fewer": 1, "more": 1,
        "mean_ratio": pytest.approx((1 + 0.9 + 1.2) / 3), "tolerance": 0.05, "warning": None,
    }  # fmt: skip
    # Past the tolerance (a mean 6 % over), the summary warns, naming the ratio.
    got = asked_got([(100, 106), (200, 212)])
    assert got["warning"].startswith("prompts held 1.06x the prompt tokens asked for")
    assert asked_got([(None, 10)])["requested"] == 0


def test_every_synthetic_workload_refuses_a_scale_priced_on_another_vocabulary() -> None:
    from latbench.workload.prefix import SharedPrefixWorkload
    from latbench.workload.sessions import SyntheticSessions
    from latbench.workload.trace import TraceWorkload

    short = scale_of([1] * (len(V) - 1), {"the": 2})
    builds: list[Callable[[], object]] = [
        lambda: SyntheticWorkload(8, 8, scale=short),
        lambda: SyntheticSessions(2, 8, 8, scale=short),
        lambda: SharedPrefixWorkload(2, 16, 8, 8, scale=short),
        lambda: TraceWorkload.from_file(DATA / "traces" / "azure.csv", scale=short),
    ]
    said = rf"prices {len(V) - 1} words, the vocabulary has {len(V)}$"
    for build in builds:
        with pytest.raises(ValueError, match=said):
            build()
