"""`latbench compare` with several runs per side, as a user runs it: `run --repeat N` and
`sweep --repeat N` against the simulator write N runs under one parent, compare takes that parent
(or `--a RUN.. --b RUN..`) as a side, and its table fits 80 columns without cutting a figure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kit.cli import latbench

# Loose validity limits and SLOs, as in tests/summary/test_compare.py: a busy 2-core machine must
# not make a run client-bound (exit 4 before any regression is looked at).
LOOSE = (
    "validity: {loop_lag_p99: 2s, queue_delay_p99: 2s, client_cpu: 8, ttft_tolerance: 1s,\n"
    " itl_tolerance: 1s}\n"
    "slos: [ttft:p99<=1s, itl:p99<=1s, tpot:p99<=1s]\n"
)
RUN = (
    "--concurrency", "4", "--duration", "1.5s", "--warmup", "0.3s", "--output-tokens", "8",
    "--sim", "ttft=0.05",
)  # fmt: skip


def repeat(tmp: Path, name: str, itl: float, n: int = 2) -> Path:
    """`latbench run --repeat n`; the parent directory that holds the n runs."""
    spec = tmp / "loose.yaml"
    spec.write_text(LOOSE)
    out = tmp / name
    p = latbench(
        "run", "--spec", str(spec), "--out", str(out), "--repeat", str(n), *RUN,
        "--sim", f"itl={itl}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (parent,) = out.iterdir()
    assert parent.name.startswith("repeat-") and str(parent) in p.stdout
    return parent


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of one configuration, and two against a simulator twice as slow between tokens."""
    tmp = tmp_path_factory.mktemp("sides")
    return {"a": repeat(tmp, "a", 0.01), "slow": repeat(tmp, "slow", 0.02)}


def compare_json(*args: str) -> tuple[int, dict[str, Any], str]:
    p = latbench("compare", "--json", *args)
    try:
        return p.returncode, json.loads(p.stdout), p.stderr
    except json.JSONDecodeError:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}") from None


def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{r['metric']} {r['stat']}".strip(): r for r in doc["comparisons"][0]["rows"]}


def test_repeat_writes_n_runs_that_compare_takes_as_one_side(
    sides: dict[str, Path], tmp_path: Path
) -> None:
    runs = sorted(d for d in sides["a"].iterdir() if d.is_dir())
    assert len(runs) == 2 and all((d / "records.jsonl").is_file() for d in runs)
    md = tmp_path / "cmp.md"
    code, doc, err = compare_json(str(sides["a"]), str(sides["slow"]), "--md", str(md))
    assert code == 0, err
    assert doc["baseline_runs"] == [d.name for d in runs]
    assert len(doc["comparisons"][0]["runs"]) == 2
    assert doc["run_to_run_accounted"] is True and "over runs" in doc["method"]
    r = rows(doc)
    # 10 -> 20 ms between tokens: ITL and TPOT +100 %, seen through the runs' spread too.
    assert r["itl p50"]["verdict"] == "worse" and r["tpot p50"]["verdict"] == "worse"
    judged = [x for x in r.values() if x["ci_low"] is not None]
    assert judged and all(x["run_spread"] is not None for x in judged)
    # The Markdown says how the intervals were made and gives each row's spread.
    text = md.read_text()
    assert text.startswith(doc["method"]) and "| spread |" in text
    assert "run-to-run spread dominates" in text  # the legend


def test_the_sides_as_lists_of_runs_give_the_same_comparison(sides: dict[str, Path]) -> None:
    a = sorted(str(d) for d in sides["a"].iterdir())
    b = sorted(str(d) for d in sides["slow"].iterdir())
    _, by_dir, _ = compare_json(str(sides["a"]), str(sides["slow"]))
    code, by_list, err = compare_json("--a", *a, "--b", *b)
    assert code == 0, err
    assert by_list["comparisons"][0]["rows"] == by_dir["comparisons"][0]["rows"]
    # One run a side: today's bootstrap, and the output says what it leaves out.
    code, single, _ = compare_json(a[0], b[0])
    assert single["run_to_run_accounted"] is False
    assert "run-to-run variation is not accounted for" in single["method"]
    assert all(x["run_spread"] is None for x in single["comparisons"][0]["rows"])
    p = latbench("compare", a[0], b[0], env={"COLUMNS": "80"})
    assert "run-to-run variation is not accounted for" in " ".join(p.stdout.split())


@pytest.mark.parametrize("several", [True, False])
def test_the_table_fits_80_columns_without_cutting_a_figure(
    sides: dict[str, Path], several: bool
) -> None:
    a, b = sides["a"], sides["slow"]
    if not several:
        a, b = (sorted(d.iterdir())[0] for d in (a, b))
    p = latbench("compare", str(a), str(b), env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert max(map(len, lines)) <= 80, p.stdout
    assert "…" not in p.stdout
    # Each metric's row holds its figures, interval and verdict on one line.
    for name in ("ttft p50 ms", "itl p90 ms", "e2e p50 ms", "tokens/s", "requests/s"):
        (line,) = [ln for ln in lines if ln.lstrip().startswith(name)]
        cells = line.split()
        assert re.search(r"\[[+-][\d,.]+%, [+-][\d,.]+%\]", line), line
        assert {"same", "worse", "better"} & set(cells), line
        if several:  # the spread column: a ratio, "!" after it when it dominates
            assert cells[-1] == "!" or re.fullmatch(r"[\d,.]+|inf", cells[-1]), line


def test_sweep_repeat_interleaves_whole_sweeps(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    out = tmp_path / "sweeps"
    p = latbench(
        "sweep", "--spec", str(spec), "--out", str(out), "--repeat", "2", "--no-report",
        "--concurrency", "1,2", "--duration", "1s", "--warmup", "0.2s", "--output-tokens", "4",
        "--sim", "ttft=0.02", "--sim", "itl=0.005",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (parent,) = out.iterdir()
    sweeps = sorted(parent.iterdir())
    assert len(sweeps) == 2
    for sweep in sweeps:
        doc = json.loads((sweep / "sweep.json").read_text())
        assert [s["value"] for s in doc["steps"]] == [1, 2]
    # One step of each repeat makes a side.
    code, doc, err = compare_json(
        "--a", *(str(next(s.glob("*-s01"))) for s in sweeps),
        "--b", *(str(next(s.glob("*-s02"))) for s in sweeps),
    )  # fmt: skip
    assert code == 0, err
    assert rows(doc)["requests_per_s"]["verdict"] == "better"  # two users finish more than one


def said(p: Any) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(p.stderr.split())


def test_bad_sides_are_named(sides: dict[str, Path], tmp_path: Path) -> None:
    a = str(sides["a"])
    p = latbench("compare", "--a", a)
    assert p.returncode == 2 and "--a and --b go together" in said(p)
    p = latbench("compare", a, "--a", a, "--b", a)
    assert p.returncode == 2 and "not both" in said(p)
    (tmp_path / "empty").mkdir()
    p = latbench("compare", a, str(tmp_path / "empty"))
    assert p.returncode == 1 and "no records file in it, nor a run directory" in said(p)
    assert "Traceback" not in said(p)
    p = latbench("run", "--repeat", "0")
    assert p.returncode == 2 and "--repeat 0: give 1 or more" in said(p)
    p = latbench("run", "--repeat", "2", "--json")
    assert p.returncode == 2 and "--json prints one summary" in said(p)
