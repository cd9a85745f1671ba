"""Runs as their results.json recorded them, and the Pareto front of accuracy against a cost.

Nothing here imports training code: a report is made from what the runs wrote, on any machine.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.results import RESULTS_FILE, STATUS_OK, find_results, read_results

BIT_KINDS = ("wbits", "abits", "gbits")


@dataclass(frozen=True)
class RunRecord:
    """One run: what ran (model, quantizer, bits), how it ended, and its final metrics."""

    name: str
    status: str
    model: str | None = None
    dataset: str | None = None
    quantizer: str | None = None
    wbits: int | None = None
    abits: int | None = None
    gbits: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    run_dir: str = ""
    error: str | None = None
    duration_s: float | None = None  # wall time of the whole run, start-up to results.json
    seed: int | None = None  # None: not recorded, or drawn at random (seed=null)
    # Every quantizer setting the run recorded (``quant`` in results.json) and the training
    # settings of its saved config (``training_settings``): with model and dataset, what makes
    # runs that differ only in their seed one configuration.
    settings: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # the W&B run's id, which results.json records too
    source: str = RESULTS_FILE

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def metric(self, key: str) -> float | None:
        """The metric as a finite number, or None when the run has no such (finite) value."""
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    def bits(self, kind: str) -> int | None:
        return getattr(self, kind)

    @property
    def mixed(self) -> bool:
        """Trained from an allocation file (``quant.allocation``, lowbit.mixed): its weights
        have one width per layer."""
        return bool(self.settings.get("allocation"))

    @property
    def bits_label(self) -> str:
        """W/A/G as in the run names' wXaYgZ, e.g. 4/4/32 ("-" for bits not recorded, "mixed"
        for the weights of a mixed-precision run, e.g. mixed/4/32)."""
        return "/".join(self.bits_text(k) for k in BIT_KINDS)

    def bits_text(self, kind: str) -> str:
        if kind == "wbits" and self.mixed:
            return "mixed"
        return "-" if self.bits(kind) is None else str(self.bits(kind))


def varying_bit_kind(runs: Sequence[RunRecord]) -> str:
    """The bit width that takes the most values across the runs (W before A before G)."""
    counts = {kind: len({r.bits(kind) for r in runs}) for kind in BIT_KINDS}
    return max(BIT_KINDS, key=lambda kind: counts[kind])


def tied_bit_kinds(runs: Sequence[RunRecord], kind: str) -> list[str]:
    """The other bit widths equal to ``kind`` in every run (a W = A study sweeps them together)."""
    return [
        other
        for other in BIT_KINDS
        if other != kind and all(r.bits(other) == r.bits(kind) for r in runs)
    ]


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def saved_config(run_dir: Path | None) -> dict[str, Any] | None:
    """The composed config Hydra saved beside the run (``.hydra/config.yaml``), interpolations
    left as written; None for runs that have none (tests' fixtures, runs copied without it)."""
    saved = run_dir / ".hydra" / "config.yaml" if run_dir is not None else None
    if saved is None or not saved.is_file():
        return None
    import yaml  # PyYAML, which omegaconf needs anyway

    try:
        config = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def recorded_seed(payload: Mapping[str, Any], config: Mapping[str, Any] | None) -> int | None:
    """The run's seed: results.json's, or for runs written before it recorded one, the saved
    config's; None when neither has it."""
    if "seed" in payload:
        return as_int(payload["seed"])
    return as_int(config.get("seed")) if config is not None else None


# What else makes two runs different experiments, beside the quantizer settings: the groups of
# the config that change what is trained, flattened to dotted keys ("trainer.max_epochs").
TRAINING_GROUPS = ("model", "dataset", "optimizer", "scheduler", "trainer", "task", "detection")
# Keys of those groups that say where or how visibly a run ran, not what it trained: runs that
# differ only in them (and in their seed) are one configuration.
PLACEMENT_KEYS = frozenset(
    {
        "dataset.data_dir",
        "dataset.root",
        "dataset.num_workers",
        "dataset.download",
        "trainer.accelerator",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.strategy",
        "trainer.log_every_n_steps",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.default_root_dir",
    }
)


def training_key(settings: Mapping[str, Any]) -> str:
    """The training part of a run's settings as one comparable string: quantizers are compared
    only between configurations trained alike (same epochs, optimizer, batch size, ...)."""
    training = {k: v for k, v in settings.items() if k.split(".", 1)[0] in TRAINING_GROUPS}
    return json.dumps(training, sort_keys=True, default=str)


def training_settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The saved config's training groups as dotted keys, placement keys left out."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        elif prefix not in PLACEMENT_KEYS:
            flat[prefix] = node

    for group in TRAINING_GROUPS:
        if config is not None and group in config:
            walk(group, config[group])
    return flat


# Keys added to lowbit after runs were made whose default is not null, with the value that keeps
# what those runs did: at that value they are left out, as null is.
OLD_BEHAVIOUR = {"requantize_outputs": True}


def recorded_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings without those set to null: a key added to lowbit after a run was made is
    missing from that run's config, and a new key's null default keeps the old behaviour (e.g.
    ``trainer.gradient_clip_val``), so null and missing are one setting, and the runs before and
    after the key pool their seeds. A key in ``OLD_BEHAVIOUR`` at its value is left out too."""
    return {
        key: value
        for key, value in settings.items()
        if value is not None and not (key in OLD_BEHAVIOUR and OLD_BEHAVIOUR[key] == value)
    }


def start_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
    """How a run started, as settings: ``start`` ("ptq", or "init" for training from trained
    weights), ``init`` (the source run's name, else the path given) and, where activations were
    calibrated, ``calibration`` ("minmax + bn x8": method, BatchNorm re-estimation, batches).
    A run from
    scratch has neither, so it pools with the runs made before lowbit recorded them: PTQ,
    QAT from an FP32 run and QAT from scratch are then three configurations of one bit width."""
    start = payload.get("start")
    source = payload.get("init") or {}
    if start in (None, "scratch") or (start == "init" and not source):
        return {}  # no source recorded: nothing was loaded, whatever init= said
    settings = {"start": start, "init": source.get("run_name") or source.get("spec")}
    calibration = payload.get("calibration") or {}
    if calibration.get("quantizers"):  # how the ranges were set: part of what was measured
        method = str(calibration.get("method"))
        if method == "percentile":
            method += f" {calibration.get('percentile')}"
        if calibration.get("bn_reestimation"):
            method += " + bn"
        settings["calibration"] = f"{method} x{calibration.get('batches')}"
    return settings


def arithmetic_settings(quantizer: str | None, version: Any) -> dict[str, Any]:
    """The arithmetic a quantized run evaluated with, as a setting, so that runs of different
    arithmetic never pool (``lowbit.quant.integer.ARITHMETIC_VERSION``): the version recorded,
    1 for a quantized run made before lowbit recorded it (``version`` None). A float run has
    none to differ in."""
    if quantizer in (None, "fp32"):
        return {}
    return {"arithmetic": int(version) if version is not None else 1}


def allocation_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A mixed-precision run's allocation as a setting: the recipe that made it (method and
    budget, ``scripts/allocate.py``) where the allocation file recorded one, else its path.
    Each seed's source model gets its own allocation file, so seeds of one recipe are one
    configuration; allocations of the same budget by different methods are two."""
    record = payload.get("allocation")
    if not isinstance(record, Mapping) or "method" not in record:
        return {}  # not mixed, or a file written by hand: quant.allocation (its path) stays
    budget = record.get("budget") or {}
    terms = [str(record["method"])]
    terms += [f"{key}={value:g}" for key, value in sorted(budget.items()) if value is not None]
    return {"allocation": " ".join(terms)}


def run_from_results(payload: Mapping[str, Any], results_dir: Path | None = None) -> RunRecord:
    """A RunRecord from a results.json payload (keys it lacks stay None: nothing is guessed);
    ``results_dir``, the folder the file is in, is where an old run's seed is looked up."""
    quant = payload.get("quant") or {}
    run_dir = str(payload.get("run_dir") or "")
    config = saved_config(results_dir)
    wandb_info = payload.get("wandb") or {}
    return RunRecord(
        name=Path(run_dir).name or str(payload.get("run_name") or "run"),
        status=str(payload.get("status", "unknown")),
        model=payload.get("model"),
        dataset=payload.get("dataset"),
        quantizer=quant.get("quantizer"),
        # a mixed-precision run's weights have several widths: none is its wbits, and its
        # allocation file (in ``settings``) tells it apart
        wbits=None if payload.get("allocation") else as_int(quant.get("wbits")),
        abits=as_int(quant.get("abits")),
        gbits=as_int(quant.get("gbits")),
        metrics=dict(payload.get("metrics") or {}),
        run_dir=run_dir,
        error=payload.get("error"),
        duration_s=payload.get("duration_s"),
        seed=recorded_seed(payload, config),
        settings=recorded_settings(
            {
                **quant,
                **allocation_settings(payload),
                **training_settings(config),
                **start_settings(payload),
                **arithmetic_settings(
                    quant.get("quantizer"), (payload.get("arithmetic") or {}).get("version")
                ),
            }
        ),
        run_id=wandb_info.get("id") if isinstance(wandb_info, dict) else None,
    )


def run_order(run: RunRecord) -> tuple[int, str]:
    """Sweep jobs in Hydra's job order (``10_`` after ``9_``), other runs by name."""
    number = run.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else 1 << 30, run.name)


def load_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Every run under the given sweep dirs, run dirs or results.json files, in job order."""
    runs = [run_from_results(read_results(path), Path(path).parent) for path in find_results(paths)]
    return sorted(runs, key=run_order)


def load_runs_or_explain(paths: list[str], program: str) -> list[RunRecord] | None:
    """``load_runs`` for the command-line scripts: None after one line on stderr when a path is
    missing or holds no results.json."""
    try:
        runs = load_runs(paths)
    except FileNotFoundError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return None
    if not runs:
        print(f"{program}: error: no results.json under {' '.join(paths)}", file=sys.stderr)
        return None
    return runs


def default_accuracy(runs: Iterable[RunRecord]) -> str:
    """val/map50_best when every run that has a metric is a detection run, else val/acc_best:
    the figures of a detection sweep then plot mAP without being told."""
    measured = [
        run
        for run in runs
        if run.metric("val/map50_best") is not None or run.metric("val/acc_best") is not None
    ]
    if measured and all(run.metric("val/map50_best") is not None for run in measured):
        return "val/map50_best"
    return "val/acc_best"


@dataclass(frozen=True)
class Cost:
    """What a Pareto front minimises: a metric, or the lowest of several measurements of it
    (``alternatives``: the same latency in another runtime), and for runs that have none of
    them a stand-in metric.

    The stand-in exists because old runs (and runs whose int8 export failed) have no deployed
    latency; whoever draws or tables a cost asks ``falls_back`` so that stand-in values are
    always marked as such, never mixed silently with the real ones. ``source`` is the metric a
    value comes from, ``path`` the name of that measurement (``names``, one per key).
    """

    key: str
    fallback: str | None = None
    fallback_label: str = ""
    alternatives: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # of key and alternatives, in that order, e.g. "openvino int8"

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.alternatives)

    def __str__(self) -> str:
        own = self.key if not self.alternatives else "lowest of " + ", ".join(self.keys)
        return own if self.fallback is None else f"{own} (or {self.fallback})"

    def chosen(self, run: RunRecord) -> str | None:
        """The lowest of the cost's own metrics that the run has (of equal ones, the first in
        ``keys``): for a configuration, the one with the lowest mean over its seeds."""
        measured = [
            (run.metric(k), i) for i, k in enumerate(self.keys) if run.metric(k) is not None
        ]
        return self.keys[min(measured)[1]] if measured else None

    def source(self, run: RunRecord) -> str | None:
        """The metric the run's value comes from: its chosen own metric, else the stand-in."""
        chosen = self.chosen(run)
        if chosen is not None or self.fallback is None:
            return chosen
        return self.fallback if run.metric(self.fallback) is not None else None

    def value(self, run: RunRecord) -> float | None:
        source = self.source(run)
        return None if source is None else run.metric(source)

    def falls_back(self, run: RunRecord) -> bool:
        """True when the run's value is the stand-in's, not the cost's own."""
        return self.chosen(run) is None and self.value(run) is not None

    def path(self, run: RunRecord) -> str | None:
        """The name of the measurement the value comes from ("openvino int8"), None for the
        stand-in, or for a cost without names."""
        chosen = self.chosen(run)
        return None if chosen is None or not self.names else self.names[self.keys.index(chosen)]

    def chooses(self, runs: Iterable[RunRecord]) -> bool:
        """Whether any run measured an alternative: only then is there a choice to name."""
        return any(run.metric(k) is not None for run in runs for k in self.alternatives)


