"""Run comparison: per-metric differences with bootstrap confidence intervals, and a verdict.

Everything here is a pure function of records. For a latency, a bootstrap replicate resamples
a run's measured requests with replacement; a gap metric (ITL) takes every gap of each drawn
request, so the gaps of one request stay together, as they are not independent of each other.
For a rate, a replicate resamples 20 time blocks of the measurement window, each holding the
part of every request's lifetime that fell in it: resampling requests keeps their count fixed.
A replicate's percentile is the exact `np.percentile` (linear) of the resampled samples,
computed from per-sample weights without materialising the resample (`weighted_percentile`),
so 1,000 replicates of a run with 10^6 gaps stay cheap.

Verdict per metric, on the relative change `d = (B - A) / A` turned so that positive is worse
(higher latency, lower throughput), with its 95 % percentile-bootstrap interval [lo, hi]:

    worse   lo > 0 and d > margin    (surely worse, and by more than the margin)
    better  hi < 0 and d < -margin
    same    otherwise                (within the margin, or not told apart from noise)

A percentile with fewer than `MIN_TAIL` samples beyond it (p99 of under 500 samples) is not
judged: a bootstrap cannot reach past the largest sample, so its interval would be far too
narrow. `margin` defaults to 5 %; `latbench compare --fail-on-regression X` sets it to X and
gates on any `worse`.

Several runs per side (`RunGroup`): a replicate draws the side's runs with replacement, then
resamples each drawn run as above (a hierarchical bootstrap), and computes the statistic over
the pooled draws (a rate: the mean of the drawn runs' rates); the replicates are then widened
about the estimate by sqrt(k/(k-1)), since drawing from k runs as if they were all there is
spreads a mean of them by only (k-1)/k of its variance. A bootstrap over the requests of one run
sees only the noise inside that run; on a real server two runs of one configuration differ by
more than that (a cache, a clock, a neighbour), and against the e2e stage's vLLM two runs back
to back came out "worse" on 6 of 19 rows. Resampling runs puts that run-to-run spread in the
interval. Measured with bench/aa.py (docs/performance.md, "A/A comparisons"): 24 runs against
the simulator with TTFT and ITL drawn afresh for each run (5 % standard deviation), 200 A/A pairs
of 18 rows at 95 % and a 5 % margin. One run per side called 16.1 % of rows worse; three runs per
side 3.7 % without the widening and 1.7 % with it, two 2.8 %, five 2.3 %. With one run per side
the interval is as it always was, and the comparison says that it leaves out run-to-run
variation.

Per row and side of several runs, `spread` is the variance of the runs' own estimates over the
mean of their within-run bootstrap variances. Without run-to-run variation it is about 1 (the
estimates scatter as the bootstrap says); it dominates (`dominates_at`) at 2 or more, where the
run-to-run variance is at least the sampling noise inside a run, and beyond what k runs scatter
by sampling alone 97.5 % of the time: then more runs, not longer ones, narrow the interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from latbench.records.record import Record, RecordsFile
from latbench.spec.slo import Slo
from latbench.summary.samples import (
    GAP_METRICS,
    NS_PER_S,
    Delivered,
    Samples,
    delivered,
    delivered_by,
    derived_window,
    last_instant,
)

if TYPE_CHECKING:
    from latbench.spec import LoadSpec, RunSpec

Verdict = Literal["better", "worse", "same"]
DEFAULT_MARGIN = 0.05
DEFAULT_RESAMPLES = 1000
MIN_TAIL = 5  # samples beyond a percentile needed to judge it
CONFIDENCE = 0.95
# Rates compared besides the latency rows; all higher-is-better.
RATES: tuple[str, ...] = ("output_tokens_per_s", "requests_per_s", "goodput_per_s")
DEFAULT_COMPARE_METRICS: tuple[str, ...] = ("ttft", "ttfo", "itl", "tpot", "e2e")
DEFAULT_COMPARE_STATS: tuple[str, ...] = ("p50", "p90", "p99")
RATE_BLOCKS = 20  # time blocks a window is cut into for a rate's interval
SPREAD_RESAMPLES = 200  # per run, for its within-run variance: ~10 % precise, enough for a ratio
SPREAD_DOMINATES = 2.0  # run-to-run variance at least the within-run one (see the docstring)
# Cells in one block of replicates: bounds memory (8 bytes a cell) whatever the run's size.
_BLOCK_CELLS = 4_000_000


def weighted_percentile(
    sorted_values: np.ndarray, weights: np.ndarray, percentile: float
) -> np.ndarray:
    """`np.percentile(np.repeat(sorted_values, w), percentile)` for each row `w` of `weights`.

    `sorted_values` is ascending; `weights` holds non-negative integers, one row per replicate.
    Rows whose weights sum to 0 give NaN.
    """
    w = np.atleast_2d(weights)
    cw = np.cumsum(w, axis=1)
    total = cw[:, -1] if cw.shape[1] else np.zeros(w.shape[0], dtype=np.int64)
    h = (total - 1) * (percentile / 100.0)
    lo = np.floor(h)
    frac = h - lo
    lo_i = lo.astype(np.int64)
    hi_i = np.minimum(lo_i + 1, np.maximum(total - 1, 0))

    def at(k: np.ndarray) -> np.ndarray:
        # The k-th element (0-based) of the expanded array: the first value whose running count
        # passes k.
        idx = (cw <= k[:, None]).sum(axis=1)
        return sorted_values[np.minimum(idx, sorted_values.size - 1)]

    if sorted_values.size == 0:
        return np.full(w.shape[0], np.nan)
    out = at(lo_i) + frac * (at(hi_i) - at(lo_i))
    out[total <= 0] = np.nan
    return out


@dataclass(frozen=True)
class _Metric:
    """One metric's samples, sorted, with the measured request each sample belongs to."""

    values: np.ndarray  # ascending
    owner: np.ndarray  # index into the run's measured requests


