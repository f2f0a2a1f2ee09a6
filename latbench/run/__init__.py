"""One benchmark run, assembled: the spec's workload and target resolved, the sinks made once, the
runner run, the server's metrics scraped around it, the summary computed and the run directory
written. The CLI, the sweep and the service all run a benchmark through `run_benchmark`."""

from latbench.run.benchmark import BenchResult, new_run_id, run_benchmark, target_url

__all__ = ["BenchResult", "new_run_id", "run_benchmark", "target_url"]
