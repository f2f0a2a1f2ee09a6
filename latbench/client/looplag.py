"""Evidence that the client was not the bottleneck: event-loop lag, sampled in every worker.

Loop lag is measured from outside the loop: a thread ticks every 10 ms, stamps the instant it
hands the loop a callback, and the callback records how long it waited to run. That is how late
the loop serves work that has become ready, such as the bytes of a token event, and so how late
those bytes are stamped. It avoids the loop's own timer granularity (epoll rounds timeouts up to
whole milliseconds, which would add up to 1 ms to every sample) and it leaves out the ticker
thread's own wake-up delay (measured here: under CPU contention, counting from the intended tick
doubled the p99). A loop that runs Python for long stretches still shows: the callback waits for
the stretch to end.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from array import array
from collections.abc import Callable

TICK_NS = 10_000_000  # 100 samples/s: enough for a p99 over a 10 s run, negligible cost

# Who else wants each lag sample as it is taken (the Prometheus exporter's live histogram), per
# loop: the runner owns its monitor, so a listener attaches to the loop it runs on instead.
_lag_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[int], None]]]
_lag_listeners = weakref.WeakKeyDictionary()


def add_lag_listener(
    loop: asyncio.AbstractEventLoop, listener: Callable[[int], None]
) -> Callable[[], None]:
    """Call `listener(lag_ns)` on the loop's thread for every sample any monitor of `loop` takes.
    Returns the function that detaches it."""
    _lag_listeners.setdefault(loop, []).append(listener)

    def remove() -> None:
        listeners = _lag_listeners.get(loop, [])
        if listener in listeners:
            listeners.remove(listener)

    return remove


def publish_lag(loop: asyncio.AbstractEventLoop, lag_ns: int) -> None:
    """Hand one lag sample to the listeners of `loop`: the runner calls this on its own loop for
    the samples its worker processes send, so the exporter sees every worker's lag."""
    for listener in _lag_listeners.get(loop, ()):
        listener(lag_ns)


class LoopLagMonitor:
    def __init__(self, loop: asyncio.AbstractEventLoop, tick_ns: int = TICK_NS) -> None:
        self._loop = loop
        self._tick_ns = tick_ns
        self.ticks = array("q")  # when each tick handed the loop its callback
        self.samples = array("q")  # how late its callback ran
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latbench-loop-lag", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _record(self, posted: int) -> None:
        lag = time.monotonic_ns() - posted
        self.samples.append(lag)
        self.ticks.append(posted)
        publish_lag(self._loop, lag)

    def lags_between(self, start: int, end: int) -> list[int]:
        """Lag samples whose tick fell in [start, end): the measurement window, so that start-up
        costs (first connections, lazy imports) paid during warm-up do not count."""
        return [lag for t, lag in zip(self.ticks, self.samples, strict=True) if start <= t < end]

    def _run(self) -> None:
        intended = time.monotonic_ns() + self._tick_ns
        while not self._stop.is_set():
            delay = intended - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            try:
                self._loop.call_soon_threadsafe(self._record, time.monotonic_ns())
            except RuntimeError:  # the loop closed under us
                return
            intended += self._tick_ns
            now = time.monotonic_ns()
            if intended < now:
                # This thread itself fell behind (machine overloaded); skip missed ticks rather
                # than fire a burst, and let the lag of the late tick speak for them.
                intended = now + self._tick_ns
