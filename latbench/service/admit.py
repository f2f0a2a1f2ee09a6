"""Admission: a caller's run spec, naming a catalogue target, becomes the spec the service runs.

The caller chooses what to send (workload, load, SLOs); the service chooses where it goes and
with which credentials. So a submission may not carry a URL, keys, headers, TLS settings, files
to read or an output directory (403, naming the field: it must not become an open load cannon
or an SSRF hop), and it must stay under the per-run caps (400). Missing stop conditions are
filled in with the caps, so every run ends.

Beside the spec, a submission may say where its load comes from: `agents: N` (the service's
registered agents, limits.max_agents at most) and `location` (only that location's agents;
alone, it means one agent). They are not spec fields: the service's pool is what the run is
placed on, and a target may have its own URL for a location (`location_urls`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latbench.client.preflight import read_api_key
from latbench.load.pacers import planned_length_s
from latbench.records.record import location_problem
from latbench.service.config import ServiceConfig, TargetEntry
from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.shared.yamlfile import MAX_DEPTH
from latbench.spec import RunSpec, TargetSpec, load_spec
from latbench.spec.ramp import shaped_rates
from latbench.spec.run import nesting_depth_over as too_deep
from latbench.spec.workload import check_token_dist
from latbench.workload import DEFAULT_MAX_TOKENS
from latbench.workload.sessions import MAX_TURNS

# What a caller may say about the target beyond its name.
CALLER_TARGET_KEYS = frozenset({"name", "timeouts"})
SERVICE_KEYS = {
    "output_dir": "the service decides where runs are stored",
    "sim": "the service benchmarks its catalogue targets; it starts no simulator for a run",
}
ADHOC_SCENARIO = "adhoc"
# Workload sources that read workload.path; shared_prefix and synthetic generate their prompts.
FILE_SOURCES = ("jsonl", "sharegpt", "trace")
# In-flight requests get this long after a run's duration unless the caller says (load.overtime).
SERVICE_OVERTIME_S = 30.0
# Request fields that multiply the work one request asks of the target (OpenAI's and vLLM's `n`
# completions, `best_of` candidates): a caller could pass every per-run cap with them. The
# fields latbench sets itself (model, stream, max_tokens, ...) are refused for everyone by the
# spec (CONTROLLED_BODY_KEYS).
AMPLIFYING_BODY_KEYS = ("n", "best_of")


class Refused(Exception):
    """A submission the service will not run; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Admitted:
    target: str
    spec: RunSpec
    request: dict[str, Any]  # the caller's document, kept to admit a queued run again at restart
    agents: int | None = None  # the run's load from this many of the pool's agents
    location: str | None = None  # ... of this location


def placement(body: Mapping[str, Any], config: ServiceConfig) -> tuple[int | None, str | None]:
    """The submission's `agents` and `location`, checked; Refused(400) naming the bad one."""
    agents, location = body.get("agents"), body.get("location")
    if agents is None and location is None:
        return None, None
    if config.agents is None:
        raise Refused(
            400,
            "agents, location: this service runs no agents (its config has no agents section); "
            "leave them out to run on the service's own workers",
        )
    problem = None if location is None else location_problem(location)
    if problem is not None:
        raise Refused(400, f"location: {location!r:.80} {problem} (an agent's --location)")
    if agents is None:
        return 1, location
    cap = config.limits.max_agents
    if type(agents) is not int or not 1 <= agents <= cap:
        raise Refused(
            400, f"agents: {agents!r:.40} is not a whole number from 1 to {cap} "
            "(limits.max_agents)",
        )  # fmt: skip
    return agents, location


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def target_spec(entry: TargetEntry, base_url: str, timeouts: Any = None) -> dict[str, Any]:
    """The run's `target` section: the catalogue entry's, with the caller's timeouts on top."""
    d = entry.target_spec()
    d["base_url"] = base_url
    if timeouts is not None:
        # Not a mapping: kept as given, so the spec's validation names the problem.
        d["timeouts"] = deep_merge(d["timeouts"], timeouts) if isinstance(timeouts, Mapping) else (
            timeouts
        )  # fmt: skip
    return d


def _target_name(body: Mapping[str, Any], config: ServiceConfig) -> tuple[str, Any]:
    catalogue = ", ".join(config.targets) or "none"
    target = body.get("target")
    timeouts = None
    if isinstance(target, Mapping):
        for key in target:
            if key in TargetSpec.model_fields and key not in CALLER_TARGET_KEYS:
                raise Refused(
                    403,
                    f"target.{key}: this service benchmarks only its catalogue targets, as "
                    f"configured there; name one with target: NAME (catalogue: {catalogue})",
                )
            if key not in CALLER_TARGET_KEYS:
                raise Refused(400, f"target.{key}: unknown field (give name, and timeouts)")
        timeouts = target.get("timeouts")
        target = target.get("name")
    if not isinstance(target, str) or not target:
        raise Refused(400, f"target: name a catalogue target (this service has: {catalogue})")
    if target not in config.targets:
        raise Refused(
            404, f"target {target!r} is not in this service's catalogue (it has: {catalogue})"
        )
    return target, timeouts


