"""Configurations: the runs that differ only in their seed, one row of the report.

A configuration is a model, a data set, every quantizer setting a run recorded (results.json's
``quant``: quantizer, bits, first/last layer bits, alpha init, ...) and every training setting of
the config Hydra saved beside it (model, data set, optimizer, scheduler and trainer keys such as
``trainer.max_epochs``; where a run ran, such as ``trainer.devices``, is left out:
``lowbit.report.runs.training_settings``). Its seeds are samples of the
same experiment, so each metric becomes n, mean, standard deviation and a 95% interval
(``lowbit.report.stats``). A configuration answers ``metric`` with the mean, so the Pareto fronts
and the figures take configurations where they took runs: the fronts are computed on the means.

Two finished runs of a configuration with the same seed repeat one sample (e.g. a sweep rerun
into another folder): the first counts, the others are listed as repeats and left out, so a rerun
does not shrink the interval. Runs whose seed is unknown (seed=null) count each.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lowbit.report.runs import BIT_KINDS, RunRecord
from lowbit.report.stats import Summary, summarize

FULL_PRECISION = "fp32"


def configuration_key(run: RunRecord) -> tuple:
    """What a run is, without its seed: model, data set, quantizer and training settings."""
    return (
        run.model,
        run.dataset,
        json.dumps(run.settings, sort_keys=True, default=str),
        run.quantizer,
        *(run.bits(k) for k in BIT_KINDS),
    )


@dataclass
class Configuration:
    """The runs of one configuration and the summaries of their metrics over seeds."""

    runs: list[RunRecord]
    counted: list[RunRecord] = field(default_factory=list)  # finished, one per seed
    repeats: list[RunRecord] = field(default_factory=list)  # finished, seed counted already
    summaries: dict[str, Summary] = field(default_factory=dict)
    duration: Summary | None = None
    distinct: str = ""  # settings that tell it from its namesakes, e.g. "first_layer_bits=4"
    show_model: bool = False  # the label names model and data set when a report has several

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    @property
    def model(self) -> str | None:
        return self.first.model

    @property
    def dataset(self) -> str | None:
        return self.first.dataset

    @property
    def quantizer(self) -> str | None:
        return self.first.quantizer

    def bits(self, kind: str) -> int | None:
        return self.first.bits(kind)

    @property
    def bits_label(self) -> str:
        return self.first.bits_label

    @property
    def mixed(self) -> bool:
        """Trained from an allocation file: one weight width per layer (``RunRecord.mixed``)."""
        return self.first.mixed

    @property
    def ok(self) -> bool:
        """At least one finished run: the configuration has means to draw."""
        return bool(self.counted)

    @property
    def n(self) -> int:
        return len(self.counted)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.ok]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.counted]

    def summary(self, key: str) -> Summary | None:
        return self.summaries.get(key)

    def metric(self, key: str) -> float | None:
        """The mean over the counted seeds (None when none recorded it)."""
        summary = self.summaries.get(key)
        return None if summary is None else summary.mean

    @property
    def name(self) -> str:
        """E.g. "pact W2A2", "dorefa W4A4G8 (first_layer_bits=4)", "fp32", "lsq mixed A4"."""
        bits = "".join(
            f"{k[0].upper()}{self.bits(k)}"
            for k in BIT_KINDS
            if self.bits(k) is not None and not (k == "gbits" and self.bits(k) == 32)
        )
        label = self.quantizer or "?"
        if self.mixed:  # weights at its allocation's widths
            label += " mixed"
        if self.quantizer != FULL_PRECISION and bits:
            label += f" {bits}"
        if self.distinct:
            label += f" ({self.distinct})"
        if self.show_model:
            label = f"{self.model}/{self.dataset} {label}"
        return label


def numeric_metrics(runs: Iterable[RunRecord]) -> list[str]:
    keys = {key for run in runs for key in run.metrics}
    return sorted(key for key in keys if any(run.metric(key) is not None for run in runs))


def summarize_runs(configuration: Configuration) -> None:
    """Picks the counted runs (finished, first of each seed) and summarises every metric."""
    seen: set[int] = set()
    for run in configuration.runs:
        if not run.ok:
            continue
        if run.seed is not None and run.seed in seen:
            configuration.repeats.append(run)
            continue
        if run.seed is not None:
            seen.add(run.seed)
        configuration.counted.append(run)
    counted = configuration.counted
    for key in numeric_metrics(counted):
        summary = summarize([v for v in (r.metric(key) for r in counted) if v is not None])
        if summary is not None:
            configuration.summaries[key] = summary
    durations = [
        r.duration_s
        for r in counted
        if isinstance(r.duration_s, (int, float)) and math.isfinite(r.duration_s)
    ]
    configuration.duration = summarize(durations)


def distinguishing_settings(configurations: Sequence[Configuration]) -> None:
    """Labels namesakes (same model, data set, quantizer and bits) by the settings they differ
    in, so that no two rows or verdicts read alike."""
    namesakes: dict[tuple, list[Configuration]] = defaultdict(list)
    for configuration in configurations:
        namesakes[
            (
                configuration.model,
                configuration.dataset,
                configuration.quantizer,
                configuration.bits_label,
            )
        ].append(configuration)
    for group in namesakes.values():
        if len(group) < 2:
            continue
        keys = sorted({k for c in group for k in c.first.settings})
        differing = [
            k
            for k in keys
            if len({json.dumps(c.first.settings.get(k), sort_keys=True) for c in group}) > 1
        ]
        for configuration in group:
            configuration.distinct = ", ".join(
                f"{k}={as_override(configuration.first.settings.get(k))}" for k in differing
            )


def as_override(value: Any) -> str:
    """A setting as a user types it on the command line: null, true/false, the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def configuration_order(configuration: Configuration) -> tuple:
    """Model and data set, FP32 first, then quantizer by name, then bits ascending."""
    return (
        str(configuration.model),
        str(configuration.dataset),
        configuration.quantizer != FULL_PRECISION,
        str(configuration.quantizer),
        *((configuration.bits(k) if configuration.bits(k) is not None else -1) for k in BIT_KINDS),
        configuration.distinct,
    )


def group_configurations(runs: Iterable[RunRecord]) -> list[Configuration]:
    """The configurations of the runs, each with its metrics summarised over seeds."""
    grouped: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        grouped[configuration_key(run)].append(run)
    configurations = [Configuration(runs=members) for members in grouped.values()]
    for configuration in configurations:
        summarize_runs(configuration)
    distinguishing_settings(configurations)
    several = len({(c.model, c.dataset) for c in configurations}) > 1
    for configuration in configurations:
        configuration.show_model = several
    return sorted(configurations, key=configuration_order)


def seed_counts(configurations: Sequence[Configuration]) -> str:
    """E.g. "3 seeds each", "1-3 seeds": how many finished seeds the configurations have."""
    counts = sorted({c.n for c in configurations if c.ok})
    if not counts:
        return "no finished run"
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] != 1 else ''} each"
    return f"{counts[0]}-{counts[-1]} seeds"
