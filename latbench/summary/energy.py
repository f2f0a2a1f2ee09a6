"""Energy over a run's measurement window, from its GPU samples, and energy per output token.

A pure function of the samples (`records.record.GpuSample`) and the records, so `latbench
summary` recomputes from a records file what the live run printed. Per device (a GPU, or a host's
RAPL counter), the energy in the window [start, end) is:

- with an energy counter (NVML's total energy, DCGM's DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, RAPL):
  the counter's difference, read off the straight line between the two samples either side of
  each edge. The counter is exact between samples; only the split of one sampling period at each
  edge is interpolated, so the error is at most the energy of one period's nonlinearity at each
  edge. A counter that goes down (a driver reload, a RAPL wrap) restarts from its new value;
- without one (older GPUs, an exporter configured without it): power integrated over time by
  the trapezoid rule, flagged `power_integral`: a power gauge is an average over the device's own
  period, so spikes between samples are missed.

Energy per output token divides the whole window's energy by the output tokens delivered in it
(`summary.samples.delivered`, the numerator of output tokens/s), so it is the energy the server
spent per token at that load, idle power included; docs/gpu.md says what it does not mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from latbench.records.record import GpuSample, Record
from latbench.summary.samples import Delivered, delivered_by

NS_PER_S = 1e9
Method = Literal["counter", "power_integral"]


def _device_key(s: GpuSample) -> tuple[str, str]:
    return (s.source, s.gpu)


def cumulative_energy(samples: Sequence[GpuSample]) -> tuple[np.ndarray, np.ndarray, Method] | None:
    """One device's energy since its first usable sample, J, at each sample's instant (ns), and
    how it was had; None with fewer than two usable samples. `samples` in time order."""
    counted = [s for s in samples if s.energy_j is not None]
    if len(counted) >= 2:
        t = np.fromiter((s.t_ns for s in counted), dtype=np.int64, count=len(counted))
        e = np.fromiter((s.energy_j or 0.0 for s in counted), dtype=np.float64, count=len(counted))
        step = np.diff(e)
        # A counter that went down restarted (from zero) in between: its new value is the
        # energy since the restart, the best lower bound of the step.
        step = np.where(step >= 0, step, e[1:])
        return t, np.concatenate(([0.0], np.cumsum(step))), "counter"
    powered = [s for s in samples if s.power_w is not None]
    if len(powered) >= 2:
        t = np.fromiter((s.t_ns for s in powered), dtype=np.int64, count=len(powered))
        p = np.fromiter((s.power_w or 0.0 for s in powered), dtype=np.float64, count=len(powered))
        dt_s = np.diff(t) / NS_PER_S
        steps = (p[1:] + p[:-1]) / 2 * dt_s
        return t, np.concatenate(([0.0], np.cumsum(steps))), "power_integral"
    return None


def energy_between(t: np.ndarray, e: np.ndarray, start: int, end: int) -> tuple[float, float]:
    """The energy of the part of [start, end) the samples cover, and that part's length, s:
    the cumulative energy `e` (at instants `t`) read at the edges on the line between samples."""
    lo, hi = max(start, int(t[0])), min(end, int(t[-1]))
    if hi <= lo:
        return 0.0, 0.0
    at = np.interp(np.array([lo, hi], dtype=np.float64), t.astype(np.float64), e)
    return float(at[1] - at[0]), (hi - lo) / NS_PER_S


@dataclass(frozen=True)
class DeviceEnergy:
    """One device's figures over the window. `energy_j` None: no two usable samples."""

    source: str
    gpu: str
    samples: int  # samples of this device taken inside the window
    energy_j: float | None
    method: Method | None
    covered_s: float  # the part of the window its samples span (the rest extrapolated)
    mean_power_w: float | None  # energy_j / window; the sampled gauge's mean without energy
    mean_utilization: float | None
    mean_memory_used_bytes: float | None
    max_memory_used_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "gpu": self.gpu,
            "samples": self.samples,
            "energy_j": _r(self.energy_j),
            "method": self.method,
            "covered_s": _r(self.covered_s),
            "mean_power_w": _r(self.mean_power_w),
            "mean_utilization": _r(self.mean_utilization),
            "mean_memory_used_bytes": _r(self.mean_memory_used_bytes),
            "max_memory_used_bytes": self.max_memory_used_bytes,
        }


