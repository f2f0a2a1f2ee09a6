"""Measure what the target's tokenizer charges for the synthetic vocabulary, once, before a run.

`calibrate` returns the `TokenScale` that synthetic prompts are built with (workload/tokens.py),
from the first of these that answers:

1. the server's `POST /tokenize` (vLLM, SGLang, `latbench sim`): `{"model", "prompt"}`,
   or `{"model", "messages", "add_generation_prompt": true}` for the chat-shaped APIs so the
   chat template is counted as the server will count it; the answer's `count` (vLLM) or the
   length of its `tokens` (both);
2. a local tokenizer named by `workload.tokenizer` (`--tokenizer`): a tokenizer.json, a folder
   holding one, or a Hugging Face Hub name, read by the `tokenizers` library (the optional
   `latbench[tokenizer]` extra). It applies no chat template: for chat APIs its counts lack the
   template's tokens, which the asked-vs-got line of the summary then shows;
3. the usage of two probe requests with max_tokens=1 (hosted APIs): one mean cost for every word,
   so prompts are right on average, not each one.

With a tokenizer at hand the cost of each word is measured, so the counts are exact for
tokenizers that split at spaces; most words of common-English vocabularies are one token for the
tokenizers of large models, so words are counted in groups first (a group whose count equals its
size is all single tokens) and one at a time only inside the groups that are not; with the LEADS
lead words counted alone, 17 requests for `latbench sim`, 412 for the e2e stage's tiny tokenizer
(0.2-0.4 s against its vLLM on 2 shared cores). Then CHECKED built prompts are counted whole,
and the scale says how many came out exact.
The built-in simulator of a run without a target is not asked (run/benchmark.py): it counts a
word as a token, which is what uncalibrated prompts are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from time import monotonic_ns
from typing import Any

import aiohttp
import numpy as np
import orjson

from latbench.client.reads import read_bounded
from latbench.client.stream import Endpoint, Timeouts, stream_request
from latbench.shared.errors import SpecError
from latbench.workload.item import WorkItem, user_turn
from latbench.workload.tokens import SERVER, TOKENIZER, TokenScale, probe_scale

Count = Callable[[str], Awaitable[int]]

GROUP = 16  # words counted together before any is counted alone
LEADS = 16  # the first words of the vocabulary that prompts may start with (workload/tokens.py)
CONCURRENT = 8  # /tokenize requests in flight: a short burst, not a load
CHECKED = 4  # built prompts counted whole to check the scale
PROBE_WORDS = 128  # words of the longer probe prompt
PROBE_TIMEOUT_S = 30.0  # a probe that takes longer is no use before a run
MAX_TOKENIZE_BYTES = 16 << 20  # a /tokenize answer for a calibration prompt is far smaller
CHAT_SHAPED = ("chat", "anthropic", "responses")
# A word of the vocabulary costs at least a token (tokenizers split at spaces) and far fewer than
# its letters' bytes; probes whose usage says otherwise (a fixed count, a server that does not
# tokenize) would build prompts of absurd lengths.
MIN_PER_WORD, MAX_PER_WORD = 0.5, 16.0


class Uncountable(Exception):
    """A counter that gave no count: the next source is tried."""


def server_counter(session: aiohttp.ClientSession, ep: Endpoint, api: str) -> Count:
    url = ep.base_url.rstrip("/") + "/tokenize"
    model = ep.options.model
    to = aiohttp.ClientTimeout(total=ep.timeouts.connect + 20)

    async def count(text: str) -> int:
        if api in CHAT_SHAPED:
            body = {
                "model": model,
                "messages": list(user_turn(text)),
                "add_generation_prompt": True,
            }
        else:
            body = {"model": model, "prompt": text}
        try:
            async with session.post(
                url, data=orjson.dumps(body), headers=ep.headers, timeout=to, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise Uncountable(f"{url} answered HTTP {resp.status}")
                got = orjson.loads(await read_bounded(resp.content, MAX_TOKENIZE_BYTES))
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise Uncountable(f"{url}: {type(e).__name__}: {e}") from None
        n = got.get("count") if isinstance(got, dict) else None
        if n is None and isinstance(got, dict) and isinstance(got.get("tokens"), list):
            n = len(got["tokens"])
        if type(n) is not int or n < 0:
            raise Uncountable(f"{url} answered no token count")
        return n

    return count


def local_counter(name: str) -> Count:
    """A counter from a tokenizer.json, a folder holding one, or a Hub name; SpecError when it
    cannot be had (the user named it, so it is their mistake to fix, not a source to skip)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise SpecError(
            "workload.tokenizer needs the tokenizers library: pip install 'latbench[tokenizer]'"
        ) from None
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists() and (name.endswith(".json") or ("/" in name and path.parent.exists())):
        # A file that is not there, not a Hub name ("org/model" has no folder "org" here).
        raise SpecError(f"workload.tokenizer {name!r}: no such file")
    try:
        tok = Tokenizer.from_file(str(path)) if path.exists() else Tokenizer.from_pretrained(name)
    except Exception as e:  # the library raises plain Exceptions for a bad file or name
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"workload.tokenizer {name!r}: cannot load it ({why:.200})") from None

    async def count(text: str) -> int:
        return len(tok.encode(text).ids)

    return count


