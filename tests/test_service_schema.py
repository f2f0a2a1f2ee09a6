"""Schemathesis against a live `latbench serve`: requests generated from the OpenAPI document
(valid and invalid), every response checked against what the document says (status codes,
content types, schemas) and for server errors; then stateful sequences along the document's
links (submit -> get, cancel, records) with valid and invalid data, asserting no 5xx. The
event stream is checked in tests/test_service.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from service_kit import TOKEN, Service, service_config

from latbench.sim import SimConfig, SimProcess

OPENAPI = Path(__file__).resolve().parents[1] / "latbench" / "_service" / "openapi.yaml"
RUNNABLE = {"target": "sim", "load": {"concurrency": 1, "requests": 2}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("schema")
    with SimProcess(SimConfig(ttft=0.01, itl=0.002)) as sim:
        # Small caps: a generated spec that is valid runs for a moment at most.
        limits = {"max_concurrency": 2, "max_duration": "1s", "max_requests": 4,
                  "max_queued_runs": 2}  # fmt: skip
        s = Service(service_config(sim.url, work, limits=limits), work).start()
        yield s
        assert s.stop() == 0, s.log()


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


def test_stateful_sequences_along_the_links_give_no_server_error(live: Service) -> None:
    """Submit, then get, cancel and read the records of what was submitted (the links in
    openapi.yaml), with valid and invalid data: every answer is below 500. Not a conformance
    check: negative data may be accepted where the document's shapes are looser than the
    spec's schema (docs/spec.md), and that is tested in test_api_conforms_to_its_document."""
    schema = schemathesis.openapi.from_path(OPENAPI).exclude(path_regex=r"/events$")
    schema.config.update(
        base_url=live.url, headers={"Authorization": f"Bearer {TOKEN}"}, request_timeout=30
    )
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    machine = schema.as_state_machine()
    links = [r for r in dir(machine) if r.startswith("POST_api_v1_runs___202_")]
    assert len(links) == 3, links  # get, cancel, records (events excluded)

    submitted: list[int] = []

    class Sequences(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: schemathesis.Case) -> None:
            # A generated spec is almost never runnable (a target name not in the catalogue,
            # a load over the caps), so every other submission is a runnable one: the links
            # then lead from real runs, queued, running and finished.
            if case.operation.label == "POST /api/v1/runs":
                submitted.append(0)
                if len(submitted) % 2:
                    case.body = dict(RUNNABLE)

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            if case.operation.label == "POST /api/v1/runs":
                submitted[-1:] = [response.status_code] if submitted else []

        def validate_response(self, response: Any, case: schemathesis.Case, **kw: Any) -> None:
            case.validate_response(response, checks=[not_a_server_error])

    Sequences.run(
        settings=settings(
            max_examples=15,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert 202 in submitted, submitted  # the links were followed from real runs
