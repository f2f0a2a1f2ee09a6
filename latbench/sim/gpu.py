"""Fake GPUs for the simulator: a DCGM exporter's page at `GET /dcgm/metrics` whose energy
counter grows with the simulator's own work, and the energy it charged in `/sim/truth`.

The model (`SimConfig.gpu`, `SimGpu`): each of `count` GPUs draws `idle_w` all the time, and every
token event written charges `j_per_token` joules per token, shared evenly by the GPUs (tensor
parallelism spreads a token's work over them). So the counter of GPU i at instant t is

    E_i(t) = E_i(boot) + idle_w (t - t_start) + j_per_token tokens(t) / count

and a client that reads the page around a run can be scored exactly: the energy in any interval
is the idle term plus the tokens written in it times `j_per_token` (`/sim/truth`'s `gpu` gives
the counters, the tokens charged and the instant, on the shared monotonic clock).

The page has dcgm-exporter's names, types and units (NVIDIA/dcgm-exporter,
etc/default-counters.csv: DCGM_FI_DEV_GPU_UTIL gauge in %, DCGM_FI_DEV_FB_USED gauge in MiB,
DCGM_FI_DEV_POWER_USAGE gauge in W, DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter in mJ since
boot) and its labels (`gpu`, `UUID`, `device`, `modelName`, `Hostname`). The power gauge is
the mean power since the previous read of the page (the first read: the idle draw), as a real
GPU's is a mean over its own period.

dcgm-exporter does not read the GPUs when its page is read: it collects every
`--collect-interval` (30000 ms by default, NVIDIA/dcgm-exporter pkg/cmd/app.go) and serves the
last collection in between. With `collect_interval_s` > 0 the page does the same: its counter
is the energy at the latest collection instant (the simulator's start plus a whole number of
intervals) and its power the mean over the interval before it, so a reader stamping the page at
its read sees values up to an interval old.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Each fake GPU's counter starts as if it had run for a while since boot, as a real one's does;
# a reader must difference it.
BOOT_ENERGY_J = 3_600_000.0


class SimGpu(BaseModel):
    """Fake GPUs whose energy counter the simulator's work drives (see latbench.sim.gpu)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    count: int = Field(default=1, ge=1, le=64, description="GPUs on the page")
    idle_w: float = Field(default=60.0, ge=0.0, description="each GPU's draw when idle, W")
    j_per_token: float = Field(
        default=0.5, ge=0.0, description="joules each generated token costs, all GPUs together"
    )
    memory_mib: float = Field(default=20_000.0, ge=0.0, description="each GPU's memory used")
    model_name: str = "NVIDIA H100 80GB HBM3"
    collect_interval_s: float = Field(
        default=0.0,
        ge=0.0,
        le=3600.0,
        description="refresh the page's values only every this many seconds, as dcgm-exporter's "
        "--collect-interval (30 s by default); 0: at each read",
    )


class GpuModel:
    """The fake GPUs' counters; `charge` is called for every token event written."""

    def __init__(self, spec: SimGpu) -> None:
        self.spec = spec
        self.start_ns = time.monotonic_ns()
        self.tokens = 0
        self._last_read: tuple[int, list[float]] | None = None
        self._interval_ns = round(spec.collect_interval_s * 1e9)
        # The exporter's last two collections: (instant, tokens charged by then); the first at
        # the start.
        self._collected: list[tuple[int, int]] = [(self.start_ns, 0)]

    def _collect_to(self, now_ns: int) -> None:
        """The collections up to `now_ns`, none of which saw a charge since the last call."""
        if self._interval_ns <= 0:
            return
        latest = now_ns - (now_ns - self.start_ns) % self._interval_ns
        last = self._collected[-1][0]
        if latest > last:
            prev = max(latest - self._interval_ns, last)
            self._collected = [
                (prev, self.tokens) if prev > last else self._collected[-1],
                (latest, self.tokens),
            ]

    def charge(self, tokens: int) -> None:
        self._collect_to(time.monotonic_ns())
        self.tokens += tokens

    def energy_j(self, now_ns: int, tokens: int | None = None) -> list[float]:
        """Each GPU's counter at `now_ns` (with `tokens` charged by then: all so far), J."""
        spec = self.spec
        idle = spec.idle_w * (now_ns - self.start_ns) / 1e9
        work = spec.j_per_token * (self.tokens if tokens is None else tokens) / spec.count
        return [BOOT_ENERGY_J * (i + 1) + idle + work for i in range(spec.count)]

    def _readings(self, now: int) -> tuple[list[float], list[float]]:
        """What the page shows now: each GPU's energy counter and power, J and W."""
        spec = self.spec
        if self._interval_ns > 0:
            # The latest collection's values, the power the mean over the interval before it.
            self._collect_to(now)
            at, tokens = self._collected[-1]
            energy = self.energy_j(at, tokens)
            if len(self._collected) < 2:
                return energy, [spec.idle_w] * spec.count
            then, before_tokens = self._collected[0]
            before = self.energy_j(then, before_tokens)
            dt = (at - then) / 1e9
            return energy, [(e - b) / dt for e, b in zip(energy, before, strict=True)]
        energy = self.energy_j(now)
        if self._last_read is None or now <= self._last_read[0]:
            power = [spec.idle_w] * spec.count
        else:
            then, before = self._last_read
            power = [(e - b) / ((now - then) / 1e9) for e, b in zip(energy, before, strict=True)]
        self._last_read = (now, energy)
        return energy, power

    def page(self, active: int) -> str:
        """The DCGM exporter page now; `active`: the requests being generated (utilisation)."""
        spec = self.spec
        energy, power = self._readings(time.monotonic_ns())
        util = 100 if active > 0 else 0
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, values: list[Any]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for i, v in enumerate(values):
                labels = (
                    f'gpu="{i}",UUID="GPU-00000000-0000-0000-0000-{i:012d}",device="nvidia{i}",'
                    f'modelName="{spec.model_name}",Hostname="latbench-sim"'
                )
                lines.append(f"{name}{{{labels}}} {v}")

        family("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", [util] * spec.count)
        family(
            "DCGM_FI_DEV_FB_USED",
            "gauge",
            "Framebuffer memory used (in MiB).",
            [round(spec.memory_mib)] * spec.count,
        )
        family(
            "DCGM_FI_DEV_POWER_USAGE",
            "gauge",
            "Power draw (in W).",
            [f"{p:.3f}" for p in power],
        )
        family(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "counter",
            "Total energy consumption since boot (in mJ).",
            [round(e * 1000) for e in energy],
        )
        return "\n".join(lines) + "\n"

    def truth(self) -> dict[str, Any]:
        """What `/sim/truth` says of the GPUs: the model, the tokens charged and the counters
        now, with the instant (monotonic ns, shared with a client on this machine)."""
        now = time.monotonic_ns()
        return {
            "count": self.spec.count,
            "idle_w": self.spec.idle_w,
            "j_per_token": self.spec.j_per_token,
            "collect_interval_s": self.spec.collect_interval_s,
            "start_ns": self.start_ns,
            "now_ns": now,
            "tokens": self.tokens,
            "energy_j": [e - BOOT_ENERGY_J * (i + 1) for i, e in enumerate(self.energy_j(now))],
        }
