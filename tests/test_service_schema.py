"""Schemathesis against a live `latbench serve`: requests generated from the OpenAPI document
(valid and invalid), every response checked against what the document says (status codes,
content types, schemas) and for server errors. The streaming endpoints (events, records) are
checked in tests/test_service.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from service_kit import TOKEN, Service, service_config

from latbench.sim import SimConfig, SimProcess

OPENAPI = Path(__file__).resolve().parents[1] / "latbench" / "_service" / "openapi.yaml"


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
    return schemathesis.openapi.from_path(OPENAPI).exclude(path_regex=r"/(events|records)$")


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
