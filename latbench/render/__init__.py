"""Reports people look at: a self-contained HTML file (`html`), Markdown and CSV (`text`), for a
run, a sweep or a comparison of runs. Everything is recomputed from records (`load`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latbench.records.rundir import RunDir
from latbench.render.readback import Run, Sweep, load_results, load_run
from latbench.shared.errors import RecordsError
from latbench.summary.compare import Row, RunGroup, compare_runs
from latbench.sweep import SWEEP_FILE

REPORT_STEM = "report"


@dataclass(frozen=True)
class Outputs:
    html: Path | None
    md: Path | None
    csv: Path | None

    @classmethod
    def choose(
        cls, default_dir: Path, html: Path | None, md: Path | None, csv: Path | None
    ) -> Outputs:
        """The paths asked for; all three beside the results when none was."""
        if html is None and md is None and csv is None:
            stem = default_dir / REPORT_STEM
            return cls(stem.with_suffix(".html"), stem.with_suffix(".md"), stem.with_suffix(".csv"))
        return cls(html, md, csv)

    def written(self) -> list[Path]:
        return [p for p in (self.html, self.md, self.csv) if p is not None]


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def write_report(results: Run | Sweep, out: Outputs) -> None:
    from latbench.render import html, text  # plotly loads only when a report is written

    if isinstance(results, Sweep):
        _write(out.html, html.sweep_report(results) if out.html else "")
        _write(out.md, text.sweep_markdown(results))
        _write(out.csv, text.sweep_csv(results))
    else:
        _write(out.html, html.run_report(results) if out.html else "")
        _write(out.md, text.run_markdown(results))
        _write(out.csv, text.run_csv(results))


def results_dir(results: Run | Sweep) -> Path:
    return results.path.parent if isinstance(results, Sweep) else results.records_path.parent


@dataclass
class Side:
    """One side of a comparison: a run, or several runs of one configuration."""

    label: str
    runs: list[Run]

    @property
    def samples(self) -> RunGroup:
        return RunGroup([r.samples for r in self.runs])


@dataclass
class Comparison:
    sides: list[Side]  # the first is the baseline
    results: list[list[Row]]  # one list per side after the first
    margin: float

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sides]

    @property
    def runs(self) -> list[tuple[str, Run]]:
        """Every run, labelled by its side (and its place in it, with several)."""
        return [
            (s.label if len(s.runs) == 1 else f"{s.label} #{i + 1}", run)
            for s in self.sides
            for i, run in enumerate(s.runs)
        ]

    @property
    def run_to_run(self) -> bool:
        """Whether the intervals hold run-to-run variation: several runs on every side."""
        return all(len(s.runs) > 1 for s in self.sides)

    @property
    def method(self) -> str:
        """How the intervals were made, and what they leave out, in a sentence."""
        single = [s.label for s in self.sides if len(s.runs) == 1]
        if not single:
            return "95 % intervals: bootstrap over runs, then requests within each run."
        which = "per side" if len(single) == len(self.sides) else "in " + ", ".join(single)
        return (
            f"95 % intervals: bootstrap over requests. One run {which}: run-to-run variation "
            "is not accounted for (give several runs per side, e.g. run --repeat 3)."
        )

    def regressions(self) -> list[tuple[str, Row]]:
        return [
            (side.label, r)
            for side, rows in zip(self.sides[1:], self.results, strict=True)
            for r in rows
            if r.verdict == "worse"
        ]


def side_runs(path: str | Path) -> list[Path]:
    """The runs `path` names: itself, or each run directory right under it (`run --repeat`)."""
    p = Path(path)
    if not p.is_dir() or RunDir(p).records.is_file() or (p / SWEEP_FILE).is_file():
        return [p]
    runs = sorted(d for d in p.iterdir() if d.is_dir() and RunDir(d).records.is_file())
    if not runs:
        raise RecordsError(f"{p}: no records file in it, nor a run directory under it")
    return runs


def load_side(paths: Sequence[str | Path], letter: str) -> Side:
    runs: list[Run] = []
    for p in [r for path in paths for r in side_runs(path)]:
        loaded = load_results(p)
        if isinstance(loaded, Sweep):
            raise RecordsError(
                f"{p}: a sweep; compare takes runs (give one step's directory, e.g. "
                f"{loaded.steps[0].run_dir if loaded.steps else 'DIR/<run-id>'})"
            )
        runs.append(loaded)
    if len(runs) == 1:
        return Side(runs[0].run_id, runs)
    name = Path(paths[0]).name if len(paths) == 1 else letter
    return Side(f"{name} ({len(runs)} runs)", runs)


def compare_paths(
    sides: Sequence[Sequence[str | Path]],
    *,
    metrics: Sequence[str],
    stats: Sequence[str],
    margin: float,
    resamples: int,
    seed: int,
) -> Comparison:
    """Each side after the first against the first; a side is one run's path, a directory of
    runs, or several of either (see summary/compare.py: hierarchical bootstrap)."""
    loaded = [load_side(paths, chr(ord("A") + i)) for i, paths in enumerate(sides)]
    labels = [s.label for s in loaded]
    if len(set(labels)) < len(labels):  # the same run given twice, say: keep the labels apart
        for i, s in enumerate(loaded):
            s.label = f"{chr(ord('A') + i)}: {s.label}"
    base = loaded[0].samples
    results = [
        compare_runs(
            base,
            side.samples,
            metrics=metrics,
            stats=stats,
            margin=margin,
            resamples=resamples,
            seed=seed,
        )
        for side in loaded[1:]
    ]
    return Comparison(loaded, results, margin)


def write_comparison(cmp: Comparison, out: Outputs) -> None:
    from latbench.render import html, text

    if out.html is not None:
        _write(out.html, html.compare_report(cmp))
    _write(out.md, text.compare_markdown(cmp))
    _write(out.csv, text.compare_csv(cmp))


__all__ = [
    "Comparison",
    "Outputs",
    "Run",
    "Side",
    "Sweep",
    "compare_paths",
    "load_results",
    "load_run",
    "results_dir",
    "write_comparison",
    "write_report",
]
