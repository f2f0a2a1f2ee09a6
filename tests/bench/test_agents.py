"""The agents harness's own arithmetic (bench/agents.py): streams held at the simulator, worked
out by hand, and a core plan that refuses a machine too small for it."""

from __future__ import annotations

import os

import pytest

from bench.agents import cpu_plan, parse_args, streams_held


def entry(arrival: int, *events: int) -> dict[str, object]:
    return {"arrival_ns": arrival, "events_ns": list(events)}


def test_streams_held_are_the_open_streams_inside_the_window() -> None:
    entries = [
        entry(0, 5, 10),  # [0, 10]: 10 of the window's 20
        entry(5, 8, 30),  # [5, 30]: 15 inside [0, 20]
        entry(12, 15, 18),  # [12, 18]: 6
        entry(25, 30, 40),  # after the window
        entry(1),  # no event: never a stream
    ]
    mean, top = streams_held(entries, (0, 20))
    assert mean == pytest.approx((10 + 15 + 6) / 20)
    assert top == 2  # [5, 10] and [12, 18] each overlap the second one, never all three


def test_pinning_needs_cores_for_every_process_and_says_how_many() -> None:
    have = len(os.sched_getaffinity(0))
    ns = parse_args(["--pin", "--layouts", "1,4", "--cpus-per-agent", str(have)])
    with pytest.raises(SystemExit, match=rf"--pin needs {2 + 4 * have} cores .*may use {have}"):
        cpu_plan(ns)
    assert cpu_plan(parse_args([])) is None


def test_layouts_must_be_agent_counts() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--layouts", "one"])
    assert parse_args(["--layouts", "1, 3"]).layouts == [1, 3]
