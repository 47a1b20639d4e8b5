"""analysis.stats: intervals that cover the truth at the nominal rate over simulated experiments,
Welch tests that find real differences and keep the family-wise error at alpha with Holm, and
known values of Holm's adjustment and Hedges' g."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from analysis.stats import compare, compare_paired, hedges_g, holm, mean_ci, summarize, welch

SIMS = 2000


def test_t_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    runs = rng.normal(20.0, 0.5, size=(SIMS, 5))  # 5 seeds per simulated experiment
    hits = [(iv.low <= 20.0 <= iv.high) for iv in map(mean_ci, runs)]
    assert 0.93 <= np.mean(hits) <= 0.97


def test_welch_interval_of_a_difference_covers_the_truth_with_unequal_spreads():
    rng = np.random.default_rng(1)
    a = rng.normal(20.4, 0.3, size=(SIMS // 2, 5))
    b = rng.normal(20.0, 0.9, size=(SIMS // 2, 4))
    hits = []
    for x, y in zip(a, b):
        diff, low, high, df, _ = welch(x, y)
        hits.append(low <= 0.4 <= high)
        assert min(4, 5) - 1 <= df <= 4 + 5 - 2  # Welch-Satterthwaite df between the bounds
    assert 0.93 <= np.mean(hits) <= 0.97


def test_bootstrap_interval_covers_the_true_mean():
    rng = np.random.default_rng(2)
    runs = rng.normal(20.0, 0.5, size=(300, 15))
    hits = [(iv.low <= 20.0 <= iv.high)
            for iv in (mean_ci(x, method="bootstrap", n_resamples=999) for x in runs)]
    assert 0.88 <= np.mean(hits) <= 0.99  # BCa undercovers a little at small n


def test_a_real_difference_is_detected():
    rng = np.random.default_rng(3)
    detected = []
    for _ in range(200):
        groups = {"monotonic": rng.normal(21.0, 0.3, 5), "cyclical": rng.normal(20.0, 0.3, 5),
                  "none": rng.normal(20.0, 0.3, 5)}
        by_pair = {(c.a, c.b): c for c in compare(groups)}
        detected.append(by_pair["monotonic", "cyclical"].significant
                        and by_pair["monotonic", "none"].significant)
    assert np.mean(detected) >= 0.95
    groups = {"monotonic": [21.1, 20.8, 21.3, 20.9, 21.0], "cyclical": [20.0, 20.3, 19.8,
                                                                          20.1, 19.9]}
    (c,) = compare(groups)
    assert c.significant and c.diff == pytest.approx(1.0) and c.low > 0 and c.g > 2


def test_no_difference_is_flagged_at_most_alpha_of_the_time():
    rng = np.random.default_rng(4)
    any_flagged = []
    for _ in range(300):
        groups = {level: rng.normal(20.0, 0.5, 5) for level in "abcd"}  # 6 null comparisons
        any_flagged.append(any(c.significant for c in compare(groups)))
    assert np.mean(any_flagged) <= 0.05 + 0.02  # family-wise, Holm-corrected
    a, b = rng.normal(20.0, 0.5, size=(2, 600, 5))
    flagged = [welch(x, y)[4] < 0.05 for x, y in zip(a, b)]
    assert 0.025 <= np.mean(flagged) <= 0.075  # one uncorrected test has its nominal size


def test_holm_on_a_known_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max(0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, math.nan, 0.01])  # NaN: not part of the family
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.02, 0.02])


def test_hedges_g_on_a_known_example():
    # d = (3 - 5) / sqrt(2.5); J(8) = Gamma(4) / (sqrt(4) Gamma(3.5)) = 6 / (2 * 3.32335097)
    g = hedges_g([1, 2, 3, 4, 5], [3, 4, 5, 6, 7])
    assert g == pytest.approx(-2 / math.sqrt(2.5) * 0.90270333, rel=1e-6)
    assert hedges_g([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]) == pytest.approx(-1.14184, abs=1e-5)
    assert math.isnan(hedges_g([1.0], [2.0, 3.0]))


def test_t_interval_by_hand():
    iv = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653
    assert (iv.n, iv.mean, iv.sd) == (3, 2.0, 1.0)
    assert (iv.low, iv.high) == pytest.approx((2 - 4.302653 / math.sqrt(3),
                                               2 + 4.302653 / math.sqrt(3)))
    one = mean_ci([5.0, math.nan])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.low)
    assert summarize({"x": [1.0, 2.0, 3.0]})["x"] == iv


def test_sentences():
    significant = compare({"monotonic": [21.1, 20.8, 21.3, 20.9, 21.0],
                           "cyclical": [20.0, 20.3, 19.8, 20.1, 19.9]})[0]
    assert re.fullmatch(r"monotonic vs cyclical: \+1\.00 dB \(95% CI 0\.\d\d to 1\.\d\d\), "
                        r"p < 0\.001 \(Holm\), g = \d\.\d, n = 5 seeds each",
                        significant.sentence()), significant.sentence()
    null = compare({"a": [20.0, 20.4, 19.8], "b": [20.1, 19.9, 20.3, 20.0]})[0]
    assert not null.significant
    x = max(abs(null.low), abs(null.high))
    assert null.sentence().startswith("a vs b: no difference detected (-0.01 dB (95% CI -0.64 to "
                                      "0.62), p = 0.97 (Holm), g = -0.03, ")
    assert null.sentence().endswith(f"n = 3 and 4 seeds); gaps larger than {x:.2f} dB are "
                                    "excluded")
    untested = compare({"a": [20.0], "b": [21.0, 21.5]})[0]
    assert untested.sentence() == ("a vs b: -1.25 dB, not tested (at least 2 seeds per level "
                                   "needed; n = 1 and 2 seeds)")
    assert untested.to_dict()["significant"] is False
    (seconds,) = compare_paired({"a": {1: 30.0, 2: 50.0}, "b": {1: 20.0, 2: 30.0}}, unit="s")
    assert seconds.sentence().startswith("a vs b (paired by seed): no difference detected "
                                         "(+15.00 s (95% CI ")
    assert seconds.sentence().endswith(" s are excluded") and seconds.to_dict()["unit"] == "s"


def _seeded(rng, n_sims, seeds, effects, seed_sd=0.7, noise_sd=0.15):
    """Simulated confirmations where one seed shifts every level alike (same init, same
    batches): {level: {seed: value}} per experiment."""
    for _ in range(n_sims):
        shift = rng.normal(0.0, seed_sd, seeds)
        yield {lv: dict(enumerate(20.0 + e + shift + rng.normal(0.0, noise_sd, seeds)))
               for lv, e in effects.items()}


def test_paired_interval_covers_the_true_difference_at_the_nominal_rate():
    rng = np.random.default_rng(5)
    hits = []
    for groups in _seeded(rng, SIMS, 4, {"monotonic": 0.3, "cyclical": 0.0}):
        (c,) = compare_paired(groups)
        assert c.paired and c.n_a == c.n_b == 4 and c.df == 3
        hits.append(c.low <= 0.3 <= c.high)
    assert 0.93 <= np.mean(hits) <= 0.97


def test_pairing_by_seed_finds_what_welch_misses_when_seeds_dominate():
    rng = np.random.default_rng(6)
    paired, welch_found = [], []
    for groups in _seeded(rng, 300, 4, {"monotonic": 0.5, "cyclical": 0.0}):
        paired.append(compare_paired(groups)[0].significant)
        welch_found.append(compare({k: list(v.values()) for k, v in groups.items()})[0]
                           .significant)
    assert np.mean(paired) >= 0.8 and np.mean(welch_found) <= 0.2


def test_paired_null_is_flagged_at_most_alpha_and_unmatched_seeds_are_dropped():
    rng = np.random.default_rng(7)
    flagged = [any(c.significant for c in compare_paired(groups)) for groups in
               _seeded(rng, SIMS // 2, 3, {"monotonic": 0.0, "cyclical": 0.0, "none": 0.0})]
    assert np.mean(flagged) <= 0.05 + 0.015
    (c,) = compare_paired({"a": {1: 21.0, 2: 22.0, 3: 20.5, 4: math.nan},
                           "b": {1: 20.0, 2: 21.2, 3: 19.9, 5: 30.0}})
    assert c.n_a == 3 and c.diff == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    d = np.array([1.0, 0.8, 0.6])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert (c.low, c.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert "(paired by seed)" in c.sentence() and "n = 3 seed pairs" in c.sentence()
    (one,) = compare_paired({"a": {1: 21.0}, "b": {1: 20.0}})
    assert "not tested (at least 2 seed pairs needed" in one.sentence()
