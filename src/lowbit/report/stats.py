"""Seed-to-seed noise: a metric's mean with its 95% confidence interval, and Welch's test of the
difference between two configurations.

Both intervals use Student's t distribution (``scipy.stats.t``): the mean's is
mean +- t(0.975, n - 1) * sd / sqrt(n); the difference's is Welch's, whose degrees of freedom are
the Welch-Satterthwaite approximation, so the two configurations need not share a variance nor a
number of seeds. A difference "exceeds the noise" when its 95% interval leaves out zero (Welch's
two-sided p < 0.05); with fewer than two seeds on either side there is no spread to judge by, and
the verdict says that it cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
EXCEEDS, WITHIN, CANNOT_TELL = "exceeds noise", "within noise", "cannot tell"


@dataclass(frozen=True)
class Summary:
    """A metric over the seeds of one configuration; sd and the interval need n >= 2."""

    n: int
    mean: float
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def half_width(self) -> float | None:
        """The interval's half width, for error bars (None with one seed)."""
        return None if self.ci_high is None else self.ci_high - self.mean


def t_quantile(dof: float) -> float:
    """The two-sided 95% critical value of Student's t with ``dof`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof))


def summarize(values: Sequence[float]) -> Summary | None:
    """n, mean, sample standard deviation (n - 1) and the mean's 95% t interval; None for none."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(1, mean)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with Welch's 95% interval and p-value, and what they say."""

    delta: float
    verdict: str
    ci_low: float | None = None
    ci_high: float | None = None
    dof: float | None = None
    p_value: float | None = None
    reason: str = ""


def welch(a: Summary, b: Summary) -> Difference:
    """Welch's unequal-variance t test of mean(a) - mean(b) (Welch 1947):
    se^2 = sd_a^2/n_a + sd_b^2/n_b, dof = se^4 / ((sd_a^2/n_a)^2/(n_a-1) + (sd_b^2/n_b)^2/(n_b-1)).
    """
    delta = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(delta, CANNOT_TELL, reason="one seed: no spread to compare against")
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    if va + vb == 0:  # every seed gave the same value on both sides: t is undefined
        return Difference(delta, CANNOT_TELL, reason="the seeds gave identical values")
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = t_quantile(dof) * se
    p_value = float(2 * stats.t.sf(abs(delta) / se, dof))
    low, high = delta - half, delta + half
    verdict = EXCEEDS if low > 0 or high < 0 else WITHIN
    return Difference(delta, verdict, low, high, dof, p_value)
