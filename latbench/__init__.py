"""latbench: streaming-latency benchmarking for LLM serving.

The names below are the public face; everything else is internal and may move. A benchmark is a
pipeline, each stage a folder: `spec` (what to run) -> `workload` (what each request asks) ->
`load` (when each is sent, by worker processes) -> `client` (one request: sent, read, stamped)
-> `records` (the raw record, the run directory) -> `sinks` (records file, progress, Prometheus)
-> `summary` (every metric as a function of records). docs/architecture.md draws the map.

    spec = latbench.load_spec({"load": {"concurrency": 8, "requests": 200}})
    with latbench.target_url(spec) as url:           # no target: the built-in simulator
        result = asyncio.run(latbench.run_benchmark(spec, url, rich.console.Console()))
    summary = latbench.summarize_file(latbench.read_records(result.records_path), spec)

Names are imported when first used, so `import latbench` stays cheap for the worker and
simulator processes, which import only the stages they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latbench.shared.lazy import lazy_face

__version__ = "0.1.0"

__all__ = [  # grouped by stage in _HOME below
    "BenchResult",
    "ClientStats",
    "ErrorKind",
    "LatbenchError",
    "Record",
    "RecordsError",
    "RecordsFile",
    "RunFooter",
    "RunHeader",
    "RunSpec",
    "Sink",
    "Slo",
    "SpecError",
    "Summary",
    "TargetError",
    "__version__",
    "load_spec",
    "parse_slo",
    "read_records",
    "read_spec_file",
    "run_benchmark",
    "summarize",
    "summarize_file",
    "target_url",
]

# The module that defines each name of the face.
_HOME = {
    "latbench.spec": ("RunSpec", "Slo", "load_spec", "parse_slo", "read_spec_file"),
    "latbench.run": ("BenchResult", "run_benchmark", "target_url"),
    "latbench.records": ("Record", "RecordsFile", "RunFooter", "RunHeader", "read_records"),
    "latbench.sinks": ("Sink",),
    "latbench.summary": ("ClientStats", "Summary", "summarize", "summarize_file"),
    "latbench.shared.errors": (
        "ErrorKind",
        "LatbenchError",
        "RecordsError",
        "SpecError",
        "TargetError",
    ),
}
__getattr__, __dir__ = lazy_face(__name__, globals(), _HOME)


if TYPE_CHECKING:
    from latbench.records import Record, RecordsFile, RunFooter, RunHeader, read_records
    from latbench.run import BenchResult, run_benchmark, target_url
    from latbench.shared.errors import (
        ErrorKind,
        LatbenchError,
        RecordsError,
        SpecError,
        TargetError,
    )
    from latbench.sinks import Sink
    from latbench.spec import RunSpec, Slo, load_spec, parse_slo, read_spec_file
    from latbench.summary import ClientStats, Summary, summarize, summarize_file
