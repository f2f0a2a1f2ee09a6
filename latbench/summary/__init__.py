"""Every figure of a run, as a pure function of its records (METRICS.md is the contract).

samples    each metric's arithmetic, once: per record (the Prometheus sink, progress) and
           vectorised over a run (`Samples`: the summary, compare, charts)
summary    `summarize`: the distributions, token counts, rates, SLO attainment, goodput;
           `summarize_file`: the same from a records file and its spec
bound      the measured error bound of the TTFT and ITL percentiles, from each record's own
           late-stamp bounds (`error_bounds`; `record_bounds_s` for the Prometheus sink)
validity   the client-bound verdict (the bound against its tolerance; loop lag and CPU as
           diagnostics, or proxies without a bound) and the failed share
compare    two runs: bootstrap intervals over requests and a better/worse/same verdict
server     the server's own account (vLLM's /metrics) and its reconciliation with the records
scraper    reading that account over HTTP before, during and after a run
gpu        GPU samples taken around a run: NVML on this host, a DCGM exporter's or a node
           exporter's page (`GpuSampler`)
energy     energy over the measurement window from those samples, J per output token and per
           request (`energy_of`, pure)
saturation the over-saturation verdict of an open-loop run (`assess`, pure; `Watch`, which the
           runner feeds once a second) and its evidence (`Oversaturation`, in the footer)
"""

from latbench.summary.samples import RecordSamples, Samples, record_samples
from latbench.summary.summary import Summary, summarize, summarize_file
from latbench.summary.validity import ClientStats, Validity

__all__ = [
    "ClientStats",
    "RecordSamples",
    "Samples",
    "Summary",
    "Validity",
    "record_samples",
    "summarize",
    "summarize_file",
]
