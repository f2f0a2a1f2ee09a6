"""GPU sampling in a run: against the simulator's fake GPUs (a DCGM exporter page whose energy
counter its token events drive) the run's J per output token matches the energy the simulator
charged, within the sampling's edge error; the samples are in the records file and recompute
the same figure; a page that cannot be read is said and the run goes on. NVML: "auto" on a host
without a GPU quietly samples nothing, "nvml" says why; where NVML loads, it is read for real."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from kit.cli import latbench
from rich.console import Console

from latbench.records import read_records
from latbench.records.record import GpuSample
from latbench.sim import SimConfig, SimProcess
from latbench.summary.energy import energy_of
from latbench.summary.gpu import (
    SAMPLE_EVERY_S,
    GpuSampler,
    NvmlReader,
    PageSource,
    start_gpu_sampler,
)

LOOSE = (
    "validity: {ttft_tolerance: 50ms, itl_tolerance: 50ms, loop_lag_p99: 50ms, "
    "queue_delay_p99: 50ms, client_cpu: 4}\n"
)
IDLE_W, J_PER_TOKEN, GPUS = 40.0, 0.3, 2


def nvml_loads() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


def test_a_run_against_fake_gpus_gets_the_energy_per_token_they_charged(tmp_path: Path) -> None:
    cfg = SimConfig(
        ttft=0.01, itl=0.004, gpu={"count": GPUS, "idle_w": IDLE_W, "j_per_token": J_PER_TOKEN}
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(LOOSE)
    with SimProcess(cfg) as sim:
        out = latbench(
            "run", "--spec", str(spec), "--target", sim.url, "--concurrency", "4",
            "--duration", "4", "--gpu-metrics", f"{sim.url}/dcgm/metrics", "--out",
            str(tmp_path), "--server-metrics", "off",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        with urllib.request.urlopen(f"{sim.url}/sim/truth?raw=1") as r:
            truth = json.load(r)
    (results_path,) = tmp_path.glob("*/results.json")
    results = json.loads(results_path.read_text())
    energy = results["energy"]
    ws, we = results["window_ns"]
    # The truth: every GPU's idle draw over the window, and J_PER_TOKEN for each token the
    # simulator wrote inside it (one token an event: tokens_per_event is 1).
    written = sum(ws <= t < we for req in truth["requests"] for t in req["events_ns"])
    window_s = (we - ws) / 1e9
    want_j = GPUS * IDLE_W * window_s + J_PER_TOKEN * written
    # The counter is exact at each sample; only the sampling period either side of each edge is
    # split by time, where the work may not be spread evenly: at most the work of one period an
    # edge.
    tokens_per_s = results["summary"]["rates"]["output_tokens_per_s"]
    edge_j = 2 * J_PER_TOKEN * tokens_per_s * SAMPLE_EVERY_S
    assert energy["method"] == "counter"
    assert energy["energy_j"] == pytest.approx(want_j, abs=edge_j)
    tokens = results["summary"]["rates"]["output_tokens_in_window"]
    assert abs(written - tokens) <= 4  # the client counts a token when it arrives
    assert energy["j_per_output_token"] == pytest.approx(want_j / tokens, abs=edge_j / tokens)
    # Named Hostname/gpu: GPU 0 of another host behind the same URL is another device.
    assert [d["gpu"] for d in energy["devices"]] == ["latbench-sim/0", "latbench-sim/1"]
    assert all(d["refresh_s"] is None and d["error_j"] is None for d in energy["devices"])
    assert all(d["mean_utilization"] == 1.0 for d in energy["devices"])  # busy all the window
    assert "J/output token" in out.stdout

    # The records file holds the samples, and recomputes the same figure.
    f = read_records(tmp_path / results["run_id"] / "records.jsonl")
    assert len(f.gpu) >= GPUS * window_s / SAMPLE_EVERY_S  # one a period, before and after
    again = energy_of(f.gpu, f.records, (ws, we))
    assert again is not None and again.to_dict() == energy
    replay = latbench("summary", str(tmp_path / results["run_id"] / "records.jsonl"))
    assert replay.returncode == 0, replay.stderr
    assert f"{energy['j_per_output_token']:.3g} J/output token" in replay.stdout.replace("\n", " ")
    # And the HTML report: the figure, a row per GPU, the power and utilisation chart.
    page = tmp_path / "report.html"
    report = latbench("report", str(tmp_path / results["run_id"]), "--html", str(page))
    assert report.returncode == 0, report.stderr
    html = page.read_text()
    assert 'id="energy"' in html and 'data-chart="energy"' in html
    assert f"{energy['j_per_output_token']:.3g} J/output token" in html
    assert "dcgm latbench-sim/0" in html and "dcgm latbench-sim/1" in html
    # Markdown and CSV carry the same figure (the issue asks for J/token in every report).
    md, csv_path = tmp_path / "report.md", tmp_path / "report.csv"
    report = latbench(
        "report", str(tmp_path / results["run_id"]), "--md", str(md), "--csv", str(csv_path)
    )
    assert report.returncode == 0, report.stderr
    assert f"{energy['j_per_output_token']:.3g} J/output token" in md.read_text()
    assert "Energy (docs/gpu.md):" in md.read_text()
    (row,) = csv.DictReader(io.StringIO(csv_path.read_text()))
    assert float(row["j_per_output_token"]) == pytest.approx(energy["j_per_output_token"])
    assert float(row["energy_j"]) == pytest.approx(energy["energy_j"])
    assert row["energy_method"] == "counter" and row["energy_error_j"] == ""


def test_an_exporter_that_refreshes_every_second_is_found_and_its_error_stated(
    tmp_path: Path,
) -> None:
    """The fake GPUs' page refreshed only every second (dcgm-exporter's --collect-interval),
    read every 0.5 s: latbench finds the counter flat between reads, says how often it
    changes, reads it at its changes, and the energy is within the error it states of what the
    simulator charged."""
    gpu = {"count": 1, "idle_w": IDLE_W, "j_per_token": J_PER_TOKEN, "collect_interval_s": 1.0}
    cfg = SimConfig(ttft=0.01, itl=0.004, gpu=gpu)
    spec = tmp_path / "spec.yaml"
    spec.write_text(LOOSE)
    with SimProcess(cfg) as sim:
        out = latbench(
            "run", "--spec", str(spec), "--target", sim.url, "--concurrency", "4",
            "--duration", "6", "--gpu-metrics", f"{sim.url}/dcgm/metrics", "--out",
            str(tmp_path), "--server-metrics", "off",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        with urllib.request.urlopen(f"{sim.url}/sim/truth?raw=1") as r:
            truth = json.load(r)
    (results_path,) = tmp_path.glob("*/results.json")
    results = json.loads(results_path.read_text())
    energy, (ws, we) = results["energy"], results["window_ns"]
    written = sum(ws <= t < we for req in truth["requests"] for t in req["events_ns"])
    want_j = IDLE_W * (we - ws) / 1e9 + J_PER_TOKEN * written
    (device,) = energy["devices"]
    assert device["refresh_s"] == pytest.approx(1.0, abs=0.3)
    assert device["method"] == "counter" and energy["error_j"] == device["error_j"]
    assert abs(energy["energy_j"] - want_j) <= device["error_j"], (energy, want_j)
    note = " ".join(energy["notes"])
    assert "stayed at one value" in note and "-c 500" in note
    assert "± " in " ".join(out.stdout.split())  # the error is shown with the figure


class CountingSource(PageSource):
    """The DCGM page as a run reads it, counting how often it is closed."""

    closed = 0

    async def close(self) -> None:
        self.closed += 1
        await super().close()


def test_a_sampler_ended_without_stop_closes_its_source_once() -> None:
    """A run that raises or is cancelled never reaches the sampler's `stop`: `close` (in the
    run's `finally`) still closes the source, which for NVML is its shutdown, once."""

    async def go(url: str) -> tuple[int, int]:
        async with aiohttp.ClientSession() as http:
            source = CountingSource(http, f"{url}/dcgm/metrics")
            sampler = GpuSampler(source, lambda s: None, every_s=0.05)
            assert await sampler.start()
            await sampler.close()
            await sampler.close()
            after_close = source.closed
            stopped = CountingSource(http, f"{url}/dcgm/metrics")
            other = GpuSampler(stopped, lambda s: None, every_s=0.05)
            assert await other.start()
            await other.stop()
            await other.close()  # the run's `finally` after a clean stop
            return after_close, stopped.closed

    with SimProcess(SimConfig(gpu={"count": 1})) as sim:
        assert asyncio.run(go(sim.url)) == (1, 1)


