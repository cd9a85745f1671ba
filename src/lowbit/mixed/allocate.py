"""``scripts/allocate.py RUN_DIR [overrides]``: score, price, solve, check, write.

The config is conf/allocate.yaml: the source run's own overrides (its model, data set, ...),
then the command line's. The model is built as that run built it and loaded from it as
``init=RUN_DIR`` loads it; the run's quantizer plan (``quant.*``) says which layers are
allocated: every quantized layer except the first and the last, whose bits stay as configured.
A width is one of the quantizer's or 32, float weights (``lowbit.mixed.costs``). With
``budget.latency_ms`` each allocated layer's int8 and float times are measured in ONNX Runtime
first (``lowbit.mixed.latency``), with the run's ``export.threads`` and ``latency.*``.
Every check runs before the model is scored; bad input is one ConfigError line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import seed_everything
from torch import nn

from lowbit.bit_widths import FULL_PRECISION
from lowbit.build import build_datamodule, build_model, kind_of, quant_settings
from lowbit.cli import compose, merge_overrides
from lowbit.errors import ConfigError
from lowbit.mixed import costs, ilp
from lowbit.mixed.allocation import Allocation, write_allocation
from lowbit.mixed.latency import INT8_KERNEL_BITS, LatencyTable, layer_latency
from lowbit.mixed.sensitivity import SPLITS, LayerSensitivity, layer_sensitivity
from lowbit.overrides import hydra_error_line, override_key
from lowbit.pretrained import load_initial_weights, resolve
from lowbit.quant.convert import edge_layers, plan_quantization
from lowbit.resume import saved_overrides
from lowbit.validation import check_values

CONFIG = "allocate"
# budget key -> the cost it limits
BUDGETS = {"size_kb": costs.SIZE, "bops_ratio": costs.BOPS, "latency_ms": costs.LATENCY}
# A source run's overrides that say how it started or where it went, not what it is.
NOT_INHERITED = ("init", "resume", "ckpt_path", "quant.allocation")
MAX_REPACKS = 4  # re-solves when the packed header outgrows the predicted one


@dataclass
class Outcome:
    path: Path
    allocation: Allocation
    scores: dict[str, LayerSensitivity]
    width_costs: dict[str, dict[int, dict[str, float]]]
    measured: costs.Measured
    predicted_sensitivity: float
    sensitivity_seconds: float
    widths: list[int]
    latency: LatencyTable | None = None  # budget.latency_ms only

    @property
    def latency_ms(self) -> float | None:
        """The predicted ONNX Runtime latency of the allocation (``LatencyTable.predicted``)."""
        return None if self.latency is None else self.latency.predicted(self.allocation.widths)

    def summary(self) -> dict[str, Any]:
        return {
            "allocation": str(self.path),
            "size_bytes": self.measured.size_bytes,
            "bops": self.measured.bops,
            **({"latency_ms": self.latency_ms} if self.latency is not None else {}),
            "predicted_sensitivity": self.predicted_sensitivity,
        }


def compose_for(source: str, overrides: list[str]) -> DictConfig:
    """conf/allocate.yaml with the source run's saved overrides, then ``overrides``."""
    folder = Path(source).expanduser()
    inherited = [
        o
        for o in (saved_overrides(folder) if folder.is_dir() else [])
        if not override_key(o).startswith(("hydra", *NOT_INHERITED))
    ]
    try:
        return compose(CONFIG, merge_overrides(inherited, overrides))
    except Exception as error:
        raise ConfigError(hydra_error_line(error)) from None


def budgets_of(cfg: DictConfig) -> list[dict[str, float]]:
    """The budgets, one dict per allocation to make: a budget given as a list (``budget.size_kb=
    [340,400,460]``) makes one allocation per value from one scoring pass; several lists are
    taken pairwise and must have the same length; a number applies to every allocation."""
    budget = OmegaConf.to_container(cfg.budget, resolve=True)
    given = {key: value for key, value in budget.items() if value is not None}
    if not given:
        raise ConfigError(
            "no budget given: add budget.size_kb=KB (the packed file), budget.bops_ratio=R "
            "(BOPs relative to uniform W8A8) or budget.latency_ms=MS (ONNX Runtime, batch 1)"
        )
    lengths = {len(value) for value in given.values() if isinstance(value, list)}
    if len(lengths) > 1 or 0 in lengths:
        raise ConfigError(
            f"budget {given}: budgets given as lists are taken pairwise, so they need the same "
            f"number of values, at least one"
        )
    count = lengths.pop() if lengths else 1
    return [
        {key: value[i] if isinstance(value, list) else value for key, value in given.items()}
        for i in range(count)
    ]


