"""Spec validation: errors name the field and what is allowed; flags and files share one schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from latbench._cli import build_parser, spec_from_args
from latbench._errors import SpecError
from latbench._spec import load_spec, read_spec_file


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(data, source="test.yaml")
    return str(e.value)


def test_defaults_are_the_embedded_benchmark() -> None:
    spec = load_spec({})
    assert spec.target.base_url is None
    assert spec.load.mode == "closed" and spec.load.concurrency == 8
    assert spec.load.duration == 15.0 and spec.load.warmup == 2.0
    assert [(s.metric, s.percentile, s.threshold_s) for s in spec.slos] == [
        ("ttft", 99.0, 0.1),
        ("itl", 99.0, 0.1),
        ("tpot", 99.0, 0.1),
    ]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"load": {"mode": "fast"}}, "load.mode"),
        ({"load": {"mode": "constant", "duration": 5}}, "needs a rate"),
        ({"load": {"mode": "closed", "rate": 3, "duration": 5}}, "rate is for open-loop"),
        ({"load": {"concurrency": 0, "duration": 5}}, "load.concurrency"),
        ({"load": {"concurrency": 2}}, "give a duration or a number of requests"),
        ({"load": {"duration": "ten seconds"}}, "is not a duration"),
        ({"load": {"duration": 5, "warmup": 5}}, "leave nothing"),
        ({"target": {"base_url": "localhost:8000"}}, "not an http(s) URL"),
        ({"target": {"base_url": "http://h", "api": "grpc"}}, "target.api"),
        ({"target": {"bogus": 1}}, "target.bogus: unknown field"),
        ({"workload": {"source": "jsonl"}}, "needs a path"),
        ({"workload": {"input_tokens": "gaussian:1,2"}}, "unknown distribution 'gaussian'"),
        ({"slos": ["ttft:p99<=fast"]}, "slos"),
        ({"name": "has spaces"}, "name"),
    ],
)
def test_errors_name_the_field(data: dict, needle: str) -> None:
    msg = error_of(data)
    assert needle in msg, msg
    assert "test.yaml" in msg


def test_durations_and_v1_suffix_are_normalised() -> None:
    spec = load_spec(
        {"target": {"base_url": "http://h:8000/v1/"}, "load": {"duration": "2m", "warmup": "500ms"}}
    )
    assert spec.target.base_url == "http://h:8000"
    assert spec.load.duration == 120.0 and spec.load.warmup == 0.5


def test_openai_gets_no_vllm_extensions_by_default() -> None:
    assert (
        load_spec({"target": {"base_url": "https://api.openai.com"}}).target.vllm_extensions
        is False
    )
    assert (
        load_spec({"target": {"base_url": "http://127.0.0.1:8000"}}).target.vllm_extensions is True
    )


def test_flags_override_the_spec_file(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("target: {base_url: 'http://a:1'}\nload: {concurrency: 4, duration: 30s}\n")
    ns = build_parser().parse_args(["run", "--spec", str(f), "--concurrency", "16", "--rate", "5"])
    spec = load_spec(spec_from_args(ns))
    assert spec.target.base_url == "http://a:1"
    assert spec.load.concurrency == 16 and spec.load.rate == 5
    assert spec.load.mode == "poisson"  # --rate alone means open loop, Poisson like vllm bench
    assert spec.load.duration == 30


def test_bad_spec_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        read_spec_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("load: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        read_spec_file(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(SpecError, match="mapping"):
        read_spec_file(scalar)


def test_bad_header_flag() -> None:
    ns = build_parser().parse_args(["run", "--header", "no-colon"])
    with pytest.raises(SpecError, match="Name: value"):
        spec_from_args(ns)
