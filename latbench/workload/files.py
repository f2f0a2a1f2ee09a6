"""Prompts read from a file (JSON Lines, or ShareGPT's JSON list), with their size caps.

What is kept is bounded: the workload goes to each worker pickled in one frame
(latbench/load/wire.py MAX_FRAME, 256 MiB), so its text and items stay well under that.
docs/spec.md lists these limits. The file itself is read a line or an entry at a time
(workload/reading.py), never whole.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.workload.item import (
    DEFAULT_MAX_TOKENS,
    ITEM_STREAM,
    MAX_TOKENS,
    WorkItem,
    as_dist_or_none,
    check_n,
    check_seed,
    dist_json,
    draw_count,
    rng_for,
    seeded_order,
    user_turn,
)
from latbench.workload.reading import json_list, lines, open_prompts

# ShareGPT V3 (94k conversations) keeps ~120 MB of first turns; with 500k items' overhead
# (~40 bytes each pickled) the frame stays under ~210 MB.
MAX_PROMPT_TEXT_BYTES = 160 << 20  # prompt text kept, all items together
MAX_PROMPT_ITEMS = 500_000
_ITEM_OVERHEAD = 64  # bytes a kept item costs in the frame beyond its text, roughly
_SHUFFLE_STREAM = 0x5EED_0003


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
        self.output_tokens = as_dist_or_none("output_tokens", output_tokens)
        self.seed = check_seed(seed)
        self.shuffle = shuffle
        self._items = tuple(items)
        self._source = dict(source or {})
        self._order = (
            seeded_order(len(self._items), self.seed, _SHUFFLE_STREAM)
            if shuffle
            else np.arange(len(self._items))
        )

    def __len__(self) -> int:
        return len(self._items)

    def item(self, n: int) -> WorkItem:
        check_n(n)
        base = self._items[int(self._order[n % len(self._items)])]
        if self.output_tokens is None:
            return base
        rng = rng_for(self.seed, ITEM_STREAM, n)
        return dataclasses.replace(base, max_tokens=draw_count(self.output_tokens, rng))

    def describe(self) -> dict[str, Any]:
        return {
            **self._source,
            "items": len(self._items),
            "output_tokens": dist_json(self.output_tokens),
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
        with open_prompts(p) as f:
            for lineno, raw in lines(f, p):
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
        with open_prompts(p) as f:
            for index, entry in json_list(f, p):
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
        messages = user_turn(prompt)
    key = "max_tokens" if "max_tokens" in obj else "output_tokens"
    max_tokens = DEFAULT_MAX_TOKENS
    if key in obj:
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TOKENS:
            raise SpecError(
                f'{where}: "{key}" must be an integer from 1 to {MAX_TOKENS}, found {v!r:.40}'
            )
        max_tokens = v
    # A chat API sends the messages, so when the line has both they are what gets checked.
    if "messages" in obj and not any(_words(m["content"]) for m in messages):
        raise SpecError(f"{where}: the messages hold no text")
    # A file's prompt is sent as it is: it asks for a length only when the line says which
    # (its count in the target's tokens), to be set against the server's (WorkItem.prompt_tokens).
    asked = obj.get("prompt_tokens")
    if asked is not None and (
        isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= MAX_TOKENS
    ):
        raise SpecError(
            f'{where}: "prompt_tokens" must be an integer from 1 to {MAX_TOKENS}, found '
            f"{asked!r:.40}"
        )
    return WorkItem(prompt, messages, asked, max_tokens)


def _messages(v: object, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(v, list) or not v:
        raise SpecError(f'{where}: "messages" must be a non-empty list, found {v!r:.60}')
    _check_turns(v, "messages", ("role", "content"), where)
    return tuple({"role": m["role"], "content": m["content"]} for m in v)


def _check_turns(turns: list[Any], name: str, keys: tuple[str, str], where: str) -> None:
    """Every turn of a chat (JSONL `messages`, ShareGPT `conversations`) is an object with the
    two string fields its format names."""
    for i, t in enumerate(turns):
        if not (isinstance(t, dict) and all(isinstance(t.get(k), str) for k in keys)):
            raise SpecError(
                f'{where}: {name}[{i}] must be an object with string "{keys[0]}" and '
                f'"{keys[1]}", found {t!r:.80}'
            )


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
    _check_turns(turns, "conversations", ("from", "value"), where)
    if len(turns) < 2:
        return None
    first = next((j for j, t in enumerate(turns) if t["from"] in _HUMAN), None)
    if first is None or first + 1 >= len(turns):
        return None
    prompt, reply = turns[first]["value"], turns[first + 1]["value"]
    n_prompt, n_reply = _words(prompt), _words(reply)
    if n_prompt == 0 or n_reply == 0:
        return None
    return WorkItem(prompt, user_turn(prompt), None, n_reply)