def check_widths(widths: list[int], scheme, latency_budget: bool) -> list[int]:
    """The candidate widths, sorted: the quantizer's weight widths or 32 (float weights), at
    least one below 32; under a latency budget none of 9-16, which no ONNX Runtime kernel runs
    as trained (``lowbit.mixed.latency``)."""
    allowed = sorted(scheme.weight_bits)
    if not allowed:
        raise ConfigError(
            f"quantizer={scheme.name} keeps every weight float: choose a quantizer with "
            f"weight widths to allocate, such as quantizer=lsq"
        )
    unknown = [b for b in widths if b not in scheme.weight_bits and b != FULL_PRECISION]
    if unknown or not any(b != FULL_PRECISION for b in widths):
        raise ConfigError(
            f"widths={widths}: quantizer={scheme.name} takes weight widths "
            f"{allowed[0]}-{allowed[-1]} and {FULL_PRECISION} (float weights), "
            f"at least one below {FULL_PRECISION}"
        )
    between = sorted({b for b in widths if INT8_KERNEL_BITS < b < FULL_PRECISION})
    if latency_budget and between:
        raise ConfigError(
            f"widths={widths} with budget.latency_ms: ONNX Runtime runs widths <= "
            f"{INT8_KERNEL_BITS} on int8 kernels and {FULL_PRECISION} on float ones; "
            f"{between} would be re-rounded onto int8 by the export: leave them out"
        )
    return sorted(set(widths))


def integer_widest(widths: list[int]) -> int:
    """The widest width below 32: where the rest of the model's costs are measured."""
    return max(b for b in widths if b != FULL_PRECISION)


def scoring_batches(loader, count: int, size: int) -> list:
    """The first ``count`` x ``size`` images of ``loader``, in ``count`` batches of ``size``.

    Scoring batches are smaller than training batches by default: a Hessian-vector product's
    cost per image grows with the batch on this CPU (the double-backward graph of a batch of
    128 NIN images outgrows the caches; measured by ``scripts/bench.py --sections sensitivity``),
    so several small batches score the same images in a fraction of the time."""
    images, labels = [], []
    for batch_images, batch_labels in loader:
        images.append(batch_images)
        labels.append(batch_labels)
        if sum(len(i) for i in images) >= count * size:
            break
    images, labels = torch.cat(images), torch.cat(labels)
    return [
        (images[start : start + size], labels[start : start + size])
        for start in range(0, min(len(images), count * size), size)
    ]


def smallest_budget(key: str, needed: float, reference: float) -> str:
    """The least value of budget ``key`` that an allocation meets, rounded up, in its units."""
    if key == "size_kb":
        return f"{math.ceil(needed / 100) / 10:g}"
    if key == "latency_ms":
        return f"{math.ceil(needed * 1000) / 1000:g}"
    return f"{math.ceil(needed / reference * 10_000) / 10_000:g}"


def cheapest_words(key: str, widths: list[int], latency: LatencyTable | None) -> str:
    """What the cheapest allocation under budget ``key`` is, in words."""
    if key != "latency_ms":
        return f"every allocated layer at {widths[0]} bits"
    kernels = "int8 and float layers" if FULL_PRECISION in widths else "every allocated layer int8"
    threads = latency.threads if latency is not None else "?"
    return f"{kernels}; ONNX Runtime, export.threads={threads}, as measured now"


def junction_links(latency: LatencyTable | None, widths: list[int]) -> list[ilp.Link]:
    """The latency table's junctions as the allocator's links: their time, charged once when
    a layer on either side is float (``lowbit.mixed.latency``)."""
    if latency is None or FULL_PRECISION not in widths:
        return []
    return [
        ilp.Link(
            tuple((end, FULL_PRECISION) for end in junction.ends), {costs.LATENCY: junction.ms}
        )
        for junction in latency.junctions
    ]


