"""Ramps and staircases through the service's admission: its caps hold for every rate they ask
for and for a ramp's planned length, a staircase keeps its own duration, and an open-loop shape
gets the service's in-flight cap like any open loop."""

from __future__ import annotations

from typing import Any

import pytest

from latbench.service.admit import Refused, admit
from latbench.service.config import ServiceConfig

URLS = {"gpu": "http://127.0.0.1:8000"}


def config() -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "targets": {"gpu": {"base_url": "http://127.0.0.1:8000/v1"}},
            "limits": {"max_concurrency": 16, "max_duration": "5m", "max_requests": 500,
                       "max_rate": 50},
        }
    )  # fmt: skip


def load_of(load: dict[str, Any]) -> Any:
    return admit({"target": "gpu", "load": load}, config(), URLS).spec.load


def test_a_staircase_keeps_its_duration_and_gets_the_in_flight_cap() -> None:
    load = load_of({"mode": "steps", "steps": [{"rate": 5, "duration": "1m"}] * 2})
    assert (load.duration, load.concurrency, load.requests) == (120, 16, 500)


def test_a_ramp_over_requests_stays_one_and_a_bare_ramp_runs_over_the_cap() -> None:
    ramp = {"strategy": "linear", "start_rate": 1, "end_rate": 20}
    counted = load_of({"mode": "ramp", "ramp": ramp, "requests": 100})
    assert counted.duration is None and counted.requests == 100
    bare = load_of({"mode": "ramp", "ramp": ramp})
    assert (bare.duration, bare.requests) == (300, 500)


@pytest.mark.parametrize(
    ("load", "says"),
    [
        (
            {"mode": "ramp", "duration": 60,
             "ramp": {"strategy": "linear", "start_rate": 1, "end_rate": 80}},
            "load.ramp.end_rate: 80 is over this service's cap of 50 (limits.max_rate)",
        ),
        (
            {"mode": "steps", "steps": [{"rate": 5, "duration": 10}, {"rate": 60, "duration": 10}]},
            "load.steps.1.rate: 60 is over this service's cap of 50",
        ),
        (
            {"mode": "steps",
             "steps": [{"rate": 5, "duration": "4m"}, {"rate": 6, "duration": "2m"}]},
            "load.duration: 360 is over this service's cap of 300",
        ),
        # 400 requests from 0.5 to 2 req/s, 399 gaps of 1.08 s on average: 431 s, past 5 m.
        (
            {"mode": "ramp", "requests": 400,
             "ramp": {"strategy": "exponential", "start_rate": 0.5, "end_rate": 2}},
            "load.ramp (its planned length): 430.977 is over this service's cap of 300",
        ),
        # The request cap comes first: the spec allows 10^9, whose gaps no one walks.
        (
            {"mode": "ramp", "requests": 10**9,
             "ramp": {"strategy": "linear", "start_rate": 1, "end_rate": 2}},
            "load.requests: 1e+09 is over this service's cap of 500 (limits.max_requests)",
        ),
    ],
)  # fmt: skip
def test_the_caps_hold_for_every_rate_and_length_a_shape_asks_for(
    load: dict[str, Any], says: str
) -> None:
    with pytest.raises(Refused) as err:
        load_of(load)
    assert says in str(err.value)
