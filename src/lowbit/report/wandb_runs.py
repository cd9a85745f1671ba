"""Runs from the W&B API: the same RunRecords that results.json gives, for the online case.

Each lowbit run logs its whole config (``quant``, and ``model_name``/``dataset_name``) and its
final metrics and ``status`` as the W&B summary, so a W&B run maps onto a RunRecord field by
field; a sweep's runs share a W&B group, the sweep folder's name.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from lowbit.report.runs import RunRecord, as_int, run_order


def run_from_wandb(name: str, config: Mapping[str, Any], summary: Mapping[str, Any],
                   state: str | None = None) -> RunRecord:
    """A RunRecord from one W&B run's name, config and summary (``state`` if no status)."""
    quant = config.get("quant") or {}
    metrics = {k: v for k, v in summary.items()
               if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return RunRecord(
        name=name,
        status=str(summary.get("status") or state or "unknown"),
        model=config.get("model_name"),
        dataset=config.get("dataset_name"),
        quantizer=quant.get("quantizer") or config.get("quantizer"),
        wbits=as_int(quant.get("wbits")),
        abits=as_int(quant.get("abits")),
        gbits=as_int(quant.get("gbits")),
        metrics=metrics,
        run_dir=str(config.get("paths", {}).get("output_dir", "")),
    )


def runs_from_wandb(project: str, group: str, entity: str | None = None,
                    api: Any = None) -> list[RunRecord]:
    """The runs of one W&B group (one sweep), through the public API (needs credentials)."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    runs: Iterable[Any] = api.runs(path, filters={"group": group})
    records = [run_from_wandb(run.name, dict(run.config), dict(run.summary), run.state)
               for run in runs]
    return sorted(records, key=run_order)
