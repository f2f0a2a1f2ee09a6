"""Histogram buckets and their counts, shared by latbench's exporter and the simulator's
vLLM-style `/metrics` (which must expose exactly vLLM's boundaries so client and server figures
can be compared bucket for bucket). A leaf: it imports nothing of latbench."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

import numpy as np

# The Prometheus text exposition format's Content-Type.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

# vLLM `vllm:time_to_first_token_seconds`.
VLLM_TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# vLLM `vllm:inter_token_latency_seconds` and `vllm:time_per_output_token_seconds`.
VLLM_ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
# vLLM `vllm:e2e_request_latency_seconds` and `vllm:request_queue_time_seconds`.
VLLM_REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class BucketCounts:
    """One histogram series: counts per bucket (the last one is +Inf) and the sum.

    Written on the event loop, read by the scrape thread: the lock makes a scrape see a count,
    buckets and sum that belong together.
    """

    __slots__ = ("_bounds", "_bounds_list", "_counts", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._bounds_list = list(bounds)
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, so a value equal to a bound counts in it (le).
        i = bisect.bisect_left(self._bounds_list, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        idx = np.searchsorted(self._bounds, values, side="left")
        add = np.bincount(idx, minlength=self._counts.size)
        total = float(values.sum())
        with self._lock:
            self._counts += add
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative counts per bucket, +Inf last (= the count), and the sum."""
        with self._lock:
            counts = self._counts.copy()
            total = self._sum
        return np.cumsum(counts).tolist(), total
