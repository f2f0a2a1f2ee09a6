from __future__ import annotations

from collections.abc import Iterator

import pytest
from kit.agents import Agents, agents


@pytest.fixture
def agent_procs() -> Iterator[Agents]:
    """`agent_procs.start(url, ...)` starts a `latbench agent`; all are stopped at teardown."""
    with agents() as a:
        yield a
