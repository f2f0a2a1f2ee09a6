"""The SSE parser against the event-stream format's edge cases, and split at every byte."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latbench.client.sse import OversizedEvent, SSEParser


def feed_all(pieces: list[bytes]) -> list[bytes]:
    p = SSEParser()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(p.feed(piece))
    return out


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (b"data: a\n\n", [b"a"]),
        (b"data: a\n\ndata: b\n\n", [b"a", b"b"]),
        (b"data: a\r\n\r\n", [b"a"]),
        (b"data: a\r\rdata: b\r\r", [b"a", b"b"]),
        (b"data:a\n\n", [b"a"]),  # the space after the colon is optional
        (b"data:  a\n\n", [b" a"]),  # only one space is removed
        (b"data: a\ndata: b\n\n", [b"a\nb"]),  # multi-line data joins with LF
        (b": keep-alive\n\n", []),  # a comment alone is no event
        (b": c\ndata: a\n: c2\n\n", [b"a"]),
        (b"event: x\nid: 1\nretry: 5\ndata: a\n\n", [b"a"]),
        (b"event: ping\n\n", []),  # no data: not dispatched
        (b"data:\n\n", []),  # empty data: not dispatched
        (b"data\ndata\n\n", [b"\n"]),  # two empty data lines give one LF
        (b"data: a\n", []),  # unterminated: not yet an event
        (b"\n\ndata: a\n\n", [b"a"]),  # stray blank lines
        (b"data: [DONE]\n\n", [b"[DONE]"]),
    ],
)
def test_cases(stream: bytes, events: list[bytes]) -> None:
    assert feed_all([stream]) == events


def test_crlf_split_across_reads_is_one_line_end() -> None:
    # A CR at the end of one read and LF at the start of the next must not count as two line
    # ends (which would dispatch an event early).
    assert feed_all([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [b"a\nb"]


def test_unterminated_event_is_held_until_completed() -> None:
    p = SSEParser()
    assert p.feed(b'data: {"x"') == []
    assert p.feed(b": 1}\n") == []
    assert p.feed(b"\n") == [b'{"x": 1}']


def test_flush_returns_unterminated_final_event() -> None:
    p = SSEParser()
    p.feed(b"data: a\n\ndata: partial")
    assert p.flush() == [b"partial"]


payload = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\n" not in b and b"\r" not in b and not b.startswith(b" ")
)
line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])


@given(
    events=st.lists(st.tuples(st.lists(payload, min_size=1, max_size=3), line_end), max_size=8),
    comments=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_split_gives_the_same_events(
    events: list[tuple[list[bytes], bytes]], comments: bool, cuts: list[int]
) -> None:
    stream = b""
    expected: list[bytes] = []
    for lines, nl in events:
        if comments:
            stream += b": keep-alive" + nl
        for line in lines:
            stream += b"data: " + line + nl
        stream += nl
        expected.append(b"\n".join(lines))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_all(pieces) == expected
    # Byte-at-a-time is the harshest split of all.
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_a_line_over_the_cap_raises_with_the_events_before_it() -> None:
    p = SSEParser(max_line_bytes=1024, max_event_bytes=4096)
    with pytest.raises(OversizedEvent, match=r"^an event line over 1,024 bytes$") as e:
        p.feed(b"data: a\n\ndata: " + b"x" * 1100 + b"\n\n")
    assert e.value.events == [b"a"]  # completed in the same read: still the caller's


def test_an_event_of_short_lines_over_the_cap_raises() -> None:
    p = SSEParser(max_line_bytes=1024, max_event_bytes=4096)
    with pytest.raises(OversizedEvent, match=r"^an event over 4,096 bytes$"):
        for _ in range(100):
            p.feed(b"data: " + b"y" * 100 + b"\n")


def test_lines_and_events_at_the_caps_pass() -> None:
    line = b"data: " + b"z" * (1024 - 6)
    assert SSEParser(1024, 1024).feed(line + b"\n\n") == [line[6:]]
    p = SSEParser(max_line_bytes=1024, max_event_bytes=2049)
    assert p.feed(line[:500]) == [] and p.feed(line[500:] + b"\n" + line + b"\n\n") == [
        line[6:] + b"\n" + line[6:]
    ]


def test_a_line_without_an_end_costs_linear_time() -> None:
    # Re-copying the held line on every read made 10 MiB cost 1.8 s and 50 MB ~45 s; 64 MiB in
    # 64 KiB reads is ~0.1 s read once.
    p = SSEParser(max_line_bytes=1 << 30, max_event_bytes=1 << 30)
    piece = b"x" * 65536
    t0 = time.perf_counter()
    p.feed(b"data: ")
    for _ in range(1024):
        assert p.feed(piece) == []
    assert p.feed(b"\n\n") == [b"x" * (1 << 26)]
    assert time.perf_counter() - t0 < 3


def verdict(pieces: list[bytes], line: int, event: int) -> tuple[list[bytes], str | None]:
    """The events a parser gives for these reads, and the error it ends with (None: none)."""
    p = SSEParser(line, event)
    out: list[bytes] = []
    for piece in pieces:
        try:
            out += p.feed(piece)
        except OversizedEvent as e:
            return out + e.events, str(e)
    return out, None


@pytest.mark.parametrize("size", [2048, 2049, 2050])
@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r"])
@pytest.mark.parametrize("stray", [0, 1, 2])
def test_the_event_cap_verdict_is_the_same_at_every_split(
    size: int, end: bytes, stray: int
) -> None:
    # Three lines making an event of `size` bytes (its inner line ends counted as one byte each,
    # its end not) against an event cap of 2049: the held rest once still counted the line end
    # that closes the event, so an event of exactly the cap passed in one read and failed when
    # its blank line came in a later one. Stray blank lines before it (they dispatch nothing)
    # are not its bytes either; they once failed an event of exactly the cap.
    lines = [b"data: " + b"a" * 1010, b"data: " + b"b" * 1010]
    lines.append(b"data: " + b"c" * (size - 2 * 1016 - 2 - 6))
    nl = end[: len(end) // 2]
    stream = b"data: x" + end + nl * stray + nl.join(lines) + end + b"data: y" + end
    assert len(b"\n".join(lines)) == size
    payload = b"\n".join(line[6:] for line in lines)
    want = ([b"x"], "an event over 2,049 bytes") if size > 2049 else ([b"x", payload, b"y"], None)
    assert verdict([stream], 1024, 2049) == want
    for i in range(len(stream) + 1):
        assert verdict([stream[:i], stream[i:]], 1024, 2049) == want, i


@pytest.mark.parametrize(
    ("line", "event", "named"),
    [(10, 5, "event 5"), (5, 10, "line 5"), (8, 8, "line 8"), (10, 16, "line 10"),
     (16, 10, "event 10")],
)  # fmt: skip
@pytest.mark.parametrize("stray", [b"", b"\n", b"\n\n"])
def test_the_first_cap_crossed_names_the_error_at_every_split(
    line: int, event: int, named: str, stray: bytes
) -> None:
    # One event over both caps: the error names the cap its bytes cross first (the line's on a
    # tie), whether it came in one read, two, or a byte at a time, after stray blank lines or not.
    stream = stray + b"data: 0123456789abcdef\n\n"
    whole = verdict([stream], line, event)
    kind, cap = named.split()
    assert whole[1] == f"an event {'line ' if kind == 'line' else ''}over {cap} bytes"
    by_byte = verdict([stream[i : i + 1] for i in range(len(stream))], line, event)
    assert by_byte == whole
    for i in range(len(stream) + 1):
        assert verdict([stream[:i], stream[i:]], line, event) == whole, i