# Where each int8 latency was measured, as ``lowbit.export.onnx_run.INT8_PATHS`` names them (the
# report imports no export code; a test keeps the two equal).
INT8_PATHS = {"latency/int8_ms": "onnxruntime int8", "latency/openvino_int8_ms": "openvino int8"}
# The latency a deployment sees: the fastest int8 runtime the run measured (ONNX Runtime, and
# OpenVINO where it ran), batch 1; without an int8 export, the fake-quant graph's PyTorch float32
# latency, which says little about deployment.
DEPLOYED_LATENCY = Cost(
    "latency/int8_ms",
    fallback="latency/ms",
    fallback_label="fake-quant latency (no int8 export)",
    alternatives=tuple(INT8_PATHS)[1:],
    names=tuple(INT8_PATHS.values()),
)
# The fastest float path a run measured, a word beside its number ("openvino bf16"): what int8
# must beat (``lowbit.export.onnx_run.best_paths``); runs before OpenVINO have neither.
BEST_FLOAT_LATENCY, BEST_FLOAT_PATH = "latency/best_float_ms", "latency/best_float_path"


def as_cost(cost: str | Cost) -> Cost:
    """A metric name is the cost without a stand-in."""
    return cost if isinstance(cost, Cost) else Cost(cost)


def measured_runs(runs: Iterable[RunRecord], cost: str | Cost, accuracy: str) -> list[RunRecord]:
    """The finished runs with both a cost and an accuracy: the points of a front's figure."""
    cost = as_cost(cost)
    return [
        r for r in runs if r.ok and cost.value(r) is not None and r.metric(accuracy) is not None
    ]


def pareto_front(runs: Iterable[RunRecord], cost: str | Cost, accuracy: str) -> list[RunRecord]:
    """The finished runs that no other run beats on both: at most the cost and more accurate,
    or cheaper and at least as accurate. Cheapest first; of equal points, one is kept.
    """
    cost = as_cost(cost)
    points = sorted(
        measured_runs(runs, cost, accuracy), key=lambda r: (cost.value(r), -r.metric(accuracy))
    )
    front: list[RunRecord] = []
    best = -math.inf
    for run in points:
        if run.metric(accuracy) > best:  # more accurate than every cheaper (or equal) run
            front.append(run)
            best = run.metric(accuracy)
    return front
