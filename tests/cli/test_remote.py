"""`latbench submit` and `latbench runs ...` as a user runs them: child processes talking to a
`latbench serve` child process over loopback, exit statuses as for `latbench run`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import cli
from kit.service import TOKEN, Service, parse_records, poll, running

from latbench.cli.common import Exit
from latbench.cli.submit import _verdict_exit

SPEC = """\
target: sim
load: {concurrency: 2, requests: 6}
workload: {input_tokens: 16, output_tokens: 16}
"""


@pytest.fixture(scope="module")
def svc(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running(sim_url, tmp_path_factory.mktemp("cli")) as s:
        yield s


def latbench(
    svc: Service, *args: str, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    """`latbench ARGS` as a user of `svc` runs it: its address and `token` from the environment
    (None: no token), none inherited from the shell."""
    env = {"LATBENCH_SERVER": svc.url, "LATBENCH_TOKEN": token}
    return cli.latbench(*args, timeout=120, env={**env, "COLUMNS": "200"})  # rich wraps at width


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC)
    return p


def test_submit_wait_follows_and_exits_by_the_verdict(svc: Service, spec: Path) -> None:
    # An SLO any run meets, even on a busy machine: exit 0.
    p = latbench(svc, "submit", str(spec), "--wait", "--slo", "ttft:p50<=5s")
    assert p.returncode == 0, p.stderr
    assert "TTFT" in p.stdout and "SLO  PASS" in p.stdout  # the tables of `latbench run`
    run_id = p.stdout.split("run ")[-1].split(":")[0]
    assert f"run {run_id}: completed" in p.stdout
    assert svc.run(run_id)["state"] == "completed"
    # An SLO no server meets: exit 3, as `latbench run --slo` would.
    p = latbench(svc, "submit", str(spec), "--wait", "--slo", "ttft:p50<=1ms")
    assert p.returncode == 3, p.stderr
    assert "SLO  FAIL" in p.stdout


def test_submit_wait_exits_6_when_too_many_requests_failed(svc: Service, tmp_path: Path) -> None:
    # TTFT is 20 ms; a first-token timeout of 1 ms fails every request, with or without --slo.
    bad = tmp_path / "failing.yaml"
    bad.write_text(SPEC.replace("target: sim", "target: {name: sim, timeouts: {first_token: 1ms}}"))
    p = latbench(svc, "submit", str(bad), "--wait")
    assert p.returncode == 6, p.stderr
    run_id = p.stdout.split("run ")[-1].split(":")[0]
    verdict = svc.run(run_id)["verdict"]
    assert verdict["failures_passed"] is False and verdict["slo_passed"] is False
    p = latbench(svc, "runs", "list")
    assert "too many failed" in p.stdout, p.stdout


def test_submit_exits_as_run_does_for_each_verdict() -> None:
    # The service's verdict of a stored summary, read back by `submit --wait`: the order is
    # `latbench run`'s (client-bound, over-saturated, failed share, SLOs).
    ok = {
        "client_bound": False,
        "oversaturated": False,
        "failures_passed": True,
        "slo_passed": True,
    }
    assert _verdict_exit(ok, gate=True) == Exit.OK
    assert _verdict_exit({**ok, "oversaturated": True, "failures_passed": False}, True) == 7
    assert _verdict_exit({**ok, "client_bound": True, "oversaturated": True}, True) == 4
    assert _verdict_exit({**ok, "slo_passed": False}, gate=True) == Exit.SLO_MISSED
    # Verdicts stored before the over-saturation stop existed have no such key.
    assert _verdict_exit({k: v for k, v in ok.items() if k != "oversaturated"}, True) == 0


def test_submit_without_wait_prints_the_run_id(svc: Service, spec: Path) -> None:
    p = latbench(svc, "submit", str(spec), "--name", "cli-named")
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.strip()
    run = svc.wait_state(run_id, "completed")
    assert run["name"] == "cli-named"


def test_submit_errors(svc: Service, spec: Path, tmp_path: Path) -> None:
    p = latbench(svc, "submit", str(spec), token=None)
    assert p.returncode == 2 and "LATBENCH_TOKEN" in p.stderr
    p = latbench(svc, "submit", str(spec), token="wrong-token-0123456789")
    assert p.returncode == 1 and "HTTP 401" in p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: sim\nload: {concurrency: 0, requests: 3}\n")
    p = latbench(svc, "submit", str(bad))
    assert p.returncode == 2 and "load.concurrency" in p.stderr
    p = latbench(svc, "submit", str(spec), "--target", "elsewhere")
    assert p.returncode == 1 and "not in this service's catalogue" in p.stderr
    p = latbench(svc, "submit", str(spec), "--server", "http://127.0.0.1:9")
    assert p.returncode == 1 and "cannot reach http://127.0.0.1:9" in p.stderr


def test_runs_list_show_records_cancel(svc: Service, spec: Path, tmp_path: Path) -> None:
    run_id = latbench(svc, "submit", str(spec)).stdout.strip()
    svc.wait_state(run_id, "completed")

    p = latbench(svc, "runs", "list", "--json")
    assert p.returncode == 0 and run_id in {r["id"] for r in json.loads(p.stdout)["runs"]}
    p = latbench(svc, "runs", "list", "--state", "completed", "--limit", "1")
    assert p.returncode == 0 and "completed" in p.stdout

    p = latbench(svc, "runs", "show", run_id)
    assert p.returncode == 0 and "completed" in p.stdout and "TTFT" in p.stdout
    p = latbench(svc, "runs", "show", run_id, "--json")
    counts = json.loads(p.stdout)["summary"]["requests"]
    assert (counts["succeeded"], counts["failed"], counts["warmup"]) == (6, 0, 0)

    out = tmp_path / "r.jsonl"
    p = latbench(svc, "runs", "records", run_id, "-o", str(out))
    assert p.returncode == 0, p.stderr
    header, records, footer = parse_records(out.read_bytes())
    assert header is not None and footer is not None and len(records) == 6
    # The file replays to the same summary with `latbench summary`.
    p = cli.latbench("summary", str(out), "--json", timeout=60)
    assert json.loads(p.stdout)["requests"] == counts

    long = tmp_path / "long.yaml"
    long.write_text("target: sim\nload: {concurrency: 1, duration: 60s}\n")
    long_id = latbench(svc, "submit", str(long)).stdout.strip()
    svc.wait_state(long_id, "running")
    p = latbench(svc, "runs", "cancel", long_id)
    assert p.returncode == 0, p.stderr
    assert svc.wait_state(long_id, "cancelled", timeout=20)["state"] == "cancelled"
    p = latbench(svc, "runs", "cancel", long_id)
    assert p.returncode == 1 and "already ended" in p.stderr
    p = latbench(svc, "runs", "show", "no-such-run")
    assert p.returncode == 1 and "no run 'no-such-run'" in p.stderr


def test_records_follow_streams_until_the_end(svc: Service, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("target: sim\nload: {concurrency: 1, requests: 12}\n"
                    "workload: {input_tokens: 16, output_tokens: 16}\n")  # fmt: skip
    run_id = latbench(svc, "submit", str(spec)).stdout.strip()
    poll(lambda: svc.run(run_id)["state"] == "running", 30, "the run to start")
    out = tmp_path / "followed.jsonl"
    p = latbench(svc, "runs", "records", run_id, "--follow", "-o", str(out))
    assert p.returncode == 0, p.stderr
    _, records, footer = parse_records(out.read_bytes())
    assert footer is not None and len(records) == 12  # it kept streaming to the end


def test_a_huge_or_foreign_answer_is_a_clear_error() -> None:
    """The client reads a service's answer up to MAX_ANSWER_BYTES: a wrong server sending an
    endless body, or one that is not JSON, gets a one-line error, not a process filling up
    or a traceback."""
    import asyncio

    from aiohttp import web

    from latbench.cli.service_client import MAX_ANSWER_BYTES, Client, RemoteError

    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b" " * (1 << 20)
        try:
            while sent < 4 * MAX_ANSWER_BYTES:
                await resp.write(chunk)
                sent += len(chunk)
        except ConnectionResetError:
            pass
        return resp

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/api/v1/runs/endless", endless)
        app.router.add_get("/api/v1/runs/html", html)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        errors = []
        try:
            async with Client(url, None) as client:
                for what in ("endless", "html"):
                    try:
                        await client.call("GET", f"/api/v1/runs/{what}")
                    except RemoteError as e:
                        errors.append(str(e))
        finally:
            await runner.cleanup()
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 2, errors
    assert errors[0].startswith("GET /api/v1/runs/endless: the answer is over 64 MiB; is http")
    assert errors[1].startswith("GET /api/v1/runs/html: HTTP 200, but the answer is not JSON")
    assert "a latbench service?" in errors[0] and sent < 2 * MAX_ANSWER_BYTES
