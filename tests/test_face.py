"""The public face (`latbench/__init__.py`) as a user meets it: every name it lists resolves, a
plain `import latbench` stays cheap, one benchmark runs through the face alone, and the worker
processes, which import only the stages they run, import cleanly."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import latbench
from latbench.load import runner

# Stages a user who only imported the package has no need of; the face imports them on first use.
STAGES = ("latbench.run", "latbench.client.stream", "latbench.load.runner", "latbench.summary")


@pytest.mark.parametrize("name", latbench.__all__)
def test_every_name_of_the_face_resolves(name: str) -> None:
    assert getattr(latbench, name) is not None
    assert name in dir(latbench)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'run_benchmarks'"):
        _ = latbench.run_benchmarks  # type: ignore[attr-defined]


def test_import_latbench_does_not_import_the_stages() -> None:
    # A fresh process: this one has imported the stages long ago.
    code = (
        "import sys, latbench; print(*sorted(m for m in sys.modules if m.startswith('latbench')))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(p.stdout.split())
    assert "latbench" in loaded
    assert not loaded & set(STAGES), loaded


def test_a_worker_does_not_import_the_simulator_server() -> None:
    # The spec embeds the simulator's config; a worker reads specs, and needs neither the
    # simulator's server nor aiohttp's web framework (latbench.sim imports on first use).
    code = "import sys, latbench.load.worker; print(*sorted(sys.modules))"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(p.stdout.split())
    assert "latbench.sim.config" in loaded
    assert not loaded & {"latbench.sim.server", "aiohttp.web"}, sorted(loaded)


def test_a_benchmark_through_the_face_alone(tmp_path: Path) -> None:
    """The docstring's example: spec -> target (the built-in simulator) -> run -> records ->
    summary, which is the one the run computed."""
    spec = latbench.load_spec(
        {
            "load": {"concurrency": 2, "requests": 6},
            "workload": {"input_tokens": 8, "output_tokens": 4},
            "sim": {"ttft": 0.005, "itl": 0.001},
            # A shared machine may delay the client's loop now and then: not this test's concern.
            "validity": {
                "ttft_tolerance": "50ms",
                "itl_tolerance": "50ms",
                "loop_lag_p99": "50ms",
                "queue_delay_p99": "50ms",
            },
            "output_dir": str(tmp_path),
        }
    )
    assert isinstance(spec, latbench.RunSpec)
    console = Console(file=io.StringIO())
    with latbench.target_url(spec) as url:
        result = asyncio.run(latbench.run_benchmark(spec, url, console))
    assert isinstance(result, latbench.BenchResult)
    assert result.ended == "completed"
    records = latbench.read_records(result.records_path)
    assert isinstance(records, latbench.RecordsFile)
    assert len(records.records) == 6 and all(r.ok for r in records.records)
    summary = latbench.summarize_file(records, spec)
    assert isinstance(summary, latbench.Summary)
    assert summary.to_dict() == result.summary.to_dict()


def test_a_worker_process_imports_its_module_once() -> None:
    # A package that imported its own worker module would make `python -m` load it a second
    # time, with a RuntimeWarning "'latbench.load.worker' found in sys.modules ...". With stdin
    # closed (an empty pipe, as from a parent that died) the worker reads no shard and ends.
    p = subprocess.run(
        [sys.executable, "-m", "latbench.load.worker"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "found in sys.modules" not in p.stderr, p.stderr


def test_the_workers_import_root_holds_the_package() -> None:
    # Workers get this on PYTHONPATH; a move once left it pointing at latbench/ itself, which put
    # the stage folders (cli, vllm, ...) on their import path as top-level modules.
    root = Path(runner._IMPORT_ROOT)
    assert (root / "latbench" / "__init__.py").is_file()
    assert root == Path(latbench.__file__).resolve().parents[1]
