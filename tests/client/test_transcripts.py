"""Provider transcripts (tests/transcripts/*.sse) replayed by the simulator over real sockets.

Each transcript is a stream as the provider's documentation shows it, with a write time for each
piece. The simulator (a child process, so the test's loop cannot delay its writes) replays it
byte for byte; latbench's record and summary must show the transcript's token events, kinds,
usage and outcome, at the transcript's offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import monotonic_ns

import aiohttp
import pytest
from kit import paths
from kit.cli import latbench
from kit.client import one

from latbench import ErrorKind, SpecError
from latbench.client import (
    API_KINDS,
    NO_RETRY,
    Endpoint,
    RequestOptions,
    RetryPolicy,
    Timeouts,
)
from latbench.sim import SimConfig, SimProcess
from latbench.sim.replay import TranscriptError, check_replay, load_transcript
from latbench.summary import summarize
from latbench.workload import WorkItem

DIR = paths.TRANSCRIPTS
TRANSCRIPTS = {p.name.removesuffix(".sse"): p for p in sorted(DIR.glob("*.sse"))}
# A piece is written at its offset after the server read the request line, which comes a little
# after the client's t_sent, so an event can never be early: -1.5 ms only allows for uvloop's
# millisecond timer rounding, and holds on every replay. +25 ms covers connection set-up and two
# processes' scheduling on a shared 2-core machine (the same slack tests/client/test_stream.py
# allows on TTFT). A machine busy with other test runs can stall either process for longer now
# and then, so a timing check gets up to TRIES replays and passes when one of them is on time: an
# event stamped at the wrong piece is off in every replay, a stall is not.
EARLY_MS, LATE_MS = 1.5, 25.0
TRIES = 3
ITEM = WorkItem(
    prompt="one two",
    messages=({"role": "user", "content": "one two"},),
    prompt_tokens=2,
    max_tokens=64,
)


@dataclass(frozen=True)
class Expect:
    kinds: str  # one letter per token event: r reasoning, c content, t tool call
    at_ms: tuple[int, ...]  # the offset of the piece that completes each token event
    prompt: int | None = None
    completion: int | None = None
    finish: str | None = None
    error: ErrorKind | None = None
    status: int = 200
    ev_n: tuple[int, ...] | None = None
    retry_after_s: float | None = None
    tool_tokens: int = 0  # the summary's tool-call tokens


EXPECT = {
    "anthropic_text": Expect("cc", (120, 150), 25, 15, "end_turn"),
    "anthropic_thinking": Expect("rrrcc", (90, 120, 150, 260, 290), None, None, "end_turn"),
    "anthropic_overloaded_midstream": Expect("cc", (80, 110), 12, error=ErrorKind.OVERLOADED),
    "anthropic_529": Expect("", (), error=ErrorKind.OVERLOADED, status=529),
    "anthropic_429": Expect("", (), error=ErrorKind.RATE_LIMITED, status=429, retry_after_s=1.0),
    "anthropic_dropped": Expect("c", (70,), 25, error=ErrorKind.STREAM_TRUNCATED),
    # The name in the tool_use block's start, then three argument pieces (the empty one is none).
    "anthropic_tool_use": Expect(
        "cctttt", (60, 80, 100, 130, 150, 170), 472, 89, "tool_use", tool_tokens=4
    ),
    # Ended cleanly after finish_reason, without [DONE]: cut, and what it measured is kept.
    "chat_finish_without_done": Expect(
        "ccc", (40, 60, 80), finish="stop", error=ErrorKind.STREAM_TRUNCATED
    ),
    "chat_openai_usage": Expect("ccc", (90, 130, 160), 9, 3, "stop"),
    "chat_vllm_reasoning_content": Expect(
        "rrrcc", (70, 95, 120, 160, 185), 16, 12, "stop", ev_n=(1, 5, 1, 2, 3)
    ),
    "chat_vllm_reasoning": Expect("rrcc", (80, 100, 150, 170), 16, 6, "stop"),
    # Empty deltas that carry a token are of the phase they are in: reasoning, both of them.
    "chat_vllm_reasoning_empty_delta": Expect(
        "rrrcc", (50, 70, 90, 120, 140), 16, 6, "stop", ev_n=(1, 1, 1, 1, 2)
    ),
    "chat_vllm_tool_call": Expect(
        "cttttt",
        (60, 90, 110, 130, 150, 170),
        180,
        10,
        "tool_calls",
        ev_n=(1, 2, 3, 1, 2, 1),
        tool_tokens=9,
    ),
    "responses_text": Expect("ccc", (100, 125, 150), 14, 4, "completed"),
    "responses_reasoning": Expect("rrccc", (180, 200, 240, 265, 290), 9, 220, "completed"),
    "responses_failed": Expect("c", (70,), error=ErrorKind.SERVER_ERROR_EVENT),
    "responses_error": Expect("cc", (60, 85), error=ErrorKind.SERVER_ERROR_EVENT),
    "responses_incomplete": Expect("cc", (50, 75), 11, 2, "max_output_tokens"),
    # vLLM's: response.completed with status incomplete; the finish is its reason.
    "responses_vllm_incomplete": Expect("cc", (60, 85), 11, 4, "max_output_tokens"),
    "responses_function_call": Expect(
        "tttttt", (50, 70, 90, 110, 130, 150), 62, 18, "completed", tool_tokens=6
    ),
}


@pytest.fixture(scope="module")
def replaying() -> Iterator[SimProcess]:
    with SimProcess(SimConfig(replay=[DIR])) as sim:
        yield sim


def endpoint(
    url: str, api: str, name: str | None = None, retry: RetryPolicy = NO_RETRY
) -> Endpoint:
    return Endpoint(
        base_url=url,
        api=API_KINDS[api],
        options=RequestOptions(model="m", vllm_extensions=False, ignore_eos=False, extra_body={}),
        headers={} if name is None else {"x-latbench-replay": name},
        timeouts=Timeouts(first_token=5, idle=5, total=10),
        retry=retry,
    )


def ms(ns: int) -> float:
    return ns / 1e6


def assert_at(measured_ms: float, expected_ms: float, what: str) -> None:
    assert -EARLY_MS <= measured_ms - expected_ms <= LATE_MS, (what, measured_ms, expected_ms)


def late(checks: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The (what, measured, expected) checks that came late; none may come early."""
    for what, measured, expected in checks:
        assert measured - expected >= -EARLY_MS, (what, measured, expected)
    return [c for c in checks if c[1] - c[2] > LATE_MS]


