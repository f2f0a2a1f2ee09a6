from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from latbench.sim import SimConfig, SimProcess


@pytest.fixture
def sim() -> Iterator[Callable[..., SimProcess]]:
    """`sim(**SimConfig fields)` starts a simulator child process; all are stopped at teardown."""
    started: list[SimProcess] = []

    def start(**fields: object) -> SimProcess:
        proc = SimProcess(SimConfig.model_validate(fields))
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
