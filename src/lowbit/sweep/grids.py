"""Unions of grids: the jobs of a study that one Cartesian product cannot describe.

Hydra's basic sweeper runs the Cartesian product of its ``params``. A study that compares
quantizers needs more than one product: the FP32 baseline once (it has no bits to sweep, and
``quantizer=fp32 quant.wbits=4`` is refused) next to every quantizer across bits. ``grids`` is a
list of such products; ``params`` and the command line's overrides apply to all of them (the
command line wins, as with the basic sweeper):

    hydra:
      sweeper:
        _target_: hydra_plugins.lowbit_sweepers.grids_sweeper.GridsSweeper   # hydra/sweeper=grids
        grids:
          - {quantizer: fp32}
          - {quantizer: "dorefa,pact", quant.wbits: "2,4,8"}

The sweeper itself is in ``hydra_plugins.lowbit_sweepers`` (Hydra takes sweepers from that
package only); ``lowbit.cli.preflight`` checks the same grids before any job starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def grid_override_lists(
    params: Mapping[str, Any] | None,
    grids: Sequence[Mapping[str, Any]] | None,
    arguments: Sequence[str],
) -> list[list[str]]:
    """The override list of each grid: shared params, then the grid's, then the command line."""
    shared = [f"{key}={value}" for key, value in (params or {}).items()]
    return [
        [*shared, *(f"{key}={value}" for key, value in grid.items()), *arguments]
        for grid in (grids or [{}])
    ]