def test_every_transcript_has_expectations_and_cites_its_source() -> None:
    assert set(TRANSCRIPTS) == set(EXPECT)
    for path in TRANSCRIPTS.values():
        t = load_transcript(path)
        assert t.source.startswith("https://"), path
        assert t.api in API_KINDS


@pytest.mark.parametrize("name", sorted(EXPECT))
async def test_replayed_transcript_gives_its_events_and_timing(
    replaying: SimProcess, http: aiohttp.ClientSession, name: str
) -> None:
    t = load_transcript(TRANSCRIPTS[name])
    want = EXPECT[name]
    for _ in range(TRIES):
        rec = await one(http, endpoint(replaying.url, t.api, name), ITEM)
        # What the stream said holds on every replay.
        assert rec.error is want.error, rec.error_detail
        assert rec.status == want.status
        assert rec.ev_kind == want.kinds
        usage = (rec.usage_prompt_tokens, rec.usage_completion_tokens)
        assert usage == (want.prompt, want.completion)
        assert rec.finish_reason == want.finish
        assert rec.retry_after_s == want.retry_after_s
        if want.ev_n is not None:
            assert rec.ev_n == want.ev_n
        assert rec.t_headers is not None
        assert rec.error is None or rec.error_detail
        if rec.error is ErrorKind.STREAM_TRUNCATED and rec.finish_reason is not None:
            assert rec.error_detail is not None
            assert f"after finish_reason {rec.finish_reason!r}" in rec.error_detail
        # When: each event at its piece's offset; the headers leave with the first piece, so
        # t_headers is timed by the transcript too.
        checks = [
            (f"event {i}", ms(t_ev - rec.t_sent), float(at))
            for i, (t_ev, at) in enumerate(zip(rec.ev_t, want.at_ms, strict=True))
        ]
        checks.append(("headers", ms(rec.t_headers - rec.t_sent), t.pieces[0].at_s * 1e3))
        if not late(checks):
            break
    assert not late(checks), checks
    if rec.error is not None:
        return

    # The summary's figures are the transcript's offsets (METRICS.md definitions), from the
    # replay whose instants were just checked.
    s = summarize([rec], window=(rec.t_intended, rec.t_end or rec.t_sent))
    lat = {k: v.mean for k, v in s.latency.items()}
    # TTFT counts every generated token, tool calls too; TTFO is the answer's first.
    assert_at(lat["ttft"] * 1e3, want.at_ms[0], "ttft")
    if "c" in want.kinds:
        assert_at(lat["ttfo"] * 1e3, want.at_ms[want.kinds.index("c")], "ttfo")
    else:
        assert s.latency["ttfo"].count == 0
    tools = s.tokens
    assert tools.by_kind["tool_call"] == want.tool_tokens
    assert tools.tool_call_requests == ("t" in want.kinds)
    if "t" in want.kinds:
        first_tool = tools.ttft_tool_call.mean
        assert first_tool is not None
        assert_at(first_tool * 1e3, want.at_ms[want.kinds.index("t")], "ttft_tool_call")
    assert_at(lat["e2e"] * 1e3, want.at_ms[-1], "e2e")
    assert s.latency["itl"].count == len(want.at_ms) - 1
    n_out = want.completion if want.completion is not None else len(want.kinds)
    assert s.tokens.output_total == n_out
    span = (rec.ev_t[-1] - rec.ev_t[0]) / 1e9
    assert lat["tpot"] == pytest.approx(span / (n_out - 1))