def _fill_stop_conditions(data: dict[str, Any], config: ServiceConfig) -> None:
    """Every run ends: a missing duration or request budget becomes the cap; an open-loop run
    without a concurrency cap gets the service's, so a slow target cannot pile up requests."""
    default_load = RunSpec.model_fields["load"].get_default(call_default_factory=True)
    load = data.get("load")
    if load is None:
        load = data["load"] = default_load.model_dump(exclude_defaults=True)
    if not isinstance(load, dict):
        return  # the spec's validation names it
    lim = config.limits
    mode = load.get("mode")
    # A staircase lasts its stairs; a ramp given only a request count ramps over it (vLLM's
    # way), its planned length capped in check_caps.
    if mode != "steps" and not (mode == "ramp" and "requests" in load and "duration" not in load):
        load.setdefault("duration", lim.max_duration)
    load.setdefault("requests", lim.max_requests)
    # A hung stream holds its target's queue until the overtime is spent: shorter than a CLI run's.
    load.setdefault("overtime", min(SERVICE_OVERTIME_S, lim.max_duration))
    if load.get("mode") in ("constant", "poisson", "ramp", "steps"):
        load.setdefault("concurrency", lim.max_concurrency)


def _cap(field: str, value: float | None, cap: float, name: str) -> None:
    if value is not None and value > cap:
        raise Refused(
            400, f"{field}: {value:g} is over this service's cap of {cap:g} (limits.{name})"
        )


def check_caps(spec: RunSpec, config: ServiceConfig) -> None:
    lim = config.limits
    ld = spec.load
    over = [
        ("load.concurrency", ld.concurrency, lim.max_concurrency, "max_concurrency"),
        ("load.rate", ld.rate, lim.max_rate, "max_rate"),
        ("load.duration", ld.duration, lim.max_duration, "max_duration"),
        ("load.overtime", ld.overtime, lim.max_duration, "max_duration"),
        ("load.requests", ld.requests, lim.max_requests, "max_requests"),
        ("load.workers", ld.workers, lim.max_workers, "max_workers"),
        *((field, rate, lim.max_rate, "max_rate") for field, rate in shaped_rates(ld)),
    ]
    for field, value, cap, name in over:
        _cap(field, value, cap, name)
    # After the request cap, which bounds its cost (a few ms whatever the count, pacers.py).
    length = planned_length_s(ld)
    _cap("load.ramp (its planned length)", length, lim.max_duration, "max_duration")
    check_token_caps(spec, config)
    check_session_length(spec, config)


def check_token_caps(spec: RunSpec, config: ServiceConfig) -> None:
    """A request's prompt (a synthetic one, or a shared prefix and its suffix) and max_tokens
    within the caps; a distribution's unbounded tail is clamped to its cap."""
    lim = config.limits
    w = spec.workload
    # Generated prompts are the only ones a caller can choose; without output_tokens: 128.
    out = w.output_tokens if w.output_tokens is not None else Dist(mean=DEFAULT_MAX_TOKENS)
    whose = "this service's cap (limits.max_input_tokens)"
    # (owner, its field, its distribution, the field's name in errors, the cap, whose cap).
    checks: list[tuple[Any, str, Dist, str, float, str]] = [
        (w, "output_tokens", out, "workload.output_tokens", lim.max_output_tokens,
         "this service's cap (limits.max_output_tokens)"),
    ]  # fmt: skip
    p = w.shared_prefix
    if p is None:
        checks.append(
            (w, "input_tokens", w.input_tokens, "workload.input_tokens", lim.max_input_tokens,
             whose)
        )  # fmt: skip
    else:
        field = "workload.shared_prefix.prefix_tokens"
        _cap(field, p.prefix_tokens, lim.max_input_tokens, "max_input_tokens")
        checks.append(
            (p, "suffix_tokens", p.suffix_tokens, "workload.shared_prefix.suffix_tokens",
             lim.max_input_tokens - p.prefix_tokens,
             f"{whose} less prefix_tokens ({p.prefix_tokens})")
        )  # fmt: skip
    for owner, attr, dist, field, cap, why in checks:
        try:
            check_token_dist(dist, cap, why)
        except ValueError as e:
            raise Refused(400, f"{field}: {e}") from None
        if dist.std > 0 and dist.kind in ("normal", "lognormal") and dist.max is None:
            # A tail can draw past any cap: every draw is clamped to it, as the spec shows.
            setattr(owner, attr, dist.model_copy(update={"max": float(cap)}))