@dataclass(frozen=True)
class Energy:
    """Energy over the measurement window, all devices, and per token and request."""

    window_s: float
    devices: tuple[DeviceEnergy, ...]
    output_tokens: float  # delivered in the window (`samples.delivered`)
    requests: float  # delivered in the window, each for the share of its output inside it
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def energy_j(self) -> float | None:
        known = [d.energy_j for d in self.devices if d.energy_j is not None]
        return sum(known) if known else None

    @property
    def method(self) -> str | None:
        """ "counter", "power_integral", or "mixed" when devices differ."""
        methods = {d.method for d in self.devices if d.method is not None}
        return None if not methods else methods.pop() if len(methods) == 1 else "mixed"

    @property
    def mean_power_w(self) -> float | None:
        e = self.energy_j
        return None if e is None or self.window_s <= 0 else e / self.window_s

    @property
    def j_per_output_token(self) -> float | None:
        e = self.energy_j
        return None if e is None or self.output_tokens <= 0 else e / self.output_tokens

    @property
    def j_per_request(self) -> float | None:
        e = self.energy_j
        return None if e is None or self.requests <= 0 else e / self.requests

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": _r(self.window_s),
            "energy_j": _r(self.energy_j),
            "method": self.method,
            "mean_power_w": _r(self.mean_power_w),
            "output_tokens": _r(self.output_tokens),
            "requests": _r(self.requests),
            "j_per_output_token": _r(self.j_per_output_token),
            "j_per_request": _r(self.j_per_request),
            "devices": [d.to_dict() for d in self.devices],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Energy:
        devices = tuple(DeviceEnergy(**dev) for dev in d.get("devices", []))
        return cls(
            window_s=float(d["window_s"]),
            devices=devices,
            output_tokens=float(d["output_tokens"]),
            requests=float(d["requests"]),
            notes=tuple(d.get("notes", ())),
        )


def _r(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(float(v), digits)


def _mean(values: Iterable[float | int | None]) -> float | None:
    got = [float(v) for v in values if v is not None]
    return sum(got) / len(got) if got else None


def energy_in_window(
    gpu: Sequence[GpuSample], window: tuple[int, int], inside: Delivered
) -> Energy | None:
    """The window's energy from `gpu` (any order, any devices), per what was delivered in it
    (`inside`: the summary's `Delivered`); None without a sample or a window of positive
    length."""
    start, end = window
    if not gpu or end <= start:
        return None
    window_s = (end - start) / NS_PER_S
    by_device: dict[tuple[str, str], list[GpuSample]] = {}
    for s in sorted(gpu, key=lambda s: s.t_ns):
        by_device.setdefault(_device_key(s), []).append(s)
    devices, notes = [], []
    for (source, name), samples in sorted(by_device.items()):
        within = [s for s in samples if start <= s.t_ns < end]
        label = f"{source} {name or 'host'}"
        energy = covered = None
        method: Method | None = None
        if (cum := cumulative_energy(samples)) is not None:
            t, e, method = cum
            part, covered = energy_between(t, e, start, end)
            if covered <= 0:
                energy, method = None, None
                notes.append(f"{label}: no two samples around the window; no energy")
            else:
                energy = part * window_s / covered
                if covered < window_s * 0.999:
                    notes.append(
                        f"{label}: samples span {covered:.3g} s of the {window_s:.3g} s window; "
                        "the rest extrapolated at the mean power"
                    )
            if method == "power_integral":
                notes.append(
                    f"{label}: no energy counter; energy is the power gauge integrated over "
                    "time (spikes between samples missed)"
                )
        else:
            notes.append(f"{label}: fewer than two samples with energy or power; no energy")
        power = energy / window_s if energy is not None else _mean(s.power_w for s in within)
        memory = [s.memory_used_bytes for s in within if s.memory_used_bytes is not None]
        devices.append(
            DeviceEnergy(
                source=source,
                gpu=name,
                samples=len(within),
                energy_j=energy,
                method=method,
                covered_s=covered or 0.0,
                mean_power_w=power,
                mean_utilization=_mean(s.utilization for s in within),
                mean_memory_used_bytes=_mean(memory),
                max_memory_used_bytes=max(memory) if memory else None,
            )
        )
    return Energy(window_s, tuple(devices), inside.tokens, inside.requests, tuple(notes))


def energy_of(
    gpu: Sequence[GpuSample], records: Iterable[Record], window: tuple[int, int]
) -> Energy | None:
    """`energy_in_window` with what `records` (every phase) delivered in the window, as the
    summary's rates count it; for a caller that has no summary."""
    if not gpu:
        return None
    return energy_in_window(gpu, window, delivered_by(records, window, ()))


class EnergyMeter:
    """The energy each new sample adds since its device's previous one, J, for a counter that
    only grows (the Prometheus sink's `latbench_energy_joules_total`): the counter's step
    (a restart counts from zero), else the power's trapezoid over the gap."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], GpuSample] = {}

    def add(self, sample: GpuSample) -> float:
        key = _device_key(sample)
        prev = self._last.get(key)
        self._last[key] = sample
        if prev is None or sample.t_ns <= prev.t_ns:
            return 0.0
        if sample.energy_j is not None and prev.energy_j is not None:
            step = sample.energy_j - prev.energy_j
            return step if step >= 0 else sample.energy_j
        if sample.power_w is not None and prev.power_w is not None:
            return (sample.power_w + prev.power_w) / 2 * (sample.t_ns - prev.t_ns) / NS_PER_S
        return 0.0
