"""Choose each layer's weight width under a size, BOPs or latency budget, from a trained run.

    python scripts/allocate.py RUN_DIR quantizer=lsq budget.size_kb=150 method=hessian
    python scripts/allocate.py RUN_DIR quantizer=lsq budget.bops_ratio=0.3 method=fisher
    python scripts/allocate.py RUN_DIR quantizer=lsq budget.latency_ms=2 widths=[2,4,8,32]
    python scripts/allocate.py RUN_DIR quantizer=lsq 'budget.size_kb=[340,400,460]'

RUN_DIR is what ``init=`` takes (a run folder, a .ckpt, a .safetensors); the other arguments are
Hydra overrides of conf/allocate.yaml, on top of the run's own (``method``, ``widths``,
``budget.*``, ``sensitivity.*``, ``output``, and any ``quant.*``). Prints the per-layer table
(sensitivity at each width, with a latency budget each layer's int8 and float time in ONNX
Runtime, the chosen width, its bytes and BOPs) and writes the allocation file; the last line is
one JSON object with ``allocation`` (the file), ``size_bytes`` (the packed file at this
allocation, as ``save_packed`` writes it), ``bops``, ``latency_ms`` (predicted; a latency budget
only) and ``predicted_sensitivity``. Width 32 keeps a layer's weights float. Train it with
``python train.py quant.allocation=FILE quantizer=lsq init=RUN_DIR``. Bad input is one line on
stderr and exit status 2, before any scoring (lowbit.mixed.allocate).
"""

from __future__ import annotations

import json
import sys

import lowbit.config  # noqa: F401  (registers the config resolvers)
from lowbit.cli import fail
from lowbit.errors import ConfigError
from lowbit.measure.profile import aligned
from lowbit.mixed.allocate import allocate, compose_for, table, train_command
from lowbit.mixed.sensitivity import uncertain_traces


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        fail("usage: scripts/allocate.py RUN_DIR [overrides], e.g. budget.size_kb=150")
    source, overrides = argv[0], argv[1:]
    try:
        outcomes = allocate(compose_for(source, overrides), source)
    except ConfigError as error:
        fail(str(error))
    for outcome in outcomes:
        print_outcome(outcome, several=len(outcomes) > 1)
    if len(outcomes) == 1:
        print(json.dumps(outcomes[0].summary()))
        return
    for outcome in outcomes:
        print(json.dumps(outcome.summary()))
    command = train_command([o.path for o in outcomes], outcomes[0].allocation.quantizer, source)
    print(json.dumps({"allocations": [o.summary() for o in outcomes], "train": command}))


def print_outcome(outcome, several: bool) -> None:
    """One allocation's table and its totals (with a latency budget, where the time goes)."""
    measured, details = outcome.measured, outcome.allocation.details
    if several:
        print(f"budget {details['budget']}:")
    print(aligned(table(outcome), text_columns=1))
    print(
        f"{details['method']} sensitivity in {outcome.sensitivity_seconds:.1f} s; "
        f"packed {measured.size_bytes:,} bytes (+{measured.slack} reserved for the header), "
        f"{measured.bops:,} BOPs ({details['bops_ratio']:.4f} of W8A8); "
        f"allocation written to {outcome.path}"
    )
    uncertain = uncertain_traces(outcome.scores)
    if uncertain:
        named = ", ".join(uncertain[:3]) + (", ..." if len(uncertain) > 3 else "")
        print(
            f"note: {len(uncertain)} of {len(outcome.scores)} layers have a trace within 2 "
            f"standard errors of 0 ({named}): their scores are noise; more "
            f"sensitivity.samples or sensitivity.batches narrow them"
        )
    latency = outcome.latency
    if latency is not None:
        widths = outcome.allocation.widths
        parts = ", ".join(f"{j.producer}>{j.consumer} {j.ms:.3f}" for j in latency.junctions)
        print(f"between layers, ms, charged once where either is float: {parts or 'none'}")
        between = latency.junction_cost(widths)
        layers = outcome.latency_ms - latency.fixed_ms - between
        print(
            f"latency: {latency.fixed_ms:.3f} ms for the rest of the model + {layers:.3f} ms in "
            f"the allocated layers + {between:.3f} ms between layers next to a float one = "
            f"{outcome.latency_ms:.3f} ms predicted (ONNX Runtime, batch 1, {latency.threads} "
            f"threads; the all-int8 model took {latency.model_int8_ms:.3f} ms, the all-float one "
            f"{latency.model_float_ms:.3f} ms, float times scaled by {latency.float_scale:.3f} "
            f"to meet it; measured in {latency.seconds:.1f} s)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
