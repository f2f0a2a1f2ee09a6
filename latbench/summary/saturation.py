"""Over-saturation: the server finishes fewer requests than an open loop sends it, so its queue,
and with it every latency, grows without bound, and the rest of the run would only measure how
long the queue has grown. `assess` is the verdict on what was known at one instant, a pure
function of it; `Watch` feeds it from a live run (`load.runner`), once a second, and fires when
the verdict has held for `hold` seconds. The settings are `load.oversaturation`
(spec/saturation.py).

Over the last `window` seconds, both must grow, steadily and significantly:

- **in-flight** (requests sent and not yet ended, counted exactly from their send and end
  instants on a 0.25 s grid): the fitted growth across the window must exceed `sigmas` standard
  deviations of the random walk of a critically loaded queue (sqrt(2 n) for n sends and about
  as many ends, Poisson both), so that a queue at 95 % load, which wanders widely, is not taken
  for one without bound. The count is independent of the server's latencies, so it is the
  signal a queue shows first.
- **TTFT**, each request's at the instant its first token arrived: its fitted slope must be
  `sigmas` standard errors above 0 (with one independent sample a second at most, as GuideLLM
  counts it: requests of the same second share the queue they waited in), and its fitted value
  at the window's end must reach `min_ttft`.

and each of the window's thirds must average above the one before, for both, so that a single
burst inside the window is not read as a trend.

Why TTFT by the instant of its first token, not by send time: under over-saturation a request's
end-to-end time grows without bound, and a TTFT is known only once its record arrives (the worker
sends it at the end). Indexed by send time, the window's recent requests would have no TTFT yet
when the queue is longest (censored), and those that had one would be the ones that finished
fastest. Indexed by the first token, what is missing at the window's end is only the requests
still decoding, which the server's batch bounds; and those are missing whatever their TTFT, so
what remains is not biased toward either regime. When decoding takes longer than the window
(long answers), even that would leave the window empty, so TTFT is judged over a window of the
same length that ends the median decode time (of requests that finished in the last window) ago,
at most two windows: `ttft_lag_s` in the evidence. A request still waiting is not a TTFT sample
(its first token may have come); it counts in the in-flight growth, and the age of the oldest
one is reported with the verdict, the lower bound on what the next TTFT can be.

Minimum evidence: nothing is judged before `min_requests` requests have finished, whose median
end-to-end time is the fill time (an open loop's in-flight count rises from 0 to rate x latency
over about one request's life, and in a server like the simulator TTFT rises with it), and the
window must begin after it; the window must then hold `min_requests` first tokens. GuideLLM's
detector fell back to the in-flight slope alone when long prompts left it no TTFT, and stopped
healthy runs during that fill (vllm-project/guidellm#606): here both signals are always needed.

Measured with the defaults on FIFO timelines (8 slots of 1 s exponential service, Poisson
arrivals, 8 seeds of 240 s; tests/summary/test_saturation.py builds them): never at 90, 95 or
100 % of capacity, 2 of 8 at 110 %, all 8 at 120 % (after 37-91 s) and 150 % (36-42 s).
"""

from __future__ import annotations

import itertools
import math
from array import array
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from latbench.records.record import Record
from latbench.spec.saturation import OversaturationSpec

__all__ = ["Assessment", "Oversaturation", "Trend", "View", "Watch", "assess"]

NOT_ENDED = np.iinfo(np.int64).max
GRID_S = 0.25  # in-flight sample spacing: fine beside any window worth judging (>= 1 s)
THIRDS = 3
MAX_LAG_WINDOWS = 2  # TTFT's window may end at most this many windows before the in-flight one's


