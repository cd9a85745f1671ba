"""The comparisons a report draws, each with Welch's verdict on whether it exceeds the noise.

Within each (model, data set, bits): every pair of quantizers. Within each (model, data set,
quantizer, bits): every pair of starts (PTQ, QAT from trained weights, QAT from scratch), and
every pair of arithmetic versions (runs before and after a change of how lowbit computes).
Within each (model, data set, quantizer): adjacent bit widths along the swept one (W = A when
they move together; one line per setting of the others, as in the accuracy-vs-bits figure),
and each mixed-precision configuration against the uniform one nearest in packed size.
Each is judged on the primary metric (val/acc_best, val/map50_best for detection) with
``lowbit.report.stats.welch``; the better mean is named first, so a difference reads as what
the first gains.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from lowbit.report.configs import FULL_PRECISION, Configuration
from lowbit.report.runs import BIT_KINDS, tied_bit_kinds, training_key, varying_bit_kind
from lowbit.report.stats import CANNOT_TELL, EXCEEDS, WITHIN, Difference, welch

MAX_LINES = 30  # the page lists this many; comparisons.csv holds them all
TEST_NAME = "Welch's t test (unequal variances), two-sided, 95%"


@dataclass(frozen=True)
class Comparison:
    better: Configuration
    worse: Configuration
    metric: str
    difference: Difference
    kind: str  # "quantizers", "starts", "arithmetic", "bits" or "mixed"


def is_fraction(metric: str) -> bool:
    """Accuracies and mAPs are fractions; their differences read best in points (x100)."""
    return metric.split("/")[-1].startswith(("acc", "map"))


def compare(a: Configuration, b: Configuration, metric: str, kind: str) -> Comparison | None:
    """The comparison of two configurations that both have the metric, better mean first."""
    sa, sb = a.summary(metric), b.summary(metric)
    if sa is None or sb is None:
        return None
    if sb.mean > sa.mean:
        a, b, sa, sb = b, a, sb, sa
    return Comparison(a, b, metric, welch(sa, sb), kind)


START_KEYS = ("start", "init")  # lowbit.report.runs.start_settings
ARITHMETIC_KEY = "arithmetic"  # lowbit.report.runs.arithmetic_settings


def quantizer_pairs(configurations: Sequence[Configuration]) -> list[tuple]:
    groups: dict[tuple, list[Configuration]] = defaultdict(list)
    for c in configurations:
        if c.quantizer != FULL_PRECISION:
            start = tuple(c.first.settings.get(k) for k in (*START_KEYS, ARITHMETIC_KEY))
            groups[
                (c.model, c.dataset, c.bits_label, training_key(c.first.settings), start)
            ].append(c)
    return [
        (a, b)
        for group in groups.values()
        for a, b in combinations(group, 2)
        if a.quantizer != b.quantizer
    ]


def start_pairs(configurations: Sequence[Configuration]) -> list[tuple]:
    """Within each (model, data set, quantizer, bits): every pair that starts differently (PTQ,
    QAT from trained weights, QAT from scratch), what training buys at that bit width."""
    groups: dict[tuple, list[Configuration]] = defaultdict(list)
    for c in configurations:
        if c.quantizer != FULL_PRECISION:
            arithmetic = c.first.settings.get(ARITHMETIC_KEY)
            groups[(c.model, c.dataset, c.quantizer, c.bits_label, arithmetic)].append(c)
    return [
        (a, b)
        for group in groups.values()
        for a, b in combinations(group, 2)
        if any(a.first.settings.get(k) != b.first.settings.get(k) for k in START_KEYS)
    ]


def arithmetic_pairs(configurations: Sequence[Configuration]) -> list[tuple]:
    """Within each (model, data set, quantizer, bits, start): every pair of arithmetic versions
    (``lowbit.quant.integer.ARITHMETIC_VERSION``), what a change of arithmetic cost."""
    groups: dict[tuple, list[Configuration]] = defaultdict(list)
    for c in configurations:
        if c.quantizer != FULL_PRECISION:
            start = tuple(c.first.settings.get(k) for k in START_KEYS)
            groups[(c.model, c.dataset, c.quantizer, c.bits_label, start)].append(c)
    return [
        (a, b)
        for group in groups.values()
        for a, b in combinations(group, 2)
        if a.first.settings.get(ARITHMETIC_KEY) != b.first.settings.get(ARITHMETIC_KEY)
    ]


def adjacent_bit_pairs(configurations: Sequence[Configuration]) -> list[tuple]:
    groups: dict[tuple, list[Configuration]] = defaultdict(list)
    for c in configurations:
        if c.quantizer != FULL_PRECISION and not is_mixed(c):  # no one width to line up by
            groups[(c.model, c.dataset, c.quantizer, c.distinct)].append(c)
    pairs = []
    for group in groups.values():
        if len(group) < 2:
            continue
        kind = varying_bit_kind(group)
        moving = {kind, *tied_bit_kinds(group, kind)}
        lines: dict[tuple, list[Configuration]] = defaultdict(list)
        for c in group:
            lines[tuple(c.bits(k) for k in BIT_KINDS if k not in moving)].append(c)
        for line in lines.values():
            line.sort(key=lambda c: c.bits(kind) or 0)
            pairs += list(zip(line, line[1:]))
    return pairs


SIZE_METRIC = "model/size_bytes"


def is_mixed(configuration: Configuration) -> bool:
    """Trained from an allocation file (``quant.allocation``, lowbit.mixed)."""
    return configuration.mixed


def mixed_pairs(configurations: Sequence[Configuration]) -> list[tuple]:
    """Within each (model, data set, quantizer, abits, gbits, training): each mixed-precision
    configuration against the uniform one nearest to it in packed size, what its allocation
    buys at about equal size."""
    groups: dict[tuple, list[Configuration]] = defaultdict(list)
    for c in configurations:
        if c.quantizer != FULL_PRECISION and c.metric(SIZE_METRIC) is not None:
            key = (c.model, c.dataset, c.quantizer, c.bits("abits"), c.bits("gbits"))
            groups[(*key, training_key(c.first.settings))].append(c)
    pairs = []
    for group in groups.values():
        uniform = [c for c in group if not is_mixed(c)]
        for mixed in filter(is_mixed, group):
            if uniform:
                size = mixed.metric(SIZE_METRIC)
                pairs.append((mixed, min(uniform, key=lambda c: abs(c.metric(SIZE_METRIC) - size))))
    return pairs


def draw_comparisons(configurations: Sequence[Configuration], metric: str) -> list[Comparison]:
    """Quantizer pairs first, then starts (PTQ, from trained weights, from scratch), then
    arithmetic versions, then adjacent bit widths, in the configurations' order; only
    configurations with a finished run that recorded the metric take part (a failed one would
    break the line of bits it sits on)."""
    measured = [c for c in configurations if c.summary(metric) is not None]
    drawn = [compare(a, b, metric, "quantizers") for a, b in quantizer_pairs(measured)]
    drawn += [compare(a, b, metric, "starts") for a, b in start_pairs(measured)]
    drawn += [compare(a, b, metric, "arithmetic") for a, b in arithmetic_pairs(measured)]
    drawn += [compare(a, b, metric, "bits") for a, b in adjacent_bit_pairs(measured)]
    drawn += [compare(a, b, metric, "mixed") for a, b in mixed_pairs(measured)]
    return [c for c in drawn if c is not None]


def signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def verdict_line(comparison: Comparison) -> str:
    """E.g. "pact W2A2 vs dorefa W2A2: +1.9 points, 95% CI [+0.4, +3.4] (n = 3 vs 3,
    p = 0.020): exceeds noise"."""
    d = comparison.difference
    scale, unit, digits = (100.0, " points", 1) if is_fraction(comparison.metric) else (1.0, "", 4)
    text = (
        f"{comparison.better.name} vs {comparison.worse.name}: "
        f"{signed(d.delta * scale, digits)}{unit}"
    )
    counts = f"n = {seed_count(comparison.better)} vs {seed_count(comparison.worse)}"
    if d.verdict == CANNOT_TELL:
        line = f"{text} ({counts}): cannot tell, {d.reason}"
    else:
        line = (
            f"{text}, 95% CI [{signed(d.ci_low * scale, digits)}, "
            f"{signed(d.ci_high * scale, digits)}] ({counts}, {p_text(d.p_value)}): {d.verdict}"
        )
    if comparison.better.failed or comparison.worse.failed:
        line += "; the failed runs are not in the means"
    return line