def measure_latency(
    cfg: DictConfig,
    model: nn.Module,
    quant: dict[str, Any],
    layers: list[str],
    widths: list[int],
    shape: tuple[int, ...],
    datamodule,
) -> LatencyTable:
    """Each allocated layer's int8 and float time (``lowbit.mixed.latency``), timed as a run
    times its export: ``export.threads`` threads, ``latency.warmup`` and ``latency.repeats``,
    the export's calibration images."""
    from lowbit.export.onnx_graph import UnsupportedModel
    from lowbit.export.onnx_run import THREADS, calibration_images

    export = cfg.get("export") or {}
    timing = cfg.get("latency") or {}
    try:
        return layer_latency(
            model,
            quant,
            layers,
            integer_widest(widths),  # widths 9-16 are refused under a latency budget
            shape,
            calibration_images(datamodule),
            threads=int(export.get("threads", THREADS)),
            warmup=int(timing.get("warmup", 10)),
            repeats=int(timing.get("repeats", 50)),
        )
    except UnsupportedModel as error:
        raise ConfigError(f"budget.latency_ms needs the integer ONNX export: {error}") from None


@dataclass(frozen=True)
class Pricing:
    """The costs of an allocation problem: each allocated layer's at each width, the rest of the
    model's (``fixed``), the W8A8 BOPs ``bops_ratio`` scales, the links between layers that a
    latency budget charges, and, once ``within`` set them, the budgets and their limits by
    cost."""

    priced: dict[str, dict[int, dict[str, float]]]
    fixed: dict[str, float]
    reference: int
    links: list[ilp.Link]
    widths: list[int]
    latency: LatencyTable | None
    budgets: dict[str, float] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)


def price(
    model: nn.Module,
    quant: dict[str, Any],
    plan: dict,
    layers: list[str],
    widths: list[int],
    shape: tuple[int, ...],
    quantizer: str,
    latency: LatencyTable | None = None,
) -> Pricing:
    """Every width's cost, whatever the budget: measured once before any scoring. Bytes and
    BOPs besides the allocated layers' are measured at the widest width below 32
    (``lowbit.mixed.costs``); time, with ``latency``, is its table's."""
    priced: dict[str, dict[int, dict[str, float]]] = costs.width_costs(
        model, plan, layers, widths, shape
    )
    reference = costs.reference_bops(model, shape)
    widest = integer_widest(widths)
    at_widest = costs.measure(
        model, quant, Allocation(dict.fromkeys(layers, widest), quantizer), shape
    )
    fixed = {  # what the model costs besides the allocated layers' codes
        costs.SIZE: at_widest.size_bytes + at_widest.slack,
        costs.BOPS: at_widest.bops,
    }
    for name in layers:
        for cost in fixed:
            fixed[cost] -= priced[name][widest][cost]
    if latency is not None:
        fixed[costs.LATENCY] = latency.fixed_ms
        for name in layers:
            for b in widths:
                priced[name][b][costs.LATENCY] = latency.cost(name, b)
    links = junction_links(latency, widths)
    return Pricing(priced, fixed, reference, links, widths, latency)


def within(pricing: Pricing, budgets: dict[str, float]) -> Pricing:
    """``pricing`` under ``budgets``, their limits in its units; ConfigError naming the smallest
    budget when no allocation fits (before any scoring)."""
    scale = {"size_kb": 1000, "bops_ratio": pricing.reference, "latency_ms": 1}
    limits = {BUDGETS[key]: value * scale[key] for key, value in budgets.items()}
    free = {
        name: [ilp.Option(b, 0.0, by_width[b]) for b in pricing.widths]
        for name, by_width in pricing.priced.items()
    }
    for key, value in budgets.items():  # is there an allocation at all?
        cost = BUDGETS[key]
        least = pricing.fixed[cost] + ilp.cheapest(free, cost, pricing.links)
        if least > limits[cost]:
            shown = smallest_budget(key, least, pricing.reference)
            which = "fastest" if key == "latency_ms" else "smallest"
            words = cheapest_words(key, pricing.widths, pricing.latency)
            raise ConfigError(
                f"budget.{key}={value:g} is below the {which} allocation's {key}={shown} "
                f"({words}): use budget.{key}>={shown}"
            )
    return replace(pricing, budgets=budgets, limits=limits)


