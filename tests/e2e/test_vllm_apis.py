"""The Responses and Messages APIs against a real vLLM (issue 15, item 10).

vLLM 0.32 serves the OpenAI Responses API (`/v1/responses`) and the Anthropic Messages API
(`/v1/messages`) from the same server as chat, with no flag. latbench's parsers for both were
written from the providers' documentation and proven on transcripts; here they meet a real
server: streaming, counts from usage, TTFT and ITL recorded, no error.

One vLLM for the module (as tests/e2e/test_vllm.py starts it: the cached CPU build and tiny
random-weight model from tests/vllm/setup.sh; skipped without them) and a few requests per API,
since CI has 2 cores. Timings are not asserted: vLLM's busy-polling starves everything on such a
machine, so validity and SLOs are loosened and the tests check structure and counts.

What each API can promise about the count: vLLM's ResponsesRequest takes `ignore_eos`, so every
response generates exactly `max_output_tokens` and ends `incomplete` for that reason; its
AnthropicMessagesRequest has no `ignore_eos` or `min_tokens` field and drops them unread, so the
random model may stop early (its end-of-sequence token is one of 424), and a response has
exactly `max_tokens` tokens when, and only when, it stopped for `max_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import cli
from kit.vllm import VLLM_ENV, needs_vllm, serve

from latbench.records import read_records
from latbench.vllm import VllmServer

pytestmark = needs_vllm
REQUESTS = 8
OUTPUT_TOKENS = 24
# No SLOs, and validity limits no 2-core machine under vLLM's busy-polling can miss: the exit
# status then says only whether the requests themselves succeeded.
SPEC = (
    "slos: []\n"
    "validity: {ttft_tolerance: 1h, itl_tolerance: 1h, loop_lag_p99: 1h, queue_delay_p99: 1h,"
    " client_cpu: 4096}\n"
)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    with serve(tmp_path_factory.mktemp("vllm") / "vllm.log") as s:
        yield s


def run(vllm: VllmServer, tmp_path: Path, api: str) -> tuple[dict, list]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    p = cli.latbench(
        "run", "--target", vllm.url, "--api", api, "--model", "tiny",
        "--requests", str(REQUESTS), "--concurrency", "2",
        "--output-tokens", str(OUTPUT_TOKENS), "--input-tokens", "32",
        "--spec", str(spec), "--json", "--out", str(out),
        env=VLLM_ENV,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    (run_dir,) = [d for d in out.iterdir() if d.is_dir()]
    f = read_records(run_dir / "records.jsonl")
    assert f.footer is not None
    return json.loads(p.stdout), list(f.records)


def check_streamed(summary: dict, records: list, api: str) -> None:
    """What every API kind must give against a real server: each request streamed, its token
    events stamped in order after the send, its counts from the server's usage."""
    assert summary["requests"]["succeeded"] == len(records) == REQUESTS, summary["errors"]
    assert summary["requests"]["failed"] == 0
    for r in records:
        assert r.ok and r.status == 200 and r.api == api, r
        assert r.max_tokens == OUTPUT_TOKENS
        assert r.ev_t and list(r.ev_t) == sorted(r.ev_t) and r.ev_t[0] >= r.t_sent, r
        assert r.t_end is not None and r.t_end >= r.ev_t[-1]
        assert set(r.ev_kind) == {"c"} and len(r.ev_kind) == len(r.ev_t)  # no reasoning parser
        assert r.usage_prompt_tokens is not None and r.usage_prompt_tokens > 0
        # Neither API reports per-event counts: N_out is the usage, and no event holds less than
        # a token (random weights decode some tokens to no text, which sends no event).
        assert r.usage_completion_tokens is not None
        assert 1 <= len(r.ev_t) <= r.usage_completion_tokens <= OUTPUT_TOKENS, r
    tokens = summary["tokens"]
    assert tokens["sources"]["usage"] == REQUESTS
    assert tokens["output_total"] == sum(r.usage_completion_tokens for r in records)
    assert tokens["received_more"] == 0
    latency = summary["latency"]
    assert latency["ttft"]["count"] == REQUESTS and latency["ttfo"]["count"] == REQUESTS
    assert latency["itl"]["count"] == sum(len(r.ev_t) - 1 for r in records)
    assert latency["e2e"]["count"] == REQUESTS


def test_responses_api_against_real_vllm(vllm: VllmServer, tmp_path: Path) -> None:
    summary, records = run(vllm, tmp_path, "responses")
    check_streamed(summary, records, "responses")
    # ignore_eos reaches the Responses endpoint: every response is max_output_tokens long.
    for r in records:
        assert r.usage_completion_tokens == OUTPUT_TOKENS
        assert r.finish_reason == "max_output_tokens", r.finish_reason
    assert summary["tokens"]["received_exact"] == REQUESTS
    assert summary["latency"]["itl"]["count"] > 0


def test_messages_api_against_real_vllm(vllm: VllmServer, tmp_path: Path) -> None:
    summary, records = run(vllm, tmp_path, "anthropic")
    check_streamed(summary, records, "anthropic")
    # The Messages endpoint drops ignore_eos: exact exactly when it stopped for max_tokens.
    for r in records:
        assert r.finish_reason in ("max_tokens", "end_turn"), r.finish_reason
        assert (r.finish_reason == "max_tokens") == (r.usage_completion_tokens == OUTPUT_TOKENS)
    tokens = summary["tokens"]
    exact = sum(r.finish_reason == "max_tokens" for r in records)
    assert (tokens["received_exact"], tokens["received_fewer"]) == (exact, REQUESTS - exact)
