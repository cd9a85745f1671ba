"""What a person reads at the end of a run: one table of the final metrics and where files are."""

from __future__ import annotations

from typing import Any

# Metrics shown first, in this order; any others follow alphabetically.
HEADLINE = (
    "val/acc_best",
    "val/acc",
    "test/acc",
    "test/acc_top5",
    "val/map50_best",
    "val/map50",
    "val/map",
    "test/map50",
    "test/map",
    "model/params",
    "model/size_bytes",
    "model/size_fp32_bytes",
    "model/compression",
    "model/macs",
    "latency/ms",
    "latency/threads",
)


def format_value(key: str, value: Any) -> str:
    if isinstance(value, float) and key.endswith(
        ("acc", "acc_best", "acc_top5", "loss", "map", "map50", "map50_best")
    ):
        return f"{value:.4f}"
    if key.endswith(("bytes", "params", "macs")):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def wandb_where(wandb: dict[str, Any]) -> str:
    """Where the W&B run is: its URL, the offline folder to sync, or that it was switched off."""
    if wandb.get("mode") == "disabled":
        return "disabled (WANDB_MODE or logger.wandb.mode)"
    if wandb.get("url"):
        return wandb["url"]
    return f"offline; upload: wandb sync {wandb.get('dir')}"


def summary_lines(results: dict[str, Any]) -> list[str]:
    metrics = results.get("metrics", {})
    keys = [k for k in HEADLINE if k in metrics]
    keys += sorted(k for k in metrics if k not in HEADLINE and not k.startswith("train/"))
    rows = [(k, format_value(k, metrics[k])) for k in keys]
    rows.append(("status", results.get("status", "?")))
    rows.append(("run dir", results.get("run_dir", "")))
    wandb = results.get("wandb")
    if wandb:
        rows.append(("wandb", wandb_where(wandb)))
    width = max(len(k) for k, _ in rows)
    title = f"lowbit: {results.get('run_name') or 'run'} finished"
    return [title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows]


def print_summary(results: dict[str, Any]) -> None:
    from lowbit.distributed import is_global_zero

    if not is_global_zero():  # DDP: once, from the process that wrote results.json
        return
    print("\n" + "\n".join(summary_lines(results)), flush=True)
