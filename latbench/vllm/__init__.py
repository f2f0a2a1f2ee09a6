"""vLLM beside latbench: `vllm bench serve`'s flag names and results-JSON fields (`interop`), a
vLLM server launched for one run (`launch`), and `vllm bench serve` itself run from vLLM's Python
with its results read back as records (`peer`, for parity checks; `bench_child` is the script
that runs in vLLM's Python). vLLM itself stays an optional extra: latbench never imports it."""

from latbench.vllm.interop import add_vllm_arguments, apply_vllm_flags, vllm_result
from latbench.vllm.launch import VllmServer, parse_launch_args
from latbench.vllm.peer import VllmBench, vllm_records

__all__ = [
    "VllmBench",
    "VllmServer",
    "add_vllm_arguments",
    "apply_vllm_flags",
    "parse_launch_args",
    "vllm_records",
    "vllm_result",
]
