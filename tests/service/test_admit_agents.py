"""Where a submission's load comes from: `agents` and `location` beside the spec, checked at
admission; a location's own URL for the target (`location_urls`); a schedule's probes, one per
location. The registry's 409s and the runs themselves are in tests/agents/test_service_agents.py,
with real agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from latbench.agents.pool import AgentPool
from latbench.service.admit import Refused, admit
from latbench.service.agents import check_registered
from latbench.service.config import ServiceConfig, load_config
from latbench.service.scheduler import schedule_request
from latbench.shared.errors import SpecError

URLS = {"gpu": "http://10.0.0.5:8000"}
PROBE = {"name": "p", "target": "gpu", "every": "1m"}


def config(**over: Any) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "targets": {
                "gpu": {"base_url": "http://10.0.0.5:8000/v1",
                        "location_urls": {"eu-west": "https://eu.llm.example/v1/"}},
            },
            "agents": {"listen": "0.0.0.0:8790"},
            **over,
        }
    )  # fmt: skip


def test_agents_and_location_are_placement_not_spec() -> None:
    a = admit({"target": "gpu", "agents": 3, "location": "us-east"}, config(), URLS)
    assert (a.agents, a.location) == (3, "us-east")
    assert a.spec.target.base_url == "http://10.0.0.5:8000"
    assert a.request["agents"] == 3  # kept as sent, to admit it again after a restart
    local = admit({"target": "gpu"}, config(), URLS)
    assert (local.agents, local.location) == (None, None)


def test_a_location_alone_is_one_agent_and_may_have_its_own_url() -> None:
    a = admit({"target": "gpu", "location": "eu-west"}, config(), URLS)
    assert (a.agents, a.location) == (1, "eu-west")
    # Normalised as base_url is (no trailing /v1): the shard its agents get carries it.
    assert a.spec.target.base_url == "https://eu.llm.example"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"agents": 0}, "agents: 0 is not a whole number from 1 to 16 (limits.max_agents)"),
        ({"agents": 17}, "agents: 17 is not a whole number from 1 to 16"),
        ({"agents": True}, "agents: True is not a whole number"),
        ({"agents": 1.5}, "agents: 1.5 is not a whole number"),
        ({"location": ""}, "location: '' is not a label of 1 to 64 printable characters"),
        ({"location": "x" * 65}, "location: 'xxxxxxxx"),
        ({"location": 3}, "location: 3 is not a label"),
        ({"location": "mixed"}, "location: 'mixed' is reserved: local, mixed, other, remote"),
        ({"location": "remote"}, "location: 'remote' is reserved"),
    ],
)
def test_bad_placements_are_400_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(Refused) as e:
        admit({"target": "gpu", **body}, config(), URLS)
    assert e.value.status == 400 and e.value.message.startswith(message), e.value.message


def test_a_service_without_agents_refuses_them() -> None:
    bare = ServiceConfig.model_validate({"targets": {"gpu": {"base_url": "http://10.0.0.5:8000"}}})
    for body in ({"agents": 1}, {"location": "eu-west"}):
        with pytest.raises(Refused) as e:
            admit({"target": "gpu", **body}, bare, URLS)
        assert e.value.status == 400
        assert "this service runs no agents (its config has no agents section)" in e.value.message


def test_a_schedule_with_locations_is_one_probe_per_location() -> None:
    c = config(schedules=[{**PROBE, "locations": ["eu-west", "us-east"], "agents": 2}])
    (s,) = c.schedules
    assert s.placements() == [(2, "eu-west"), (2, "us-east")]
    admitted = [admit(schedule_request(s, n, loc), c, URLS) for n, loc in s.placements()]
    assert [(a.agents, a.location) for a in admitted] == [(2, "eu-west"), (2, "us-east")]
    assert [a.spec.target.base_url for a in admitted] == [
        "https://eu.llm.example",
        "http://10.0.0.5:8000",
    ]
    plain = config(schedules=[PROBE]).schedules[0]
    assert plain.placements() == [(None, None)]
    assert "agents" not in schedule_request(plain)


def test_config_names_what_is_wrong(tmp_path: Path) -> None:
    def error(config: dict[str, Any]) -> str:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(config))
        with pytest.raises(SpecError) as e:
            load_config(path)
        return str(e.value)

    probe = {"name": "p", "target": "sim", "every": "1m"}
    assert "give the service an agents section" in error(
        {"schedules": [{**probe, "locations": ["eu"]}]}
    )
    assert "a location is named twice" in error(
        {"agents": {}, "schedules": [{**probe, "locations": ["eu", "eu"]}]}
    )
    assert "the API listens on that port" in error(
        {"listen": "127.0.0.1:8790", "agents": {"listen": "0.0.0.0:8790"}}
    )
    assert "give it as the schedule's own field" in error(
        {"agents": {}, "schedules": [{**probe, "spec": {"location": "eu"}}]}
    )
    assert "location_urls" in error(
        {"targets": {"t": {"base_url": "http://x", "location_urls": {"eu": "http://u:p@y"}}}}
    )
    assert "location 'local' is reserved" in error(
        {"agents": {}, "schedules": [{**probe, "locations": ["eu", "local"]}]}
    )


def test_a_run_asking_for_agents_when_none_registered_is_told_how_to_start_one() -> None:
    pool = AgentPool("t" * 32, "10.0.0.9", 8790, keep_agents=True)
    for n, location, said in (
        (1, None, "no agent is registered; start one with: latbench agent --coordinator "
         "ws://10.0.0.9:8790/v1/agents --token-file FILE (the service's agent token)"),
        (2, "eu-west", "no agent is registered in location 'eu-west'; start one with: latbench "
         "agent --coordinator ws://10.0.0.9:8790/v1/agents --token-file FILE --location eu-west"),
    ):  # fmt: skip
        with pytest.raises(Refused) as e:
            check_registered(pool, n, location)
        assert e.value.status == 409 and e.value.message.startswith(said), e.value.message
