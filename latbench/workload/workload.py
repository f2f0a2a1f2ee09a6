"""What each request asks for: its prompt (or chat messages) and its max_tokens.

A workload maps a request index n to a `WorkItem`, deterministically in (seed, n), so request n
asks for the same thing in every run with the same seed, however the runner interleaves them.

Lengths are counted in words. Synthetic prompts use common one-syllable English words, which
most BPE tokenizers (GPT, Llama, Qwen, Mistral) encode as one token each when preceded by a
space, and the built-in simulator counts one word as one token. A real tokenizer may still
differ slightly (a leading word without its space, a BOS token, a chat template), so the
server's reported `usage.prompt_tokens` is the measured truth and `prompt_tokens` here is the
intent.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np
import orjson

from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_VOCABULARY",
    "FileWorkload",
    "SyntheticWorkload",
    "WorkItem",
    "Workload",
]

DEFAULT_MAX_TOKENS = 128
# The most tokens a request may ask for or send: ~4M tokens is far beyond any served context, and
# it keeps a synthetic prompt to tens of MB. The spec refuses a distribution whose mean, std or
# bounds are above it, and every drawn length is clamped to it (a heavy tail could draw beyond).
MAX_TOKENS = 1 << 22

# Prompt files are read a line (JSONL) or an entry (ShareGPT) at a time, and what is kept is
# bounded: the workload goes to each worker pickled in one frame (latbench/load/wire.py MAX_FRAME,
# 256 MiB), so its text and items stay well under that. docs/spec.md lists these limits.
MAX_PROMPT_LINE_BYTES = 4 << 20  # a JSONL line, or a ShareGPT entry
# ShareGPT V3 (94k conversations) keeps ~120 MB of first turns; with 500k items' overhead
# (~40 bytes each pickled) the frame stays under ~210 MB.
MAX_PROMPT_TEXT_BYTES = 160 << 20  # prompt text kept, all items together
MAX_PROMPT_ITEMS = 500_000
_ITEM_OVERHEAD = 64  # bytes a kept item costs in the frame beyond its text, roughly
_READ_CHUNK = 1 << 20

# Kept apart from the pacer's stream (see load.pacers) so arrival gaps and request lengths drawn
# from the same user seed are independent.
_ITEM_STREAM = 0x5EED_0002
_SHUFFLE_STREAM = 0x5EED_0003

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


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request's input. `prompt` feeds completions APIs, `messages` chat APIs."""

    prompt: str
    messages: tuple[dict[str, str], ...]
    prompt_tokens: int  # expected input length, in words (see the module docstring)
    max_tokens: int


@runtime_checkable
class Workload(Protocol):
    def item(self, n: int) -> WorkItem:
        """Request n's input; the same for the same (seed, n)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, stored in results files."""
        ...


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *key)))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    return int(seed)


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"request index n must be >= 0, got {n}")


