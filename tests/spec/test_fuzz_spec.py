"""The spec loader under hypothesis: arbitrary JSON/YAML values, arbitrary YAML text and bytes,
and perturbations of valid specs, through `read_spec_file` and `load_spec`. Every document is
either a RunSpec or a SpecError naming the problem, in bounded time; never another exception.
A spec that loads also builds its workload and pacer and draws from them, so "valid" means
"runs", not only "parses" (a negative seed once passed here and failed later as an internal
error)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latbench import SpecError
from latbench.load.worker import make_pacer
from latbench.run.benchmark import make_workload
from latbench.spec import RunSpec, load_spec, read_spec_file

# Per example: the loader is a few ms; the bound catches a blow-up, not a slow machine.
BOUND_S = 2.0
FUZZ = settings(
    max_examples=int(os.environ.get("LATBENCH_FUZZ_EXAMPLES", "150")),
    deadline=None,  # timed below, against BOUND_S, with the example in the message
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Names the spec knows, so generated documents reach the validators behind them.
FIELDS = [
    "target", "workload", "load", "slos", "validity", "percentiles", "name", "sim", "output_dir",
    "base_url", "api", "model", "timeouts", "connect", "first_token", "idle", "total", "retry",
    "max_retries", "backoff", "max_wait", "stream_limits", "max_line_bytes", "max_event_bytes",
    "headers", "verify_tls", "vllm_extensions", "server_metrics", "api_key_env", "api_key_file",
    "source", "path", "input_tokens", "output_tokens", "ignore_eos", "extra_body", "seed",
    "mode", "concurrency", "rate", "burstiness", "duration", "requests", "warmup", "cooldown",
    "warmup_requests", "cooldown_requests", "workers", "overtime", "loop_lag_p99",
    "queue_delay_p99", "client_cpu", "max_failed_fraction", "ttft_tolerance", "itl_tolerance",
    "kind", "mean", "std", "min", "max",
    "ttft", "itl", "faults", "stream",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # nan and the infinities included
    st.sampled_from([0, -1, 1, 1e300, -1e300, 2**63, 2**63 - 1, 1e13, 0.5, 4194305]),
    st.text(max_size=30),
    st.sampled_from(["30s", "500ms", "2m", "1h", "1e400", "normal:128,32", "uniform:1,1e9",
                     "lognormal:0,5", "fixed:nan", "ttft:p99<=100ms", "closed", "poisson",
                     "constant", "chat", "anthropic", "http://127.0.0.1:1", "synthetic", "jsonl"]),
)  # fmt: skip
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)

VALID: list[dict[str, Any]] = [
    {},
    {"load": {"concurrency": 2, "requests": 10}},
    {"load": {"mode": "poisson", "rate": 5, "burstiness": 0.5, "duration": "10s"}},
    {"load": {"mode": "constant", "rate": 2, "requests": 4, "warmup_requests": 1}},
    {"target": {"base_url": "http://127.0.0.1:8000/v1", "api": "completions",
                "timeouts": {"total": "5m"}, "retry": {"max_retries": 2}}},
    {"target": {"api": "anthropic"}, "workload": {"input_tokens": "normal:128,32",
                                                   "output_tokens": {"kind": "uniform",
                                                                     "min": 1, "max": 64},
                                                   "seed": 7, "extra_body": {"top_p": 0.9}}},
    {"slos": ["ttft:p99<=100ms", "e2e:p50<=2s"], "percentiles": [50, 99.9],
     "validity": {"max_failed_fraction": 0.1}},
]  # fmt: skip


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def perturbed(draw: st.DrawFn) -> Any:
    """A valid spec with one to three of its values replaced, keys removed or keys added."""
    import copy

    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(VALUES) if draw(st.integers(0, 9)) == 0 else doc
            if not isinstance(doc, dict):
                return doc
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(KEYS)] = draw(VALUES)
    return doc


def _exercise(spec: RunSpec) -> None:
    """What a run does with a spec before it sends anything: build the workload and the pacer
    and draw from them."""
    if spec.workload.source == "synthetic":
        w = make_workload(spec.workload)
        for n in (0, 1, 10**9):
            item = w.item(n)
            assert 1 <= item.max_tokens <= 1 << 22 and 1 <= item.prompt_tokens <= 1 << 22
    pacer = make_pacer(spec.load, spec.workload.seed)
    if pacer is not None:
        offsets = [pacer.offset_ns(n) for n in (0, 1, 1000)]
        assert all(isinstance(o, int) and o >= 0 for o in offsets)
    for t in (spec.target.timeouts.total, spec.load.overtime, spec.load.duration or 0.0):
        assert math.isfinite(t)


def _check(load: Callable[[], RunSpec | dict[str, Any]], example: Any) -> None:
    t = time.monotonic()
    try:
        got = load()
        spec = got if isinstance(got, RunSpec) else load_spec(got, source="fuzz")
    except SpecError as e:
        assert str(e), example
    else:
        if _cheap(spec):
            _exercise(spec)
    took = time.monotonic() - t
    assert took < BOUND_S, (took, repr(example)[:500])


def _cheap(spec: RunSpec) -> bool:
    # A valid spec may ask for 4M-token prompts; building three of them proves nothing more.
    d = spec.workload.input_tokens
    return max(d.mean, d.std, d.max or 0) <= 100_000


@FUZZ
@given(doc=st.one_of(VALUES, perturbed()))
def test_load_spec_gives_a_spec_or_a_spec_error(doc: Any) -> None:
    _check(lambda: load_spec(doc, source="fuzz"), doc)


def _via_file(text: str | bytes) -> Callable[[], dict[str, Any]]:
    def load() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "spec.yaml"
            if isinstance(text, bytes):
                p.write_bytes(text)
            else:
                p.write_text(text, encoding="utf-8", errors="surrogatepass")
            return read_spec_file(p)

    return load


@FUZZ
@given(doc=st.one_of(VALUES, perturbed()), style=st.sampled_from(["block", "flow", "json"]))
def test_spec_files_of_generated_documents(doc: Any, style: str) -> None:
    if style == "json":
        import json

        text = json.dumps(doc, allow_nan=True)
    else:
        text = yaml.safe_dump(doc, default_flow_style=style == "flow")
    _check(_via_file(text), text)


YAML_BITS = st.sampled_from([
    "target:", "load:", "workload:", "  ", "\n", "- ", ": ", "&a ", "*a", "<<: ", "!!set ",
    "!!python/object:os.system ", "!!binary ", "{", "}", "[", "]", ",", "'", '"', "#", "? ", "|",
    ">", "---", "...", "%YAML 1.1", "!!int ", "!!float ", ".nan", ".inf", "-.inf", "1e400",
    "0x10", "0o7", "2026-12-04", "~", "null", "yes", "duration: 5", "requests: 3", "seed: -1",
    "extra_body: {model: x}",
    "\t", "\ufeff", "\x00", "\udc80",
])  # fmt: skip


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.lists(YAML_BITS, max_size=40).map("".join)))
def test_spec_files_of_arbitrary_text(text: str) -> None:
    _check(_via_file(text), text)


@FUZZ
@given(data=st.binary(max_size=300))
def test_spec_files_of_arbitrary_bytes(data: bytes) -> None:
    _check(_via_file(data), data)


# --- the service's admission: any JSON document is admitted or refused with a 4xx -------------

SERVICE = None


def _service_config() -> Any:
    global SERVICE
    if SERVICE is None:
        from latbench.service.config import ServiceConfig

        SERVICE = ServiceConfig.model_validate(
            {"targets": {"sim": {"base_url": "http://127.0.0.1:9"}},
             "limits": {"max_input_tokens": 4096, "max_output_tokens": 512}}
        )  # fmt: skip
    return SERVICE


@st.composite
def submissions(draw: st.DrawFn) -> Any:
    """A perturbed spec naming the catalogue target (or not), or any JSON value."""
    doc = draw(st.one_of(perturbed(), VALUES))
    if isinstance(doc, dict) and draw(st.booleans()):
        doc["target"] = (
            draw(st.sampled_from(["sim", {"name": "sim"}]))
            if draw(st.booleans())
            else {"name": "sim", "timeouts": draw(VALUES)}
        )
    return doc


@FUZZ
@given(body=submissions())
def test_admission_admits_or_refuses_with_a_4xx(body: Any) -> None:
    """What `POST /api/v1/runs` does with a parsed body before it queues it: an admitted spec
    within every cap, or Refused with a 4xx status; never another exception (a 500)."""
    from latbench.service.admit import Refused, admit

    config = _service_config()
    t = time.monotonic()
    try:
        admitted = admit(body, config, {"sim": "http://127.0.0.1:9"})
    except Refused as e:
        assert 400 <= e.status < 500 and e.message, (e.status, e.message)
    else:
        w = admitted.spec.workload
        assert w.input_tokens.mean <= 4096 and (w.input_tokens.max or 0) <= 4096
        assert admitted.spec.load.duration is not None and admitted.spec.load.requests
        _exercise(admitted.spec)
    assert time.monotonic() - t < BOUND_S, repr(body)[:500]
