"""GPU samples and energy per token: a recorded DCGM exporter page and a node exporter's RAPL
counters parsed into samples; the window's energy from a counter (resets included) and from a
power gauge, against the exact energy of known power curves; the samples' records-file lines;
and the Prometheus series a run's samples feed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from latbench.exporter import LatbenchMetrics
from latbench.records.record import GpuSample, encode_gpu, iter_lines
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
    by_gpu = {s.gpu: s for s in samples}
    assert set(by_gpu) == {"0", "1"}
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


def test_a_node_exporter_page_sums_its_rapl_packages_host_wide() -> None:
    # The rapl collector's counter (prometheus/node_exporter collector/rapl_linux.go), one per
    # package, labelled index and path.
    page = (
        "# HELP node_rapl_package_joules_total Current RAPL package value in joules\n"
        "# TYPE node_rapl_package_joules_total counter\n"
        'node_rapl_package_joules_total{index="0",path="/sys/class/powercap/intel-rapl:0"} 100.5\n'
        'node_rapl_package_joules_total{index="1",path="/sys/class/powercap/intel-rapl:1"} 20.25\n'
        "# TYPE node_load1 gauge\nnode_load1 0.5\n"
    )
    assert parse_node(page, 3) == [GpuSample(t_ns=3, source="node", gpu="", energy_j=120.75)]
    assert parse_page(page, 3) == parse_node(page, 3)


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
    assert EnergyMeter().add(samples[0]) == 0.0
    meter = EnergyMeter()
    assert sum(meter.add(s) for s in samples) == pytest.approx(35.0)


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


def test_no_samples_or_one_sample_gives_no_energy() -> None:
    assert energy_in_window([], (0, S), Delivered()) is None
    one = energy_in_window(counter_samples([0], 10.0), (0, S), Delivered(1.0, 0, 1.0))
    assert one is not None and one.energy_j is None and one.j_per_output_token is None
    assert math.isclose(one.window_s, 1.0)


# -- Prometheus --------------------------------------------------------------------------------


def test_samples_feed_the_gpu_gauges_and_the_energy_counter() -> None:
    registry = CollectorRegistry()
    metrics = LatbenchMetrics(registry)
    sink = PrometheusSink(metrics, run_labels(None, "m", "chat", "s"), ())
    for i in range(3):
        sink.add_gpu(GpuSample(i * S, "dcgm", "0", 0.25 * i, 1000 + i, 200.0 + i, 50.0 * i))
        sink.add_gpu(GpuSample(i * S, "node", "", power_w=10.0))  # no counter: 10 J a second
    sink.close(None)
    got: dict[tuple[str, str | None], float] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            got[(s.name, s.labels.get("gpu"))] = s.value
    assert got[("latbench_gpu_utilization_ratio", "0")] == 0.5
    assert got[("latbench_gpu_memory_used_bytes", "0")] == 1002
    assert got[("latbench_gpu_power_watts", "0")] == 202.0
    assert got[("latbench_gpu_power_watts", "host")] == 10.0
    assert got[("latbench_energy_joules_total", None)] == pytest.approx(100.0 + 20.0)
