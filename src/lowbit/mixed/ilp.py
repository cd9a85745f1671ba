"""The exact allocation: one width per layer, the least total sensitivity within every budget.

An integer linear program (HAWQ-v3): a binary x[i, b] per layer i and candidate width b,
sum_b x[i, b] = 1 for each layer, sum_i,b cost_k[i, b] x[i, b] <= limit_k for each budget k,
minimise sum_i,b sensitivity[i, b] x[i, b]. scipy's ``milp`` (HiGHS) solves it to optimality
(relative gap 0), so the answer is the optimum, not a heuristic's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


@dataclass(frozen=True)
class Option:
    """One width for one layer: its sensitivity and its cost under each budget, by name."""

    width: int
    sensitivity: float
    costs: Mapping[str, float]


class Infeasible(ValueError):
    """No allocation fits ``budget``: even the cheapest costs ``smallest``."""

    def __init__(self, budget: str, smallest: float, limit: float):
        super().__init__(f"{budget}: the cheapest allocation costs {smallest:g} > {limit:g}")
        self.budget, self.smallest, self.limit = budget, smallest, limit


def cheapest(options: Mapping[str, list[Option]], budget: str) -> float:
    """The least total cost under ``budget``: every layer at its cheapest option."""
    return sum(min(option.costs[budget] for option in layer) for layer in options.values())


def solve(options: Mapping[str, list[Option]], limits: Mapping[str, float]) -> dict[str, Option]:
    """The option chosen for each layer; Infeasible (the first budget that no allocation meets)
    when there is none. ``limits`` by budget name, for the costs of ``options`` alone."""
    for budget, limit in limits.items():
        smallest = cheapest(options, budget)
        if smallest > limit:
            raise Infeasible(budget, smallest, limit)
    flat = [(name, option) for name, layer in options.items() for option in layer]
    sensitivity = np.array([option.sensitivity for _, option in flat], dtype=float)
    scale = float(np.abs(sensitivity).max()) or 1.0  # HiGHS's tolerances are absolute
    one_each = np.array([[float(n == name) for n, _ in flat] for name in options])
    constraints = [LinearConstraint(one_each, 1, 1)]
    for budget, limit in limits.items():
        row = np.array([[option.costs[budget] for _, option in flat]], dtype=float)
        constraints.append(LinearConstraint(row, -np.inf, limit))
    result = milp(
        sensitivity / scale,
        integrality=np.ones(len(flat)),
        bounds=Bounds(0, 1),
        constraints=constraints,
        options={"mip_rel_gap": 0},
    )
    if result.x is None:  # every budget alone is met (checked above), so they clash together
        raise Infeasible(" and ".join(limits), float("nan"), float("nan"))
    chosen = {name: option for (name, option), x in zip(flat, result.x) if x > 0.5}
    return {name: chosen[name] for name in options}


def total(chosen: Mapping[str, Option], budget: str | None = None) -> float:
    """The allocation's total sensitivity, or its total cost under ``budget``."""
    if budget is None:
        return sum(option.sensitivity for option in chosen.values())
    return sum(option.costs[budget] for option in chosen.values())
