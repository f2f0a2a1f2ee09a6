"""A run's directory: the one module that knows its layout.

A run writes everything into one directory, `<output_dir>/<run_id>/`: the records file as each
request finishes, the server's scrapes and the results file when it ends, and vLLM's log when
latbench launched the server. The run writes them and every reader (`latbench summary`, reports,
sweeps, the service) finds them through `RunDir`, so the names are spelled here once and the
writer and its readers cannot drift apart. What the files mean lies elsewhere: the records'
codec in `records.record`, the scrapes in `summary.server_metrics`; this module only places,
writes and reads bytes.

results.json is for other programs: latbench itself recomputes every figure from the records,
and uses the results file only to find the records file it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from latbench.records.record import RecordsFile, read_records
from latbench.shared.errors import RecordsError

RECORDS_FILE = "records.jsonl"
RESULTS_FILE = "results.json"
SERVER_METRICS_FILE = "server_metrics.json"
VLLM_LOG = "vllm.log"


@dataclass(frozen=True)
class RunDir:
    """The files of the run in `path`. The records file is `records_name` in it: records.jsonl,
    unless a reader was handed a records file of another name."""

    path: Path
    records_name: str = RECORDS_FILE

    @classmethod
    def of_records(cls, records: Path) -> RunDir:
        """The run a records file belongs to: the other files lie beside it."""
        return cls(records.parent, records.name)

    @classmethod
    def find(cls, path: Path) -> RunDir:
        """The run that `path` names: its directory, its results file (or any other .json: the
        records file it names), or its records file. Whether the records exist is the caller's
        to check, so that its message names the file it looked for."""
        if path.is_dir():
            return cls(path)
        if path.name == RESULTS_FILE or path.suffix == ".json":
            try:
                doc = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as e:
                raise RecordsError(f"{path}: not a readable results file ({e})") from None
            name = doc.get("records", RECORDS_FILE) if isinstance(doc, dict) else RECORDS_FILE
            return cls.of_records(path.parent / name)
        return cls.of_records(path)

    @property
    def records(self) -> Path:
        return self.path / self.records_name

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def server_metrics(self) -> Path:
        return self.path / SERVER_METRICS_FILE

    @property
    def vllm_log(self) -> Path:
        return self.path / VLLM_LOG

    def read_records(self) -> RecordsFile:
        return read_records(self.records)

    def write_results(self, results: dict[str, Any]) -> None:
        # numpy scalars may reach it through the summary; orjson writes them as numbers.
        self.results.write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )

    def write_server_metrics(self, scrapes: dict[str, Any]) -> None:
        self.server_metrics.write_bytes(orjson.dumps(scrapes, option=orjson.OPT_INDENT_2))

    def read_server_metrics(self) -> Any | None:
        """The scrapes as JSON data, None when the run has none (it scraped no /metrics);
        orjson.JSONDecodeError when the file is not JSON."""
        if not self.server_metrics.exists():
            return None
        return orjson.loads(self.server_metrics.read_bytes())