def _as_dist(name: str, value: Dist | float | str) -> Dist:
    if isinstance(value, Dist):
        return value
    try:
        return Dist.model_validate(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _draw_count(dist: Dist, rng: np.random.Generator) -> int:
    # A request must ask for at least one token, whatever the distribution's tail does, and at
    # most MAX_TOKENS (a lognormal's tail, or a nan from extreme parameters, is clamped).
    x = dist.sample_one(rng)
    if not math.isfinite(x):
        return MAX_TOKENS
    return min(MAX_TOKENS, max(1, round(x)))


def _user(prompt: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": prompt},)


def _dist_json(dist: Dist | None) -> dict[str, Any] | None:
    return None if dist is None else dist.model_dump(mode="json", exclude_none=True)


class SyntheticWorkload:
    """Prompts of random words, with input and output lengths drawn per request.

    Each request draws its own words, so prompts differ from their first words on and a
    server's prefix cache cannot serve them from one another.
    """

    def __init__(
        self,
        input_tokens: Dist | float | str,
        output_tokens: Dist | float | str,
        seed: int = 0,
        vocabulary: Sequence[str] = DEFAULT_VOCABULARY,
    ) -> None:
        self.input_tokens = _as_dist("input_tokens", input_tokens)
        self.output_tokens = _as_dist("output_tokens", output_tokens)
        self.seed = _check_seed(seed)
        if isinstance(vocabulary, str) or not vocabulary:
            raise ValueError("vocabulary must be a non-empty sequence of words")
        bad = [w for w in vocabulary if not isinstance(w, str) or not w or len(w.split()) != 1]
        if bad:
            # A word with a space inside would break "one word, one token" and the word counts.
            raise ValueError(f"vocabulary words must be non-empty and without spaces: {bad[:5]!r}")
        self.vocabulary = tuple(vocabulary)
        self._words = np.array(self.vocabulary, dtype=object)

    def item(self, n: int) -> WorkItem:
        _check_n(n)
        rng = _rng(self.seed, _ITEM_STREAM, n)
        # Draw order (input length, output length, words) is part of what a seed means.
        n_in = _draw_count(self.input_tokens, rng)
        n_out = _draw_count(self.output_tokens, rng)
        prompt = " ".join(self._words[rng.integers(0, len(self._words), n_in)])
        return WorkItem(prompt=prompt, messages=_user(prompt), prompt_tokens=n_in, max_tokens=n_out)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "input_tokens": _dist_json(self.input_tokens),
            "output_tokens": _dist_json(self.output_tokens),
            "seed": self.seed,
            "vocabulary_size": len(self.vocabulary),
        }


class FileWorkload:
    """Prompts read from a file, in a seeded shuffled order, cycling past the end.

    Build with `from_jsonl` or `from_sharegpt`. When `output_tokens` is given it sets every
    request's max_tokens (drawn per request); otherwise the file's own length is used, or
    DEFAULT_MAX_TOKENS where the file has none.
    """

    def __init__(
        self,
        items: Sequence[WorkItem],
        *,
        output_tokens: Dist | float | str | None = None,
        seed: int = 0,
        shuffle: bool = True,
        source: dict[str, Any] | None = None,
    ) -> None:
        if not items:
            raise ValueError("a file workload needs at least one item")
        self.output_tokens = (
            None if output_tokens is None else _as_dist("output_tokens", output_tokens)
        )
        self.seed = _check_seed(seed)
        self.shuffle = shuffle
        self._items = tuple(items)
        self._source = dict(source or {})
        order = np.arange(len(self._items))
        if shuffle:
            _rng(self.seed, _SHUFFLE_STREAM).shuffle(order)
        self._order = order

    def __len__(self) -> int:
        return len(self._items)

    def item(self, n: int) -> WorkItem:
        _check_n(n)
        base = self._items[int(self._order[n % len(self._items)])]
        if self.output_tokens is None:
            return base
        rng = _rng(self.seed, _ITEM_STREAM, n)
        return dataclasses.replace(base, max_tokens=_draw_count(self.output_tokens, rng))

    def describe(self) -> dict[str, Any]:
        return {
            **self._source,
            "items": len(self._items),
            "output_tokens": _dist_json(self.output_tokens),
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    @classmethod
    def from_jsonl(
        cls,
        path: str | os.PathLike[str],
        output_tokens: Dist | float | str | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> FileWorkload:
        """One JSON object a line: `{"prompt": ...}` or `{"messages": [...]}`, optionally
        `"max_tokens"` (or `"output_tokens"`). Blank lines are skipped; other keys ignored."""
        p = Path(path)
        items = _Kept(p)
        with _open(p) as f:
            for lineno, raw in _lines(f, p):
                if not raw.strip():
                    continue
                where = f"{p}, line {lineno}"
                try:
                    obj = orjson.loads(raw.rstrip(b"\r\n"))
                except orjson.JSONDecodeError as e:
                    raise SpecError(f"{where}: not valid JSON ({e})") from None
                items.add(_jsonl_item(obj, where), where)
        if not items:
            raise SpecError(f"{p}: the file has no prompts (it is empty)")
        return cls(
            items.items,
            output_tokens=output_tokens,
            seed=seed,
            shuffle=shuffle,
            source={"kind": "jsonl", "path": str(p)},
        )

    @classmethod
    def from_sharegpt(
        cls,
        path: str | os.PathLike[str],
        output_tokens: Dist | float | str | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> FileWorkload:
        """ShareGPT JSON: a list of `{"conversations": [{"from": ..., "value": ...}, ...]}`.

        The first human turn is the prompt and the word count of the turn after it is
        max_tokens. Like `vllm bench serve`, conversations with fewer than two turns are
        skipped; so are those with no reply after the first human turn or an empty prompt or
        reply, since they give no prompt or no output length.
        """
        p = Path(path)
        items = _Kept(p)
        entries = 0
        with _open(p) as f:
            for index, entry in _json_list(f, p):
                entries += 1
                item = _sharegpt_item(entry, f"{p}, entry {index}")
                if item is not None:
                    items.add(item, f"{p}, entry {index}")
        if not items:
            raise SpecError(
                f"{p}: no usable conversations among {entries} entries "
                "(each needs a human turn followed by a non-empty reply)"
            )
        return cls(
            items.items,
            output_tokens=output_tokens,
            seed=seed,
            shuffle=shuffle,
            source={
                "kind": "sharegpt",
                "path": str(p),
                "entries": entries,
                "skipped": entries - len(items),
            },
        )


class _Kept:
    """The items read so far, within MAX_PROMPT_ITEMS and MAX_PROMPT_TEXT_BYTES."""

    def __init__(self, p: Path) -> None:
        self.p = p
        self.items: list[WorkItem] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: WorkItem, where: str) -> None:
        size = _ITEM_OVERHEAD + len(item.prompt.encode())
        if len(item.messages) != 1 or item.messages[0]["content"] is not item.prompt:
            size += sum(
                _ITEM_OVERHEAD + len(m["role"].encode()) + len(m["content"].encode())
                for m in item.messages
            )
        self.size += size
        if len(self.items) >= MAX_PROMPT_ITEMS:
            raise SpecError(
                f"{where}: the file holds more than {MAX_PROMPT_ITEMS:,} prompts, the most a "
                "run takes; use a sample of it"
            )
        if self.size > MAX_PROMPT_TEXT_BYTES:
            raise SpecError(
                f"{where}: the prompts read so far hold over {MAX_PROMPT_TEXT_BYTES >> 20} MiB "
                "of text, the most a run takes (every worker gets them all); use a sample"
            )
        self.items.append(item)


def _open(p: Path) -> IO[bytes]:
    try:
        return p.open("rb")
    except OSError as e:
        raise SpecError(f"{p}: cannot read the prompt file ({e.strerror or e})") from None
    except ValueError as e:  # a NUL in the path
        raise SpecError(f"{p!s:.200}: cannot read the prompt file ({e})") from None


def _read(f: IO[bytes], p: Path, n: int) -> bytes:
    try:
        return f.read(n)
    except OSError as e:  # a directory, an unreadable device
        raise SpecError(f"{p}: cannot read the prompt file ({e.strerror or e})") from None


def _lines(f: IO[bytes], p: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a JSONL file, one at a time: memory holds one line, at most
    MAX_PROMPT_LINE_BYTES, whatever the file's size. A byte-order mark (Windows editors save
    UTF-8 with one; JSON parsers reject it) is dropped."""
    lineno = 0
    while True:
        try:
            raw = f.readline(MAX_PROMPT_LINE_BYTES + 1)
        except OSError as e:
            raise SpecError(f"{p}: cannot read the prompt file ({e.strerror or e})") from None
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_PROMPT_LINE_BYTES and not raw.endswith(b"\n"):
            raise SpecError(
                f"{p}, line {lineno}: longer than {MAX_PROMPT_LINE_BYTES >> 20} MiB, the most "
                "one prompt line may hold (is it JSON Lines, one object a line?)"
            )
        if lineno == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        yield lineno, raw


def _json_list(f: IO[bytes], p: Path) -> Iterator[tuple[int, object]]:
    """The entries of a file holding one JSON list, one at a time, so memory holds one entry
    (at most MAX_PROMPT_LINE_BYTES of JSON) and what is kept of the others, not the whole
    document: ShareGPT files run to hundreds of MB."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8-sig")()
    buf, pos, eof = "", 0, False

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = _read(f, p, _READ_CHUNK)
        eof = not chunk
        try:
            buf = buf[pos:] + text.decode(chunk, final=eof)
        except UnicodeDecodeError as e:
            raise SpecError(f"{p}: not UTF-8 text ({e})") from None
        pos = 0
        return True

    def skip_space() -> str:
        """The next non-space character ('' at the end of the file)."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    first = skip_space()
    if first != "[":
        found = {"{": "an object", '"': "a string", "": "nothing"}.get(first, "not a list")
        raise SpecError(
            f"{p}: a ShareGPT file must hold a JSON list of conversations, found {found}"
        )
    pos += 1
    index = 0
    while True:
        c = skip_space()
        if c == "]":
            pos += 1
            break
        if index > 0:
            if c != ",":
                raise SpecError(f"{p}: not valid JSON after entry {index - 1} (expected , or ])")
            pos += 1
            skip_space()
        while True:
            try:
                entry, end = decoder.raw_decode(buf, pos)
                break
            except (json.JSONDecodeError, RecursionError) as e:
                # Maybe the entry is only cut by the buffer's end: read on, up to the cap.
                if len(buf) - pos > MAX_PROMPT_LINE_BYTES:
                    raise SpecError(
                        f"{p}, entry {index}: over {MAX_PROMPT_LINE_BYTES >> 20} MiB of JSON, "
                        "the most one conversation may hold (or not valid JSON)"
                    ) from None
                if not more():
                    why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deep"
                    raise SpecError(f"{p}: not valid JSON at entry {index} ({why})") from None
        pos = end
        yield index, entry
        index += 1
    if skip_space() != "":
        raise SpecError(f"{p}: not valid JSON: more after the list's closing ]")


def _type_name(v: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if v is None:
        return "null"
    return names.get(type(v), "a number" if isinstance(v, int | float) else type(v).__name__)


def _words(text: str) -> int:
    return len(text.split())


def _jsonl_item(obj: object, where: str) -> WorkItem:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected a JSON object, found {_type_name(obj)}")
    if "prompt" not in obj and "messages" not in obj:
        raise SpecError(f'{where}: needs a "prompt" or a "messages" field')
    messages = _messages(obj["messages"], where) if "messages" in obj else None
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecError(f'{where}: "prompt" must be a non-empty string, found {prompt!r:.60}')
    else:
        assert messages is not None
        # A completions API needs one string; the conversation's texts in order is the nearest.
        prompt = "\n\n".join(m["content"] for m in messages)
    if messages is None:
        messages = _user(prompt)
    key = "max_tokens" if "max_tokens" in obj else "output_tokens"
    max_tokens = DEFAULT_MAX_TOKENS
    if key in obj:
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TOKENS:
            raise SpecError(
                f'{where}: "{key}" must be an integer from 1 to {MAX_TOKENS}, found {v!r:.40}'
            )
        max_tokens = v
    # A chat API sends the messages, so when the line has both they are what gets counted.
    if "messages" in obj:
        prompt_tokens = sum(_words(m["content"]) for m in messages)
    else:
        prompt_tokens = _words(prompt)
    if prompt_tokens == 0:
        raise SpecError(f"{where}: the messages hold no text")
    return WorkItem(prompt, messages, prompt_tokens, max_tokens)


def _messages(v: object, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(v, list) or not v:
        raise SpecError(f'{where}: "messages" must be a non-empty list, found {v!r:.60}')
    out = []
    for i, m in enumerate(v):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise SpecError(
                f'{where}: messages[{i}] must be an object with string "role" and "content", '
                f"found {m!r:.80}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


_HUMAN = frozenset({"human", "user"})


def _sharegpt_item(entry: object, where: str) -> WorkItem | None:
    """The entry's item, or None when it is well-formed but unusable (skipped, not an error)."""
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: expected an object, found {_type_name(entry)}")
    turns = entry.get("conversations")
    if not isinstance(turns, list):
        raise SpecError(
            f'{where}: "conversations" must be a list of turns, found {_type_name(turns)}'
        )
    for j, t in enumerate(turns):
        if not (
            isinstance(t, dict)
            and isinstance(t.get("from"), str)
            and isinstance(t.get("value"), str)
        ):
            raise SpecError(
                f'{where}: conversations[{j}] must be an object with string "from" and '
                f'"value", found {t!r:.80}'
            )
    if len(turns) < 2:
        return None
    first = next((j for j, t in enumerate(turns) if t["from"] in _HUMAN), None)
    if first is None or first + 1 >= len(turns):
        return None
    prompt, reply = turns[first]["value"], turns[first + 1]["value"]
    n_prompt, n_reply = _words(prompt), _words(reply)
    if n_prompt == 0 or n_reply == 0:
        return None
    return WorkItem(prompt, _user(prompt), n_prompt, n_reply)
