"""sweep.json: what a sweep writes beside its steps' directories, after every step.

So a killed sweep keeps every step it finished; the file lists each step's spec, summary, verdict
and records path, and every figure in it can be recomputed from those records (`latbench report`
does). The file is replaced whole, never written in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from latbench.sweep.capacity import Capacity
from latbench.sweep.plans import Plan, plan_dict
from latbench.sweep.steps import Step

SWEEP_FILE = "sweep.json"
SWEEP_SCHEMA = 1


@dataclass
class SweepResult:
    sweep_id: str
    directory: Path
    plan: Plan
    steps: list[Step]
    capacity: Capacity | None
    ended: str  # completed | stopped

    @property
    def path(self) -> Path:
        return self.directory / SWEEP_FILE

    @property
    def any_client_bound(self) -> bool:
        return any(s.verdict.outcome == "client-bound" for s in self.steps)


def write_sweep(result: SweepResult, started_wall_ns: int, settings: dict[str, Any]) -> None:
    doc = {
        "type": "latbench-sweep",
        "schema": SWEEP_SCHEMA,
        "sweep_id": result.sweep_id,
        "started_wall_ns": started_wall_ns,
        "ended": result.ended,
        "plan": plan_dict(result.plan),
        "settings": settings,
        "steps": [s.to_dict(result.directory) for s in result.steps],
        "capacity": None if result.capacity is None else result.capacity.to_dict(),
    }
    tmp = result.path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(result.path)  # readers never see a half-written file
