"""Reports people look at: a self-contained HTML file (`html`), Markdown and CSV (`text`), for a
run, a sweep or a comparison of runs. Everything is recomputed from records (`load`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latbench.render.readback import Run, Sweep, load_results, load_run
from latbench.shared.errors import RecordsError
from latbench.summary.compare import Row, compare_runs

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
class Comparison:
    runs: list[tuple[str, Run]]  # the first is the baseline
    results: list[list[Row]]  # one list per run after the first
    margin: float

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.runs]

    def regressions(self) -> list[tuple[str, Row]]:
        return [
            (label, r)
            for (label, _), rows in zip(self.runs[1:], self.results, strict=True)
            for r in rows
            if r.verdict == "worse"
        ]


def compare_paths(
    paths: Sequence[str | Path],
    *,
    metrics: Sequence[str],
    stats: Sequence[str],
    margin: float,
    resamples: int,
    seed: int,
) -> Comparison:
    runs: list[tuple[str, Run]] = []
    for p in paths:
        loaded = load_results(p)
        if isinstance(loaded, Sweep):
            raise RecordsError(
                f"{p}: a sweep; compare takes runs (give one step's directory, e.g. "
                f"{loaded.steps[0].run_dir if loaded.steps else 'DIR/<run-id>'})"
            )
        runs.append((loaded.run_id, loaded))
    labels = [label for label, _ in runs]
    if len(set(labels)) < len(labels):  # the same run given twice, say: keep the labels apart
        runs = [(f"{chr(ord('A') + i)}: {label}", run) for i, (label, run) in enumerate(runs)]
    base = runs[0][1]
    results = [
        compare_runs(
            base.samples,
            run.samples,
            metrics=metrics,
            stats=stats,
            margin=margin,
            resamples=resamples,
            seed=seed,
        )
        for _, run in runs[1:]
    ]
    return Comparison(runs, results, margin)


def write_comparison(cmp: Comparison, out: Outputs) -> None:
    from latbench.render import html, text

    if out.html is not None:
        _write(out.html, html.compare_report(cmp.runs, cmp.results, cmp.margin))
    _write(out.md, text.compare_markdown(cmp.labels, cmp.results))
    _write(out.csv, text.compare_csv(cmp.labels, cmp.results))


__all__ = [
    "Comparison",
    "Outputs",
    "Run",
    "Sweep",
    "compare_paths",
    "load_results",
    "load_run",
    "results_dir",
    "write_comparison",
    "write_report",
]