def solve_within(
    options: dict[str, list[ilp.Option]],
    pricing: Pricing,
    model: nn.Module,
    quant: dict[str, Any],
    shape: tuple[int, ...],
    quantizer: str,
) -> tuple[dict[str, ilp.Option], costs.Measured]:
    """The optimal options and the packed model's measurement; re-solved with less room when
    the packed header outgrew the one measured at the widest widths."""
    fixed, limits, budgets = pricing.fixed, pricing.limits, pricing.budgets
    room = {cost: limit - fixed[cost] for cost, limit in limits.items()}
    for _ in range(MAX_REPACKS):
        try:
            chosen = ilp.solve(options, room, pricing.links)
        except ilp.Infeasible:  # each budget alone is met (checked above): not both
            raise ConfigError(
                f"budget {budgets}: each budget alone has allocations, but none meets all"
            ) from None
        allocation = Allocation({n: option.width for n, option in chosen.items()}, quantizer)
        measured = costs.measure(model, quant, allocation, shape)
        over = measured.size_bytes + measured.slack - limits.get(costs.SIZE, math.inf)
        if over <= 0:
            break
        room[costs.SIZE] -= over  # the header came out longer than at the widest widths
    else:
        raise ConfigError(f"budget {budgets}: no allocation packs within it after re-solving")
    return chosen, measured