async def _all(counts: Iterable[Coroutine[Any, Any, int]]) -> list[int]:
    """Every count, or the first Uncountable with the other requests cancelled (a gather would
    leave them running against a server that has already said it cannot count)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in counts]
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return [t.result() for t in tasks]


async def measure(
    count: Count, vocabulary: Sequence[str], leads: Sequence[str], source: str, detail: str
) -> TokenScale:
    """Each lead word's count alone, and each word's cost after a space: the count of
    "lead w..." less the first lead's, by groups."""
    gate = asyncio.Semaphore(CONCURRENT)

    async def counted(text: str) -> int:
        async with gate:
            return await count(text)

    async def after_lead(words: Sequence[str]) -> int:
        return await counted(" ".join((leads[0], *words)))

    lead_costs = tuple(map(float, await _all(counted(w) for w in leads)))
    lead = int(lead_costs[0])
    costs: list[int] = [1] * len(vocabulary)
    if await after_lead(vocabulary) - lead != len(vocabulary):
        starts = range(0, len(vocabulary), GROUP)
        sums = await _all(after_lead(vocabulary[i : i + GROUP]) for i in starts)
        alone = [
            i
            for start, total in zip(starts, sums, strict=True)
            if total - lead != len(vocabulary[start : start + GROUP])
            for i in range(start, min(start + GROUP, len(vocabulary)))
        ]
        singles = await _all(after_lead((vocabulary[i],)) for i in alone)
        for i, n in zip(alone, singles, strict=True):
            costs[i] = n - lead
    if min(costs) >= 1:
        return TokenScale(source, tuple(leads), lead_costs, tuple(map(float, costs)), True, detail)
    # A word that costs nothing after the lead: the counts do not add up word by word, so
    # only their mean is of use (built prompts are then right on average, as with probes).
    per_word = sum(costs) / len(costs)
    if not MIN_PER_WORD <= per_word <= MAX_PER_WORD:
        raise Uncountable(f"{detail} gave {per_word:.3g} tokens a word, no count of words")
    why = "; words did not add up one by one, so a mean cost is used"
    costs_all = (per_word,) * len(costs)
    return TokenScale(source, tuple(leads), lead_costs, costs_all, False, detail + why)


async def check(scale: TokenScale, build: Callable[[int], WorkItem], count: Count) -> TokenScale:
    """The scale, with how many of the first CHECKED built prompts hold what they asked for."""
    items = [build(n) for n in range(CHECKED)]
    got = await _all(count(it.prompt) for it in items)
    hits = sum(n == it.prompt_tokens for n, it in zip(got, items, strict=True))
    return replace(scale, checked=(hits, len(items)), exact=scale.exact and hits == len(items))


async def probe(
    session: aiohttp.ClientSession, ep: Endpoint, vocabulary: Sequence[str], lead_word: str
) -> TokenScale:
    """A mean cost from the usage of two max_tokens=1 requests: the lead alone, then the lead
    with PROBE_WORDS words drawn with a fixed seed."""
    to = ep.timeouts
    short = Timeouts(to.connect, min(to.first_token, PROBE_TIMEOUT_S), to.idle, PROBE_TIMEOUT_S)
    ep = replace(ep, timeouts=short)
    words = np.array(vocabulary, dtype=object)[
        np.random.default_rng(0).integers(0, len(vocabulary), PROBE_WORDS)
    ]
    counts = []
    for text in (lead_word, " ".join((lead_word, *words))):
        item = WorkItem(text, user_turn(text), None, 1)
        now = monotonic_ns()
        rec = await stream_request(
            session, ep, item, run_id="probe", seq=0, phase="warmup", t_intended=now
        )
        if rec.usage_prompt_tokens is None:
            why = rec.error_detail or rec.error or "no usage.prompt_tokens in the answer"
            raise Uncountable(f"a probe request: {why}")
        counts.append(rec.usage_prompt_tokens)
    per_word = (counts[1] - counts[0]) / PROBE_WORDS
    if not MIN_PER_WORD <= per_word <= MAX_PER_WORD:
        raise Uncountable(
            f"the probes' usage ({counts[0]} and {counts[1]} prompt tokens for 1 and "
            f"{PROBE_WORDS + 1} words) is no count of their words"
        )
    return probe_scale(vocabulary, lead_word, counts[0], PROBE_WORDS, counts[1])


async def calibrate(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    tokenizer: str | None,
    vocabulary: Sequence[str],
    build: Callable[[TokenScale], Callable[[int], WorkItem]],
) -> tuple[TokenScale | None, list[str]]:
    """The scale of the target's tokens for `vocabulary`, and what the user should be told.

    `tokenizer` is the spec's: None tries every source, "words" none (a word is a token), else a
    local tokenizer to use where the server has no /tokenize. `build(scale)` gives the item of
    request n built with `scale`, for the check. None when nothing could count: prompts are then
    in words, and the notes say so."""
    if tokenizer == "words":
        return None, []
    leads = vocabulary[:LEADS]
    base = ep.base_url.rstrip("/")
    sources: list[tuple[str, Count, str]] = [
        (SERVER, server_counter(session, ep, ep.api.name), f"{base}/tokenize")
    ]
    if tokenizer is not None:  # loaded first: a tokenizer that cannot be had is the user's error
        sources.append((TOKENIZER, local_counter(tokenizer), tokenizer))
    misses: list[str] = []
    for source, count, detail in sources:
        try:
            scale = await measure(count, vocabulary, leads, source, detail)
            scale = await check(scale, build(scale), count)
        except Uncountable as e:
            misses.append(str(e))
            continue
        notes = []
        if source == SERVER and tokenizer is not None:
            notes.append(f"prompt lengths from the server's own {detail}, not {tokenizer!r}")
        return scale, notes
    try:
        return await probe(session, ep, vocabulary, leads[0]), []
    except Uncountable as e:
        misses.append(str(e))
    return None, [
        "prompt lengths are in words, not the target's tokens: nothing counted them ("
        + "; ".join(misses)
        + "); give a tokenizer with --tokenizer"
    ]
