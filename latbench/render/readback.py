"""Reading results for reports and comparisons: a run (its directory, `results.json` or
`records.jsonl`) or a sweep (its directory or `sweep.json`). Every summary, verdict and capacity
is recomputed here from the records; the figures stored in the results files are not read."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from latbench.records.record import RecordsFile
from latbench.records.rundir import RunDir
from latbench.shared.errors import RecordsError
from latbench.spec import RunSpec, load_spec
from latbench.summary.compare import RunSamples
from latbench.summary.energy import Energy, energy_of
from latbench.summary.server_metrics import (
    Reconciliation,
    ServerMetricsError,
    read_server_metrics,
    reconcile,
)
from latbench.summary.spans import SpanJoin, join_spans
from latbench.summary.summary import Summary, summarize_file
from latbench.sweep import (
    SWEEP_FILE,
    Capacity,
    Step,
    Variable,
    find_capacity,
    judge_step,
)


@dataclass
class Run:
    label: str
    records_path: Path
    file: RecordsFile
    spec: RunSpec
    summary: Summary

    @property
    def run_id(self) -> str:
        return self.file.header.run_id if self.file.header else self.records_path.parent.name

    @property
    def environment(self) -> dict[str, Any]:
        return self.file.header.environment if self.file.header else {}

    @property
    def public_spec(self) -> dict[str, Any]:
        return self.file.header.spec if self.file.header else {}

    @cached_property
    def reconciliation(self) -> Reconciliation | None:
        """With the server's own metrics, when the run scraped them (docs/vllm.md)."""
        try:
            server = read_server_metrics(RunDir.of_records(self.records_path))
            return None if server is None else reconcile(self.file.records, server)
        except ServerMetricsError:
            return None  # `latbench summary` says why; a report shows what it can

    @cached_property
    def energy(self) -> Energy | None:
        """Energy per token from the run's GPU samples, when it took any (docs/gpu.md)."""
        w = self.summary.window
        if not self.file.gpu or w is None:
            return None
        return energy_of(self.file.gpu, self.file.records, (w.start_ns, w.end_ns))

    @cached_property
    def spans(self) -> SpanJoin | None:
        """Each request joined with the server's span of it, when the run received spans."""
        footer = self.file.footer
        receiver = None if footer is None else footer.span_receiver
        return join_spans(self.file.records, self.file.spans, self.file.header, receiver)

    @cached_property
    def samples(self) -> RunSamples:
        return RunSamples.of_file(self.file, self.spec)


def load_run(path: str | Path, label: str | None = None) -> Run:
    run = RunDir.find(Path(path))
    p = run.records
    if not p.is_file():
        raise RecordsError(f"{p}: no such records file")
    f = run.read_records()
    if f.header is None:
        raise RecordsError(f"{p}: no header line, so no spec to summarize it with")
    spec = load_spec(f.header.spec, source=str(p))
    return Run(label or f.header.run_id, p, f, spec, summarize_file(f, spec))


@dataclass
class Sweep:
    path: Path
    doc: dict[str, Any]
    steps: list[Step]
    runs: list[Run]  # one per step, in step order
    capacity: Capacity | None
    variable: Variable
    plan_kind: str
    notes: list[str] = field(default_factory=list)

    @property
    def sweep_id(self) -> str:
        return str(self.doc.get("sweep_id", self.path.parent.name))


def load_sweep(path: str | Path) -> Sweep:
    p = Path(path)
    if p.is_dir():
        p = p / SWEEP_FILE
    try:
        doc = orjson.loads(p.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise RecordsError(f"{p}: not a readable sweep file ({e})") from None
    if not isinstance(doc, dict) or doc.get("type") != "latbench-sweep":
        raise RecordsError(f"{p}: not a latbench sweep file")
    max_error_rate = float(doc.get("settings", {}).get("max_error_rate", 0.01))
    steps, runs, notes = [], [], []
    for d in doc.get("steps", []):
        # A step whose records are gone or unreadable is named and left out; the others remain.
        try:
            run = load_run(p.parent / d["records"], label=f"{d['variable']} {d['value']:g}")
            step = Step(
                index=int(d["index"]),
                role=d["role"],
                variable=d["variable"],
                value=float(d["value"]),
                run_id=run.run_id,
                run_dir=run.records_path.parent,
                spec=run.public_spec,
                summary=run.summary,
                verdict=judge_step(run.summary, max_error_rate),
                ended=d.get("ended", "completed"),
            )
        except (RecordsError, OSError) as e:
            notes.append(f"step {d.get('index', '?')}: {e}")
            continue
        except (KeyError, TypeError, ValueError) as e:
            notes.append(
                f"step {d.get('index', '?') if isinstance(d, dict) else '?'}: bad entry ({e!r})"
            )
            continue
        steps.append(step)
        runs.append(run)
    if not steps:
        raise RecordsError(f"{p}: no step with readable records" + "".join(f"; {n}" for n in notes))
    plan = doc.get("plan", {})
    variable: Variable = plan.get("variable", "rate")
    return Sweep(
        path=p,
        doc=doc,
        steps=steps,
        runs=runs,
        capacity=find_capacity(steps, variable),
        variable=variable,
        plan_kind=str(plan.get("kind", "list")),
        notes=notes,
    )


def load_results(path: str | Path) -> Run | Sweep:
    """A sweep when `path` is a sweep file or directory, else a run."""
    p = Path(path)
    if (p.is_dir() and (p / SWEEP_FILE).is_file()) or p.name == SWEEP_FILE:
        return load_sweep(p)
    if p.suffix == ".json" and p.is_file():
        try:
            doc = orjson.loads(p.read_bytes())
        except orjson.JSONDecodeError as e:
            raise RecordsError(f"{p}: not valid JSON ({e})") from None
        if isinstance(doc, dict) and doc.get("type") == "latbench-sweep":
            return load_sweep(p)
    if not p.exists():
        raise RecordsError(f"{p}: no such file or directory")
    return load_run(p)


__all__ = ["Run", "Sweep", "load_results", "load_run", "load_sweep"]