def allocate(cfg: DictConfig, source: str) -> list[Outcome]:
    """Everything ``scripts/allocate.py`` does between the command line and the printing: one
    outcome per budget (``budgets_of``), every budget checked before the one scoring pass."""
    check_values(cfg)
    if cfg.quant.get("allocation") is not None:
        raise ConfigError("quant.allocation is what this command writes: leave it out here")
    budget_sets = budgets_of(cfg)
    if len(budget_sets) > 1 and cfg.get("output"):
        raise ConfigError(
            f"output={cfg.output} names one file, and {len(budget_sets)} budgets make "
            f"{len(budget_sets)}: leave output out (each goes to RUN_DIR/allocations/)"
        )
    init = resolve(source)  # one line if it holds no weights
    quant = quant_settings(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # the same command scores the same images: the loader's shuffle draws from the seed
    seed_everything(int(cfg.get("seed") or 0), workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    if kind_of(model) != "classification":
        raise ConfigError("scripts/allocate.py scores classification models (cross-entropy)")
    shape = datamodule.image_shape
    scheme, plan = plan_quantization(model, input_shape=shape, **quant)
    any_latency = any("latency_ms" in budgets for budgets in budget_sets)
    widths = check_widths(list(cfg.widths), scheme, any_latency)
    edges = edge_layers(model)
    layers = [n for n, bits in plan.items() if n not in edges and not bits.is_full_precision]
    if not layers:
        raise ConfigError("no layer to allocate: every quantized layer is a first or last layer")
    datamodule.check()
    load_initial_weights(model, init.spec)
    datamodule.setup("fit")

    latency = None
    if any_latency:
        wide = sorted({plan[n].abits for n in layers if plan[n].abits > INT8_KERNEL_BITS})
        if wide:
            raise ConfigError(
                f"budget.latency_ms prices ONNX Runtime's int8 kernels, whose inputs are 8-bit "
                f"codes: allocated layers have abits {wide}; use quant.abits<={INT8_KERNEL_BITS}"
            )
        latency = measure_latency(cfg, model, quant, layers, widths, shape, datamodule)
    pricing = price(model, quant, plan, layers, widths, shape, scheme.name, latency)
    pricings = [within(pricing, budgets) for budgets in budget_sets]

    split = SPLITS[cfg.method]
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    scores, seconds = layer_sensitivity(
        cfg.method,
        model,
        scheme,
        layers,
        widths,
        scoring_batches(loader, int(cfg.sensitivity.batches), int(cfg.sensitivity.batch_size)),
        samples=int(cfg.sensitivity.samples),
        seed=int(cfg.get("seed") or 0),
    )
    outcomes = []
    for pricing in pricings:
        options = {
            name: [ilp.Option(b, scores[name].by_width[b], pricing.priced[name][b]) for b in widths]
            for name in layers
        }
        chosen, measured = solve_within(options, pricing, model, quant, shape, scheme.name)
        widths_chosen = {n: option.width for n, option in chosen.items()}
        predicted = ilp.total(chosen)
        timing = {}
        if latency is not None:
            timing = {
                "latency_ms": latency.predicted(widths_chosen),
                "latency_threads": latency.threads,
            }
        allocation = Allocation(
            widths_chosen,
            scheme.name,
            details={
                "method": str(cfg.method),
                "budget": pricing.budgets,
                "source": init.weights_file,
                "size_bytes": measured.size_bytes,
                "bops": measured.bops,
                "bops_ratio": measured.bops / pricing.reference,
                **timing,
                "predicted_sensitivity": predicted,
                "sensitivity_seconds": round(seconds, 1),
                "scores": scores_record(scores),
            },
        )
        path = Path(cfg.output) if cfg.get("output") else default_path(source, cfg, pricing.budgets)
        write_allocation(
            path,
            allocation,
            comment=(
                f"lowbit mixed-precision allocation, written by scripts/allocate.py {source}\n"
                f"train it: {train_command([path], scheme.name, source)}"
            ),
        )
        outcomes.append(
            Outcome(
                path,
                allocation,
                scores,
                pricing.priced,
                measured,
                predicted,
                seconds,
                widths,
                latency,
            )
        )
    return outcomes


def scores_record(scores: dict[str, LayerSensitivity]) -> dict[str, dict[str, Any]]:
    """Each layer's score by width (and the Hutchinson trace with its standard error), as the
    allocation file keeps them: what the choice was made from, for the ranking checks in
    docs/mixed_precision.md and for anyone who asks why a layer got its width."""
    record = {}
    for name, score in scores.items():
        entry: dict[str, Any] = {"by_width": {b: float(v) for b, v in score.by_width.items()}}
        if score.trace is not None:
            entry["trace"], entry["trace_se"] = float(score.trace), float(score.trace_se)
        record[name] = entry
    return record


def train_command(paths: list[Path], quantizer: str, source: str) -> str:
    """The command that trains the allocations: a multirun over them when there are several."""
    files = ",".join(str(path) for path in paths)
    multirun = "-m " if len(paths) > 1 else ""
    return f"python train.py {multirun}quant.allocation={files} quantizer={quantizer} init={source}"


def default_path(source: str, cfg: DictConfig, budgets: dict[str, float]) -> Path:
    folder = Path(source).expanduser().resolve()
    folder = folder if folder.is_dir() else folder.parent
    budget = "-".join(f"{key.replace('_', '')}{value:g}" for key, value in budgets.items())
    return folder / "allocations" / f"{cfg.quant.quantizer}-{cfg.method}-{budget}.yaml"


def table(outcome: Outcome) -> list[list[str]]:
    """The per-layer table: sensitivity at each width, the layer's int8 and (scaled) float
    times that a latency budget prices, the chosen width, its bytes and BOPs."""
    hessian = any(score.trace is not None for score in outcome.scores.values())
    latency = outcome.latency
    header = [
        "layer",
        "weights",
        *(["trace", "+-se"] if hessian else []),
        *(f"s@{b}" for b in outcome.widths),
        *(["int8_ms", "float_ms"] if latency is not None else []),
        "wbits",
        "bytes",
        "BOPs",
    ]
    rows = [header]
    for name, score in outcome.scores.items():
        chosen = outcome.allocation.widths[name]
        cost = outcome.width_costs[name][chosen]
        rows.append(
            [
                name,
                f"{score.params:,}",
                *([f"{score.trace:.4g}", f"{score.trace_se:.2g}"] if hessian else []),
                *(f"{score.by_width[b]:.3g}" for b in outcome.widths),
                *(
                    [f"{latency.cost(name, 8):.3f}", f"{latency.cost(name, FULL_PRECISION):.3f}"]
                    if latency is not None
                    else []
                ),
                str(chosen),
                f"{cost[costs.SIZE]:,}",
                f"{cost[costs.BOPS]:,}",
            ]
        )
    return rows