@pytest.mark.skipif(not nvml_loads(), reason="NVML does not load: this host has no NVIDIA GPU")
def test_a_cancelled_run_shuts_nvml_down(tmp_path: Path) -> None:
    """`latbench serve` runs many benchmarks in one process: a run cancelled mid-way must not
    leave its NVML initialisation behind (pynvml counts them)."""
    import pynvml

    from latbench.run import run_benchmark
    from latbench.spec import load_spec

    held = pynvml._nvmlLib_refcount
    with SimProcess(SimConfig(ttft=0.01, itl=0.01)) as sim:
        spec = load_spec(
            {
                "target": {"base_url": sim.url, "gpu_metrics": "nvml"},
                "load": {"concurrency": 2, "duration": 30},
                "output_dir": str(tmp_path),
            }
        )

        async def cancelled() -> None:
            task = asyncio.create_task(run_benchmark(spec, sim.url, Console(file=io.StringIO())))
            deadline = time.monotonic() + 30
            while pynvml._nvmlLib_refcount != held + 1:  # the run's sampler holds NVML
                assert time.monotonic() < deadline, "the run never opened NVML"
                await asyncio.sleep(0.05)
            # Mid-run: GPU samples and records in the records file.
            while not any(
                b'"type":"gpu"' in f.read_bytes() and b'"seq"' in f.read_bytes()
                for f in tmp_path.glob("*/records.jsonl")
            ):
                assert time.monotonic() < deadline, "the run wrote no GPU sample or record"
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled())
    assert pynvml._nvmlLib_refcount == held


