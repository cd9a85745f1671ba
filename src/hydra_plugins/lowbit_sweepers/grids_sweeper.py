"""lowbit's grids sweeper (hydra/sweeper=grids): Hydra's basic sweeper over a union of grids.

It lives in the ``hydra_plugins`` namespace package because Hydra instantiates sweepers only from
there. What the grids mean: ``lowbit.sweep.grids``. Everything but the list of jobs (batches,
the launcher, multirun.yaml, job numbering) is the basic sweeper's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from lowbit.hydra_compat import basic_sweeper
from lowbit.sweep.grids import grid_override_lists

BasicSweeper = basic_sweeper()  # when Hydra's plugin scan executes this module: see basic_sweeper


class GridsSweeper(BasicSweeper):
    """The basic sweeper over ``grids``: their jobs in order, each grid a Cartesian product."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: Mapping[str, Any] | None = None,
        grids: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=dict(params or {}))
        self.grids = [dict(grid) for grid in (grids or [{}])]
        self.arguments: list[str] = []

    def job_overrides(self, arguments: Sequence[str]) -> list[list[str]]:
        """Every job's overrides: each grid's product, grid after grid."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs: list[list[str]] = []
        for overrides in grid_override_lists(self.params, self.grids, arguments):
            (product,) = BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)
            jobs += product
        return jobs

    def sweep(self, arguments: list[str]) -> Any:
        self.arguments = list(arguments)
        return super().sweep(arguments)

    def split_arguments(self, overrides: Any, max_batch_size: int | None) -> list[list[list[str]]]:
        """The basic sweeper's one step that changes: batches of the grids' union, not of one
        product (``overrides``, the shared params and arguments parsed, are in every grid)."""
        jobs = self.job_overrides(self.arguments)
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))
