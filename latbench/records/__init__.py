"""What a run leaves behind: the per-request record and the directory that holds it.

    record   the raw record (observed facts only), the server's span of a request, a GPU sample,
             the records file's header and footer, and their JSON Lines codec (`read_records`)
    rundir   a run's directory: the one place its file names are spelled, results.json and
             server_metrics.json written and read, and the run a path names found

Every stage above reads and writes runs through these; nothing here knows what a summary is.
"""

from latbench.records.record import (
    GpuSample,
    Record,
    RecordsFile,
    RunFooter,
    RunHeader,
    ServerSpan,
    read_records,
)
from latbench.records.rundir import RunDir

__all__ = [
    "GpuSample",
    "Record",
    "RecordsFile",
    "RunDir",
    "RunFooter",
    "RunHeader",
    "ServerSpan",
    "read_records",
]
