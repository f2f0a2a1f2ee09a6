"""Agent traffic end to end, over real sockets against the simulator, in every chat-like API kind.

The simulator (docs: /tmp/t16/sim-knobs.md, B1) answers a request that offers tools with a reply
ending in a call of its first tool: `CALL` tokens (the name's event, then the arguments' pieces)
after `N_OUT - CALL` answer tokens, until `tool_steps` tool results follow the last user message,
then in text. It validates each format's tool shapes (400 naming the field), so a request it
answered with a call proves the tools went in that API's own format.

Single requests: the call is measured (time to its first token) and its tokens are counted apart
from the answer's, in results.json, the terminal and HTML reports and Prometheus. Agent sessions:
each call is answered with the canned result after the tool's latency (the gap between one
request's end and the next one's intended send), the history carrying the call and its result in
the API's format, then the model answers and the next user turn goes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kit.sim import personalities, truth
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from latbench.exporter import LatbenchMetrics
from latbench.records import read_records
from latbench.render.html import run_report
from latbench.render.readback import load_run
from latbench.render.terminal import render_summary
from latbench.render.text import run_markdown
from latbench.run import run_benchmark
from latbench.run.benchmark import make_workload
from latbench.sim import SimProcess
from latbench.spec import load_spec
from latbench.spec.target import SIM_API
from latbench.workload.tools import with_tools

APIS = ("chat", "anthropic", "responses")
N_OUT, CALL = 12, 5
SIM = {"ttft": 0.03, "itl": 0.005, "tool_call_tokens": CALL}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, SimProcess]]:
    with personalities(**SIM) as procs:
        yield procs


def spec_for(api: str, url: str, tmp_path: Path, **workload: Any) -> Any:
    return load_spec(
        {
            "target": {"base_url": url, "api": api},
            "load": {"concurrency": 2, "requests": 6},
            # Words as tokens: no calibration probes, so every request the sim saw is the run's.
            "workload": {
                "input_tokens": 8,
                "output_tokens": N_OUT,
                "tokenizer": "words",
                **workload,
            },
            "output_dir": str(tmp_path),
        }
    )


@pytest.mark.parametrize("api", APIS)
async def test_tools_requests_measure_the_call_apart_from_the_answer(
    servers: dict[str, SimProcess], api: str, tmp_path: Path
) -> None:
    sim = servers[SIM_API[api]]
    seen = len(await truth(sim.url))
    spec = spec_for(api, sim.url, tmp_path, tools={"count": 3})
    registry = CollectorRegistry()
    metrics = LatbenchMetrics(registry)
    result = await run_benchmark(spec, sim.url, Console(file=io.StringIO()), metrics=metrics)
    records = read_records(result.records_path).records
    assert all(r.ok for r in records), [r.error_detail for r in records]
    # The simulator called the first of the three tools the request offered, in its format.
    calls = [t["tool_call"] for t in (await truth(sim.url))[seen:]]
    assert calls == ["get_weather"] * 6
    assert {r.ev_kind for r in records} == {"c" * (N_OUT - CALL) + "t" * CALL}

    tok = result.summary.tokens
    assert tok.tool_call_requests == 6
    assert tok.by_kind == {"reasoning": 0, "content": 6 * (N_OUT - CALL), "tool_call": 6 * CALL}
    # The first tool-call token comes N_OUT - CALL events after the first token.
    ttft, ttft_call = result.summary.latency["ttft"], tok.ttft_tool_call
    assert ttft_call.count == 6 and ttft.mean is not None and ttft_call.mean is not None
    assert ttft_call.mean > ttft.mean

    # results.json, the terminal, Prometheus.
    saved = orjson.loads(result.results_path.read_bytes())["summary"]["tokens"]["tool_calls"]
    assert saved["requests"] == 6 and saved["tokens"] == 6 * CALL
    assert saved["ttft"]["count"] == 6
    out = io.StringIO()
    render_summary(result.summary, Console(file=out, width=200))
    assert f"6 of 6 replies called a tool: {6 * CALL} tool-call tokens" in out.getvalue()
    # The HTML and Markdown reports, from the run directory as `latbench report` reads it.
    run = load_run(result.results_path.parent)
    assert "6 of 6 replies called a tool" in run_report(run)
    assert f"Tool calls: 6 of 6 replies called a tool: {6 * CALL}" in run_markdown(run)
    text = generate_latest(registry).decode()
    assert f"latbench_tool_call_tokens_total{{{_labels(text)}}} {6 * CALL}.0" in text
    assert f"latbench_ttft_tool_call_seconds_count{{{_labels(text)}}} 6.0" in text


def _labels(exposition: str) -> str:
    """The one label set of a run's series, as the exposition writes it."""
    line = next(ln for ln in exposition.splitlines() if ln.startswith("latbench_requests_total{"))
    inner = line[line.index("{") + 1 : line.index("}")]
    return ",".join(p for p in inner.split(",") if not p.startswith("outcome="))


@pytest.mark.parametrize("api", APIS)
async def test_agent_sessions_answer_each_call_after_the_tools_latency(
    servers: dict[str, SimProcess], api: str, tmp_path: Path
) -> None:
    """Two sessions of two user turns, each user turn's reply a tool call that the client answers
    `latency` later with the canned result, after which the simulator (tool_steps 1) answers in
    text: four requests a session, call -> result -> answer, twice."""
    sim = servers[SIM_API[api]]
    seen = len(await truth(sim.url))
    tools = {"count": 2, "latency": "uniform:0.05,0.15", "max_steps": 2, "result_tokens": 6}
    spec = spec_for(api, sim.url, tmp_path, tools=tools, sessions={"turns": 2})
    # One user: the sessions one after the other, so the simulator's truth is in their order.
    load = spec.load.model_copy(update={"requests": 8, "concurrency": 1})
    spec = spec.model_copy(update={"load": load})
    result = await run_benchmark(spec, sim.url, Console(file=io.StringIO()))
    records = sorted(read_records(result.records_path).records, key=lambda r: (r.session, r.turn))
    assert all(r.ok for r in records), [r.error_detail for r in records]
    assert [(r.session, r.turn) for r in records] == [(s, t) for s in (0, 1) for t in range(4)]
    call, answer = "c" * (N_OUT - CALL) + "t" * CALL, "c" * N_OUT
    assert [r.ev_kind for r in records] == [call, answer] * 4

    # Each tool step waits its own seeded draw from the reply's end: the schedule says so
    # exactly (t_intended is the reply's t_end plus the wait, in integer ns).
    assert spec.workload.tools is not None
    agent = with_tools(make_workload(spec.workload), spec.workload.tools.build(spec.workload.seed))
    for s in (0, 1):
        plan = agent.session(s)  # type: ignore[union-attr]
        own = [r for r in records if r.session == s]
        for step, (called, answered) in enumerate([(own[0], own[1]), (own[2], own[3])]):
            assert called.t_end is not None
            wait = answered.t_intended - called.t_end
            assert wait == round(plan.tool_latency(step) * 1e9)
            assert 0.05e9 <= wait <= 0.15e9
        assert len(set(plan.tool_latency_s)) > 1  # type: ignore[arg-type]

    # The simulator read every history: a call after each user message, text after each result
    # (it counts a result only in its own format's shape), the result's words in the prompt.
    done = (await truth(sim.url))[seen:]
    assert [t["tool_call"] for t in done] == ["get_weather", None] * 4
    prompts = [t["prompt_tokens"] for t in done]
    for i in range(0, 8, 4):
        assert prompts[i] < prompts[i + 1] < prompts[i + 2] < prompts[i + 3]
    assert result.summary.tokens.tool_call_requests == 4
