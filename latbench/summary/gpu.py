"""Sampling the GPUs (or a host's energy counter) around a run: the part of the energy figures
that does I/O (what the samples mean is `summary.energy`'s).

Three sources, one sample type (`records.record.GpuSample`, SI units):
- NVML on this host, through nvidia-ml-py (`pynvml`): utilisation (nvmlDeviceGetUtilizationRates,
  %), memory used (nvmlDeviceGetMemoryInfo, bytes), power (nvmlDeviceGetPowerUsage, mW) and the
  energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded; Volta and
  newer: elsewhere None, and the energy is the power integrated). NVML calls block, so they run
  in a worker thread, never on the event loop (the runner's loop hands records to the sinks);
- a DCGM exporter's page (NVIDIA/dcgm-exporter, etc/default-counters.csv): DCGM_FI_DEV_GPU_UTIL
  (gauge, %), DCGM_FI_DEV_FB_USED (gauge, MiB), DCGM_FI_DEV_POWER_USAGE (gauge, W) and
  DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (counter, mJ since boot), one series per GPU, labelled
  `gpu` (its index on its host), `UUID` and `Hostname`. A device is named `<Hostname>/<gpu>`
  (else its UUID, else its index), not by index alone: a URL that balances over the exporters
  of several hosts (a Kubernetes Service) serves GPU 0 of one host, then of another, and one
  name for both would read as a counter restarting. The exporter refreshes its values every
  `--collect-interval` (30 s by default), not at each read: `summary.energy` finds a counter
  that stays flat between reads and reads it at its changes;
- a node exporter's page: the RAPL counters (`node_rapl_package_joules_total`, J, the rapl
  collector), one device per CPU package (`package-<index>`), for CPU serving: each package's
  counter wraps on its own, so they are differenced apart, never summed first.

The sampler reads once before the first request, every `every_s` during the run (on an absolute
schedule, so a slow read does not shift the next), and once after the last response. Each sample
goes to the callbacks (the records file, Prometheus) as it is read. A failed read is noted, never
raised: the client's measurements stand on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from time import monotonic_ns
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from latbench.records.record import GpuSample

SAMPLE_EVERY_S = 0.5
PAGE_TIMEOUT_S = 5.0
MIB = 1024 * 1024
# DCGM writes a field it could not read as a "blank" sentinel (DCGM_FP64_BLANK is 2**47,
# DCGM_INT64_BLANK about 2**63), not as a missing series; no real reading comes near 2**47.
_DCGM_BLANK = float(2**47)

DCGM_UTIL = "DCGM_FI_DEV_GPU_UTIL"
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
DCGM_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
DCGM_FIELDS = (DCGM_UTIL, DCGM_FB_USED, DCGM_POWER, DCGM_ENERGY)
RAPL_PACKAGE = "node_rapl_package_joules_total"


class GpuMetricsError(Exception):
    """A GPU source that could not be read; the message names what went wrong."""


# -- pages: DCGM exporter, node exporter -------------------------------------------------------


Row = tuple[str, dict[str, str], float]


def _samples(text: str) -> list[Row]:
    """Each sample as (name, labels, value). The parser names a counter's samples `<family>_total`
    even where the page wrote the family's name alone, as DCGM does
    (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION): those are named as on the page."""
    try:
        return [
            (fam.name if s.name == f"{fam.name}_total" and fam.name in DCGM_FIELDS else s.name,
             s.labels, s.value)
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        ]  # fmt: skip
    except ValueError as e:
        raise GpuMetricsError(f"not Prometheus text: {e}") from None


def _reading(value: float) -> float | None:
    return None if math.isnan(value) or value < 0 or value >= _DCGM_BLANK else value


def parse_dcgm(text: str, t_ns: int) -> list[GpuSample]:
    """One sample per GPU of a DCGM exporter page, read at `t_ns`. GpuMetricsError when the page
    has none of the four fields."""
    return _dcgm(_samples(text), t_ns)


def _dcgm_name(labels: dict[str, str]) -> str:
    """A GPU's name that no other host's GPU shares: `<Hostname>/<gpu>`, else its UUID, else
    its index."""
    index, host = labels.get("gpu", ""), labels.get("Hostname", "")
    if host and index:
        return f"{host}/{index}"
    return labels.get("UUID") or index


def _dcgm(rows: Sequence[Row], t_ns: int) -> list[GpuSample]:
    by_gpu: dict[str, dict[str, float | None]] = {}
    for name, labels, value in rows:
        if name not in DCGM_FIELDS:
            continue
        # With pod or MIG labels a GPU can appear more than once: the first series counts.
        by_gpu.setdefault(_dcgm_name(labels), {}).setdefault(name, _reading(value))
    if not by_gpu:
        raise GpuMetricsError(f"no DCGM GPU fields ({', '.join(DCGM_FIELDS)}) on the page")
    out = []
    for gpu, f in by_gpu.items():
        util, fb, power, energy = (f.get(k) for k in DCGM_FIELDS)
        out.append(
            GpuSample(
                t_ns=t_ns,
                source="dcgm",
                gpu=gpu,
                utilization=None if util is None else min(util / 100.0, 1.0),
                memory_used_bytes=None if fb is None else int(fb * MIB),
                power_w=power,
                energy_j=None if energy is None else energy / 1000.0,
            )
        )
    return out


def parse_node(text: str, t_ns: int) -> list[GpuSample]:
    """A node exporter page's RAPL package energy, one sample per CPU package
    (`package-<index>`); GpuMetricsError without RAPL counters."""
    return _node(_samples(text), t_ns)


def _node(rows: Sequence[Row], t_ns: int) -> list[GpuSample]:
    # Each package's counter wraps at its own range (max_energy_range_uj): summed before
    # differencing, one package's wrap would make the sum drop and count as a restart.
    packages: dict[str, float] = {}
    for name, labels, value in rows:
        if name == RAPL_PACKAGE:
            key = labels.get("index") or labels.get("path") or str(len(packages))
            packages.setdefault(f"package-{key}", value)
    if not packages:
        raise GpuMetricsError(f"no {RAPL_PACKAGE} on the page (node exporter's rapl collector)")
    return [
        GpuSample(t_ns=t_ns, source="node", gpu=name, energy_j=joules)
        for name, joules in packages.items()
    ]


def parse_page(text: str, t_ns: int) -> list[GpuSample]:
    """A DCGM exporter's page, else a node exporter's RAPL counters."""
    rows = _samples(text)
    if any(name in DCGM_FIELDS for name, _, _ in rows):
        return _dcgm(rows, t_ns)
    if any(name == RAPL_PACKAGE for name, _, _ in rows):
        return _node(rows, t_ns)
    raise GpuMetricsError(
        f"neither a DCGM exporter page ({DCGM_ENERGY}, {DCGM_POWER}, ...) nor a node exporter's "
        f"RAPL counters ({RAPL_PACKAGE})"
    )


class Source(Protocol):
    name: str

    async def read(self) -> list[GpuSample]: ...

    async def close(self) -> None: ...


class PageSource:
    """A DCGM exporter's or node exporter's page over HTTP. A sample's instant is the middle of
    its request: the exporter read its values somewhere in between."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.name = url

    async def read(self) -> list[GpuSample]:
        t0 = monotonic_ns()
        try:
            async with self._session.get(
                self.name, timeout=aiohttp.ClientTimeout(total=PAGE_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    raise GpuMetricsError(f"HTTP {resp.status}")
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise GpuMetricsError(f"{type(e).__name__}: {e}") from None
        return parse_page(text, (t0 + monotonic_ns()) // 2)

    async def close(self) -> None:
        pass


# -- NVML --------------------------------------------------------------------------------------


class NvmlReader:
    """Every GPU NVML sees on this host. Blocking: call it from a thread (`NvmlSource`)."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise GpuMetricsError(
                "nvidia-ml-py is not installed (pip install 'latbench[gpu]')"
            ) from None
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise GpuMetricsError(f"NVML did not initialise ({e}): no NVIDIA driver here") from None
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise GpuMetricsError(f"NVML could not list the GPUs ({e})") from None
        if not self._handles:
            pynvml.nvmlShutdown()
            raise GpuMetricsError("NVML sees no GPU")
        # The energy counter is Volta and newer; asked once, so an older GPU's reads are cheap.
        self.energy_counter = [self._energy(h) is not None for h in self._handles]

    def _energy(self, handle: Any) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)) / 1000.0
        except self._nvml.NVMLError:
            return None

    def _read_one(self, handle: Any, fn: str) -> Any:
        try:
            return getattr(self._nvml, fn)(handle)
        except self._nvml.NVMLError:
            return None

    def read(self) -> list[GpuSample]:
        out = []
        for i, handle in enumerate(self._handles):
            t0 = monotonic_ns()
            util = self._read_one(handle, "nvmlDeviceGetUtilizationRates")
            mem = self._read_one(handle, "nvmlDeviceGetMemoryInfo")
            power_mw = self._read_one(handle, "nvmlDeviceGetPowerUsage")
            energy = self._energy(handle) if self.energy_counter[i] else None
            out.append(
                GpuSample(
                    t_ns=(t0 + monotonic_ns()) // 2,
                    source="nvml",
                    gpu=str(i),
                    utilization=None if util is None else min(util.gpu / 100.0, 1.0),
                    memory_used_bytes=None if mem is None else int(mem.used),
                    power_w=None if power_mw is None else power_mw / 1000.0,
                    energy_j=energy,
                )
            )
        return out

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


class NvmlSource:
    """`NvmlReader` off the event loop: each read in a worker thread."""

    name = "NVML"

    def __init__(self, reader: NvmlReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls) -> NvmlSource:
        return cls(await asyncio.to_thread(NvmlReader))

    async def read(self) -> list[GpuSample]:
        return await asyncio.to_thread(self._reader.read)

    async def close(self) -> None:
        await asyncio.to_thread(self._reader.close)


# -- the sampler -------------------------------------------------------------------------------


class GpuSampler:
    """Reads `source` before, during (every `every_s`) and after a run, handing each sample to
    `on_sample` as it comes and keeping them in `samples`; failed reads go to `errors`."""

    def __init__(
        self,
        source: Source,
        on_sample: Callable[[GpuSample], None],
        every_s: float = SAMPLE_EVERY_S,
    ) -> None:
        self.source = source
        self._on_sample = on_sample
        self._every_ns = int(every_s * 1e9)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.samples: list[GpuSample] = []
        self.errors: list[str] = []

    async def _take(self, when: str) -> bool:
        try:
            got = await self.source.read()
        except GpuMetricsError as e:
            self.errors.append(f"{when}: {e}")
            return False
        for s in got:
            self.samples.append(s)
            self._on_sample(s)
        return True

    async def start(self) -> bool:
        """The first read; False (the error in `errors`, the source closed) when it fails."""
        if not await self._take("before the run"):
            await self.close()
            return False
        self._task = asyncio.create_task(self._during())
        return True

    async def _during(self) -> None:
        next_ns = monotonic_ns()
        while True:
            next_ns += self._every_ns
            # Skip the instants a slow read overran instead of reading back to back.
            now = monotonic_ns()
            while next_ns <= now:
                next_ns += self._every_ns
            await asyncio.sleep((next_ns - now) / 1e9)
            await self._take("during the run")

    async def stop(self) -> list[GpuSample]:
        """The last read, after the run's last response; the source closed."""
        await self._cancel()
        if not self._closed:
            await self._take("after the run")
        await self.close()
        return self.samples

    async def close(self) -> None:
        """No more reads, and the source closed (NVML shut down), once: for a run that ends
        without `stop`, by an error or a cancellation (`latbench serve` runs many in one
        process, so a source left open would leak an NVML initialisation a run)."""
        await self._cancel()
        if not self._closed:
            self._closed = True
            await self.source.close()

    async def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None


async def start_gpu_sampler(
    setting: str,
    session: aiohttp.ClientSession,
    on_sample: Callable[[GpuSample], None],
    every_s: float = SAMPLE_EVERY_S,
) -> tuple[GpuSampler | None, str | None]:
    """A running sampler for `target.gpu_metrics` ("off", "auto", "nvml" or a page's URL), or
    None and what to tell the user: "auto" without NVML is quietly nothing; "nvml" or a URL
    that cannot be read is said (the run goes on without them)."""
    if setting == "off":
        return None, None
    source: Source
    if setting in ("auto", "nvml"):
        try:
            source = await NvmlSource.open()
        except GpuMetricsError as e:
            return None, None if setting == "auto" else f"NVML: {e}"
    else:
        source = PageSource(session, setting)
    sampler = GpuSampler(source, on_sample, every_s)
    if await sampler.start():
        return sampler, None
    if setting == "auto":
        return None, None
    return None, f"{source.name}: {sampler.errors[-1]}"
