"""The real vLLM of the e2e stage: vLLM's CPU build and a tiny random-weight model, prepared
(cached) by tests/vllm/setup.sh, which exports the two variables read here. Modules that need
it mark themselves `needs_vllm` and start their own server with `serve`: one per module, since a
server left running busy-polls a core that every later test needs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from latbench.vllm import VllmServer
from latbench.vllm.launch import free_port

VLLM_PYTHON = os.environ.get("LATBENCH_VLLM_PYTHON")
VLLM_MODEL = os.environ.get("LATBENCH_VLLM_MODEL")
needs_vllm = pytest.mark.skipif(
    not (VLLM_PYTHON and VLLM_MODEL),
    reason='no vLLM here: run `eval "$(tests/vllm/setup.sh)"` first (as .ci/run does)',
)
# Offline (no model hub on CI), and a KV cache that fits beside the tests on a 2-core machine.
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def base_args() -> list[str]:
    """The tiny model, served as `tiny`, on vLLM's CPU path."""
    return [
        "--model", str(VLLM_MODEL), "--served-model-name", "tiny", "--max-model-len", "2048",
        "--dtype", "float32", "--enforce-eager",
    ]  # fmt: skip


@contextmanager
def serve(log: Path, *extra: str) -> Iterator[VllmServer]:
    """A vLLM server with `base_args` and `extra`, in VLLM_ENV, stopped on exit."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in VLLM_ENV.items():
            mp.setenv(k, v)
        with VllmServer([*base_args(), *extra], free_port(), log, python=VLLM_PYTHON) as server:
            yield server
