"""GPU samples and energy per token: a recorded DCGM exporter page and a node exporter's RAPL
counters parsed into samples; the window's energy from a counter (resets included) and from a
power gauge, against the exact energy of known power curves; the samples' records-file lines;
and the Prometheus series a run's samples feed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from latbench.exporter import LatbenchMetrics
from latbench.records.record import GpuSample, Record, encode_gpu, iter_lines
from latbench.render.text import energy_rows
from latbench.shared.errors import RecordsError
from latbench.sinks.prometheus import PrometheusSink, run_labels
from latbench.summary.energy import Energy, EnergyMeter, energy_in_window
from latbench.summary.gpu import GpuMetricsError, parse_dcgm, parse_node, parse_page
from latbench.summary.samples import Delivered

DATA = Path(__file__).parent.parent / "data" / "gpu"
S = 1_000_000_000


# -- pages -------------------------------------------------------------------------------------


def test_a_dcgm_exporter_page_gives_one_sample_per_gpu_in_si_units() -> None:
    samples = parse_dcgm((DATA / "dcgm.txt").read_text(), t_ns=7)
    by_gpu = {s.gpu.removeprefix("gpu-node-1/"): s for s in samples}
    assert [s.gpu for s in samples] == ["gpu-node-1/0", "gpu-node-1/1"]  # Hostname/gpu
    g0 = by_gpu["0"]
    assert (g0.t_ns, g0.source) == (7, "dcgm")
    assert g0.utilization == pytest.approx(0.97)
    assert g0.memory_used_bytes == 76528 * 1024 * 1024  # MiB on the page
    assert g0.power_w == pytest.approx(412.345)
    assert g0.energy_j == pytest.approx(98_765_432.109)  # mJ on the page
    assert by_gpu["1"].utilization == 0.0
    assert by_gpu["1"].energy_j == pytest.approx(12_345_678.901)
    assert parse_page((DATA / "dcgm.txt").read_text(), 7) == samples


def test_dcgm_blank_readings_are_none_not_huge_numbers() -> None:
    page = (
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
        'DCGM_FI_DEV_POWER_USAGE{gpu="0"} 140737488355328\n'  # DCGM_FP64_BLANK
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 9223372036854775794\n'
    )
    (s,) = parse_dcgm(page, 1)
    assert s.power_w is None and s.energy_j is None


def rapl_page(*joules: float) -> str:
    # The rapl collector's counter (prometheus/node_exporter collector/rapl_linux.go), one per
    # package, labelled index and path.
    return (
        "# HELP node_rapl_package_joules_total Current RAPL package value in joules\n"
        "# TYPE node_rapl_package_joules_total counter\n"
        + "".join(
            f'node_rapl_package_joules_total{{index="{i}",path="/sys/class/powercap/'
            f'intel-rapl:{i}"}} {j}\n'
            for i, j in enumerate(joules)
        )
        + "# TYPE node_load1 gauge\nnode_load1 0.5\n"
    )


def test_a_node_exporter_page_gives_one_sample_per_rapl_package() -> None:
    page = rapl_page(100.5, 20.25)
    assert parse_node(page, 3) == [
        GpuSample(t_ns=3, source="node", gpu="package-0", energy_j=100.5),
        GpuSample(t_ns=3, source="node", gpu="package-1", energy_j=20.25),
    ]
    assert parse_page(page, 3) == parse_node(page, 3)


def test_one_rapl_package_wrapping_costs_at_most_its_own_step() -> None:
    """Two packages at 100 W, read every second; package 1's counter wraps at its range
    (262143.328850 J, max_energy_range_uj) between 2 s and 3 s. Differenced per package, the
    wrap loses at most that package's one step (the part before the wrap); summed first, the
    drop of the sum would count the whole new sum as one step (1650 J for a true 600 J)."""
    wrap = 262143.32885
    one = [wrap - 250.0 + 100.0 * i for i in range(4)]
    one = [j if j < wrap else j - wrap for j in one]
    samples = [
        s for i in range(4) for s in parse_node(rapl_page(1000.0 + 100.0 * i, one[i]), i * S)
    ]
    got = energy_in_window(samples, (0, 3 * S), Delivered(1.0, 0, 600.0))
    assert got is not None and got.energy_j is not None
    assert [d.gpu for d in got.devices] == ["package-0", "package-1"]
    assert 500.0 <= got.energy_j <= 600.0
    assert got.devices[0].energy_j == pytest.approx(300.0)


def test_a_page_with_neither_is_refused_naming_what_was_looked_for() -> None:
    with pytest.raises(GpuMetricsError, match=r"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION.*node_rapl"):
        parse_page("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n", 0)
    with pytest.raises(GpuMetricsError, match="not Prometheus text"):
        parse_page("this is { not a page\n", 0)


# -- the records file --------------------------------------------------------------------------


def test_gpu_lines_round_trip_and_bad_ones_name_the_field() -> None:
    s = GpuSample(5, "nvml", "0", 0.5, 1 << 33, 300.25, 12.5)
    assert list(iter_lines([encode_gpu(s)])) == [s]
    host = GpuSample(6, "node", "", energy_j=1.0)
    assert list(iter_lines([encode_gpu(host)])) == [host]
    bad = {
        "power_w": GpuSample(5, "nvml", "0", power_w=-1.0),
        "energy_j": GpuSample(5, "nvml", "0", energy_j=-0.5),
        "utilization": GpuSample(5, "nvml", "0", utilization=1.5),
        "memory_used_bytes": GpuSample(5, "nvml", "0", memory_used_bytes=-1),
        "source": GpuSample(5, "rocm", "0"),
    }
    for name, sample in bad.items():
        with pytest.raises(RecordsError, match=name):
            list(iter_lines([encode_gpu(sample)]))
    nan = encode_gpu(GpuSample(5, "nvml", "0", power_w=1.0)).replace(b"1.0", b"NaN")
    with pytest.raises(RecordsError, match="not a latbench records line"):
        list(iter_lines([nan]))


# -- energy over the window --------------------------------------------------------------------


def counter_samples(times: list[int], power_w: float, start_j: float = 5e6) -> list[GpuSample]:
    return [
        GpuSample(t, "dcgm", "0", energy_j=start_j + power_w * t / S, power_w=power_w)
        for t in times
    ]


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 2 * S), min_size=2, max_size=30),
    power=st.floats(0, 2000),
    edges=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_a_counter_at_constant_power_gives_power_times_the_window(
    gaps: list[int], power: float, edges: tuple[float, float]
) -> None:
    times = [0]
    for g in gaps:
        times.append(times[-1] + g)
    lo, hi = sorted(edges)
    start, end = int(times[-1] * lo), int(times[-1] * hi)
    if end <= start:
        end = start + 1
    # Edges anywhere between the first and last samples: read off the line, exact.
    end = min(end, times[-1])
    start = min(start, end - 1)
    e = energy_in_window(counter_samples(times, power), (start, end), Delivered(2.0, 0, 100.0))
    assert e is not None
    want = power * (end - start) / S
    assert e.energy_j == pytest.approx(want, rel=1e-6, abs=1e-3)
    assert e.method == "counter" and not e.notes
    assert e.j_per_output_token == pytest.approx(want / 100.0, rel=1e-6, abs=1e-5)
    assert e.j_per_request == pytest.approx(want / 2.0, rel=1e-6, abs=1e-3)


def test_the_counter_is_exact_between_samples_and_interpolated_only_at_the_edges() -> None:
    # 100 W idle, and a 1 kJ burst between the samples at 2 s and 3 s: the window [1.5 s, 4 s)
    # holds the whole burst whatever the burst's shape, and 250 J of idle.
    t = [0, 1 * S, 2 * S, 3 * S, 4 * S, 5 * S]
    e = [100.0 * i + (1000.0 if i >= 3 else 0.0) for i in range(6)]
    samples = [GpuSample(ti, "nvml", "0", energy_j=ei) for ti, ei in zip(t, e, strict=True)]
    got = energy_in_window(samples, (int(1.5 * S), 4 * S), Delivered(1.0, 0, 500.0))
    assert got is not None and got.energy_j == pytest.approx(1250.0)
    assert got.j_per_output_token == pytest.approx(2.5)
    assert got.mean_power_w == pytest.approx(500.0)


def test_a_counter_that_restarts_counts_from_its_new_value() -> None:
    # 10 J a second; the driver reloads between 2 s and 3 s, the counter starting again at 0
    # (so 5 J of the second are seen after the restart).
    vals = [1000.0, 1010.0, 1020.0, 5.0, 15.0]
    samples = [GpuSample(i * S, "nvml", "0", energy_j=v) for i, v in enumerate(vals)]
    got = energy_in_window(samples, (0, 4 * S), Delivered(1.0, 0, 10.0))
    assert got is not None and got.energy_j == pytest.approx(35.0)
    assert EnergyMeter().add(samples[0]) is None
    meter = EnergyMeter()
    steps = [step for s in samples if (step := meter.add(s)) is not None]
    assert sum(j for _, _, j in steps) == pytest.approx(35.0)  # the same step function
    assert [(a, b) for a, b, _ in steps] == [(i * S, (i + 1) * S) for i in range(4)]


def test_without_a_counter_the_power_is_integrated_and_flagged() -> None:
    # Power rising linearly from 100 W to 300 W over 4 s: the trapezoid is exact, 800 J.
    samples = [GpuSample(i * S, "dcgm", "1", power_w=100.0 + 50.0 * i) for i in range(5)]
    got = energy_in_window(samples, (0, 4 * S), Delivered(4.0, 0, 400.0))
    assert got is not None and got.energy_j == pytest.approx(800.0)
    assert got.method == "power_integral"
    assert any("no energy counter" in n for n in got.notes)
    assert got.j_per_output_token == pytest.approx(2.0)


def test_devices_add_up_and_means_come_from_the_samples_inside_the_window() -> None:
    a = [
        GpuSample(i * S, "dcgm", "0", utilization=u, memory_used_bytes=m, energy_j=100.0 * i)
        for i, (u, m) in enumerate([(0.0, 10), (0.5, 20), (1.0, 30), (1.0, 40)])
    ]
    b = [GpuSample(i * S, "dcgm", "1", energy_j=50.0 * i) for i in range(4)]
    got = energy_in_window([*b, *a], (1 * S, 3 * S), Delivered(3.0, 0, 30.0))
    assert got is not None
    assert got.energy_j == pytest.approx(300.0)
    d0, d1 = got.devices
    assert (d0.gpu, d0.energy_j, d1.gpu, d1.energy_j) == ("0", 200.0, "1", 100.0)
    assert d0.samples == 2 and d0.mean_utilization == pytest.approx(0.75)
    assert d0.mean_memory_used_bytes == pytest.approx(25.0) and d0.max_memory_used_bytes == 30
    assert Energy.from_dict(got.to_dict()).to_dict() == got.to_dict()


def test_a_window_partly_outside_the_samples_is_extrapolated_and_said() -> None:
    got = energy_in_window(counter_samples([2 * S, 4 * S], 100.0), (0, 4 * S), Delivered())
    assert got is not None and got.energy_j == pytest.approx(400.0)
    assert any("extrapolated" in n for n in got.notes)
    assert got.j_per_output_token is None  # no tokens delivered: no figure, not a division by 0


def exporter_reads(
    collect_s: float, phase_s: float, reads: list[float], power: Callable[[np.ndarray], np.ndarray]
) -> tuple[list[GpuSample], Callable[[float], float]]:
    """What a DCGM exporter that collects every `collect_s` (at phase_s + k collect_s) serves at
    each read instant (s): the counter at the latest collection, J, and the power as the mean
    over the interval before it; and the true energy at any instant, for a power curve given
    as a function of time (integrated at 1 ms)."""
    grid = np.arange(-100.0, max(reads) + 1.0, 0.001)
    cum = np.concatenate(([0.0], np.cumsum(power(grid[:-1]) * 0.001)))

    def energy(t: float) -> float:
        return float(np.interp(t, grid, cum)) + 5e6

    out = []
    for t in reads:
        c = phase_s + np.floor((t - phase_s) / collect_s) * collect_s
        mean_w = (energy(c) - energy(c - collect_s)) / collect_s
        out.append(GpuSample(round(t * S), "dcgm", "h/0", power_w=mean_w, energy_j=energy(c)))
    return out, energy


@settings(max_examples=60, deadline=None)
@given(
    collect_s=st.sampled_from([1.0, 5.0, 30.0]),
    phase=st.floats(0, 1),
    window_s=st.sampled_from([20.0, 40.0, 120.0]),
    step=st.booleans(),
)
def test_a_counter_refreshed_seldom_is_read_at_its_changes_within_its_stated_error(
    collect_s: float, phase: float, window_s: float, step: bool
) -> None:
    """dcgm-exporter collects every --collect-interval (30 s by default) and serves the last
    values between: stamped at the read, a 20 s run at 400 W reads 0 or 12 kJ for a true 8 kJ.
    latbench sees the counter flat while the power reads 400 W, says so and how often it
    changes, and the energy is within the error it states; the load may start at the window
    (idle at 60 W before), which the exporter shows up to a period late."""
    ws, we = 10.0, 10.0 + window_s

    def power(t: np.ndarray) -> np.ndarray:
        return np.where(step & (t < ws), 60.0, 400.0)

    reads = list(np.arange(ws - 0.3, we + 0.4, 0.5))
    samples, energy = exporter_reads(collect_s, phase * collect_s, reads, power)
    got = energy_in_window(samples, (round(ws * S), round(we * S)), Delivered(1.0, 0, 100.0))
    assert got is not None
    (device,) = got.devices
    assert device.refresh_s is not None
    note = next(n for n in got.notes if "stayed at one value" in n)
    assert "-c/--collect-interval" in note and "-c 500" in note
    changes = sum(a.energy_j != b.energy_j for a, b in pairwise(samples))
    if changes < 2:  # nothing read can tell the energy: none, and why
        assert got.energy_j is None and device.error_j is None and got.j_per_output_token is None
        assert "too seldom" in note
        return
    assert got.energy_j is not None and device.error_j is not None
    assert got.error_j == device.error_j
    truth = energy(we) - energy(ws)
    assert abs(got.energy_j - truth) <= device.error_j, (got.energy_j, truth, device.error_j)
    assert device.error_j <= 400.0 * min(2 * collect_s + 0.5, window_s) + 1e-6
    assert device.method == "counter" and f"± {device.error_j:.3g} J" in note
    if changes >= 3:  # changes enough to time them: the period itself
        assert device.refresh_s == pytest.approx(collect_s, abs=0.5)
    if not step and changes >= 3:  # even power: exact but for placing the changes
        assert got.energy_j == pytest.approx(truth, rel=0.02)


def test_an_exporter_collecting_as_often_as_it_is_read_is_read_as_fresh() -> None:
    """With -c 500 and reads every 0.5 s, a read now and then finds no new collection: the
    counter is still read at each sample, and no refresh is noted."""
    reads = list(np.arange(0.0, 10.0, 0.45))  # drifting against the 0.5 s collections
    samples, _ = exporter_reads(0.5, 0.2, reads, lambda t: np.full_like(t, 300.0))
    assert any(a.energy_j == b.energy_j for a, b in pairwise(samples))
    got = energy_in_window(samples, (S, 9 * S), Delivered(1.0, 0, 1.0))
    assert got is not None and got.energy_j == pytest.approx(2400.0, rel=0.05)
    assert got.devices[0].refresh_s is None and got.error_j is None and not got.notes


def test_no_samples_or_one_sample_gives_no_energy() -> None:
    assert energy_in_window([], (0, S), Delivered()) is None
    one = energy_in_window(counter_samples([0], 10.0), (0, S), Delivered(1.0, 0, 1.0))
    assert one is not None and one.energy_j is None and one.j_per_output_token is None
    assert math.isclose(one.window_s, 1.0)


# -- Prometheus --------------------------------------------------------------------------------


def series(registry: CollectorRegistry) -> dict[tuple[str, str | None], float]:
    got: dict[tuple[str, str | None], float] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            got[(s.name, s.labels.get("gpu"))] = s.value
    return got


def request(seq: int, phase: str, start_s: float, end_s: float) -> Record:
    """A request sent at `start_s` whose one token came at `end_s`."""
    t0, t1 = round(start_s * S), round(end_s * S)
    return Record("r", seq, phase, "chat", t0, t0, t0, t1, [t1], "c")  # type: ignore[arg-type]


def test_samples_feed_the_gpu_gauges_and_the_energy_counter() -> None:
    registry = CollectorRegistry()
    metrics = LatbenchMetrics(registry)
    sink = PrometheusSink(metrics, run_labels(None, "m", "chat", "s"), ())
    sink.add(request(0, "measure", 0.0, 2.0))
    for i in range(3):
        sink.add_gpu(GpuSample(i * S, "dcgm", "0", 0.25 * i, 1000 + i, 200.0 + i, 50.0 * i))
        sink.add_gpu(GpuSample(i * S, "node", "", power_w=10.0))  # no counter: 10 J a second
    sink.close(None)
    got = series(registry)
    assert got[("latbench_gpu_utilization_ratio", "0")] == 0.5
    assert got[("latbench_gpu_memory_used_bytes", "0")] == 1002
    assert got[("latbench_gpu_power_watts", "0")] == 202.0
    assert got[("latbench_gpu_power_watts", "host")] == 10.0
    assert got[("latbench_energy_joules_total", None)] == pytest.approx(100.0 + 20.0)


def test_the_energy_counter_holds_only_the_measured_requests_span() -> None:
    """The output tokens counter counts measured requests only, so the energy counter must
    too, or a dashboard's J/token (their rates' ratio) would charge the warm-up's energy to
    the measured tokens: 100 W read every second for 10 s, a warm-up request over [0, 2) s,
    measured ones over [2, 7.5] s (arriving out of order, after the samples that cover them),
    a cool-down one after: 550 J, the measured span's, whatever the order."""
    registry = CollectorRegistry()
    sink = PrometheusSink(LatbenchMetrics(registry), run_labels(None, "m", "chat", "s"), ())
    samples = [GpuSample(i * S, "dcgm", "0", power_w=100.0, energy_j=1e6 + 100.0 * i) for i in
               range(11)]  # fmt: skip
    for sample in samples[:4]:  # the warm-up, and the measured requests under way
        sink.add_gpu(sample)
    sink.add(request(0, "warmup", 0.0, 2.0))
    assert series(registry)[("latbench_energy_joules_total", None)] == 0.0
    sink.add(request(2, "measure", 3.0, 7.5))  # ends first
    assert series(registry)[("latbench_energy_joules_total", None)] == pytest.approx(0.0)
    for sample in samples[4:]:
        sink.add_gpu(sample)
    assert series(registry)[("latbench_energy_joules_total", None)] == pytest.approx(450.0)
    sink.add(request(1, "measure", 2.0, 4.0))  # sent earlier: the span widens back to 2 s
    sink.add(request(3, "cooldown", 7.5, 10.0))
    sink.close(None)
    assert series(registry)[("latbench_energy_joules_total", None)] == pytest.approx(550.0)


def test_the_energy_rows_name_a_mixed_method_and_show_the_stated_error() -> None:
    """One GPU with a counter and one without: "mixed", not "no energy counter"; a counter
    refreshed seldom shows its error with the figures."""
    counter = counter_samples([0, 2 * S], 100.0)
    power = [GpuSample(t, "dcgm", "1", power_w=50.0) for t in (0, 2 * S)]
    got = energy_in_window([*counter, *power], (0, 2 * S), Delivered(2.0, 0, 100.0))
    assert got is not None and got.method == "mixed"
    rows = dict(energy_rows(got))
    assert "mixed: counters on some devices" in rows["energy"]
    assert "no energy counter" not in rows["energy"]
    stale = replace(got, devices=(replace(got.devices[0], error_j=30.0), got.devices[1]))
    rows = dict(energy_rows(stale))
    assert rows["energy"].startswith("300 ± 30 J over 2 s")
    assert rows["energy per output token"] == "3 J/output token ± 0.3, 150 J/request ± 15"
