"""Energy over a run's measurement window, from its GPU samples, and energy per output token.

A pure function of the samples (`records.record.GpuSample`) and the records, so `latbench
summary` recomputes from a records file what the live run printed. Per device (a GPU, or a host's
RAPL counter), the energy in the window [start, end) is:

- with an energy counter (NVML's total energy, DCGM's DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, RAPL):
  the counter's difference, read off the straight line between the two samples either side of
  each edge. A counter that the source refreshes at every read is exact between samples; only
  the split of one sampling period at each edge is interpolated, so the error is at most the
  energy of one period's nonlinearity at each edge. A counter that goes down (a driver reload, a
  RAPL wrap) restarts from its new value;
- a counter the source refreshes less often than it is read (dcgm-exporter collects every
  `--collect-interval`, 30 s by default, and serves the last values in between) stays flat
  across reads while the power reads well above zero. Stamped at the read, it would move in
  steps of a whole refresh period's energy (a 20 s run at 400 W under a 30 s refresh: 0 J or
  12 kJ for a true 8 kJ). Such a counter (`Refresh`) is read at its changes only, each placed
  midway between the read before it and the read that first showed it; the rest of the window
  is extrapolated at the mean power, and the device's `error_j` says how far off that can be.
  With fewer than two changes (a run shorter than about two refresh periods) there is no
  energy: the power gauge is refreshed as seldom, so nothing read tells it. Either way the note
  says to run the exporter with `-c 500`;
- without one (older GPUs, an exporter configured without it): power integrated over time by
  the trapezoid rule, flagged `power_integral`: a power gauge is an average over the device's own
  period, so spikes between samples are missed.

Each step between two samples, the windowed figure's and the Prometheus counter's
(`EnergyMeter`) alike, is `energy_step`'s.

Energy per output token divides the whole window's energy by the output tokens delivered in it
(`summary.samples.delivered`, the numerator of output tokens/s), so it is the energy the server
spent per token at that load, idle power included; docs/gpu.md says what it does not mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from latbench.records.record import GpuSample, Record
from latbench.summary.samples import Delivered, delivered_by

NS_PER_S = 1e9
Method = Literal["counter", "power_integral"]


# A counter reading that moved by less than this did not move: DCGM and NVML count in mJ.
COUNTER_RESOLUTION_J = 0.001


def _device_key(s: GpuSample) -> tuple[str, str]:
    return (s.source, s.gpu)


def energy_step(prev: GpuSample, cur: GpuSample, method: Method) -> float | None:
    """The energy one device used between two of its samples, J, by `method`: the counter's
    step (a counter that went down restarted, from zero, in between: its new value is the
    energy since, the best lower bound of the step), or the power's trapezoid over the gap;
    None when the two lack what the method needs, or `cur` is not later."""
    if cur.t_ns <= prev.t_ns:
        return None
    if method == "counter":
        if prev.energy_j is None or cur.energy_j is None:
            return None
        step = cur.energy_j - prev.energy_j
        return step if step >= 0 else cur.energy_j
    if prev.power_w is None or cur.power_w is None:
        return None
    return (cur.power_w + prev.power_w) / 2 * (cur.t_ns - prev.t_ns) / NS_PER_S


@dataclass(frozen=True)
class Refresh:
    """An energy counter the source refreshes less often than it was read: it stayed at one
    value across reads while the power gauge said it should have moved."""

    period_s: float  # the refresh period: the median time between its changes (else the flat_s)
    flat_s: float  # the longest time it was read at one value while the power read above zero
    at_least: bool  # fewer than two changes: `period_s` is only the flat stretch, a lower bound
    changes: list[GpuSample]  # the first read of each new value, placed midway since the last


def counter_refresh(counted: Sequence[GpuSample]) -> Refresh | None:
    """How seldom the source refreshes the counter of `counted` (one device's samples with a
    counter reading, in time order); None when it moved at every read that had the power to
    move it, or about as often as it was read (an exporter collecting as often as latbench
    samples skips a read now and then: at the read or at its change, the same within a
    sampling period)."""
    stale = False
    for a, b in pairwise(counted):
        assert a.energy_j is not None and b.energy_j is not None
        powers = [p for p in (a.power_w, b.power_w) if p is not None]
        expected = max(powers, default=0.0) * (b.t_ns - a.t_ns) / NS_PER_S
        if abs(b.energy_j - a.energy_j) < COUNTER_RESOLUTION_J < expected / 2:
            stale = True
            break
    if not stale:
        return None
    changes: list[GpuSample] = []
    flat_ns, since = 0, counted[0].t_ns
    for a, b in pairwise(counted):
        assert a.energy_j is not None and b.energy_j is not None
        if abs(b.energy_j - a.energy_j) >= COUNTER_RESOLUTION_J:
            changes.append(replace(b, t_ns=(a.t_ns + b.t_ns) // 2))
            flat_ns, since = max(flat_ns, a.t_ns - since), b.t_ns
    flat_ns = max(flat_ns, counted[-1].t_ns - since)
    between = np.diff([c.t_ns for c in changes])
    if not between.size:
        return Refresh(flat_ns / NS_PER_S, flat_ns / NS_PER_S, True, changes)
    period = float(np.median(between))
    if period <= 1.5 * float(np.median(np.diff([s.t_ns for s in counted]))):
        return None
    return Refresh(period / NS_PER_S, flat_ns / NS_PER_S, False, changes)


@dataclass(frozen=True)
class Cumulative:
    """One device's energy since its first usable sample, J (`e`), at instants `t` (ns)."""

    t: np.ndarray
    e: np.ndarray
    method: Method
    refresh: Refresh | None = None