def test_a_gpu_page_that_cannot_be_read_is_said_and_the_run_goes_on(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "spec.yaml"
    spec.write_text(LOOSE)
    out = latbench(
        "run", "--spec", str(spec), "--requests", "3", "--sim", "ttft=0.002",
        "--sim", "itl=0.001", "--output-tokens", "4", "--out", str(tmp_path),
        "--gpu-metrics", f"http://127.0.0.1:{port}/metrics",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert f"GPU metrics: http://127.0.0.1:{port}/metrics" in text
    assert "running without them" in text
    (results_path,) = tmp_path.glob("*/results.json")
    results = json.loads(results_path.read_text())
    assert results["energy"] is None and results["summary"]["requests"]["succeeded"] == 3


def test_a_bad_gpu_metrics_setting_is_refused_naming_it(tmp_path: Path) -> None:
    out = latbench("run", "--requests", "1", "--gpu-metrics", "dcgm", "--out", str(tmp_path))
    assert out.returncode != 0
    assert "gpu_metrics 'dcgm'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(nvml_loads(), reason="this host has an NVIDIA GPU: NVML loads")
def test_without_a_gpu_auto_is_quiet_and_nvml_says_why() -> None:
    async def go() -> None:
        got: list[GpuSample] = []
        async with aiohttp.ClientSession() as http:
            assert await start_gpu_sampler("auto", http, got.append) == (None, None)
            sampler, problem = await start_gpu_sampler("nvml", http, got.append)
            assert sampler is None and problem is not None
            assert problem.startswith("NVML: ") and "NVML" in problem[6:]
            assert await start_gpu_sampler("off", http, got.append) == (None, None)
        assert got == []

    asyncio.run(go())


@pytest.mark.skipif(not nvml_loads(), reason="NVML does not load: this host has no NVIDIA GPU")
def test_nvml_reads_every_gpu_here() -> None:
    reader = NvmlReader()
    try:
        first = reader.read()
        assert first and [s.gpu for s in first] == [str(i) for i in range(len(first))]
        for s in first:
            assert s.source == "nvml"
            assert s.power_w is not None and s.power_w > 0
            assert s.memory_used_bytes is not None and s.memory_used_bytes > 0
            assert s.utilization is not None and 0 <= s.utilization <= 1
        second = reader.read()
        for a, b, counted in zip(first, second, reader.energy_counter, strict=True):
            assert b.t_ns > a.t_ns
            if counted:  # Volta and newer: the counter only grows
                assert a.energy_j is not None and b.energy_j is not None
                assert b.energy_j >= a.energy_j
    finally:
        reader.close()

    async def sampled() -> list[GpuSample]:
        got: list[GpuSample] = []
        async with aiohttp.ClientSession() as http:
            sampler, problem = await start_gpu_sampler("nvml", http, got.append, every_s=0.1)
            assert sampler is not None and problem is None
            deadline = time.monotonic() + 10
            while len(got) < 3 * len(first):
                assert time.monotonic() < deadline, "NVML sampled too slowly"
                await asyncio.sleep(0.01)
            await sampler.stop()
        return got

    got = asyncio.run(sampled())
    assert len(got) >= 4 * len(first)  # and the last read after the run


def test_auto_reads_this_hosts_gpus_only_for_a_target_on_this_host() -> None:
    # A GPU here that serves another target would put its joules on the run.
    from latbench.run.benchmark import on_this_host

    for url in ("http://127.0.0.1:8000", "http://localhost:8000/v1", "http://[::1]:9",
                f"http://{socket.gethostname()}:8000"):  # fmt: skip
        assert on_this_host(url), url
    for url in ("http://10.1.2.3:8000", "https://api.openai.com/v1", "http://gpu-box.invalid"):
        assert not on_this_host(url), url