async def test_replay_is_byte_for_byte(replaying: SimProcess, http) -> None:
    for name, path in TRANSCRIPTS.items():
        t = load_transcript(path)
        headers = {"x-latbench-replay": name}
        async with http.post(replaying.url + t.path, json={}, headers=headers) as r:
            assert r.status == t.status
            for key, value in t.headers:
                assert r.headers[key] == value
            got = b""
            try:
                async for piece in r.content.iter_any():
                    got += piece
            except aiohttp.ClientPayloadError:
                assert t.cut_at_s is not None, name  # only a `cut` transcript ends abruptly
        assert got == t.body, name


async def test_pieces_arrive_at_their_offsets(replaying: SimProcess, http) -> None:
    t = load_transcript(TRANSCRIPTS["chat_openai_usage"])
    ends = []  # the byte offset at which each piece ends
    for piece in t.pieces:
        ends.append((ends[-1] if ends else 0) + len(piece.data))
    for _ in range(TRIES):
        t0 = monotonic_ns()
        arrivals: list[tuple[int, float]] = []
        async with http.post(
            replaying.url + t.path, json={}, headers={"x-latbench-replay": t.name}
        ) as r:
            got = 0
            async for piece in r.content.iter_any():
                got += len(piece)
                arrivals.append((got, ms(monotonic_ns() - t0)))
        checks = [
            (
                f"piece ending at byte {end}",
                next(at for n, at in arrivals if n >= end),
                p.at_s * 1e3,
            )
            for end, p in zip(ends, t.pieces, strict=True)
        ]
        if not late(checks):
            break
    assert not late(checks), checks


async def test_without_a_name_transcripts_of_a_path_take_turns(tmp_path: Path, http) -> None:
    for name in ("responses_text", "responses_incomplete"):
        (tmp_path / f"{name}.sse").write_bytes(TRANSCRIPTS[name].read_bytes())
    with SimProcess(SimConfig(api="responses", replay=[tmp_path])) as sim:
        finishes = [
            (await one(http, endpoint(sim.url, "responses"), ITEM)).finish_reason for _ in "abc"
        ]
        async with http.post(sim.url + "/v1/messages", json={}) as r:
            assert r.status == 404  # only the transcripts' paths are served
        headers = {"x-latbench-replay": "nope"}
        async with http.post(sim.url + "/v1/responses", json={}, headers=headers) as r:
            assert r.status == 404
            assert "responses_text" in (await r.json())["error"]["message"]
    assert finishes == ["max_output_tokens", "completed", "max_output_tokens"]


