"""A run's two ends as the load-stage tests build them: the chat endpoint of a simulator, and a
sink that keeps every record it is given (load/runner.py's sinks)."""

from __future__ import annotations

from latbench.client import API_KINDS, Endpoint, RequestOptions, Timeouts
from latbench.records import Record, RunFooter


class Collect:
    """A sink that keeps what it is given, and says whether the run closed it."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.closed = False

    def add(self, record: Record) -> None:
        self.records.append(record)

    def close(self, footer: RunFooter | None) -> None:
        self.closed = True


def chat_endpoint(url: str) -> Endpoint:
    """The simulator at `url` as a chat-completions endpoint (vLLM's extensions on, EOS
    ignored), with timeouts that fail a stuck test in seconds."""
    return Endpoint(
        base_url=url,
        api=API_KINDS["chat"],
        options=RequestOptions(
            model="sim-model", vllm_extensions=True, ignore_eos=True, extra_body={}
        ),
        headers={},
        timeouts=Timeouts(first_token=5, idle=5, total=20),
    )
