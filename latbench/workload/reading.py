"""Prompt files read a line (JSONL) or an entry (a JSON list, as ShareGPT's) at a time.

Memory holds one line or entry, at most MAX_PROMPT_LINE_BYTES, whatever the file's size:
ShareGPT files run to hundreds of MB. Every failure to read is a SpecError naming the file.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from latbench.shared.errors import SpecError

MAX_PROMPT_LINE_BYTES = 4 << 20  # a JSONL line, or a ShareGPT entry
_READ_CHUNK = 1 << 20


def open_prompts(p: Path) -> IO[bytes]:
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


def lines(f: IO[bytes], p: Path) -> Iterator[tuple[int, bytes]]:
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


def json_list(f: IO[bytes], p: Path) -> Iterator[tuple[int, object]]:
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
