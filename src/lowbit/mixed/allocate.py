"""``scripts/allocate.py RUN_DIR [overrides]``: score, price, solve, check, write.

The config is conf/allocate.yaml: the source run's own overrides (its model, data set, ...),
then the command line's. The model is built as that run built it and loaded from it as
``init=RUN_DIR`` loads it; the run's quantizer plan (``quant.*``) says which layers are
allocated: every quantized layer except the first and the last, whose bits stay as configured.
Every check runs before the model is scored; bad input is one ConfigError line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowbit.build import build_datamodule, build_model, kind_of, quant_settings
from lowbit.cli import compose, merge_overrides
from lowbit.errors import ConfigError
from lowbit.mixed import costs, ilp
from lowbit.mixed.allocation import Allocation, write_allocation
from lowbit.mixed.sensitivity import SPLITS, LayerSensitivity, layer_sensitivity
from lowbit.overrides import hydra_error_line, override_key
from lowbit.pretrained import load_initial_weights, resolve
from lowbit.quant.convert import edge_layers, plan_quantization
from lowbit.resume import saved_overrides
from lowbit.validation import check_values

CONFIG = "allocate"
BUDGETS = {"size_kb": costs.SIZE, "bops_ratio": costs.BOPS}  # budget key -> cost it limits
# A source run's overrides that say how it started or where it went, not what it is.
NOT_INHERITED = ("init", "resume", "ckpt_path", "quant.allocation")
MAX_REPACKS = 4  # re-solves when the packed header outgrows the predicted one


@dataclass
class Outcome:
    path: Path
    allocation: Allocation
    scores: dict[str, LayerSensitivity]
    width_costs: dict[str, dict[int, dict[str, int]]]
    measured: costs.Measured
    predicted_sensitivity: float
    sensitivity_seconds: float
    widths: list[int]

    def summary(self) -> dict[str, Any]:
        return {
            "allocation": str(self.path),
            "size_bytes": self.measured.size_bytes,
            "bops": self.measured.bops,
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
            "no budget given: add budget.size_kb=KB (the packed file) or budget.bops_ratio=R "
            "(BOPs relative to uniform W8A8)"
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


def check_widths(widths: list[int], scheme) -> list[int]:
    unknown = [b for b in widths if b not in scheme.weight_bits]
    if unknown or not widths:
        allowed = sorted(scheme.weight_bits)
        if not allowed:
            raise ConfigError(
                f"quantizer={scheme.name} keeps every weight float: choose a quantizer with "
                f"weight widths to allocate, such as quantizer=lsq"
            )
        raise ConfigError(
            f"widths={widths}: quantizer={scheme.name} takes weight widths "
            f"{allowed[0]}-{allowed[-1]}"
        )
    return sorted(set(widths))


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
    return f"{math.ceil(needed / reference * 10_000) / 10_000:g}"


@dataclass
class Pricing:
    """The costs of an allocation problem: each allocated layer's at each width, the rest of the
    model's (``fixed``), the budgets' limits by cost, and the W8A8 BOPs ``bops_ratio`` scales."""

    priced: dict[str, dict[int, dict[str, int]]]
    fixed: dict[str, int]
    limits: dict[str, float]
    budgets: dict[str, float]
    reference: int


def price(
    model: nn.Module,
    quant: dict[str, Any],
    plan: dict,
    layers: list[str],
    widths: list[int],
    shape: tuple[int, ...],
    quantizer: str,
    budgets: dict[str, float],
) -> Pricing:
    """Every width's cost, and ConfigError naming the smallest budget when no allocation fits:
    measured before any scoring."""
    priced = costs.width_costs(model, plan, layers, widths, shape)
    reference = costs.reference_bops(model, shape)
    widest = Allocation({name: widths[-1] for name in layers}, quantizer)
    at_widest = costs.measure(model, quant, widest, shape)
    fixed = {  # what the model costs besides the allocated layers' codes
        costs.SIZE: at_widest.size_bytes + at_widest.slack,
        costs.BOPS: at_widest.bops,
    }
    for name in layers:
        for cost in fixed:
            fixed[cost] -= priced[name][widths[-1]][cost]
    limits = {
        BUDGETS[key]: value * (1000 if key == "size_kb" else reference)
        for key, value in budgets.items()
    }
    for key, value in budgets.items():  # before any scoring: is there an allocation at all?
        cost = BUDGETS[key]
        least = fixed[cost] + sum(min(c[cost] for c in priced[name].values()) for name in layers)
        if least > limits[cost]:
            shown = smallest_budget(key, least, reference)
            raise ConfigError(
                f"budget.{key}={value:g} is below the smallest allocation's {key}={shown} "
                f"(every allocated layer at {widths[0]} bits): use budget.{key}>={shown}"
            )
    return Pricing(priced, fixed, limits, budgets, reference)


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
            chosen = ilp.solve(options, room)
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
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    if kind_of(model) != "classification":
        raise ConfigError("scripts/allocate.py scores classification models (cross-entropy)")
    shape = datamodule.image_shape
    scheme, plan = plan_quantization(model, input_shape=shape, **quant)
    widths = check_widths(list(cfg.widths), scheme)
    edges = edge_layers(model)
    layers = [n for n, bits in plan.items() if n not in edges and not bits.is_full_precision]
    if not layers:
        raise ConfigError("no layer to allocate: every quantized layer is a first or last layer")
    datamodule.check()
    load_initial_weights(model, init.spec)

    pricings = [
        price(model, quant, plan, layers, widths, shape, scheme.name, budgets)
        for budgets in budget_sets
    ]

    datamodule.setup("fit")
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
        predicted = ilp.total(chosen)
        allocation = Allocation(
            {n: option.width for n, option in chosen.items()},
            scheme.name,
            details={
                "method": str(cfg.method),
                "budget": pricing.budgets,
                "source": init.weights_file,
                "size_bytes": measured.size_bytes,
                "bops": measured.bops,
                "bops_ratio": measured.bops / pricing.reference,
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
            Outcome(path, allocation, scores, pricing.priced, measured, predicted, seconds, widths)
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
    """The per-layer table: sensitivity at each width, the chosen width, its bytes and BOPs."""
    hessian = any(score.trace is not None for score in outcome.scores.values())
    header = [
        "layer",
        "weights",
        *(["trace", "+-se"] if hessian else []),
        *(f"s@{b}" for b in outcome.widths),
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
                str(chosen),
                f"{cost[costs.SIZE]:,}",
                f"{cost[costs.BOPS]:,}",
            ]
        )
    return rows
