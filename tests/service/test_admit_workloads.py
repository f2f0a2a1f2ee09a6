"""Issue 16's workloads through the service's admission: shared prefixes (no file to read, their
prefix and suffix under the prompt cap), sessions (their system prompt and the context their
last turn resends under it), images (the spec's per-request byte cap), and the sources that read
a file refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from latbench.service.admit import Refused, admit
from latbench.service.config import ServiceConfig
from latbench.spec import RunSpec

URLS = {"gpu": "http://127.0.0.1:8000"}


def config() -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "targets": {"gpu": {"base_url": "http://127.0.0.1:8000/v1"}},
            "limits": {"max_input_tokens": 8192, "max_output_tokens": 1024},
        }
    )


def admitted(workload: dict[str, Any]) -> RunSpec:
    return admit({"target": "gpu", "workload": workload}, config(), URLS).spec


def refusal(workload: dict[str, Any]) -> Refused:
    with pytest.raises(Refused) as err:
        admitted(workload)
    return err.value


def test_a_shared_prefix_workload_is_admitted_and_its_suffix_tail_clamped_to_what_is_left() -> None:
    w = admitted({"source": "shared_prefix"}).workload
    assert w.shared_prefix is not None and w.shared_prefix.groups == 10
    w = admitted(
        {"source": "shared_prefix",
         "shared_prefix": {"prefix_tokens": 8000, "suffix_tokens": "normal:100,50"}}
    ).workload  # fmt: skip
    assert w.shared_prefix is not None and w.shared_prefix.suffix_tokens.max == 192


@pytest.mark.parametrize(
    ("shared_prefix", "says"),
    [
        ({"prefix_tokens": 9000},
         "workload.shared_prefix.prefix_tokens: 9000 is over this service's cap of 8192 "
         "(limits.max_input_tokens)"),
        ({"prefix_tokens": 8000, "suffix_tokens": 256},
         "workload.shared_prefix.suffix_tokens: mean 256 is over 192 tokens, this service's cap "
         "(limits.max_input_tokens) less prefix_tokens (8000)"),
    ],
)  # fmt: skip
def test_a_shared_prefix_and_its_suffix_stay_under_the_prompt_cap(
    shared_prefix: dict[str, Any], says: str
) -> None:
    err = refusal({"source": "shared_prefix", "shared_prefix": shared_prefix})
    assert err.status == 400 and says in err.message


@pytest.mark.parametrize("source", ["jsonl", "sharegpt", "trace"])
def test_a_source_that_reads_a_file_is_refused_by_name(source: str) -> None:
    err = refusal({"source": source})
    assert err.status == 403
    assert err.message.startswith(f"workload.source {source}: it reads a file")


def test_sessions_within_the_prompt_cap_are_admitted() -> None:
    # 4 turns x (512 + 256) + 1000 = 4,072 tokens by the last turn.
    w = admitted({"input_tokens": 512, "output_tokens": 256,
                  "sessions": {"turns": 4, "system_tokens": 1000}}).workload  # fmt: skip
    assert w.sessions is not None and w.sessions.turns is not None


@pytest.mark.parametrize(
    ("sessions", "says"),
    [
        ({"turns": 1, "system_tokens": 10_000},
         "workload.sessions.system_tokens: 10000 is over this service's cap of 8192"),
        # The review's case, scaled to this cap: each turn is small, the context is not.
        ({"turns": 1000, "system_tokens": 100},
         "workload.sessions: a session's context grows to 256,100 tokens by its last turn "
         "(system_tokens 100 + 1000 turns x (input 128 + output 128)), over this service's "
         "cap of 8192"),
        # No max on a normal tail: draws reach MAX_TURNS.
        ({"turns": "normal:4,2"},
         "workload.sessions: a session's context grows to 262,144 tokens by its last turn "
         "(system_tokens 0 + 1024 turns"),
    ],
)  # fmt: skip
def test_a_sessions_system_prompt_and_last_turn_stay_under_the_prompt_cap(
    sessions: dict[str, Any], says: str
) -> None:
    err = refusal({"sessions": sessions})
    assert err.status == 400 and says in err.message


def test_an_agent_sessions_tool_results_count_in_its_context() -> None:
    # 10 turns x (128 + 128 + 3 steps x 200 result tokens) = 8,560 tokens.
    err = refusal({"sessions": {"turns": 10},
                   "tools": {"count": 2, "max_steps": 3, "result_tokens": 200}})  # fmt: skip
    assert "(input 128 + output 128 + 600 of tool results)" in err.message
    admitted({"sessions": {"turns": 9},
              "tools": {"count": 2, "max_steps": 3, "result_tokens": 200}})  # fmt: skip


def test_images_are_held_to_the_specs_per_request_byte_cap() -> None:
    w = admitted({"images": {"count": 2, "width": 256, "height": 256}}).workload
    assert w.images is not None and w.images.most_images() == 2
    err = refusal({"images": {"count": 16, "width": 2048, "height": 2048}})
    assert err.status == 400 and "MiB a request, over the cap of 32 MiB" in err.message
