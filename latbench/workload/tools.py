"""Agent traffic: requests that carry tool definitions, and sessions that answer tool calls.

An agent's request differs from a chat request in two ways that move its latency: it carries
the tools' definitions (often thousands of prompt tokens, the same in every request, so a
prefix cache's best case), and its reply is a tool call whose arguments are generated tokens
that are not the answer (the summary counts them apart, with the time to the first tool-call
token). An agent session then loops: the client runs the tool (here: waits its latency), sends
the result, and the model calls again or answers. `with_tools` wraps any workload:

- single requests (`Workload`): every item carries the definitions;
- sessions (`SessionWorkload`): every plan carries them, with the canned result, the number of
  tool steps allowed per user turn and each step's latency, which the worker's session loop
  (load/worker.py) waits before it sends the result.

The built-in definitions are plausible function schemas (names, descriptions, typed and
described parameters, as agent frameworks write them), fixed in order, so a run with N tools
sends the same N in every request of every run. Each tool's latency is drawn per step from the
session's own seeded stream, so session s waits the same in every run with the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from latbench.shared.dist import Dist
from latbench.workload.item import WorkItem, Workload, check_seed, dist_json, rng_for
from latbench.workload.session import SessionPlan, SessionWorkload, wait_seconds
from latbench.workload.synthetic import DEFAULT_VOCABULARY

# The latency draws' own stream, apart from the items' and the pacer's (workload.item).
TOOLS_STREAM = 0x5EED_0E00
# More definitions than any agent sends (hosted APIs cap a request at 128 tools).
MAX_TOOLS = 128
# A tool-definitions file: a few hundred definitions at most, each a few KB.
MAX_TOOLS_FILE_BYTES = 4 << 20


def _fn(
    name: str, description: str, props: dict[str, Any], required: Sequence[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": list(required)},
        },
    }


def _p(kind: str, description: str, **more: Any) -> dict[str, Any]:
    return {"type": kind, "description": description, **more}


# Any edit to this list, even its order, changes every tools request for a given count, so
# published results could not be rerun: append only.
BUILTIN: tuple[dict[str, Any], ...] = (
    _fn(
        "get_weather",
        "Get the current weather and today's forecast for a city.",
        {
            "location": _p("string", "City and country, e.g. 'Paris, France'."),
            "unit": _p("string", "Temperature unit.", enum=["celsius", "fahrenheit"]),
        },
        ["location"],
    ),
    _fn(
        "search_web",
        "Search the web and return the top results with their titles, URLs and snippets.",
        {
            "query": _p("string", "The search query."),
            "max_results": _p("integer", "How many results to return (1-20).", minimum=1),
        },
        ["query"],
    ),
    _fn(
        "read_file",
        "Read a text file from the project workspace and return its contents.",
        {
            "path": _p("string", "Path relative to the workspace root."),
            "start_line": _p("integer", "First line to return, 1-based.", minimum=1),
            "end_line": _p("integer", "Last line to return, inclusive.", minimum=1),
        },
        ["path"],
    ),
    _fn(
        "write_file",
        "Create or overwrite a text file in the project workspace.",
        {
            "path": _p("string", "Path relative to the workspace root."),
            "content": _p("string", "The file's full new contents."),
        },
        ["path", "content"],
    ),
    _fn(
        "run_sql",
        "Run a read-only SQL query against the analytics database and return the rows.",
        {
            "query": _p("string", "A single SELECT statement."),
            "limit": _p("integer", "Maximum number of rows to return.", minimum=1),
        },
        ["query"],
    ),
    _fn(
        "send_email",
        "Send an email on the user's behalf.",
        {
            "to": _p("array", "Recipient addresses.", items={"type": "string"}),
            "subject": _p("string", "Subject line."),
            "body": _p("string", "Plain-text body."),
        },
        ["to", "subject", "body"],
    ),
    _fn(
        "get_stock_price",
        "Get the latest traded price and day change of a stock.",
        {"ticker": _p("string", "Exchange ticker symbol, e.g. 'AAPL'.")},
        ["ticker"],
    ),
    _fn(
        "list_calendar_events",
        "List the user's calendar events between two dates.",
        {
            "start": _p("string", "Start date, ISO 8601.", format="date"),
            "end": _p("string", "End date, ISO 8601.", format="date"),
        },
        ["start", "end"],
    ),
    _fn(
        "convert_currency",
        "Convert an amount between two currencies at today's rate.",
        {
            "amount": _p("number", "The amount to convert."),
            "from_currency": _p("string", "ISO 4217 code of the source currency."),
            "to_currency": _p("string", "ISO 4217 code of the target currency."),
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _fn(
        "translate_text",
        "Translate text into another language.",
        {
            "text": _p("string", "The text to translate."),
            "target_language": _p("string", "BCP 47 language tag, e.g. 'de'."),
        },
        ["text", "target_language"],
    ),
    _fn(
        "create_ticket",
        "Open a ticket in the issue tracker.",
        {
            "title": _p("string", "One-line summary."),
            "description": _p("string", "What happened and what was expected."),
            "priority": _p("string", "Ticket priority.", enum=["low", "medium", "high"]),
        },
        ["title", "description"],
    ),
    _fn(
        "list_directory",
        "List the files and folders under a workspace path.",
        {
            "path": _p("string", "Path relative to the workspace root."),
            "recursive": _p("boolean", "Whether to descend into subfolders."),
        },
        ["path"],
    ),
)


def builtin_tools(count: int) -> tuple[dict[str, Any], ...]:
    """The first `count` built-in definitions; past the built-in set, the set again under
    numbered names (`get_weather_2`, ...), so that any count up to MAX_TOOLS is distinct tools."""
    if not 1 <= count <= MAX_TOOLS:
        raise ValueError(f"tool count must be 1..{MAX_TOOLS}, got {count}")
    out = []
    for i in range(count):
        base, round_ = BUILTIN[i % len(BUILTIN)], i // len(BUILTIN)
        if round_:
            fn = {**base["function"], "name": f"{base['function']['name']}_{round_ + 1}"}
            base = {**base, "function": fn}
        out.append(base)
    return tuple(out)


def read_tools(path: Path) -> tuple[dict[str, Any], ...]:
    """Tool definitions from a JSON file: a list of Chat Completions tools
    (`{"type": "function", "function": {"name", "description", "parameters"}}`; a bare
    function object is accepted too, and so is a request body's `{"tools": [...]}`, as copied
    from a real agent's traffic). ValueError names what is wrong."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_TOOLS_FILE_BYTES + 1)  # never more, whatever the file holds
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_TOOLS_FILE_BYTES:
        raise ValueError(f"{path} is over {MAX_TOOLS_FILE_BYTES:,} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} must hold a non-empty JSON list of tool definitions")
    if len(data) > MAX_TOOLS:
        raise ValueError(f"{path} holds {len(data)} tools, over {MAX_TOOLS}")
    out = []
    for i, tool in enumerate(data):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"{path}: tool {i} has no function name")
        if not isinstance(fn.get("parameters", {}), dict):
            raise ValueError(f"{path}: tool {i} ({fn['name']}) has parameters that are no object")
        out.append({"type": "function", "function": fn})
    return tuple(out)


