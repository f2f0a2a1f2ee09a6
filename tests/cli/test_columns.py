"""What a person reads in a terminal of 60 to 200 columns: `latbench run`, `summary`, `sweep` and
`runs list`, as child processes over loopback, with the terminal's width in COLUMNS (rich reads
it). No table may cut a cell ("1,322…", "compl…"): each number, state and id a table shows must
appear whole, and no line may be wider than the terminal. The run has a failed request (the
errors table), an E2E past a second (the row in seconds) and the simulator's vLLM metrics (the
client-vs-server tables)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import cli
from kit.service import TOKEN, Service, running

from latbench.render.terminal import LABELS
from latbench.shared.units import row_unit, short

WIDTHS = (60, 80, 100, 200)
SIM = (
    "--sim", "ttft=1.1", "--sim", "itl=0.01",
    "--sim", "faults=[{kind: http_status, every: 4, status: 503}]",
)  # fmt: skip
# A verdict is what the shared machine makes of the run; these figures are the tables'.
RUN_EXITS = {0, 3, 4, 6}


# Lines that name a file: printed whole on one line for the terminal to wrap, so that a path
# (and the run or sweep id in it) can be copied in one piece.
PATH_LINE = re.compile(r"^(records|results|sweep|report): /")


def latbench(width: int, *args: str, env: dict[str, str | None] | None = None) -> str:
    """stdout, then stderr (where a sweep's progress goes)."""
    p = cli.latbench(*args, timeout=180, env={**(env or {}), "COLUMNS": str(width)})
    assert p.returncode in RUN_EXITS, p.stderr
    return p.stdout + p.stderr


def fits(text: str, width: int) -> None:
    assert "…" not in text, text
    wide = [
        line
        for line in text.splitlines()
        if len(line.rstrip()) > width and not PATH_LINE.match(line)
    ]
    assert not wide, (width, wide)


def row_cells(text: str, label: str) -> list[tuple[str, list[str]]]:
    """Each latency row of `label`, one per table it is split into: (unit, cells)."""
    out = []
    for line in text.splitlines():
        m = re.match(rf"\s*{re.escape(label)}\s+(ms|s)\s+(.*)$", line)
        if m:
            out.append((m.group(1), m.group(2).split()))
    return out


def latency_rows_whole(text: str, summary: dict[str, Any]) -> None:
    """Every latency figure of the summary, formatted as the table formats it, in its row."""
    pcts = [k for k in summary["latency"]["ttft"] if re.fullmatch(r"p[\d.]+", k)]
    for metric, label in LABELS.items():
        st = summary["latency"][metric]
        figures = [st["mean"], *(st[k] for k in pcts), st["max"]]
        unit = row_unit(figures)
        expected = [f"{st['count']:,}", *(short(v, unit) for v in figures)]
        rows = row_cells(text, label)
        assert rows, (label, text)
        assert {u for u, _ in rows} == {unit}, (label, rows)
        assert [c for _, cells in rows for c in cells] == expected, (label, rows, expected)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cols")
    stdout = latbench(
        80, "run", "--duration", "2s", "--concurrency", "2", "--output-tokens", "8",
        "--out", str(out), *SIM,
    )  # fmt: skip
    (run,) = out.iterdir()
    return run, stdout


def test_a_run_at_80_columns_shows_every_figure_whole(run_dir: tuple[Path, str]) -> None:
    run, text = run_dir
    fits(text, 80)
    records = run / "records.jsonl"
    summary = json.loads(cli.latbench("summary", str(records), "--json").stdout)
    assert summary["requests"]["failed"] >= 1 and summary["latency"]["e2e"]["max"] > 1.0
    latency_rows_whole(text, summary)
    assert row_cells(text, "E2E")[0][0] == "s"  # past a second: the row reads in seconds
    for kind, count in summary["errors"]["by_kind"].items():
        assert re.search(rf"^\s*{kind}\s+{count:,}\s*$", text, re.M), (kind, text)
    # The client-vs-server tables: the simulator serves vLLM's metrics.
    assert "client vs server" in text
    assert len(re.findall(r"[-+][\d,.]+ to [-+][\d,.]+", text)) == 4, text  # p99 outside, each
    assert f"records: {records}\n" in text and f"results: {run / 'results.json'}\n" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_a_summary_fits_any_width(run_dir: tuple[Path, str], width: int) -> None:
    run, _ = run_dir
    records = run / "records.jsonl"
    text = latbench(width, "summary", str(records))
    fits(text, width)
    summary = json.loads(cli.latbench("summary", str(records), "--json").stdout)
    latency_rows_whole(text, summary)
    assert "client vs server" in text


def test_a_sweep_at_80_columns(tmp_path: Path) -> None:
    text = latbench(
        80, "sweep", "--rate", "5,40", "--mode", "constant", "--duration", "1.5s",
        "--warmup", "0.3s", "--output-tokens", "8", "--out", str(tmp_path), "--no-report",
        "--sim", "max_batch=2", "--sim", "ttft=0.02", "--sim", "itl=0.01",
    )  # fmt: skip
    fits(text, 80)
    (sweep,) = tmp_path.glob("sweep-*/sweep.json")
    doc = json.loads(sweep.read_text())
    assert len(doc["steps"]) == 2
    # Each step's line, whatever the shared machine made of the step.
    step = r"^  (pass|fail|client-bound): [\d.]+ req/s, p99 TTFT [\d.,]+ ms"
    steps = re.findall(step, text, re.M)
    assert len(steps) == 2, text
    assert f"sweep: {sweep}\n" in text


@pytest.fixture(scope="module")
def svc(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running(sim_url, tmp_path_factory.mktemp("svc")) as s:
        yield s


def test_runs_list_keeps_ids_states_and_times_whole(svc: Service, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("target: sim\nload: {concurrency: 1, requests: 2}\n")
    env: dict[str, str | None] = {"LATBENCH_SERVER": svc.url, "LATBENCH_TOKEN": TOKEN}
    for name in ("nightly-regression-check", "a-second-run-with-a-long-name"):
        run_id = latbench(200, "submit", str(spec), "--name", name, env=env).split()[0]
        svc.wait_state(run_id, "completed")
    runs = json.loads(latbench(200, "runs", "list", "--json", env=env))["runs"]
    assert len(runs) >= 2
    for width in WIDTHS:
        text = latbench(width, "runs", "list", env=env)
        fits(text, width)
        lines = text.splitlines()
        for r in runs:
            created = r["created_at"].replace("T", " ")[:19]
            for whole in (r["id"], r["state"], created, r["name"]):
                assert any(whole in line for line in lines), (width, whole, text)
            # The id starts the row of each table the list is split into.
            assert any(line.split()[:1] == [r["id"]] for line in lines), (width, text)
