"""The measured error bounds as Prometheus histograms: `latbench_ttft_error_bound_seconds` per
succeeded measured request and `latbench_itl_error_bound_seconds` per gap, with the tolerances as
exact boundaries. Hand-built records with known late-stamp bounds go through the Prometheus sink,
and every bucket is checked against counts worked out by hand; a real run shows that every
request and gap carries a bound on Linux."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from rich.console import Console

from latbench.exporter import HISTOGRAMS, LatbenchMetrics
from latbench.exporter.series import ERROR_BOUND_BUCKETS
from latbench.records import Record, read_records
from latbench.run import run_benchmark
from latbench.shared.errors import ErrorKind
from latbench.sinks.prometheus import PrometheusSink, run_labels
from latbench.spec import load_spec

MS = 1_000_000
Samples = dict[tuple[str, str | None], float]


def scrape(registry: CollectorRegistry) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, s.labels.get("le"))] = s.value
    return out


def test_the_tolerances_are_exact_boundaries_fine_around_them() -> None:
    assert list(ERROR_BOUND_BUCKETS) == sorted(set(ERROR_BOUND_BUCKETS))
    assert 0.001 in ERROR_BOUND_BUCKETS and 0.005 in ERROR_BOUND_BUCKETS
    assert len([b for b in ERROR_BOUND_BUCKETS if 0.001 <= b <= 0.005]) >= 5
    names = {h.name for h in HISTOGRAMS}
    assert {"latbench_ttft_error_bound_seconds", "latbench_itl_error_bound_seconds"} <= names


def rec(
    seq: int,
    ev_late: tuple[int, ...] | None,
    sent_late: int | None = 0,
    phase: str = "measure",
    error: ErrorKind | None = None,
) -> Record:
    """A request sent at 0 whose events come 50 ms in and 10 ms apart, one per `ev_late`."""
    n = 3 if ev_late is None else len(ev_late)
    ev = tuple(50 * MS + 10 * MS * i for i in range(n))
    return Record(
        run_id="t", seq=seq, phase=phase, api="chat", t_intended=0, t_sent=0,
        t_end=ev[-1] + 1, ev_t=ev, ev_kind="c" * n, error=error,
        status=500 if error else 200, sent_late=sent_late, ev_late=ev_late,
    )  # fmt: skip


def test_known_bounds_land_in_the_buckets_worked_out_by_hand() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(LatbenchMetrics(registry), run_labels(None, "m", "chat", "s"), ())
    for r in (
        # TTFT bound: the wider of the first event's (0.5 ms) and the send's (2 ms): 2 ms.
        # Gaps: the larger of their two events' bounds: 0.5, 3 and 3 ms.
        rec(0, (MS // 2, 0, 3 * MS, 0), sent_late=2 * MS),
        # Exactly the TTFT tolerance (5 ms), and gaps of 5 and 1 ms.
        rec(1, (5 * MS, MS, 0)),
        # One ns over the tolerance: the next bucket. One gap, as late.
        rec(2, (5 * MS + 1, 0)),
        # No send bound: no TTFT bound, though its one gap (0) is bounded.
        rec(3, (0, 0), sent_late=None),
        # Nothing observed: no event bounds; a failed request; a warm-up request.
        rec(4, None),
        rec(5, (9 * MS, 9 * MS), error=ErrorKind.HTTP_STATUS),
        rec(6, (9 * MS, 9 * MS), phase="warmup"),
    ):
        sink.add(r)
    sink.close(None)
    got = scrape(registry)
    # Cumulative counts at each boundary of ERROR_BOUND_BUCKETS (10 us ... 1 s), then +Inf.
    # TTFT bounds 2, 5 and 5.000001 ms; gap bounds 0, 0.5, 1, 3, 3, 5 and 5.000001 ms.
    #         10u 25u 50u .1m .25m .5m .75m 1m 1.5m 2m 3m 4m 5m 7.5m 10m ... 1s +Inf
    ttft = [0] * 9 + [1, 1, 1, 2] + [3] * 9
    itl = [1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 5, 5, 6] + [7] * 9
    for name, counts, total in (("ttft", ttft, 0.012000001), ("itl", itl, 0.017500001)):
        family = f"latbench_{name}_error_bound_seconds"
        les = [floatToGoString(b) for b in ERROR_BOUND_BUCKETS] + ["+Inf"]
        assert [got[(f"{family}_bucket", le)] for le in les] == counts, name
        assert got[(f"{family}_count", None)] == counts[-1]
        assert got[(f"{family}_sum", None)] == pytest.approx(total, abs=1e-12)


def test_a_real_run_observes_every_request_and_gap(sim_url: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spec = load_spec(
        {
            "name": "bound",
            "target": {"base_url": sim_url, "api": "chat"},
            "workload": {"input_tokens": 16, "output_tokens": 6},
            "load": {"concurrency": 3, "requests": 24, "warmup_requests": 3},
            "output_dir": str(tmp_path),
        }
    )
    result = asyncio.run(
        run_benchmark(spec, sim_url, Console(file=io.StringIO()), metrics=LatbenchMetrics(registry))
    )
    samples = scrape(registry)
    measured = [r for r in read_records(result.records_path).records if r.phase == "measure"]
    ok = [r for r in measured if r.ok]
    # Kernel stamps on Linux: every succeeded request carries its bound, and every gap.
    assert len(ok) == len(measured) > 0
    assert all(r.sent_late is not None and r.ev_late is not None for r in ok)
    assert samples[("latbench_ttft_error_bound_seconds_count", None)] == len(ok)
    assert samples[("latbench_itl_error_bound_seconds_count", None)] == len(ok) * 5  # 6 events
