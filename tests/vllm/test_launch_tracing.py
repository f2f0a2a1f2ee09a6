"""`run --launch-vllm` turns vLLM's tracing on, pointed at the run's span receiver: the flag and
the environment vLLM gets, and what is refused. vLLM here is a stand-in Python that writes down
its command line and environment and exits, so the launch fails as a vLLM that cannot start
does, after the command was built."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from kit import cli

from latbench.otlp.receiver import traces_url
from latbench.shared.errors import LatbenchError, SpecError
from latbench.spec import load_spec
from latbench.vllm.launch import VllmServer, parse_launch_args


def stand_in(tmp_path: Path) -> tuple[Path, Path]:
    seen = tmp_path / "seen.json"
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(seen)!r}, 'w'))\n"
        "sys.exit(3)\n"
    )
    fake.chmod(0o755)
    return fake, seen


def test_vllm_gets_the_endpoint_and_otlp_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, seen = stand_in(tmp_path)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1000")  # the user's own setting wins
    endpoint = traces_url("0.0.0.0", 4318)
    assert endpoint == "http://127.0.0.1:4318/v1/traces"
    server = VllmServer(["--model", "m"], 1, tmp_path / "vllm.log", python=str(fake),
                        otlp_traces_endpoint=endpoint)  # fmt: skip
    with pytest.raises(LatbenchError, match="exited with status 3"):
        server.start()
    got = json.loads(seen.read_text())
    argv = got["argv"]
    assert argv[argv.index("--otlp-traces-endpoint") + 1] == endpoint
    assert got["env"]["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert got["env"]["OTEL_BSP_SCHEDULE_DELAY"] == "1000"


def test_without_a_receiver_vllm_gets_no_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, seen = stand_in(tmp_path)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    with pytest.raises(LatbenchError):
        VllmServer(["--model", "m"], 1, tmp_path / "vllm.log", python=str(fake)).start()
    got = json.loads(seen.read_text())
    assert "--otlp-traces-endpoint" not in got["argv"]
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" not in got["env"]


def test_a_users_own_traces_endpoint_is_refused() -> None:
    with pytest.raises(SpecError, match="drop --otlp-traces-endpoint"):
        parse_launch_args("--model m --otlp-traces-endpoint=http://x:4318/v1/traces")


def test_launch_points_vllm_at_a_receiver_of_its_own(tmp_path: Path) -> None:
    fake, seen = stand_in(tmp_path)
    p = cli.latbench("run", "--launch-vllm", "--model m", "--vllm-python", str(fake),
                     "--requests", "1", "--out", str(tmp_path / "out"))  # fmt: skip
    assert p.returncode == 1 and "exited with status 3" in p.stderr
    argv = json.loads(seen.read_text())["argv"]
    url = argv[argv.index("--otlp-traces-endpoint") + 1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1/traces")
    # --otlp-receiver off: no tracing.
    seen.unlink()
    out = str(tmp_path / "o")
    cli.latbench("run", "--launch-vllm", "--model m", "--vllm-python", str(fake),
                 "--otlp-receiver", "off", "--requests", "1", "--out", out)  # fmt: skip
    assert "--otlp-traces-endpoint" not in json.loads(seen.read_text())["argv"]


def simulator_as_vllm(tmp_path: Path) -> Path:
    """A stand-in for vLLM's Python that serves the latbench simulator with the arguments
    latbench gives vLLM (the simulator takes --model, --host, --port and
    --otlp-traces-endpoint as vLLM does, and exports vLLM's span of each request there)."""
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "args = sys.argv[3:]  # after '-m vllm.entrypoints.openai.api_server'\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}, '-m', 'latbench.sim', *args])\n"
    )
    fake.chmod(0o755)
    return fake


def test_a_receiver_on_port_0_is_given_a_port_before_vllm_is_told(tmp_path: Path) -> None:
    """`--otlp-receiver HOST:0` with --launch-vllm: vLLM starts before the receiver listens, so
    latbench picks the port first and tells vLLM that one; every span arrives (r1 item 6)."""
    fake = simulator_as_vllm(tmp_path)
    out = tmp_path / "out"
    p = cli.latbench("run", "--launch-vllm", "--model m --ttft 0.005 --itl 0.001",
                     "--vllm-python", str(fake), "--otlp-receiver", "127.0.0.1:0",
                     "--requests", "6", "--out", str(out))  # fmt: skip
    assert p.returncode in (0, 4), p.stderr
    (run_dir,) = out.iterdir()
    log = (run_dir / "vllm.log").read_text()
    argv = shlex.split(log.splitlines()[0].removeprefix("# latbench: "))
    url = argv[argv.index("--otlp-traces-endpoint") + 1]
    results = json.loads((run_dir / "results.json").read_text())
    receiver = results["server_spans"]["receiver"]
    assert url == receiver["endpoint"] and not url.startswith("http://127.0.0.1:0/")
    assert results["spec"]["target"]["otlp_receiver"] == url.removeprefix("http://").split("/")[0]
    assert results["server_spans"]["matched"] == 6
    assert results["server_spans"]["requests_without_span"] == 0


@pytest.mark.parametrize(
    ("value", "stored"),
    [("4318", "127.0.0.1:4318"), ("0.0.0.0:4318", "0.0.0.0:4318"), ("[::1]:0", "[::1]:0"),
     ("off", "off")],
)  # fmt: skip
def test_otlp_receiver_in_the_spec(value: str, stored: str) -> None:
    assert load_spec({"target": {"otlp_receiver": value}}).target.otlp_receiver == stored


def test_a_bad_receiver_address_is_a_usage_error(tmp_path: Path) -> None:
    p = cli.latbench("run", "--otlp-receiver", "host:99999", "--out", str(tmp_path))
    assert p.returncode == 2
    assert "otlp_receiver 'host:99999' is not HOST:PORT" in p.stderr
    assert "Traceback" not in p.stderr