class RunSamples:
    """A run's measured requests as flat arrays, ready for resampling.

    Without a `window`, it is derived from the records and `load` as the summary derives it
    (`samples.derived_window`); without the load too, warm-up is read from the phases, which
    in a closed loop opens the window late: a caller that has the run's spec passes its load,
    or builds from the file with `of_file`, so compare's rates are the summary's.
    """

    @classmethod
    def of_file(cls, f: RecordsFile, spec: RunSpec) -> RunSamples:
        """A records file judged by `spec`, windowed as `summary.summarize_file` windows it: the
        footer's window, else one derived with the spec's load (a run that was killed)."""
        window = None if f.footer is None else (f.footer.window_start, f.footer.window_end)
        return cls(f.records, window, spec.slos, load=spec.load)

    def __init__(
        self,
        records: Sequence[Record],
        window: tuple[int, int] | None,
        slos: Sequence[Slo],
        *,
        load: LoadSpec | None = None,
    ) -> None:
        measured = [r for r in records if r.phase == "measure"]
        ok_idx = np.array([i for i, r in enumerate(measured) if r.error is None], dtype=np.int64)
        ok = [measured[i] for i in ok_idx]
        s = Samples.build(ok)
        self.n = len(measured)
        if window is None:
            window = derived_window(records, load)
        self.duration_s = (window[1] - window[0]) / NS_PER_S if window else 0.0
        # A rate's estimate is the summary's: what the window held, whatever the phase
        # (`samples.delivered`), so compare and the summary give one figure; the time blocks
        # below only spread it for the interval.
        span = window if window is not None and window[1] > window[0] else None
        others = [r for r in records if r.phase != "measure"]
        meets = s.meets_all(slos)
        inside = (
            Delivered()
            if span is None
            else delivered(s, ok, span, meets) + delivered_by(others, span, slos)
        )
        self.in_window = {
            "requests_per_s": inside.requests,
            "output_tokens_per_s": inside.tokens,
            "goodput_per_s": inside.good,
        }
        self.succeeded = np.zeros(self.n)
        self.succeeded[ok_idx] = 1.0
        self.out_tokens = np.zeros(self.n)
        self.out_tokens[ok_idx] = s.n_out
        self.good = np.zeros(self.n)
        self.good[ok_idx] = meets.astype(np.float64)
        # Rates are resampled by time blocks of the window, not by requests: a resample of n
        # requests always holds n requests, which would make a rate's interval zero wide. Each
        # request's weight is spread evenly over its own lifetime (send to last event), so the
        # waves in which a closed loop's users finish together do not read as noise.
        self.blocks = RATE_BLOCKS
        self.spread = np.zeros((self.n, self.blocks))
        if window is not None and window[1] > window[0] and self.n:
            edges = np.linspace(window[0], window[1], self.blocks + 1)
            a = np.array([r.t_sent for r in measured], dtype=np.float64)
            b = np.array([last_instant(r) for r in measured], dtype=np.float64)
            b = np.maximum(b, a + 1.0)  # an instant gets all its weight in its block
            f = np.clip((edges[None, :] - a[:, None]) / (b - a)[:, None], 0.0, 1.0)
            self.spread = np.diff(f, axis=1)
        self._samples = s
        self._ok_idx = ok_idx
        self._metrics: dict[str, _Metric] = {}

    def metric(self, name: str) -> _Metric:
        if name not in self._metrics:
            s = self._samples
            if name in GAP_METRICS:
                values = s.gaps[name]
                gaps_per_req = np.maximum(s.n_events - 1, 0)
                owner = np.repeat(self._ok_idx, gaps_per_req)
            else:
                per_req = s.per_request[name]
                keep = ~np.isnan(per_req)
                values, owner = per_req[keep], self._ok_idx[keep]
            order = np.argsort(values, kind="stable")
            self._metrics[name] = _Metric(values[order], owner[order])
        return self._metrics[name]

    def statistic(self, name: str, stat: str) -> Callable[[np.ndarray], np.ndarray]:
        """`f(counts) -> values`: the statistic for each row of per-request draw counts."""
        if name in RATES:
            per = {"output_tokens_per_s": self.out_tokens, "requests_per_s": self.succeeded}.get(
                name, self.good
            )
            d = self.duration_s
            per_block = per @ self.spread
            total = float(per_block.sum())
            point = self.in_window[name] / d if d > 0 else math.nan

            def rate(counts: np.ndarray) -> np.ndarray:
                # `counts` are draws of time blocks (see `replicates`); the replicate scales the
                # run's rate by how much of its spread weight the drawn blocks hold.
                if total <= 0:
                    return np.full(counts.shape[0], point if point == 0 else math.nan)
                return point * (counts @ per_block) / total

            return rate
        m = self.metric(name)
        if stat == "mean":

            def mean(counts: np.ndarray) -> np.ndarray:
                w = counts[:, m.owner]
                tot = w.sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    return (w @ m.values) / tot

            return mean
        pct = parse_stat(stat)

        def percentile(counts: np.ndarray) -> np.ndarray:
            return weighted_percentile(m.values, counts[:, m.owner], pct)

        return percentile

    def _units(self, name: str) -> int:
        """What one replicate draws: time blocks for rates, requests for everything else."""
        return self.blocks if name in RATES else self.n

    def estimate(self, name: str, stat: str) -> float:
        """The statistic on the run as measured (every request drawn once)."""
        return float(self.statistic(name, stat)(np.ones((1, self._units(name))))[0])

    def replicates(
        self, name: str, stat: str, resamples: int, rng: np.random.Generator
    ) -> np.ndarray:
        f = self.statistic(name, stat)
        if self.n == 0:
            return np.full(resamples, np.nan)
        units = self._units(name)
        width = max(units, self.metric(name).values.size if name not in RATES else 0, 1)
        block = max(1, _BLOCK_CELLS // width)
        out = np.empty(resamples)
        for start in range(0, resamples, block):
            b = min(block, resamples - start)
            draws = rng.integers(0, units, size=(b, units))
            flat = (draws + np.arange(b)[:, None] * units).ravel()
            counts = np.bincount(flat, minlength=b * units).reshape(b, units)
            out[start : start + b] = f(counts)
        return out


class RunGroup:
    """One side of a comparison: one run, or several runs of one configuration."""

    def __init__(self, runs: Sequence[RunSamples]) -> None:
        if not runs:
            raise ValueError("a side of a comparison needs at least one run")
        self.runs = list(runs)
        self._pooled: dict[str, _Metric] = {}

    @property
    def k(self) -> int:
        return len(self.runs)

    def _units(self, name: str) -> list[int]:
        return [r._units(name) for r in self.runs]

    def metric(self, name: str) -> _Metric:
        """Every run's samples of `name` pooled; owners index the runs' units end to end."""
        if name not in self._pooled:
            offsets = np.cumsum([0, *(r.n for r in self.runs)])[:-1]
            parts = [r.metric(name) for r in self.runs]
            values = np.concatenate([m.values for m in parts])
            owner = np.concatenate([m.owner + o for m, o in zip(parts, offsets, strict=True)])
            order = np.argsort(values, kind="stable")
            self._pooled[name] = _Metric(values[order], owner[order])
        return self._pooled[name]

    def statistic(self, name: str, stat: str) -> Callable[[np.ndarray], np.ndarray]:
        """`f(counts) -> values`, `counts` holding every run's units end to end."""
        if name in RATES:
            # A rate is per run (each has its own window): the mean over the drawn runs. A
            # run's rate is linear in its block counts, so a run drawn m times counts m times.
            fs = [r.statistic(name, stat) for r in self.runs]
            edges = np.cumsum([0, *self._units(name)])

            def rate(counts: np.ndarray) -> np.ndarray:
                parts = [f(counts[:, a:b]) for f, a, b in zip(fs, edges, edges[1:], strict=False)]
                return np.sum(parts, axis=0) / self.k

            return rate
        m = self.metric(name)
        if stat == "mean":

            def mean(counts: np.ndarray) -> np.ndarray:
                w = counts[:, m.owner]
                with np.errstate(invalid="ignore", divide="ignore"):
                    return (w @ m.values) / w.sum(axis=1)

            return mean
        pct = parse_stat(stat)
        return lambda counts: weighted_percentile(m.values, counts[:, m.owner], pct)

    def estimate(self, name: str, stat: str) -> float:
        """Over every request of every run (a rate: the mean of the runs' rates)."""
        if self.k == 1:
            return self.runs[0].estimate(name, stat)
        ones = np.ones((1, sum(self._units(name))))
        return float(self.statistic(name, stat)(ones)[0])

    def replicates(
        self, name: str, stat: str, resamples: int, rng: np.random.Generator
    ) -> np.ndarray:
        """One run: that run's bootstrap. Several: draw runs, then each drawn run's units."""
        if self.k == 1:
            return self.runs[0].replicates(name, stat, resamples, rng)
        f = self.statistic(name, stat)
        units = self._units(name)
        if sum(units) == 0:
            return np.full(resamples, np.nan)
        width = max(sum(units), 0 if name in RATES else self.metric(name).values.size, 1)
        block = max(1, _BLOCK_CELLS // width)
        out = np.empty(resamples)
        for start in range(0, resamples, block):
            b = min(block, resamples - start)
            drawn = rng.multinomial(self.k, np.full(self.k, 1.0 / self.k), size=b)
            # A run drawn m times contributes m independent resamples of its units: together,
            # m * units draws over its units.
            parts = [
                rng.multinomial(drawn[:, j] * u, np.full(u, 1.0 / u))
                if u
                else np.zeros((b, 0), dtype=np.int64)
                for j, u in enumerate(units)
            ]
            out[start : start + b] = f(np.hstack(parts))
        # A bootstrap of k runs spreads a mean of them by (k-1)/k of its variance (it draws from
        # the k runs as if they were all there is); scaling the replicates about the estimate by
        # sqrt(k/(k-1)) restores it, as the unbiased variance does (bench/aa.py measured why).
        est = self.estimate(name, stat)
        return est + math.sqrt(self.k / (self.k - 1)) * (out - est)

    def spread(self, name: str, stat: str, rng: np.random.Generator) -> float | None:
        """Between-run variance of the runs' estimates over their mean within-run bootstrap
        variance; None for one run, or when a run gives no estimate."""
        if self.k < 2:
            return None
        est = np.array([r.estimate(name, stat) for r in self.runs])
        reps = [r.replicates(name, stat, SPREAD_RESAMPLES, rng) for r in self.runs]
        if not np.all(np.isfinite(est)) or not all(np.isfinite(x).all() for x in reps):
            return None
        within = [np.var(x) for x in reps]
        w = float(np.mean(within))
        between = float(np.var(est, ddof=1))
        if w <= 0:
            return math.inf if between > 0 else None
        return between / w


@functools.cache
def _chi2_over_df(df: int, q: float) -> float:
    """The q quantile of chi2(df) / df, drawn once (numpy has no chi-square quantile)."""
    draws = np.random.default_rng(0).chisquare(df, 200_000) / df
    return float(np.quantile(draws, q))


def dominates_at(k: int, spread: float) -> bool:
    """Run-to-run spread dominates: the run-to-run variance is at least the within-run one
    (`spread` >= 2), and k runs that vary only by sampling would scatter this much under
    2.5 % of the time (`spread` is then chi2(k-1)/(k-1)): with 3 runs, 3.7; with 10, 2.1.
    The second test keeps the note from firing on one row in seven of an A/A comparison of
    three runs per side."""
    return spread >= max(SPREAD_DOMINATES, _chi2_over_df(k - 1, 0.975))


def as_group(side: RunSamples | RunGroup | Sequence[RunSamples]) -> RunGroup:
    if isinstance(side, RunGroup):
        return side
    if isinstance(side, RunSamples):
        return RunGroup([side])
    return RunGroup(side)


def parse_stat(stat: str) -> float:
    """`p99` -> 99.0, `p99.9` -> 99.9."""
    try:
        p = float(stat.removeprefix("p"))
    except ValueError:
        raise ValueError(f"statistic {stat!r}: give mean or pNN, e.g. p50, p99.9") from None
    if not stat.startswith("p") or not 0 <= p <= 100:
        raise ValueError(f"statistic {stat!r}: give mean or pNN with NN in 0..100")
    return p


def percentile_ci(
    samples: RunSamples, metric: str, percentile: float, resamples: int, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, low, high): a percentile of one run with its 95 % bootstrap interval."""
    stat = f"p{percentile:g}"
    reps = samples.replicates(metric, stat, resamples, np.random.default_rng(seed))
    lo, hi = _interval(reps)
    return samples.estimate(metric, stat), lo, hi


def _interval(reps: np.ndarray) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return math.nan, math.nan
    a = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(reps, [a, 100 - a])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Row:
    """One metric of run B against baseline A."""

    metric: str  # a METRICS name or a RATES name
    stat: str  # mean, pNN; "" for rates
    a: float | None
    b: float | None
    change: float | None  # (B - A) / A
    ci: tuple[float, float] | None  # 95 % interval of `change`
    worse_change: float | None  # `change` signed so that positive is worse
    verdict: Verdict
    note: str  # why a verdict could not be reached, or that the interval is wide
    # The larger side's between-run over within-run variance (RunGroup.spread); None with one
    # run per side.
    spread: float | None = None
    spread_dominates: bool = False  # on either side (`dominates`)

    @property
    def label(self) -> str:
        return self.metric if not self.stat else f"{self.metric} {self.stat}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "stat": self.stat,
            "a": self.a,
            "b": self.b,
            "change": self.change,
            "ci_low": None if self.ci is None else self.ci[0],
            "ci_high": None if self.ci is None else self.ci[1],
            "verdict": self.verdict,
            "note": self.note,
            "run_spread": None if self.spread is None else _num(self.spread),
            "run_spread_dominates": self.spread_dominates,
        }


def judge(worse_change: float, ci_worse: tuple[float, float], margin: float) -> Verdict:
    lo, hi = ci_worse
    if lo > 0 and worse_change > margin:
        return "worse"
    if hi < 0 and worse_change < -margin:
        return "better"
    return "same"


def compare_runs(
    a: RunSamples | RunGroup | Sequence[RunSamples],
    b: RunSamples | RunGroup | Sequence[RunSamples],
    *,
    metrics: Sequence[str] = DEFAULT_COMPARE_METRICS,
    stats: Sequence[str] = DEFAULT_COMPARE_STATS,
    rates: Sequence[str] = RATES,
    margin: float = DEFAULT_MARGIN,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[Row]:
    """B against baseline A, each one run or several runs of one configuration."""
    ga, gb = as_group(a), as_group(b)
    # One generator per comparison, consumed in a fixed order: the same inputs always give the
    # same intervals (and one run per side consumes it as before sides had several runs).
    rng = np.random.default_rng(seed)
    rows = []
    wanted = [(m, s) for m in metrics for s in stats] + [(r, "") for r in rates]
    for name, stat in wanted:
        higher_better = name in RATES
        ea, eb = ga.estimate(name, stat), gb.estimate(name, stat)
        if not (math.isfinite(ea) and math.isfinite(eb)) or ea == 0:
            rows.append(
                Row(
                    name,
                    stat,
                    _num(ea),
                    _num(eb),
                    None,
                    None,
                    None,
                    "same",
                    "no samples to compare",
                )
            )
            continue
        tail = _tail_samples(ga, gb, name, stat)
        if tail is not None and tail < MIN_TAIL:
            # A bootstrap cannot reach past the largest sample, so a percentile resting on a
            # handful of them gets an interval far narrower than its real uncertainty.
            change = (eb - ea) / ea
            note = f"not judged: under {MIN_TAIL} samples beyond {stat} (more requests needed)"
            rows.append(Row(name, stat, ea, eb, change, None, None, "same", note))
            continue
        ra = ga.replicates(name, stat, resamples, rng)
        rb = gb.replicates(name, stat, resamples, rng)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = (rb - ra) / ra
        change = (eb - ea) / ea
        lo, hi = _interval(rel)
        sign = -1.0 if higher_better else 1.0
        worse = sign * change
        ci_worse = (sign * lo, sign * hi) if sign > 0 else (sign * hi, sign * lo)
        verdict = judge(worse, ci_worse, margin) if math.isfinite(lo) else "same"
        spreads = [(g.k, g.spread(name, stat, rng)) for g in (ga, gb)]
        spread = max((x for _, x in spreads if x is not None), default=None)
        dominates = any(x is not None and dominates_at(k, x) for k, x in spreads)
        note = ""
        if dominates:
            note = "run-to-run spread dominates: more runs would tell"
        elif verdict == "same" and ci_worse[0] < -margin and ci_worse[1] > margin:
            note = "wide interval: more requests would tell"
        rows.append(
            Row(name, stat, ea, eb, change, (lo, hi), worse, verdict, note, spread, dominates)
        )
    return rows


def _tail_samples(a: RunGroup, b: RunGroup, name: str, stat: str) -> float | None:
    """Samples beyond the percentile (on its nearer side) in the smaller run; None for others."""
    if name in RATES or not stat.startswith("p"):
        return None
    p = parse_stat(stat)
    n = min(a.metric(name).values.size, b.metric(name).values.size)
    return n * min(p, 100 - p) / 100


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def regressions(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.verdict == "worse"]
