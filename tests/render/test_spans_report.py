"""What a user sees of the per-request join with the server's spans: `latbench summary` (table
and --json), and the Markdown and CSV reports, from a real `latbench run --otlp-receiver`
against a tracing simulator (kit/spans.py): the run's own receiver got the spans."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from kit.cli import latbench
from kit.spans import run_with_spans

from latbench.records.record import Record, ServerSpan, read_records
from latbench.render.spans import split_line
from latbench.summary.spans import join_spans

N = 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spans")
    # Two slots for four users: requests queue, so each part of TTFT is there to see.
    return run_with_spans(
        out, "--requests", str(N), "--concurrency", "4", "--output-tokens", "6",
        max_batch=2, ttft=0.01, itl=0.002,
    )  # fmt: skip


def test_the_records_file_holds_one_span_per_request(run_dir: Path) -> None:
    f = read_records(run_dir / "records.jsonl")
    assert len(f.spans) == len(f.records) == N
    assert {s.trace_id for s in f.spans} == {r.trace_id for r in f.records}
    # The run joined them itself, and said what its receiver saw.
    results = json.loads((run_dir / "results.json").read_text())
    assert results["server_spans"]["matched"] == N
    receiver = results["server_spans"]["receiver"]
    assert receiver["spans"] == N and receiver["rejected_spans"] == 0
    assert receiver["rejected_payloads"] == 0
    assert f.footer is not None and f.footer.span_receiver == receiver


def test_summary_prints_the_split_and_its_json_carries_it(run_dir: Path) -> None:
    p = latbench("summary", str(run_dir / "records.jsonl"), env={"COLUMNS": "140"})
    assert p.returncode in (0, 4), p.stderr
    assert f"client vs server, per request: {N} measured requests joined" in p.stdout
    for label in ("TTFT, client", "TTFT, server", "outside the server", "queue", "prefill"):
        assert label in p.stdout
    assert "TTFT split: mean" in p.stdout and "span start minus send" in p.stdout
    assert "front end" in p.stdout and "intake" not in p.stdout  # one name for one part
    assert "-0.0%" not in p.stdout
    assert "outside the server holds the client's own stamping error" in p.stdout
    assert "no span" not in p.stdout  # every request had its span: no count to warn about

    p = latbench("summary", str(run_dir / "records.jsonl"), "--json")
    doc = json.loads(p.stdout)["server_spans"]
    # The summary of the file says exactly what the run said.
    assert doc == json.loads((run_dir / "results.json").read_text())["server_spans"]
    assert doc["matched"] == N and doc["requests_without_span"] == 0
    assert doc["spans_without_request"] == doc["duplicate_spans"] == 0
    assert doc["server_ttft_above_client"] == 0 and doc["token_mismatches"] == 0
    rows = doc["requests"]
    assert len(rows) == N
    for row in rows:
        # Exactly: each part of client TTFT, from the two sides' own clocks.
        parts = row["outside_ttft"] + row["front_end"] + row["queue"] + row["prefill"]
        assert parts == pytest.approx(row["client_ttft"], abs=1e-9)
        assert 0 < row["outside_ttft"] < row["client_ttft"]
        assert row["server_tokens"] == row["client_tokens"] == 6
    # Two slots for four users: most requests waited for one.
    assert doc["distributions"]["queue"]["p90"] > 0.005
    # The client's stamping error travels with the figures that hold its stamps.
    bound = doc["distributions"]["outside_ttft"]["error_bound"]
    assert bound["known"] is True and bound["p50"]["over_s"] >= 0
    assert sum(doc["ttft_split"]["of_mean"].values()) == pytest.approx(1.0)
    assert abs(doc["clock_skew"]["median"]) < 0.05  # one host: only the one-way delay


def test_markdown_and_csv_reports(run_dir: Path, tmp_path: Path) -> None:
    md, csv_path = tmp_path / "r.md", tmp_path / "r.csv"
    p = latbench("report", str(run_dir), "--md", str(md), "--csv", str(csv_path))
    assert p.returncode == 0, p.stderr
    text = md.read_text()
    assert f"client vs server, per request: {N} measured requests joined" in text
    assert "| outside the server |" in text and "TTFT split: mean" in text
    (row,) = csv.DictReader(io.StringIO(csv_path.read_text()))
    assert int(row["spans_matched"]) == N
    assert float(row["span_outside_ttft_p50_ms"]) > 0
    assert float(row["span_client_ttft_mean_ms"]) > float(row["span_server_ttft_mean_ms"])


def test_a_share_that_rounds_to_zero_reads_as_zero() -> None:
    """The front end of the simulator's spans is server TTFT - queue - prefill = 0 up to a
    float residue; the split line says 0.0%, as the table says +0.00, never -0.0%."""
    residue = 0.03 - 0.01 - 0.02  # -3.5e-18 in floats
    assert residue < 0
    spans = [
        ServerSpan(trace_id=f"{i + 1:032x}", span_id="1" * 16, name="llm_request",
                   received_ns=0, ttft_s=0.03, queue_s=0.01, prefill_s=0.02)
        for i in range(3)
    ]  # fmt: skip
    records = [
        Record(run_id="r", seq=i, phase="measure", api="chat", t_intended=0, t_sent=0,
               ev_t=(32_000_000,), ev_kind="c", trace_id=f"{i + 1:032x}")
        for i in range(3)
    ]  # fmt: skip
    j = join_spans(records, spans)
    assert j is not None
    line = split_line(j)
    assert line is not None and "front end 0.0%" in line and "-0.0%" not in line
