"""The allocation file: which weight width each layer gets, as ``scripts/allocate.py`` writes it
and ``quant.allocation=FILE`` trains it.

A YAML mapping whose ``overrides`` has the shape of ``quant.overrides`` (layer name ->
``{wbits: b}``), so it can also be pasted there, next to what produced it (quantizer, method,
budget, source run) and what was predicted (``size_bytes``, ``bops``,
``predicted_sensitivity``). No torch here: the command line checks the file before it imports
the training code (``lowbit.validation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit.bit_widths import check_bits
from lowbit.errors import ConfigError

FORMAT = "lowbit-allocation"
VERSION = 1
KEY = "quant.allocation"


@dataclass(frozen=True)
class Allocation:
    widths: dict[str, int]  # layer name -> weight bits
    quantizer: str
    path: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # method, budget, predictions

    def overrides(self) -> dict[str, dict[str, int]]:
        return {name: {"wbits": bits} for name, bits in self.widths.items()}

    def record(self) -> dict[str, Any]:
        """What results.json keeps of it."""
        return {
            "path": self.path,
            "quantizer": self.quantizer,
            "wbits": self.widths,
            **self.details,
        }


def write_allocation(path: Path, allocation: Allocation, comment: str = "") -> Path:
    body = {
        "format": FORMAT,
        "version": VERSION,
        "quantizer": allocation.quantizer,
        **allocation.details,
        "overrides": allocation.overrides(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return path


def read_allocation(value: Any) -> Allocation:
    """The allocation ``quant.allocation=value`` names; ConfigError with one line when it is
    missing, not YAML, or not an allocation file."""
    where = f"{KEY}={value}"
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: no such file; give a file that scripts/allocate.py wrote")
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        first = " ".join(str(error).split())[:120]
        raise ConfigError(f"{where}: not a readable YAML file ({first})") from None
    if not isinstance(body, Mapping) or body.get("format") != FORMAT:
        raise ConfigError(f"{where}: not an allocation file (no 'format: {FORMAT}')")
    if body.get("version") != VERSION:
        raise ConfigError(f"{where}: version {body.get('version')!r}, this lowbit reads {VERSION}")
    quantizer = body.get("quantizer")
    overrides = body.get("overrides")
    if not isinstance(quantizer, str) or not quantizer:
        raise ConfigError(f"{where}: 'quantizer' must name the method it was made for")
    if not isinstance(overrides, Mapping) or not overrides:
        raise ConfigError(f"{where}: 'overrides' must map layer names to {{wbits: bits}}")
    widths = {}
    for name, bits in overrides.items():
        if not isinstance(bits, Mapping) or set(bits) != {"wbits"}:
            raise ConfigError(f"{where}: layer {name!r} must have {{wbits: bits}}, got {bits!r}")
        widths[str(name)] = check_bits(f"{where}: {name}.wbits", bits["wbits"])
    details = {
        k: v for k, v in body.items() if k not in ("format", "version", "quantizer", "overrides")
    }
    return Allocation(widths, quantizer, str(path.resolve()), details)


def allocation_of(cfg: Mapping[str, Any]) -> Allocation | None:
    """The allocation a run's config names (``quant.allocation``), or None."""
    value = (cfg.get("quant") or {}).get("allocation")
    return None if value is None else read_allocation(value)


def check_fits_model(allocation: Allocation, model: Any) -> None:
    """Every layer the allocation names is a Conv2d/Linear layer of ``model``."""
    from lowbit.quant.convert import quantizable_layers

    names = {name for name, _ in quantizable_layers(model)}
    missing = [name for name in allocation.widths if name not in names]
    if missing:
        raise ConfigError(
            f"{KEY}={allocation.path} names {missing[0]!r}, which is not a Conv2d/Linear layer "
            f"of this model: it was made for another model; allocate for this one"
        )


def check_allocation(key: str, value: Any) -> None:
    """The schema's rule for ``quant.allocation`` (``lowbit.validation``): null or a valid file."""
    if value is not None:
        read_allocation(value)


def with_allocation(quant: Mapping[str, Any], allocation: Allocation) -> dict[str, Any]:
    """The ``quant`` settings with the allocation's widths applied after ``quant.overrides``
    (the allocation's wbits win; an override's abits/gbits for the same layer stay)."""
    if allocation.quantizer != quant.get("quantizer"):
        raise ConfigError(
            f"{KEY}={allocation.path} was made for quantizer={allocation.quantizer}, this run "
            f"uses quantizer={quant.get('quantizer')}: allocate again or pass "
            f"quantizer={allocation.quantizer}"
        )
    user = dict(quant.get("overrides") or {})
    merged = {pattern: bits for pattern, bits in user.items() if pattern not in allocation.widths}
    for name, bits in allocation.overrides().items():
        merged[name] = {**user.get(name, {}), **bits}
    return {**quant, "overrides": merged}


def quant_with_allocation(quant: Mapping[str, Any]) -> dict[str, Any]:
    """The ``quant`` node (plain dict) as ``quantize_model`` takes it: ``allocation`` read and
    applied as overrides, the key itself removed."""
    quant = dict(quant)
    path = quant.pop("allocation", None)
    return quant if path is None else with_allocation(quant, read_allocation(path))
