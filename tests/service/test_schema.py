"""Schemathesis against a live `latbench serve`: requests generated from the OpenAPI document
(valid and invalid), every response checked against what the document says (status codes,
content types, schemas) and for server errors; then stateful sequences along the document's
links (submit -> get, cancel, records) with valid and invalid data, asserting no 5xx. The
event stream is checked in tests/service/test_api.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import paths
from kit.agents import TOKEN as AGENT_TOKEN
from kit.agents import free_port
from kit.service import TOKEN, Service, running
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from latbench.sim import SimConfig, SimProcess

OPENAPI = paths.ROOT / "latbench" / "service" / "openapi.yaml"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUNNABLE = {"target": "sim", "load": {"concurrency": 1, "requests": 2}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("schema")
    token = work / "agent-token"
    token.write_text(AGENT_TOKEN)
    # An agents section and no agent: a generated `agents`/`location` gets its 409, and
    # GET /api/v1/agents its (empty) list, against the document too.
    agents = {"listen": f"127.0.0.1:{free_port()}", "token_file": str(token), "wait": "1s"}
    with SimProcess(SimConfig(ttft=0.01, itl=0.002)) as sim:
        # Small caps: a generated spec that is valid runs for a moment at most.
        limits = {"max_concurrency": 2, "max_duration": "1s", "max_requests": 4,
                  "max_queued_runs": 20}  # fmt: skip
        with running(sim.url, work, limits=limits, agents=agents) as s:
            yield s


@pytest.fixture
def api(live: Service) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_path(OPENAPI).exclude(path_regex=r"/(events|records)$")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_document(case: schemathesis.Case, live: Service) -> None:
    # The document gives a run spec's shape only; the spec's own schema (docs/spec.md) decides
    # what is valid, so a spec that fits the shape may still be refused with 400.
    excluded = [schemathesis.checks.positive_data_acceptance] if case.method == "POST" else []
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=excluded,
    )


def _operations(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        op["operationId"]: (path, method.upper())
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }


def test_stateful_sequences_along_the_links_give_no_server_error(live: Service) -> None:
    """Submit, then follow the links openapi.yaml gives from a submitted run (get, cancel,
    records) with that run's id, with valid and invalid data: every answer is below 500.

    Sequences are drawn here rather than by schemathesis' state machine: its rules are enabled
    by what the service answered (a 202 or a 429 for a full queue, a run ended or not), which
    hypothesis rejects as flaky data generation. Here every step is drawn whatever the answers,
    and only the ids follow them. Not a conformance check (see the test above)."""
    schema = schemathesis.openapi.from_path(OPENAPI)
    schema.config.update(request_timeout=30)
    doc = yaml.safe_load(OPENAPI.read_text())
    ops = _operations(doc)
    links = doc["paths"]["/api/v1/runs"]["post"]["responses"]["202"]["links"]
    # The event stream of a queued run lasts until the run ends: tested in test_service.py.
    steps = [(ops[lk["operationId"]], lk["parameters"]) for lk in links.values()
             if lk["operationId"] != "getRunEvents"]  # fmt: skip
    assert {ops["getRun"], ops["cancelRun"], ops["getRunRecords"]} == {op for op, _ in steps}
    assert all(params == {"run_id": "$response.body#/id"} for _, params in steps)

    def cases(path: str, method: str) -> st.SearchStrategy[schemathesis.Case]:
        op = schema[path][method]
        return st.one_of(
            op.as_strategy(m) for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        )

    submit = cases("/api/v1/runs", "POST")
    follow = [(cases(*op), op) for op, _ in steps]
    seen: Counter[tuple[str, int]] = Counter()

    reached: set[str] = set()  # operations that answered about a real run

    def call(case: schemathesis.Case) -> Any:
        response = case.call(base_url=live.url, headers=AUTH)
        op = f"{case.method} {case.operation.path}"
        seen[(op, response.status_code)] += 1
        # A run still queued, or cancelled before it sent a request, has no records: its 404
        # names the run, so the link did lead to it.
        if response.status_code < 300 or "has no records" in response.text:
            reached.add(op)
        case.validate_response(response, checks=[not_a_server_error])
        return response

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=st.data())
    def sequence(data: st.DataObject) -> None:
        case = data.draw(submit)
        if data.draw(st.booleans()):
            # A generated spec is almost never runnable (a target name not in the catalogue, a
            # load over the caps): half are made so, and the links then lead to real runs.
            case.body = dict(RUNNABLE)
        response = call(case)
        run_id = response.json()["id"] if response.status_code == 202 else None
        for strategy, _ in follow:
            step = data.draw(strategy)
            if run_id is not None:
                step.path_parameters = {**(step.path_parameters or {}), "run_id": run_id}
            call(step)

    sequence()
    assert seen[("POST /api/v1/runs", 202)] >= 1, seen
    for op, _ in steps:  # each link was followed from a real run at least once
        assert f"{op[1]} {op[0]}" in reached, (op, seen)
