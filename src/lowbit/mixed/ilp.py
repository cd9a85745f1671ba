"""The exact allocation: one width per layer, the least total sensitivity within every budget.

An integer linear program (HAWQ-v3): a binary x[i, b] per layer i and candidate width b,
sum_b x[i, b] = 1 for each layer, sum_i,b cost_k[i, b] x[i, b] <= limit_k for each budget k,
minimise sum_i,b sensitivity[i, b] x[i, b]. scipy's ``milp`` (HiGHS) solves it to optimality
(relative gap 0), so the answer is the optimum, not a heuristic's.

A ``Link`` is a cost two layers' choices incur together, once: a binary y[l] >= x[i, b] for
each of its (layer, width) pairs, y[l] charged ``costs`` in the budgets and nothing in the
objective. Where y[l] costs something it is 1 exactly when one of its pairs is chosen; where
nothing, it has no effect. ``lowbit.mixed.latency``'s junctions are links: the ops between two
layers run slower when either layer is float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


@dataclass(frozen=True)
class Option:
    """One width for one layer: its sensitivity and its cost under each budget, by name."""

    width: int
    sensitivity: float
    costs: Mapping[str, float]


@dataclass(frozen=True)
class Link:
    """A cost charged once when any of ``when`` (layer name, width) is chosen."""

    when: tuple[tuple[str, int], ...]
    costs: Mapping[str, float]


class Infeasible(ValueError):
    """No allocation fits ``budget``: even the cheapest costs ``smallest``."""

    def __init__(self, budget: str, smallest: float, limit: float):
        super().__init__(f"{budget}: the cheapest allocation costs {smallest:g} > {limit:g}")
        self.budget, self.smallest, self.limit = budget, smallest, limit


class Program:
    """The variables and the constraints every allocation meets: one option per layer, each
    link at least each of its pairs (module docstring)."""

    def __init__(self, options: Mapping[str, list[Option]], links: Sequence[Link] = ()):
        self.options, self.links = options, list(links)
        self.flat = [(name, option) for name, layer in options.items() for option in layer]
        index = {(name, option.width): i for i, (name, option) in enumerate(self.flat)}
        size = len(self.flat) + len(self.links)
        one_each = np.zeros((len(options), size))
        for i, (name, _) in enumerate(self.flat):
            one_each[list(options).index(name), i] = 1
        self.constraints = [LinearConstraint(one_each, 1, 1)]
        for j, link in enumerate(self.links):
            for pair in link.when:
                row = np.zeros((1, size))
                row[0, len(self.flat) + j], row[0, index[pair]] = 1, -1
                self.constraints.append(LinearConstraint(row, 0, np.inf))

    def costs(self, budget: str) -> np.ndarray:
        return np.array(
            [option.costs.get(budget, 0.0) for _, option in self.flat]
            + [link.costs.get(budget, 0.0) for link in self.links],
            dtype=float,
        )

    def solve(self, objective: np.ndarray, limits: Mapping[str, float]) -> np.ndarray | None:
        """The binaries minimising ``objective`` within ``limits``; None if none meet them."""
        constraints = list(self.constraints)
        for budget, limit in limits.items():
            constraints.append(LinearConstraint(self.costs(budget)[None], -np.inf, limit))
        scale = float(np.abs(objective).max()) or 1.0  # HiGHS's tolerances are absolute
        result = milp(
            objective / scale,
            integrality=np.ones(len(objective)),
            bounds=Bounds(0, 1),
            constraints=constraints,
            options={"mip_rel_gap": 0},
        )
        return result.x

    def chosen(self, x: np.ndarray) -> dict[str, Option]:
        picked = {name: option for (name, option), v in zip(self.flat, x) if v > 0.5}
        return {name: picked[name] for name in self.options}


def cheapest(options: Mapping[str, list[Option]], budget: str, links: Sequence[Link] = ()) -> float:
    """The least total cost under ``budget``, links included: every layer at its cheapest
    option where no link costs anything under it, else the least of the program."""
    if not any(link.costs.get(budget, 0.0) for link in links):
        return sum(min(option.costs[budget] for option in layer) for layer in options.values())
    program = Program(options, links)
    x = program.solve(program.costs(budget), {})
    return float(program.costs(budget) @ np.round(x))


def solve(
    options: Mapping[str, list[Option]],
    limits: Mapping[str, float],
    links: Sequence[Link] = (),
) -> dict[str, Option]:
    """The option chosen for each layer; Infeasible (the first budget that no allocation meets)
    when there is none. ``limits`` by budget name, for the costs of ``options`` and ``links``
    alone."""
    for budget, limit in limits.items():
        smallest = cheapest(options, budget, links)
        if smallest > limit:
            raise Infeasible(budget, smallest, limit)
    program = Program(options, links)
    sensitivity = np.array([option.sensitivity for _, option in program.flat], dtype=float)
    x = program.solve(np.concatenate([sensitivity, np.zeros(len(program.links))]), limits)
    if x is None:  # every budget alone is met (checked above), so they clash together
        raise Infeasible(" and ".join(limits), float("nan"), float("nan"))
    return program.chosen(x)


def total(
    chosen: Mapping[str, Option], budget: str | None = None, links: Sequence[Link] = ()
) -> float:
    """The allocation's total sensitivity, or its total cost under ``budget`` with the links
    its choices incur."""
    if budget is None:
        return sum(option.sensitivity for option in chosen.values())
    pairs = {(name, option.width) for name, option in chosen.items()}
    incurred = sum(link.costs.get(budget, 0.0) for link in links if pairs & set(link.when))
    return sum(option.costs[budget] for option in chosen.values()) + incurred
