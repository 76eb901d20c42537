"""Statistics on synthetic samples with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgerun.runtime.stats import (
    VERDICT_FASTER, VERDICT_SAME, VERDICT_SLOWER, StatsError, bootstrap_median_ci,
    compare_samples, summarize,
)

MS = 1_000_000  # ns per ms


def _noisy(rng, median_ms, n, rel_sd=0.02):
    return (median_ms * MS * (1 + rel_sd * rng.standard_normal(n))).astype(np.int64)


def test_summary_of_one_to_hundred_ms_matches_closed_forms():
    s = summarize(np.arange(1, 101) * MS)
    assert s.n == 100
    assert s.median_ms == pytest.approx(50.5)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std of 1..n
    assert s.p90_ms == pytest.approx(1 + 0.9 * 99)  # linear interpolation between order statistics
    assert s.p99_ms == pytest.approx(1 + 0.99 * 99)
    assert (s.min_ms, s.max_ms) == (1.0, 100.0)
    assert s.cv == pytest.approx(s.std_ms / s.mean_ms)
    assert s.ci95_low_ms < 50.5 < s.ci95_high_ms


def test_bootstrap_interval_is_seeded_covers_the_median_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small = rng.normal(10.0, 1.0, 50)
    large = rng.normal(10.0, 1.0, 5000)
    assert bootstrap_median_ci(small, seed=3) == bootstrap_median_ci(small, seed=3)
    lo_s, hi_s = bootstrap_median_ci(small)
    lo_l, hi_l = bootstrap_median_ci(large)
    assert lo_l < 10.0 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~1/sqrt(100) narrower


def test_stable_run_has_no_warnings():
    s = summarize(_noisy(np.random.default_rng(0), 5.0, 200))
    assert s.warnings == ()
    assert not s.unstable


def test_too_few_samples_is_flagged():
    s = summarize([5 * MS, 5 * MS, 5 * MS])
    assert any("only 3 timed samples" in w for w in s.warnings)


def test_high_cv_is_flagged():
    s = summarize(_noisy(np.random.default_rng(0), 5.0, 200, rel_sd=0.3))
    assert any("coefficient of variation" in w for w in s.warnings)


def test_drift_between_halves_is_flagged_with_its_direction():
    ramp = np.linspace(10, 12, 200) * MS  # 20 % slower by the end: throttling
    s = summarize(ramp)
    assert s.drift == pytest.approx(0.1, abs=0.02)
    assert any("drift" in w and "slower" in w for w in s.warnings)


def test_zero_samples_is_a_clear_error():
    with pytest.raises(StatsError, match="zero successful timed iterations"):
        summarize([])


def test_shifted_distribution_is_detected_in_both_directions():
    rng = np.random.default_rng(2)
    a = _noisy(rng, 10.0, 100)
    b = _noisy(rng, 11.0, 100)  # 10 % slower
    slower = compare_samples(a, b)
    assert slower.verdict == VERDICT_SLOWER
    assert slower.significant and slower.practical
    assert slower.delta_rel == pytest.approx(0.1, abs=0.02)
    assert compare_samples(b, a).verdict == VERDICT_FASTER


def test_identical_distribution_is_no_significant_change():
    rng = np.random.default_rng(3)
    c = compare_samples(_noisy(rng, 10.0, 200), _noisy(rng, 10.0, 200))
    assert c.verdict == VERDICT_SAME
    assert c.p_value > c.alpha


def test_tiny_shift_on_a_huge_sample_is_significant_but_not_practical():
    rng = np.random.default_rng(4)
    a = _noisy(rng, 10.0, 20000, rel_sd=0.01)
    b = _noisy(rng, 10.1, 20000, rel_sd=0.01)  # 1 % slower: real, but drift-sized
    c = compare_samples(a, b)
    assert c.significant
    assert not c.practical
    assert c.verdict == VERDICT_SAME


def test_constant_samples_compare_equal_without_scipy_warnings():
    c = compare_samples([5 * MS] * 20, [5 * MS] * 20)
    assert c.p_value == 1.0 and c.verdict == VERDICT_SAME


def test_exact_bootstrap_of_the_median_agrees_with_resampling():
    # Same distribution two ways: closed form (used for long runs) and 4000 seeded resamples.
    x = np.random.default_rng(7).lognormal(0.0, 0.3, 1001)
    resampled = bootstrap_median_ci(x, n_boot=4000, exact_above=10_000)
    exact = bootstrap_median_ci(x, exact_above=100)
    spread = resampled[1] - resampled[0]
    assert exact[0] == pytest.approx(resampled[0], abs=0.05 * spread)
    assert exact[1] == pytest.approx(resampled[1], abs=0.05 * spread)
    assert exact[0] < np.median(x) < exact[1]


def test_long_runs_get_an_interval_without_resampling_every_sample():
    x = (5 * MS * (1 + 0.05 * np.random.default_rng(8).standard_normal(50_001))).astype(np.int64)
    s = summarize(x)
    assert s.ci95_low_ms < s.median_ms < s.ci95_high_ms
    assert s.ci95_high_ms - s.ci95_low_ms < 0.01 * s.median_ms  # ~2.5 % sd / sqrt(50k)
