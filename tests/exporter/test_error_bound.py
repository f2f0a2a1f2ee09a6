"""The measured error bounds as Prometheus histograms: `latbench_ttft_error_bound_seconds` per
succeeded measured request and `latbench_itl_error_bound_seconds` per gap, each bucket equal to
the exact count from the same records (summary.bound.record_bounds_s), with the tolerances as
exact boundaries."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from rich.console import Console

from latbench.exporter import HISTOGRAMS, LatbenchMetrics
from latbench.exporter.series import ERROR_BOUND_BUCKETS
from latbench.records import read_records
from latbench.run import run_benchmark
from latbench.spec import load_spec
from latbench.summary.bound import record_bounds_s


def test_the_tolerances_are_exact_boundaries_fine_around_them() -> None:
    assert list(ERROR_BOUND_BUCKETS) == sorted(set(ERROR_BOUND_BUCKETS))
    assert 0.001 in ERROR_BOUND_BUCKETS and 0.005 in ERROR_BOUND_BUCKETS
    assert len([b for b in ERROR_BOUND_BUCKETS if 0.001 <= b <= 0.005]) >= 5
    names = {h.name for h in HISTOGRAMS}
    assert {"latbench_ttft_error_bound_seconds", "latbench_itl_error_bound_seconds"} <= names


def test_each_request_and_gap_bound_is_observed(sim_url: str, tmp_path: Path) -> None:
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
    samples: dict[tuple[str, str | None], float] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            samples[(s.name, s.labels.get("le"))] = s.value

    measured = [r for r in read_records(result.records_path).records if r.phase == "measure"]
    ttft, gaps = [], []
    for r in measured:
        if r.ok:
            t, g = record_bounds_s(r)
            if t is not None:
                ttft.append(t)
            if g is not None:
                gaps.extend(g.tolist())
    # Kernel stamps on Linux: every succeeded request carries its bound.
    assert len(ttft) == sum(r.ok for r in measured) == len(measured) > 0
    assert len(gaps) == len(measured) * 5  # six events, five gaps each
    for name, values in (("ttft", ttft), ("itl", gaps)):
        family = f"latbench_{name}_error_bound_seconds"
        assert samples[(f"{family}_count", None)] == len(values)
        v = np.asarray(values)
        for b in ERROR_BOUND_BUCKETS:
            le = floatToGoString(b)
            assert samples[(f"{family}_bucket", le)] == int((v <= b).sum()), (name, b)
        assert samples[(f"{family}_sum", None)] == pytest.approx(sum(values), abs=1e-9)