def cumulative_energy(samples: Sequence[GpuSample]) -> Cumulative | None:
    """One device's energy since its first usable sample, at each usable sample's instant, and
    how it was had; None with fewer than two usable samples. `samples` in time order. A counter
    refreshed seldom is used at its changes only (`Refresh`): with fewer than two, `t` and `e`
    are empty, as neither it nor its power gauge (refreshed as seldom) can tell the energy."""
    counted = [s for s in samples if s.energy_j is not None]
    refresh = counter_refresh(counted) if len(counted) >= 2 else None
    method: Method = "counter"
    if refresh is not None:
        use = refresh.changes
        if len(use) < 2:
            empty = np.zeros(0)
            return Cumulative(empty.astype(np.int64), empty, method, refresh)
    elif len(counted) >= 2:
        use = counted
    else:
        method, use = "power_integral", [s for s in samples if s.power_w is not None]
        if len(use) < 2:
            return None
    steps = [energy_step(a, b, method) or 0.0 for a, b in pairwise(use)]
    t = np.fromiter((s.t_ns for s in use), dtype=np.int64, count=len(use))
    return Cumulative(t, np.concatenate(([0.0], np.cumsum(steps))), method, refresh)


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
    # A counter the source refreshes less often than it was read (`Refresh`): its refresh
    # period, s, and how far off the energy can be for it, J; None for a counter read fresh.
    refresh_s: float | None = None
    error_j: float | None = None

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
            "refresh_s": _r(self.refresh_s),
            "error_j": _r(self.error_j),
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
    def error_j(self) -> float | None:
        """How far off `energy_j` can be for counters refreshed seldom (their devices'
        `error_j` added up); None when every counter was read fresh."""
        known = [d.error_j for d in self.devices if d.error_j is not None]
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
            "error_j": _r(self.error_j),
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
        energy = covered = error = None
        method: Method | None = None
        cum = cumulative_energy(samples)
        refresh = None if cum is None else cum.refresh
        if cum is not None and cum.t.size >= 2:
            method = cum.method
            part, covered = energy_between(cum.t, cum.e, start, end)
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
        elif cum is None:
            notes.append(f"{label}: fewer than two samples with energy or power; no energy")
        if refresh is not None:
            if energy is not None:
                error = _refresh_error(samples, refresh, energy, window_s)
            notes.append(_refresh_note(label, samples, refresh, error))
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
                refresh_s=None if refresh is None else refresh.period_s,
                error_j=error,
            )
        )
    return Energy(window_s, tuple(devices), inside.tokens, inside.requests, tuple(notes))


def _refresh_error(
    samples: Sequence[GpuSample], refresh: Refresh, energy: float, window_s: float
) -> float:
    """How far off a seldom-refreshed counter's energy can be, J: at each edge of the window,
    the energy of a refresh period (the counter is known only at its changes, a period apart,
    each placed within half a sampling gap; in between, or past the last, the power is taken
    as even) at the highest power read (the gauge's, or the mean over the window); never more
    than the whole window at that power."""
    p_max = max((s.power_w for s in samples if s.power_w is not None), default=0.0)
    p_max = max(p_max, energy / window_s if window_s > 0 else 0.0)
    gaps = np.diff([s.t_ns for s in samples]) / NS_PER_S
    gap = float(gaps.max()) if gaps.size else 0.0
    return p_max * min(2 * refresh.period_s + gap, window_s)


def _refresh_note(
    label: str, samples: Sequence[GpuSample], refresh: Refresh, error: float | None
) -> str:
    powers = [s.power_w for s in samples if s.power_w is not None]
    power = f"{max(powers):.3g} W" if powers else "above zero"
    period = ("at least " if refresh.at_least else "about every ") + f"{refresh.period_s:.3g} s"
    what = (
        "it changed fewer than twice, too seldom to tell the energy (its power gauge is "
        "refreshed as seldom); no energy"
        if error is None
        else f"it is read at its changes only; energy ± {error:.3g} J"
    )
    return (
        f"{label}: the energy counter stayed at one value for up to {refresh.flat_s:.3g} s while "
        f"the power read up to {power}: the source refreshes it {period} (dcgm-exporter's "
        f"-c/--collect-interval, 30000 ms unless set; run it with -c 500): {what}"
    )


def energy_of(
    gpu: Sequence[GpuSample], records: Iterable[Record], window: tuple[int, int]
) -> Energy | None:
    """`energy_in_window` with what `records` (every phase) delivered in the window, as the
    summary's rates count it; for a caller that has no summary."""
    if not gpu:
        return None
    return energy_in_window(gpu, window, delivered_by(records, window, ()))


class EnergyMeter:
    """The energy each new sample adds since its device's previous one, for a counter that
    only grows (the Prometheus sink's `latbench_energy_joules_total`): `energy_step` by the
    counter where both samples have it, else by the power."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], GpuSample] = {}

    def add(self, sample: GpuSample) -> tuple[int, int, float] | None:
        """The step since the device's previous sample: (from, to) monotonic ns and J; None for
        a device's first sample (or one no later than its previous)."""
        key = _device_key(sample)
        prev = self._last.get(key)
        self._last[key] = sample
        if prev is None:
            return None
        step = energy_step(prev, sample, "counter")
        if step is None:
            step = energy_step(prev, sample, "power_integral")
        return None if step is None else (prev.t_ns, sample.t_ns, step)