@dataclass(frozen=True)
class Trend:
    """A straight line fitted over the window: its values at the window's start and end, its
    slope per second, and how many standard deviations its growth is (see the module)."""

    start: float
    end: float
    slope: float
    sigmas: float

    def to_dict(self) -> dict[str, float]:
        return {
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "slope_per_s": round(self.slope, 6),
            "sigmas": round(self.sigmas, 3) if math.isfinite(self.sigmas) else 1e9,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trend:
        return cls(float(d["start"]), float(d["end"]), float(d["slope_per_s"]), float(d["sigmas"]))


@dataclass(frozen=True)
class Oversaturation:
    """The verdict and its evidence, as results.json, the footer and the reports carry it."""

    fired_ns: int  # when it fired (monotonic ns)
    after_s: float  # seconds into the run
    window_s: float
    inflight: Trend  # requests
    ttft: Trend  # seconds
    sent: int  # requests sent inside the window
    first_tokens: int  # first tokens inside the window (the TTFT samples)
    oldest_s: float | None  # age of the oldest request still in flight when it fired
    ttft_lag_s: float = 0.0  # how far before the in-flight window TTFT's window ends

    HEADLINE: ClassVar[str] = "OVER-SATURATED: the run was stopped early"
    MEANING: ClassVar[str] = (
        "the server finished fewer requests than were sent, so its queue and TTFT grew without "
        "bound; the figures are of that queue, cut short."
    )

    def evidence(self) -> list[list[str]]:
        """(figure, value) rows, as every report shows them."""
        i, t = self.inflight, self.ttft
        return [
            ["stopped", f"{self.after_s:.1f} s into the run, judging its last {self.window_s:g} s"],
            [
                "in flight",
                f"{i.start:.0f} -> {i.end:.0f} requests ({i.slope:+.2f}/s; {self.sent} sent in "
                f"the window; growth {i.sigmas:.1f} sigma of a critically loaded queue)",
            ],
            [
                "TTFT by first token",
                f"{t.start:.3f} -> {t.end:.3f} s ({t.slope:+.3f} s/s; {self.first_tokens} first "
                f"tokens; slope {t.sigmas:.1f} standard errors"
                + (f"; {self.ttft_lag_s:.1f} s behind" if self.ttft_lag_s >= 0.5 else "")
                + ")",
            ],
            ["oldest in flight", "-" if self.oldest_s is None else f"{self.oldest_s:.1f} s"],
        ]

    def describe(self) -> str:
        """One line: what grew, over which window, and when it fired."""
        i, t = self.inflight, self.ttft
        oldest = "" if self.oldest_s is None else f"; oldest in flight {self.oldest_s:.1f} s"
        if self.ttft_lag_s >= 0.5:
            oldest += f"; TTFT judged {self.ttft_lag_s:.1f} s behind (the median decode time)"
        return (
            f"over-saturated after {self.after_s:.1f} s: over the last {self.window_s:g} s "
            f"in-flight {i.start:.0f} -> {i.end:.0f} ({i.slope:+.2f}/s, {self.sent} sent) and "
            f"TTFT {t.start:.2f} -> {t.end:.2f} s ({t.slope:+.3f} s/s, {self.first_tokens} "
            f"first tokens){oldest}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fired_ns": self.fired_ns,
            "after_s": round(self.after_s, 3),
            "window_s": self.window_s,
            "inflight": self.inflight.to_dict(),
            "ttft_s": self.ttft.to_dict(),
            "sent": self.sent,
            "first_tokens": self.first_tokens,
            "oldest_in_flight_s": None if self.oldest_s is None else round(self.oldest_s, 3),
            "ttft_lag_s": round(self.ttft_lag_s, 3),
            "summary": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Oversaturation | None:
        """From results.json or a footer; None for None (a run that was not over-saturated)."""
        if d is None:
            return None
        oldest = d.get("oldest_in_flight_s")
        return cls(
            fired_ns=int(d["fired_ns"]),
            after_s=float(d["after_s"]),
            window_s=float(d["window_s"]),
            inflight=Trend.from_dict(d["inflight"]),
            ttft=Trend.from_dict(d["ttft_s"]),
            sent=int(d["sent"]),
            first_tokens=int(d["first_tokens"]),
            oldest_s=None if oldest is None else float(oldest),
            ttft_lag_s=float(d.get("ttft_lag_s", 0.0)),
        )


@dataclass(frozen=True)
class View:
    """What a run knew at one instant.

    `t_sent`/`t_end`: requests sent by then that may overlap the window (ones that ended before
    it add nothing, and may be left out), `t_end` NOT_ENDED for those still in flight;
    `first_ns`/`ttft_s`: the first tokens known by then (of requests whose record had come);
    `decode_s`: the median decode time (end minus first token) of requests that ended in the
    last window, 0 without any; `settle_s`: the fill time, None while too few requests have
    finished to know it."""

    start_ns: int
    t_sent: np.ndarray
    t_end: np.ndarray
    first_ns: np.ndarray
    ttft_s: np.ndarray
    settle_s: float | None
    decode_s: float = 0.0


@dataclass(frozen=True)
class Assessment:
    """`holds`: every test passed; `why`: the first that did not (for tests and logs)."""

    holds: bool
    why: str
    inflight: Trend | None = None
    ttft: Trend | None = None
    sent: int = 0
    first_tokens: int = 0
    ttft_lag_s: float = 0.0


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, residual standard deviation)."""
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    sxx = float(dx @ dx)
    b = float(dx @ (y - ym)) / sxx if sxx > 0 else 0.0
    a = ym - b * xm
    resid = y - (a + b * x)
    dof = max(len(x) - 2, 1)
    return a, b, math.sqrt(float(resid @ resid) / dof)


def _rising_thirds(x: np.ndarray, y: np.ndarray, w: float) -> bool:
    """Each third of [0, w) averages above the one before (and none is empty)."""
    means = []
    for k in range(THIRDS):
        m = (x >= k * w / THIRDS) & (x < (k + 1) * w / THIRDS if k < THIRDS - 1 else x <= w)
        if not m.any():
            return False
        means.append(float(y[m].mean()))
    return all(b > a for a, b in itertools.pairwise(means))


def assess(view: View, now_ns: int, spec: OversaturationSpec) -> Assessment:
    """The verdict on the last `spec.window` seconds before `now_ns` (see the module)."""
    w = spec.window
    ws = now_ns - int(w * 1e9)
    if view.settle_s is None:
        return Assessment(False, f"fewer than {spec.min_requests} requests have finished")
    if ws < view.start_ns + int(view.settle_s * 1e9):
        return Assessment(False, "the window would reach into the fill of the first requests")

    # In-flight on a grid over the window, exactly: sent by t minus ended by t.
    grid = ws + np.arange(int(w / GRID_S) + 1, dtype=np.int64) * int(GRID_S * 1e9)
    sent_by = np.searchsorted(np.sort(view.t_sent), grid, "right")
    counts = sent_by - np.searchsorted(np.sort(view.t_end), grid, "right")
    x = (grid - ws) / 1e9
    a, b, _ = _fit(x, counts.astype(np.float64))
    sent = int(np.count_nonzero((view.t_sent >= ws) & (view.t_sent <= now_ns)))
    need = spec.sigmas * math.sqrt(2 * max(sent, 1))
    growth = b * w
    inflight = Trend(a, a + growth, b, growth / math.sqrt(2 * max(sent, 1)))
    base = Assessment(False, "", inflight, None, sent, 0)
    if growth < need:
        why = f"in-flight grew {growth:.1f} over the window, under the {need:.1f} needed"
        return _with(base, why)
    if not _rising_thirds(x, counts.astype(np.float64), w):
        return _with(base, "in-flight did not rise from third to third of the window")

    # TTFT by the instant of the first token, over the window that ends the decode time ago.
    lag = min(view.decode_s, MAX_LAG_WINDOWS * w)
    t_end = now_ns - int(lag * 1e9)
    t_ws = t_end - int(w * 1e9)
    m = (view.first_ns >= t_ws) & (view.first_ns <= t_end)
    n = int(np.count_nonzero(m))
    base = Assessment(False, "", inflight, None, sent, n, lag)
    if n < spec.min_requests:
        return _with(base, f"{n} first tokens in the window, under the {spec.min_requests} needed")
    tx = (view.first_ns[m] - t_ws) / 1e9
    ty = view.ttft_s[m].astype(np.float64)
    ta, tb, resid = _fit(tx, ty)
    dx = tx - tx.mean()
    sxx = float(dx @ dx)
    # Requests of one second waited in one queue: at most one independent sample a second.
    n_eff = min(n, max(w, 3.0))
    se = resid / math.sqrt(sxx) * math.sqrt((n - 2) / max(n_eff - 2, 1)) if sxx > 0 else math.inf
    score = tb / se if se > 0 else (math.inf if tb > 0 else 0.0)
    ttft = Trend(ta, ta + tb * w, tb, score)
    base = Assessment(False, "", inflight, ttft, sent, n, lag)
    if score < spec.sigmas:
        return _with(base, f"TTFT slope {tb:+.4f} s/s is {score:.1f} standard errors above 0")
    if ttft.end < spec.min_ttft:
        return _with(base, f"TTFT reached {ttft.end:.3f} s, under {spec.min_ttft:g} s")
    if not _rising_thirds(tx, ty, w):
        return _with(base, "TTFT did not rise from third to third of the window")
    return _with(base, "over-saturated", holds=True)


def _with(a: Assessment, why: str, holds: bool = False) -> Assessment:
    return Assessment(holds, why, a.inflight, a.ttft, a.sent, a.first_tokens, a.ttft_lag_s)


class Watch:
    """A live run's view, fed each record as it arrives; `check` once a second fires the verdict
    once it has held for `spec.hold` seconds. Keeps only what the windows can still reach."""

    def __init__(self, spec: OversaturationSpec, start_ns: int) -> None:
        self.spec = spec
        self.start_ns = start_ns
        # Per finished request: sent, ended, first token (-1: none). Typed arrays, read by numpy
        # without a copy.
        self._sent = array("q")
        self._end = array("q")
        self._first = array("q")
        self._early_e2e: list[int] = []  # end-to-end of the first `min_requests` to finish
        self._since: int | None = None  # since when the verdict has held
        self.last: Assessment | None = None

    def add(self, r: Record) -> None:
        end = r.t_end if r.t_end is not None else r.t_sent
        self._sent.append(r.t_sent)
        self._end.append(end)
        self._first.append(r.ev_t[0] if len(r.ev_t) else -1)
        if len(self._early_e2e) < self.spec.min_requests:
            self._early_e2e.append(end - r.t_sent)

    def view(self, now_ns: int, in_flight_sent: list[int]) -> View:
        w_ns = int(self.spec.window * 1e9)
        # The in-flight window reaches back one window, TTFT's up to MAX_LAG_WINDOWS more.
        horizon = now_ns - (1 + MAX_LAG_WINDOWS) * w_ns
        ended = np.frombuffer(self._end, dtype=np.int64)
        if len(ended) and ended.min() < horizon:
            keep = ended >= horizon
            for name in ("_sent", "_end", "_first"):
                kept = np.frombuffer(getattr(self, name), dtype=np.int64)[keep]
                setattr(self, name, array("q", kept.tobytes()))
            ended = np.frombuffer(self._end, dtype=np.int64)
        sent = np.frombuffer(self._sent, dtype=np.int64)
        first = np.frombuffer(self._first, dtype=np.int64)
        has = first >= 0
        recent = has & (ended >= now_ns - w_ns)
        decode = float(np.median(ended[recent] - first[recent])) / 1e9 if recent.any() else 0.0
        settle = None
        if len(self._early_e2e) >= self.spec.min_requests:
            settle = float(np.median(self._early_e2e)) / 1e9
        flying = np.array(in_flight_sent, dtype=np.int64)
        return View(
            start_ns=self.start_ns,
            t_sent=np.concatenate([sent, flying]),
            t_end=np.concatenate([ended, np.full(len(flying), NOT_ENDED)]),
            first_ns=first[has],
            ttft_s=(first[has] - sent[has]) / 1e9,
            settle_s=settle,
            decode_s=decode,
        )

    def check(self, now_ns: int, in_flight_sent: list[int]) -> Oversaturation | None:
        """The verdict, once it has held for `hold` seconds; else None."""
        a = assess(self.view(now_ns, in_flight_sent), now_ns, self.spec)
        self.last = a
        if not a.holds:
            self._since = None
            return None
        if self._since is None:
            self._since = now_ns
        if now_ns - self._since < self.spec.hold * 1e9:
            return None
        assert a.inflight is not None and a.ttft is not None
        verdict = Oversaturation(
            fired_ns=now_ns,
            after_s=(now_ns - self.start_ns) / 1e9,
            window_s=self.spec.window,
            inflight=a.inflight,
            ttft=a.ttft,
            sent=a.sent,
            first_tokens=a.first_tokens,
            oldest_s=(now_ns - min(in_flight_sent)) / 1e9 if in_flight_sent else None,
            ttft_lag_s=a.ttft_lag_s,
        )
        # Rounded as the footer keeps it, so the live summary equals one read back from the file.
        return Oversaturation.from_dict(verdict.to_dict())
