"""Statistics over seeds: per-level means with confidence intervals, and pairwise comparisons.

A sweep ranks single runs; a confirmation (search.confirm) re-runs each level of one factor with
several seeds, and this module says what those runs support:
- `mean_ci`: mean and confidence interval over seeds, t-based (Student's t with n - 1 degrees of
  freedom) or by bootstrap (scipy.stats.bootstrap, BCa);
- `compare`: every pair of levels by Welch's t-test (unequal variances), p-values Holm-corrected
  over the pairs, Hedges' g, and the confidence interval of the difference of means with the
  Welch-Satterthwaite degrees of freedom; `Comparison.sentence` writes one line per pair;
- `compare_paired`: the same pairs matched by seed (a paired t-test on the per-seed differences,
  Hedges' g_z), for designs where one seed gives every level the same initialisation and the same
  batches, so that seed-to-seed spread cancels out of each difference.
Intervals are per comparison (not adjusted); the Holm-adjusted p-value decides "significant".
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import special, stats

CONFIDENCE = 0.95  # level of every interval
ALPHA = 0.05  # family-wise error rate of the Holm-corrected tests
METHODS = ("t", "bootstrap")  # ways to compute a level's interval


@dataclass
class Interval:
    """Mean of one level over seeds and its confidence interval (NaN bounds when n < 2)."""

    n: int
    mean: float
    sd: float  # sample standard deviation (ddof 1)
    low: float
    high: float
    method: str  # one of METHODS

    def to_dict(self) -> dict:
        """Plain data for JSON (NaN as None)."""
        return _plain(asdict(self))


@dataclass
class Comparison:
    """Level a against level b: difference of means (a - b) and Welch's test."""

    a: str
    b: str
    n_a: int
    n_b: int
    diff: float  # mean(a) - mean(b)
    low: float  # confidence interval of the difference
    high: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p: float  # Welch's two-sided p-value
    p_holm: float  # Holm-adjusted over the family of comparisons
    g: float  # Hedges' g (bias-corrected standardized difference, pooled SD; paired: g_z)
    confidence: float = CONFIDENCE
    alpha: float = ALPHA
    paired: bool = False  # matched by seed: n_a == n_b = pairs, df = pairs - 1
    unit: str = "dB"  # of the compared values, in the sentence

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_holm)

    @property
    def significant(self) -> bool:
        return self.tested and self.p_holm < self.alpha

    @property
    def excluded(self) -> float:
        """Differences larger than this (in absolute value) lie outside the interval."""
        return max(abs(self.low), abs(self.high))

    def sentence(self) -> str:
        """One line, e.g. "monotonic vs cyclical: +0.42 dB (95% CI 0.10 to 0.74), p = 0.012
        (Holm), g = 1.3, n = 5 seeds each"."""
        head = f"{self.a} vs {self.b}" + (" (paired by seed)" if self.paired else "")
        n = (f"n = {self.n_a} seed pairs" if self.paired else
             f"n = {self.n_a} seeds each" if self.n_a == self.n_b
             else f"n = {self.n_a} and {self.n_b} seeds")
        if not self.tested:
            why = ("no variation between seeds" if min(self.n_a, self.n_b) >= 2
                   else "at least 2 seed pairs needed" if self.paired
                   else "at least 2 seeds per level needed")
            return f"{head}: {_num(self.diff, '+.2f')} {self.unit}, not tested ({why}; {n})"
        level = f"{self.confidence:.0%}"
        g = _num(self.g, ".1f" if abs(self.g) >= 1 else ".2f")
        stats_text = (f"{_num(self.diff, '+.2f')} {self.unit} ({level} CI "
                      f"{_num(self.low, '.2f')} to {_num(self.high, '.2f')}), "
                      f"{p_text(self.p_holm)} (Holm), "
                      f"{'g_z' if self.paired else 'g'} = {g}, {n}")
        if self.significant:
            return f"{head}: {stats_text}"
        return (f"{head}: no difference detected ({stats_text}); gaps larger than "
                f"{self.excluded:.2f} {self.unit} are excluded")

    def to_dict(self) -> dict:
        """Plain data for JSON (NaN as None), with the verdict and the sentence."""
        return _plain({**asdict(self), "significant": self.significant,
                       "sentence": self.sentence()})


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE, method: str = "t",
            n_resamples: int = 9999, seed: int = 0) -> Interval:
    """Mean and `confidence` interval of `values` (NaNs dropped): t-based, or bootstrap BCa with
    `n_resamples` resamples drawn with `seed`."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    x = _finite(values)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n >= 2 else math.nan
    if n < 2:
        return Interval(n, mean, sd, math.nan, math.nan, method)
    if sd == 0:
        return Interval(n, mean, sd, mean, mean, method)
    if method == "t":
        half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        ci = stats.bootstrap((x,), np.mean, confidence_level=confidence,
                             n_resamples=n_resamples, method="BCa",
                             rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return Interval(n, mean, sd, float(low), float(high), method)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Standardized difference (mean(a) - mean(b)) / pooled SD, times the exact small-sample
    correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = n_a + n_b - 2
    (Hedges 1981). NaN with fewer than 2 values in a group or no variation."""
    x, y = _finite(a), _finite(b)
    if min(len(x), len(y)) < 2:
        return math.nan
    df = len(x) + len(y) - 2
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / df)
    if pooled == 0:
        return math.nan
    j = math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    return float(j * (x.mean() - y.mean()) / pooled)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order; NaNs stay NaN and do not count
    in the family. The i-th smallest of m p-values becomes max over j <= i of
    min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
          ) -> tuple[float, float, float, float, float]:
    """(mean(a) - mean(b), CI low, CI high, Welch-Satterthwaite df, two-sided p) by Welch's
    t-test; NaN interval and p with fewer than 2 values in a group or no variation."""
    x, y = _finite(a), _finite(b)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if min(len(x), len(y)) < 2 or x.var() + y.var() == 0:
        return diff, math.nan, math.nan, math.nan, math.nan
    result = stats.ttest_ind(x, y, equal_var=False)
    ci = result.confidence_interval(confidence)
    return diff, float(ci.low), float(ci.high), float(result.df), float(result.pvalue)


