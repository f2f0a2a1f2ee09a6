"""vLLM beside latbench: `vllm bench serve`'s flag names and results-JSON fields (`interop`), and a
vLLM server launched for one run (`launch`). vLLM itself stays an optional extra: nothing here
imports it."""

from latbench.vllm.interop import add_vllm_arguments, apply_vllm_flags, vllm_result
from latbench.vllm.launch import VllmServer, parse_launch_args

__all__ = [
    "VllmServer",
    "add_vllm_arguments",
    "apply_vllm_flags",
    "parse_launch_args",
    "vllm_result",
]
