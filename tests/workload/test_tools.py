"""The agent workload's parts: tool definitions (built-in and from a file), the canned result,
the wrappers that add them to single requests and to sessions, the spec and the CLI flags."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from latbench import SpecError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.shared.dist import Dist
from latbench.spec import load_spec
from latbench.workload import SyntheticWorkload, Workload
from latbench.workload.session import SessionPlan, SessionWorkload, Turn
from latbench.workload.tools import (
    BUILTIN,
    MAX_TOOLS,
    SessionsWithTools,
    Tools,
    WithTools,
    builtin_tools,
    canned_result,
    read_tools,
    with_tools,
)


def names(defs: tuple[dict, ...]) -> list[str]:
    return [d["function"]["name"] for d in defs]


def test_builtin_tools_are_distinct_valid_schemas_in_a_fixed_order() -> None:
    assert names(builtin_tools(3)) == names(BUILTIN[:3])
    many = builtin_tools(MAX_TOOLS)
    assert len(set(names(many))) == MAX_TOOLS  # past the built-in set: numbered copies
    assert names(many)[len(BUILTIN)] == f"{names(BUILTIN)[0]}_2"
    for d in many:
        params = d["function"]["parameters"]
        assert d["type"] == "function" and params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])
    for bad in (0, MAX_TOOLS + 1):
        with pytest.raises(ValueError, match="tool count"):
            builtin_tools(bad)


def test_read_tools_takes_chat_tools_or_bare_functions(tmp_path: Path) -> None:
    f = tmp_path / "tools.json"
    f.write_bytes(orjson.dumps([BUILTIN[0], {"name": "ping", "parameters": {"type": "object"}}]))
    got = read_tools(f)
    assert names(got) == ["get_weather", "ping"]
    ping = {"name": "ping", "parameters": {"type": "object"}}
    assert got[1] == {"type": "function", "function": ping}
    f.write_bytes(orjson.dumps({"model": "m", "tools": [BUILTIN[2]]}))  # a request body's
    assert read_tools(f) == (BUILTIN[2],)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", "non-empty JSON list"),
        (b'[{"type": "function", "function": {"description": "x"}}]', "tool 0 has no function"),
        (b'[{"name": "a", "parameters": 3}]', "parameters that are no object"),
        (orjson.dumps([{"name": f"t{i}"} for i in range(MAX_TOOLS + 1)]), "over 128"),
    ],
)
def test_read_tools_names_what_is_wrong(tmp_path: Path, content: bytes, needle: str) -> None:
    f = tmp_path / "tools.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=needle):
        read_tools(f)


def test_canned_result_is_words_of_the_asked_length_per_seed() -> None:
    text = orjson.loads(canned_result(50, seed=1))["result"]
    assert len(text.split()) == 50
    assert canned_result(50, seed=1) == canned_result(50, seed=1) != canned_result(50, seed=2)
    assert orjson.loads(canned_result(0, seed=1)) == {"result": ""}


TOOLS = Tools(builtin_tools(2), Dist(kind="uniform", min=0.1, max=0.5), 3, "ok", seed=7)


def test_single_requests_carry_the_tools_and_nothing_else_changes() -> None:
    inner = SyntheticWorkload(Dist(mean=16), Dist(mean=8), seed=3)
    w = with_tools(inner, TOOLS)
    assert isinstance(w, WithTools) and isinstance(w, Workload)
    assert not isinstance(w, SessionWorkload)  # the worker must not run it as sessions
    got, plain = w.item(5), inner.item(5)
    assert got.tools == TOOLS.definitions
    assert (got.messages, got.max_tokens) == (plain.messages, plain.max_tokens)
    # The definitions add prompt tokens only the server can count: nothing asked, no warning.
    assert got.prompt_tokens is None
    assert w.describe()["tools"]["names"] == ["get_weather", "search_web"]


class TwoTurns:
    def session(self, s: int) -> SessionPlan:
        turns = (Turn("a", 8, prompt_tokens=1), Turn("b", 8, think_s=1.0, prompt_tokens=1))
        return SessionPlan(turns, system="sys", system_tokens=1)

    def describe(self) -> dict:
        return {"source": "two turns"}


def test_sessions_become_agent_sessions_with_seeded_latencies() -> None:
    w = with_tools(TwoTurns(), TOOLS)
    assert isinstance(w, SessionsWithTools) and isinstance(w, SessionWorkload)
    assert not isinstance(w, Workload)
    plan = w.session(4)
    assert plan.tools == TOOLS.definitions
    assert (plan.tool_result, plan.max_tool_steps, plan.system) == ("ok", 3, "sys")
    assert [t.content for t in plan.turns] == ["a", "b"] and plan.turns[1].think_s == 1.0
    # No length asked: the definitions in every request are the server's to count.
    assert {t.prompt_tokens for t in plan.turns} == {None} and plan.system_tokens is None
    lat = plan.tool_latency_s
    assert isinstance(lat, tuple) and len(lat) == 2 * 3  # one per step the session may take
    assert all(0.1 <= x <= 0.5 for x in lat) and len(set(lat)) == len(lat)
    assert w.session(4) == plan  # the same (seed, s), the same waits
    assert w.session(5).tool_latency_s != lat
    other_seed = with_tools(TwoTurns(), Tools(TOOLS.definitions, TOOLS.latency, 3, "ok", seed=8))
    assert other_seed.session(4).tool_latency_s != lat


def test_each_tool_latency_is_capped_at_a_day() -> None:
    # A mean of an hour, spread wide: some steps draw more than a day (or below 0), none waits it.
    wide = Tools(TOOLS.definitions, Dist(kind="normal", mean=3600, std=1e6), 3, "ok")
    w = with_tools(TwoTurns(), wide)
    waits = [x for s in range(20) for x in w.session(s).tool_latency_s]  # type: ignore[union-attr]
    assert max(waits) == 86_400.0 and min(waits) == 0.0


def test_the_spec_builds_the_tools(tmp_path: Path) -> None:
    spec = load_spec({"workload": {"seed": 9, "tools": {"count": 3, "result_tokens": 5}}})
    assert spec.workload.tools is not None
    tools = spec.workload.tools.build(spec.workload.seed)
    assert names(tools.definitions) == names(BUILTIN[:3])
    assert tools.result == canned_result(5, seed=9) and tools.max_steps == 1
    f = tmp_path / "t.json"
    f.write_bytes(orjson.dumps([BUILTIN[4]]))
    spec = load_spec({"workload": {"tools": {"path": str(f), "latency": "normal:0.2,0.05"}}})
    assert spec.workload.tools is not None
    built = spec.workload.tools.build(0)
    assert names(built.definitions) == ["run_sql"] and built.latency.mean == 0.2


@pytest.mark.parametrize(
    ("tools", "extra", "needle"),
    [
        ({"count": 0}, {}, "workload.tools.count"),
        ({"count": 200}, {}, "workload.tools.count"),
        ({"count": 2, "path": "t.json"}, {}, "workload.tools: count and path"),
        ({"path": "/no/such/tools.json"}, {}, "workload.tools: cannot read /no/such/tools.json"),
        ({"max_steps": -1}, {}, "workload.tools.max_steps"),
        ({"result_tokens": 1 << 20}, {}, "workload.tools.result_tokens"),
        ({"latency": "normal:-1"}, {}, "workload.tools.latency"),
        ({"latency": 1e6}, {}, "workload.tools: latency: mean 1e+06 s is over a day"),
        ({"turns": 3}, {}, "workload.tools.turns"),
        ({}, {"target": {"api": "completions"}}, "workload.tools: target.api 'completions'"),
        ({}, {"workload": {"tools": {}, "extra_body": {"tools": []}}}, "'tools' would replace"),
    ],
)
def test_spec_errors_name_the_field(tools: dict, extra: dict, needle: str) -> None:
    with pytest.raises(SpecError) as e:
        load_spec({"workload": {"tools": tools}} | extra)
    assert needle in str(e.value)
    assert "Traceback" not in str(e.value)


def parse(*argv: str) -> dict:
    return spec_from_args(build_parser().parse_args(["run", *argv]))


def test_cli_flags(tmp_path: Path) -> None:
    data = parse("--tools", "5", "--tool-latency", "uniform:0.1,0.3", "--tool-steps", "2")
    spec = load_spec(data)
    assert spec.workload.tools is not None
    t = spec.workload.tools
    assert (t.count, t.latency.min, t.latency.max, t.max_steps) == (5, 0.1, 0.3, 2)
    f = tmp_path / "run.yaml"
    f.write_text("workload: {tools: {count: 2, latency: 0.5, result_tokens: 7}}\n")
    defs = tmp_path / "t.json"
    defs.write_bytes(orjson.dumps([BUILTIN[1]]))
    # --tools replaces the spec's choice of tools and keeps the rest.
    t2 = load_spec(parse("--spec", str(f), "--tools", str(defs))).workload.tools
    assert t2 is not None and (t2.count, t2.path, t2.latency.mean) == (None, defs, 0.5)
    t3 = load_spec(parse("--spec", str(f), "--tool-result-tokens", "9")).workload.tools
    assert t3 is not None and (t3.count, t3.latency.mean, t3.result_tokens) == (2, 0.5, 9)
    with pytest.raises(SpecError, match="--tool-steps needs tools"):
        parse("--tool-steps", "2")
