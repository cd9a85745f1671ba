"""Runs from the W&B API: the same RunRecords that results.json gives, and the two merged.

Each lowbit run logs its whole config (``quant``, ``seed``, and ``model_name``/``dataset_name``)
and, as its very last step, its final metrics and ``status`` as the W&B summary, so a W&B run
maps onto a RunRecord field by field; a sweep's runs share a W&B group, the sweep folder's name.
A run whose summary has no ``status`` is incomplete in W&B (still running, crashed, or an offline
run only partly synced): ``merge_runs`` then takes the run from its local results.json.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lowbit.report.runs import RunRecord, arithmetic_settings, as_int, run_order

WANDB_SOURCE, WANDB_INCOMPLETE = "W&B", "W&B (incomplete)"


def run_from_wandb(
    name: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    state: str | None = None,
    run_id: str | None = None,
) -> RunRecord:
    """A RunRecord from one W&B run's name, config and summary (``state`` if no status)."""
    quant = config.get("quant") or {}
    metrics = {
        k: v
        for k, v in summary.items()
        if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
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
        run_dir=str((config.get("paths") or {}).get("output_dir", "")),
        seed=as_int(config.get("seed")),
        settings={**quant, **arithmetic_settings(quant.get("quantizer"), config.get("arithmetic"))},
        run_id=run_id,
        source=WANDB_SOURCE if summary.get("status") else WANDB_INCOMPLETE,
    )


def runs_from_wandb(
    project: str, group: str, entity: str | None = None, api: Any = None
) -> list[RunRecord]:
    """The runs of one W&B group (one sweep), through the public API (needs credentials)."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    runs: Iterable[Any] = api.runs(path, filters={"group": group})
    records = [
        run_from_wandb(
            run.name, dict(run.config), dict(run.summary), run.state, getattr(run, "id", None)
        )
        for run in runs
    ]
    return sorted(records, key=run_order)


def same_dir(path: str) -> str:
    return os.path.normpath(os.path.abspath(path)) if path else ""


def merge_runs(local: Sequence[RunRecord], remote: Sequence[RunRecord]) -> list[RunRecord]:
    """One record per run, in job order: W&B's where W&B has the run complete, the local
    results.json's otherwise. A W&B run and a results.json are the same run when the W&B run id
    (results.json's ``wandb.id``) or the run folder match; a run only W&B knows is kept as it is
    there, complete or not, so that no run is hidden."""
    by_id = {r.run_id: r for r in remote if r.run_id}
    by_dir = {same_dir(r.run_dir): r for r in remote if r.run_dir}
    merged, matched = [], set()
    for run in local:
        twin = by_id.get(run.run_id) if run.run_id else None
        if twin is None and run.run_dir:
            twin = by_dir.get(same_dir(run.run_dir))
        if twin is not None:
            matched.add(id(twin))
        merged.append(twin if twin is not None and twin.source == WANDB_SOURCE else run)
    merged += [r for r in remote if id(r) not in matched]
    return sorted(merged, key=run_order)