def canned_result(tokens: int, seed: int) -> str:
    """The text every tool call is answered with: a JSON object holding `tokens` words (a word
    is a token in the simulator, about one elsewhere), the same for the same (tokens, seed)."""
    rng = rng_for(check_seed(seed), TOOLS_STREAM)
    words = rng.choice(len(DEFAULT_VOCABULARY), size=max(0, tokens))
    return orjson.dumps({"result": " ".join(DEFAULT_VOCABULARY[w] for w in words)}).decode()


@dataclass(frozen=True, slots=True)
class Tools:
    """What an agent workload adds to another one."""

    definitions: tuple[dict[str, Any], ...]
    latency: Dist  # seconds each tool takes before its result is sent
    max_steps: int  # tool steps per user turn (sessions)
    result: str  # the canned result
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "count": len(self.definitions),
            "names": [t["function"]["name"] for t in self.definitions],
            "latency_s": dist_json(self.latency),
            "max_steps": self.max_steps,
            "result_chars": len(self.result),
        }


class WithTools:
    """Single requests that carry the tool definitions."""

    def __init__(self, inner: Workload, tools: Tools) -> None:
        self.inner, self.tools = inner, tools

    def item(self, n: int) -> WorkItem:
        # The definitions are prompt tokens the item never asked for (the chat template renders
        # them, at a length only the server knows): the asked-for length is withdrawn rather
        # than compared with a usage that includes them (summary: prompt tokens asked vs got).
        return replace(self.inner.item(n), tools=self.tools.definitions, prompt_tokens=None)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "tools": self.tools.describe()}


class SessionsWithTools:
    """Agent sessions: every request carries the definitions, and each tool call in a reply is
    answered with the canned result after a drawn latency, up to `max_steps` per user turn."""

    def __init__(self, inner: SessionWorkload, tools: Tools) -> None:
        self.inner, self.tools = inner, tools

    def session(self, s: int) -> SessionPlan:
        plan = self.inner.session(s)
        t = self.tools
        # One draw per tool step the session may take (SessionPlan.tool_latency reads them in
        # order), so the loop waits the same in every run with the same seed.
        steps = max(1, len(plan.turns) * t.max_steps)
        draws = t.latency.sample(rng_for(t.seed, TOOLS_STREAM, s), steps)
        return replace(
            plan,
            # As for single requests: the definitions' length is the server's to count.
            turns=tuple(replace(turn, prompt_tokens=None) for turn in plan.turns),
            system_tokens=None,
            tools=t.definitions,
            tool_result=t.result,
            max_tool_steps=t.max_steps,
            # Each draw capped at a day, as think times are: a heavy tail can overflow.
            tool_latency_s=tuple(wait_seconds(float(x)) for x in draws),
        )

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "tools": self.tools.describe()}


def with_tools(inner: Workload | SessionWorkload, tools: Tools) -> WithTools | SessionsWithTools:
    """`inner` with tools: sessions become agent sessions, single requests carry the tools.
    Two classes, not one with both methods: the worker tells the kinds apart by which protocol
    a workload meets."""
    if isinstance(inner, SessionWorkload):
        return SessionsWithTools(inner, tools)
    return WithTools(inner, tools)