def seed_count(configuration: Configuration) -> str:
    """ "3", or "2 + 1 failed": a seed that diverged or crashed has no metric to average, and a
    mean over the survivors alone would flatter a method that fails on some seeds."""
    failed = len(configuration.failed)
    return f"{configuration.n} + {failed} failed" if failed else str(configuration.n)


def p_text(p_value: float) -> str:
    """ "p = 0.042", or "p < 0.001" where three decimals would round a real p down to zero."""
    return "p < 0.001" if p_value < 0.0005 else f"p = {p_value:.3f}"


def verdict_counts(comparisons: Sequence[Comparison]) -> str:
    """E.g. "12 comparisons: 3 exceed the noise, 7 within noise, 2 cannot tell"."""
    counts = {
        v: sum(c.difference.verdict == v for c in comparisons)
        for v in (EXCEEDS, WITHIN, CANNOT_TELL)
    }
    return (
        f"{len(comparisons)} comparison{'s' if len(comparisons) != 1 else ''}: "
        f"{counts[EXCEEDS]} exceed the noise, {counts[WITHIN]} within noise, "
        f"{counts[CANNOT_TELL]} cannot tell"
    )


def verdict_lines(comparisons: Sequence[Comparison], limit: int = MAX_LINES) -> list[str]:
    """One line per comparison, at most ``limit``; the last says how many were left out."""
    lines = [verdict_line(c) for c in comparisons[:limit]]
    if len(comparisons) > limit:
        lines.append(
            f"... and {len(comparisons) - limit} more (truncated; all of them are in "
            "comparisons.csv)"
        )
    return lines
