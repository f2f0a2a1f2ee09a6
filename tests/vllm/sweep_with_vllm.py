"""Run by vLLM's own Python (tests/vllm/test_vllm_reads_results.py): vLLM 0.32's sweep drives
latbench as its benchmark command and reads latbench's --save-result files with its own code.

`vllm bench sweep serve_workload` starts the server command, runs the benchmark command at
--max-concurrency 1 and at --num-prompts, reads `request_throughput` and `mean_e2el_ms` from the
two results files to estimate the concurrency each reached, and runs the levels between them;
then `vllm bench sweep plot_pareto`'s preparation reads `output_throughput` and the user count
from every run. Its last step (a CSV through pandas) is left out: pandas is not in the e2e venv
and reads nothing of ours. Prints what vLLM collected, as JSON, on the last line.

argv[1]: JSON {"serve": [...], "bench": [...], "dir": "..."}
"""

import json
import sys
from pathlib import Path

from vllm.benchmarks.sweep.param_sweep import ParameterSweepItem
from vllm.benchmarks.sweep.plot_pareto import _prepare_records
from vllm.benchmarks.sweep.serve import run_server
from vllm.benchmarks.sweep.serve_workload import explore_comb_workloads

cfg = json.loads(sys.argv[1])
nothing = ParameterSweepItem()
with run_server(
    cfg["serve"],
    ["true"],  # after each benchmark: not vLLM's cache reset, which the simulator lacks
    show_stdout=False,
    serve_overrides=nothing,
    dry_run=False,
    server_ready_timeout=60,
) as server:
    data = explore_comb_workloads(
        server,
        cfg["bench"],
        serve_comb=nothing,
        bench_comb=nothing,
        link_vars=[],
        workload_var="max_concurrency",
        workload_iters=3,
        experiment_dir=Path(cfg["dir"]),
        num_runs=1,
        dry_run=False,
        warmup_num_prompts=0,
        continue_on_error=False,
    )
pareto, skipped = _prepare_records(data, user_count_var="max_concurrency", gpu_count_var=None)
print(json.dumps({"runs": data, "pareto": pareto, "skipped": skipped}))
