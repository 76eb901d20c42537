"""Latency statistics from raw samples, and a two-run comparison that does not cry wolf.

Units: every sample that comes in is an integer duration in **nanoseconds** (as the runner prints
it); every derived figure is in **milliseconds** and says so in its name (``median_ms``). The
coefficient of variation and drift are unitless fractions (0.05 = 5 %).

Only numpy and (for the significance test) scipy; nothing of edgerun but its error tree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from edgerun.core.errors import AnalysisError

NS_PER_MS = 1_000_000.0

# Defaults, named so that a record can say which thresholds judged it.
DEFAULT_CV_THRESHOLD = 0.10  # std/mean above this: the run is noisy
DEFAULT_DRIFT_THRESHOLD = 0.05  # medians of the two halves differ by more than this: it drifted
DEFAULT_MIN_SAMPLES = 10  # fewer timed iterations than this: percentiles mean little
DEFAULT_BOOTSTRAP = 2000
DEFAULT_ALPHA = 0.01  # significance level of the Mann-Whitney U test
DEFAULT_MIN_EFFECT = 0.05  # |relative change of the median| needed to call a change practical

VERDICT_FASTER = "faster"
VERDICT_SLOWER = "slower"
VERDICT_SAME = "no significant change"


class StatsError(AnalysisError):
    """Statistics cannot be computed from what was given (e.g. zero successful iterations)."""

    default_stage = "analyse"


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one run's timed samples. Derived from ``samples_ns``; never stored instead of them."""

    n: int
    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    cv: float  # std / mean, unitless
    ci95_low_ms: float  # bootstrap 95 % confidence interval of the median
    ci95_high_ms: float
    drift: float  # (median of 2nd half - median of 1st half) / median of 1st half, unitless
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def unstable(self) -> bool:
        return bool(self.warnings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyStats":
        d = dict(d)
        d["warnings"] = tuple(d.get("warnings") or ())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _as_samples(samples_ns: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(samples_ns, dtype=np.float64).ravel()
    if arr.size == 0:
        raise StatsError(
            f"{what}: zero successful timed iterations, so there is nothing to summarise.",
            hint="Check the runner's error line; run with at least one timed iteration (--iterations N).",
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise StatsError(f"{what}: samples must be finite, non-negative durations in ns.")
    return arr


# Above this many samples the bootstrap distribution of the median is computed exactly instead of by
# resampling (resampling costs n_boot * n; at 100k samples that is seconds, the exact form milliseconds).
EXACT_BOOTSTRAP_ABOVE = 2000


def bootstrap_median_ci(
    samples: Sequence[float] | np.ndarray,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
    exact_above: int = EXACT_BOOTSTRAP_ABOVE,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median, in the samples' own unit.

    Up to ``exact_above`` samples: seeded resampling (the same samples give the same interval),
    vectorised as index matrices in chunks so memory stays bounded. Above it: the bootstrap
    distribution itself, which for the median is known in closed form -- a resample's median is
    at most the j-th smallest sample exactly when at least m = ceil(n/2) of its n draws fall on
    the j smallest, i.e. P = P(Binomial(n, j/n) >= m) -- so no resampling noise and no cost.
    """
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        raise StatsError("bootstrap of an empty sample")
    if n == 1:
        return float(x[0]), float(x[0])
    tail = (1.0 - level) / 2.0
    if n > exact_above:
        from scipy.stats import binom

        m = (n + 1) // 2
        j = np.arange(1, n + 1)
        cdf = binom.sf(m - 1, n, j / n)  # P(resample median <= x_(j)), non-decreasing in j
        lo = x[min(int(np.searchsorted(cdf, tail, side="left")), n - 1)]
        hi = x[min(int(np.searchsorted(cdf, 1.0 - tail, side="left")), n - 1)]
        return float(lo), float(hi)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // n))
    medians = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        medians[start:stop] = np.median(x[idx], axis=1)
    lo, hi = np.quantile(medians, [tail, 1.0 - tail])
    return float(lo), float(hi)


def summarize(
    samples_ns: Sequence[int] | np.ndarray,
    *,
    cv_threshold: float = DEFAULT_CV_THRESHOLD,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    what: str = "latency",
) -> LatencyStats:
    """Summarise timed samples (ns, in the order they were taken: drift needs the order)."""
    ns = _as_samples(samples_ns, what)
    ms = ns / NS_PER_MS
    n = ms.size
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if n > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    p90, p99, median = (float(v) for v in np.percentile(ms, [90, 99, 50]))
    lo, hi = bootstrap_median_ci(ms, n_boot=n_boot, seed=seed)

    drift = 0.0
    if n >= 4:
        first, second = np.median(ms[: n // 2]), np.median(ms[n - n // 2:])
        drift = float((second - first) / first) if first > 0 else 0.0

    warnings: list[str] = []
    if n < min_samples:
        warnings.append(f"only {n} timed samples (fewer than {min_samples}): percentiles and the interval are rough")
    if cv > cv_threshold:
        warnings.append(f"unstable: coefficient of variation {cv:.1%} exceeds {cv_threshold:.0%}")
    if abs(drift) > drift_threshold:
        direction = "slower" if drift > 0 else "faster"
        warnings.append(
            f"drift: the second half of the run was {abs(drift):.1%} {direction} than the first "
            f"(threshold {drift_threshold:.0%}); thermal throttling, frequency scaling or a busy machine?"
        )
    return LatencyStats(
        n=n, median_ms=median, mean_ms=mean, std_ms=std, p90_ms=p90, p99_ms=p99,
        min_ms=float(ms.min()), max_ms=float(ms.max()), cv=cv, ci95_low_ms=lo, ci95_high_ms=hi,
        drift=drift, warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class SampleComparison:
    """Baseline A against candidate B on raw samples. ``delta`` > 0 means B is slower."""

    metric: str
    n_a: int
    n_b: int
    median_a_ms: float
    median_b_ms: float
    delta_ms: float  # median_b - median_a
    delta_rel: float  # delta / median_a, unitless
    p_value: float  # two-sided Mann-Whitney U
    alpha: float
    min_effect: float
    significant: bool  # p < alpha
    practical: bool  # |delta_rel| > min_effect
    verdict: str  # faster / slower / no significant change (B relative to A)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_samples(
    a_ns: Sequence[int] | np.ndarray,
    b_ns: Sequence[int] | np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    metric: str = "execute",
) -> SampleComparison:
    """Is B faster or slower than A? Needs both a significant U test and a practical effect.

    Statistical significance alone is not enough: with thousands of samples a 0.5 % drift on a
    busy machine is "significant" but not a regression. The median must also have moved by more
    than ``min_effect`` (relative).
    """
    from scipy.stats import mannwhitneyu  # scipy is heavy to import; only comparisons need it

    a = _as_samples(a_ns, f"{metric} samples of run A") / NS_PER_MS
    b = _as_samples(b_ns, f"{metric} samples of run B") / NS_PER_MS
    med_a, med_b = float(np.median(a)), float(np.median(b))
    delta = med_b - med_a
    rel = delta / med_a if med_a > 0 else 0.0
    if np.ptp(np.concatenate([a, b])) == 0:
        p = 1.0  # all samples identical: no evidence of any difference (scipy would warn)
    else:
        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    significant = p < alpha
    practical = abs(rel) > min_effect
    if significant and practical:
        verdict = VERDICT_SLOWER if delta > 0 else VERDICT_FASTER
    else:
        verdict = VERDICT_SAME
    return SampleComparison(
        metric=metric, n_a=int(a.size), n_b=int(b.size), median_a_ms=med_a, median_b_ms=med_b,
        delta_ms=delta, delta_rel=rel, p_value=p, alpha=alpha, min_effect=min_effect,
        significant=significant, practical=practical, verdict=verdict,
    )