def compare(groups: Mapping[str, Sequence[float]], confidence: float = CONFIDENCE,
            alpha: float = ALPHA, unit: str = "dB") -> list[Comparison]:
    """Every pair of levels (in the mapping's order, a before b), Holm-corrected together."""
    pairs = list(itertools.combinations(groups, 2))
    tests = [welch(groups[a], groups[b], confidence) for a, b in pairs]
    adjusted = holm([t[4] for t in tests])
    return [Comparison(a=str(a), b=str(b), n_a=len(_finite(groups[a])),
                       n_b=len(_finite(groups[b])), diff=diff, low=low, high=high, df=df, p=p,
                       p_holm=float(p_holm), g=hedges_g(groups[a], groups[b]),
                       confidence=confidence, alpha=alpha, unit=unit)
            for (a, b), (diff, low, high, df, p), p_holm in zip(pairs, tests, adjusted)]


def paired_t(a: Mapping[object, float], b: Mapping[object, float],
             confidence: float = CONFIDENCE) -> tuple[int, float, float, float, float, float]:
    """(pairs, mean of a - b over the seeds both have finite, CI low, CI high, two-sided p, g_z)
    by the paired t-test (scipy.stats.ttest_rel); g_z = mean / SD of the differences times
    J(pairs - 1). NaN interval, p and g_z with fewer than 2 pairs or no variation."""
    keys = [k for k in a if k in b and all(v is not None and math.isfinite(v)
                                           for v in (a[k], b[k]))]
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    n = len(d)
    diff = float(d.mean()) if n else math.nan
    if n < 2 or d.std() == 0:
        return n, diff, math.nan, math.nan, math.nan, math.nan
    result = stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys])
    ci = result.confidence_interval(confidence)
    df = n - 1
    j = (math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
         if df > 1 else math.nan)
    return n, diff, float(ci.low), float(ci.high), float(result.pvalue), j * diff / d.std(ddof=1)


def compare_paired(groups: Mapping[str, Mapping[object, float]], confidence: float = CONFIDENCE,
                   alpha: float = ALPHA, unit: str = "dB") -> list[Comparison]:
    """Every pair of levels matched by seed ({level: {seed: value}}), Holm-corrected together."""
    pairs = list(itertools.combinations(groups, 2))
    tests = [paired_t(groups[a], groups[b], confidence) for a, b in pairs]
    adjusted = holm([t[4] for t in tests])
    return [Comparison(a=str(a), b=str(b), n_a=n, n_b=n, diff=diff, low=low, high=high,
                       df=float(n - 1) if n else math.nan, p=p, p_holm=float(p_holm), g=g,
                       confidence=confidence, alpha=alpha, paired=True, unit=unit)
            for (a, b), (n, diff, low, high, p, g), p_holm in zip(pairs, tests, adjusted)]


def summarize(groups: Mapping[str, Sequence[float]], confidence: float = CONFIDENCE,
              method: str = "t") -> dict[str, Interval]:
    """mean_ci of every level."""
    return {level: mean_ci(values, confidence, method) for level, values in groups.items()}


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]


def _plain(values: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def _num(value: float, spec: str) -> str:
    """A number as printed, without a negative zero ("-0.00")."""
    text = format(value, spec)
    return text if text.strip("+-0.") else format(0.0, spec)


def p_text(p: float) -> str:
    """A p-value as printed: "p = 0.012", "p < 0.001"."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
