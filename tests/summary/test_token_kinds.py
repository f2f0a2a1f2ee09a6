"""The summary's tokens by kind (issue 15, item 5): tool-call tokens counted apart from the
answer's, the time to the first tool-call token, and what a tool call still counts in."""

from __future__ import annotations

from latbench.records import Record
from latbench.summary import summarize


def test_the_summary_counts_tokens_by_kind_from_the_events() -> None:
    base = {"run_id": "r", "phase": "measure", "api": "chat", "t_intended": 0, "t_sent": 0}
    # Per-event counts where the server gave them, one an event where it did not; a kind string
    # that does not match its events (a hand-edited file) does not shift the others'.
    records = [
        Record(seq=0, ev_t=(10, 20, 30), ev_kind="rtc", ev_n=(4, 2, 1), **base),
        Record(seq=1, ev_t=(10, 20), ev_kind="tt", **base),
        Record(seq=2, ev_t=(10, 20), ev_kind="t", **base),
        Record(seq=3, ev_t=(5,), ev_kind="cc", usage_completion_tokens=9, **base),
    ]
    s = summarize(records)
    assert dict(s.tokens.by_kind) == {"reasoning": 4, "content": 3, "tool_call": 5}
    assert s.tokens.tool_call_requests == 3
    assert s.tokens.ttft_tool_call.count == 3
    assert s.tokens.ttft_tool_call.max == 20e-9
    # Tool-call tokens are generated tokens: they are in N_out, and TTFT counts them.
    assert s.tokens.output_total == 7 + 2 + 2 + 9
    assert s.latency["ttft"].count == 4 and s.latency["ttfo"].count == 2
