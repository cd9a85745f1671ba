"""Per-layer map of a model as a run would build it: kind, W/A/G bits, parameters, MACs, bytes.

    python scripts/model_summary.py model=nin quantizer=dorefa quant.wbits=4
    python scripts/model_summary.py model=nin dataset=cifar100      # num_classes from the data

Composes the same configs as train.py (same groups, same overrides), builds the model for the
chosen dataset's classes and image size without loading any data, quantizes it, and prints the
table; the last line is one JSON object with ``params``, ``macs`` and ``size_bytes``.
"""

from __future__ import annotations

import json
import sys

import lowbit.config  # noqa: F401  (registers the config resolvers)
from lowbit.build import build_datamodule, build_quantized_model, quant_settings
from lowbit.cli import check_group_choices, compose, config_groups, fail
from lowbit.errors import ConfigError
from lowbit.measure.summary import format_table, summarize
from lowbit.overrides import hydra_error_line


def main(argv: list[str]) -> None:
    try:
        check_group_choices(argv, config_groups())
        try:
            cfg = compose("train", argv)
        except Exception as error:
            raise ConfigError(hydra_error_line(error)) from None
        datamodule = build_datamodule(cfg)
        model = build_quantized_model(cfg, datamodule)
        quant = quant_settings(cfg)
    except ConfigError as error:
        fail(str(error))
    rows, totals = summarize(model, datamodule.image_shape)
    print(
        f"{cfg.model._target_.rsplit('.', 1)[-1]} for {datamodule.name} "
        f"{'x'.join(map(str, datamodule.image_shape))}, {datamodule.num_classes} classes, "
        f"quantizer={quant['quantizer']}"
    )
    print("\n".join(format_table(rows, totals)))
    print(json.dumps(totals))


if __name__ == "__main__":
    main(sys.argv[1:])