def check_session_length(spec: RunSpec, config: ServiceConfig) -> None:
    """A session resends its conversation every turn: its system prompt, and its context at the
    end of its longest session (system + turns x (message + reply + tool results), the means),
    within limits.max_input_tokens. Each turn's own message is capped by check_token_caps."""
    w = spec.workload
    s = w.sessions
    if s is None or s.turns is None:  # sharegpt sessions read a file: refused before
        return
    cap = config.limits.max_input_tokens
    _cap("workload.sessions.system_tokens", s.system_tokens, cap, "max_input_tokens")
    t = s.turns
    # Draws are clamped to MAX_TURNS: an unbounded tail reaches it.
    most = t.max if t.max is not None else t.mean if t.std == 0 else MAX_TURNS
    turns = min(MAX_TURNS, max(1, round(most)))
    out = w.output_tokens.mean if w.output_tokens is not None else DEFAULT_MAX_TOKENS
    tools = w.tools.max_steps * w.tools.result_tokens if w.tools is not None else 0
    per_turn = w.input_tokens.mean + out + tools
    context = s.system_tokens + turns * per_turn
    if context > cap:
        results = f" + {tools} of tool results" if tools else ""
        raise Refused(
            400,
            f"workload.sessions: a session's context grows to {context:,.0f} tokens by its "
            f"last turn (system_tokens {s.system_tokens} + {turns} turns x (input "
            f"{w.input_tokens.mean:g} + output {out:g}{results})), over this service's cap of "
            f"{cap} (limits.max_input_tokens): fewer turns (turns.max) or shorter messages",
        )


def admit(body: Any, config: ServiceConfig, urls: Mapping[str, str]) -> Admitted:
    """The spec to run for `body`, or `Refused`. `urls` maps each target to its base URL (a
    builtin simulator's is known only once it listens)."""
    if not isinstance(body, Mapping):
        raise Refused(
            400, "the request body must be a JSON object: a run spec whose target names a "
            "catalogue target",
        )  # fmt: skip
    if too_deep(body, MAX_DEPTH):
        # Checked before anything walks it: copying a document nested hundreds deep recursed
        # past Python's limit (a 500 and a traceback a request).
        raise Refused(
            400, f"the request body is nested more than {MAX_DEPTH} levels deep (objects and "
            "lists inside one another); a run spec needs a few",
        )  # fmt: skip
    request = copy.deepcopy(dict(body))  # kept as sent; the merging below builds new dicts
    body = copy.deepcopy(request)
    name, timeouts = _target_name(body, config)
    agents, location = placement(body, config)
    body.pop("agents", None)
    body.pop("location", None)
    for key, why in SERVICE_KEYS.items():
        if key in body:
            raise Refused(403, f"{key}: {why}")
    workload = body.get("workload")
    if isinstance(workload, Mapping) and workload.get("path") is not None:
        raise Refused(
            403,
            "workload.path: the service does not read files named by API callers; use "
            "generated prompts (source synthetic or shared_prefix)",
        )
    if isinstance(workload, Mapping) and workload.get("source") in FILE_SOURCES:
        raise Refused(
            403,
            f"workload.source {workload['source']}: it reads a file, and the service does not "
            "read files named by API callers; use synthetic (input_tokens, output_tokens) or "
            "shared_prefix",
        )
    if isinstance(workload, Mapping) and workload.get("tokenizer") not in (None, "words"):
        # A path would be read, and a name fetched from the Hub, on the service's host.
        raise Refused(
            403,
            "workload.tokenizer: the service does not load tokenizers named by API callers; "
            "prompts are counted by the target's /tokenize (or 'words')",
        )
    tools = workload.get("tools") if isinstance(workload, Mapping) else None
    if isinstance(tools, Mapping) and tools.get("path") is not None:
        raise Refused(
            403,
            "workload.tools.path: the service does not read files named by API callers; use "
            "workload.tools.count (built-in tool definitions)",
        )
    extra = workload.get("extra_body") if isinstance(workload, Mapping) else None
    if isinstance(extra, Mapping):
        for key in AMPLIFYING_BODY_KEYS:
            if extra.get(key, 1) not in (1, None):
                raise Refused(
                    403,
                    f"workload.extra_body.{key}: more than one completion a request would "
                    "multiply the load past this service's caps; leave it out",
                )
    data = deep_merge(config.defaults, {k: v for k, v in body.items() if k != "target"})
    _fill_stop_conditions(data, config)
    entry = config.targets[name]
    # Agents of a location may reach the target at an address of their own.
    url = entry.location_urls.get(location, urls[name]) if location is not None else urls[name]
    data["target"] = target_spec(entry, url, timeouts)
    data["output_dir"] = str(config.runs_dir)
    try:
        spec = load_spec(data, source="request body")
    except SpecError as e:
        raise Refused(400, str(e)) from None
    check_caps(spec, config)
    return Admitted(name, spec, request, agents, location)


def scenario_label(spec: RunSpec, config: ServiceConfig, schedule: str | None) -> str:
    """A bounded scenario label: the schedule's name, an allowed spec name, or 'adhoc'."""
    if schedule is not None:
        return schedule
    return spec.name if spec.name in config.metric_scenarios else ADHOC_SCENARIO


def check_target_keys(config: ServiceConfig) -> None:
    """At start: every target's key can be read (a missing secret fails now, not at 3 am)."""
    for name, entry in config.targets.items():
        try:
            read_api_key(entry)
        except SpecError as e:
            raise SpecError(f"targets.{name}: {e}") from None