async def test_a_retried_refusal_counts_its_wait_in_every_latency(tmp_path: Path, http) -> None:
    # The 429 transcript asks for retry-after: 1; the text transcript then answers.
    (tmp_path / "a_429.sse").write_bytes(TRANSCRIPTS["anthropic_429"].read_bytes())
    (tmp_path / "b_text.sse").write_bytes(TRANSCRIPTS["anthropic_text"].read_bytes())
    with SimProcess(SimConfig(api="anthropic", replay=[tmp_path])) as sim:
        ep = endpoint(sim.url, "anthropic", retry=RetryPolicy(max_retries=2))
        rec = await one(http, ep, ITEM)
    assert rec.ok, rec.error_detail
    assert rec.attempts == 2
    assert (rec.first_status, rec.first_error) == (429, ErrorKind.RATE_LIMITED)
    assert rec.t_first_end is not None and rec.t_last_sent is not None
    assert ms(rec.t_first_end - rec.t_sent) >= 25 - EARLY_MS  # the refusal's own offset
    # The retry waited the full Retry-After after the refusal (and, as only scheduling can add
    # to it, not much more)...
    assert 1000 <= ms(rec.t_last_sent - rec.t_first_end) < 1500
    # ...and TTFT counts from the first send: refusal + wait + the answer's own 120 ms.
    ttft = summarize([rec]).latency["ttft"].mean
    assert ttft is not None
    assert ms(rec.ev_t[0] - rec.t_last_sent) >= 120 - EARLY_MS
    assert ttft * 1e3 >= 25 + 1000 + 120 - EARLY_MS
    assert ttft * 1e9 == pytest.approx(rec.ev_t[0] - rec.t_sent, abs=1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# source: https://x\n@ 0ms\ndata: {}\n\n", "`# api:` must be one of"),
        ("# api: chat\n@ 0ms\ndata: {}\n\n", "no `# source:` line"),
        ("# api: chat\n# source: https://x\n# status: abc\n@ 0ms\nx\n", "is not a number"),
        ("# api: chat\n# source: https://x\n@ 20ms\nx\n@ 10ms\ny\n", ":5: offsets must not"),
        ("# api: chat\n# source: https://x\n@ 20ms cut\nx\n", ":4: nothing may follow"),
        ("# api: chat\n# source: https://x\n# header: nocolon\n@ 0ms\nx\n", ":3: write a header"),
        ("# api: chat\n# source: https://x\n", "has no body"),
    ],
)
def test_bad_transcripts_name_the_file_and_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.sse"
    path.write_text(text)
    with pytest.raises(TranscriptError, match=message) as info:
        load_transcript(path)
    assert str(path) in str(info.value)


def test_a_bad_replay_set_is_a_spec_error_before_any_server_starts(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"sim.replay: no \*\.sse transcript in"):
        check_replay([tmp_path])
    (tmp_path / "x.sse").write_text("# api: chat\n@ 0ms\nx\n")
    with pytest.raises(SpecError, match=r"x\.sse: no `# source:` line"):
        check_replay([tmp_path])
    with pytest.raises(SpecError, match="no transcript is for the 'anthropic' API"):
        check_replay([TRANSCRIPTS["chat_openai_usage"]], "anthropic")
    # As `latbench run` reports it: exit 2 (invalid spec), naming the problem.
    replay = f"replay=[{TRANSCRIPTS['chat_openai_usage']}]"
    args = ["run", "--requests", "1", "--api", "anthropic", "--sim", replay, "--out", str(tmp_path)]
    p = latbench(*args, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "no transcript is for the 'anthropic' API" in p.stderr


def test_sim_flags_select_the_api_and_the_transcripts() -> None:
    import argparse

    from latbench.sim.__main__ import add_sim_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    ns = parser.parse_args(["--api", "anthropic", "--replay", str(DIR), "--rate-limit", "5"])
    cfg = config_from_args(ns)
    assert cfg.api == "anthropic" and cfg.rate_limit == 5.0
    assert cfg.replay == [DIR]
