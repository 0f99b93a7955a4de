"""Evaluation metrics: success intervals, run summaries and cost-success frontiers.

Everything here is plain numpy and works on per-episode arrays or on lists of operating
points. Costs are in USD (mean cost per episode) unless a caller chooses another unit
consistently; successes are success rates (fractions in ``[0, 1]``; any non-negative score
works the same way).

Frontier conventions
--------------------
A method is described by its *operating points* ``(cost, success)``: one per configuration
that was evaluated (a budget, a threshold, a Lagrange target, a mixing probability...).
:func:`frontier_curve` turns them into a curve ``f(c)``, read as "the best success the
method achieves at a mean cost of at most ``c``":

1. **Pareto filter.** Dominated points are dropped (:func:`pareto_frontier`): a point is
   dominated when another has cost ``<=`` and success ``>=``, one of them strictly.
2. **Randomisation between policies.** Choosing, per episode and at random, between two
   evaluated policies with probabilities ``w`` and ``1 - w`` achieves exactly the convex
   combination of their mean costs and success rates. The achievable set is therefore the
   convex hull of the points, and ``f`` is its *upper concave hull*: the vertices are the
   Pareto points left after removing every point that lies on or below the chord of its
   neighbours, and ``f`` interpolates linearly between consecutive vertices.
3. **Above the most expensive vertex** ``f`` stays flat at the best success: a larger
   allowance can always be left unspent by running the best policy.
4. **Below the cheapest vertex** ``f`` is ``0``: the method offers no operating point at
   that cost or less, so it is credited with nothing (the maximum over an empty set is
   taken as zero success). At the cheapest vertex itself ``f`` equals its success, so ``f``
   is right-continuous with a single jump there. A method that wants credit at low cost
   must report a cheap operating point; in particular the always-cheap policy is *not*
   added implicitly. Pass it among the points if a router can fall back to it.

Points cheaper than the evaluation range still count: because ``f(c)`` is the best
success at cost ``<= c``, a point below ``cost_low`` lifts the curve over the range, both
directly (the flat part of rule 3) and through the chord to the next vertex (rule 2).
Points beyond ``cost_high`` likewise enter through the chord from the last vertex inside
the range. This matters because cost is not monotone in the share of expensive calls: a
cheap model that loops can cost more than an expensive one that finishes, and an abort
costs nothing further, so frontiers can reach below the always-cheap cost.

Frontier efficiency
-------------------
:func:`frontier_efficiency` integrates ``f`` over ``[cost_low, cost_high]`` (the mean costs
of always-cheap and always-expensive) for the method, the random-mix baseline and the
oracle, all three under the same conventions, and returns::

    (A_method - A_random) / (A_oracle - A_random)

so ``0`` is no better than mixing at random and ``1`` is the clairvoyant limit. The
integral is exact: ``f`` is linear between consecutive knots (the hull vertices inside the
range and the two range ends), and the integral of a linear piece is its length times its
value at the midpoint, which also ignores the single-point jump of rule 4. No grid is
involved. The result is not clipped: it is negative when the method's area is below the
random mix's and above ``1`` when it beats the oracle's (possible when the method's points
are measured on other episodes, or the oracle's set of points is sparse). A
:class:`ValueError` is raised when the oracle's area does not exceed the random mix's,
since the ratio is then undefined or meaningless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "Frontier",
    "dominates_at_matched_cost",
    "frontier_curve",
    "frontier_efficiency",
    "frontier_gap",
    "pareto_frontier",
    "success_interval",
    "summarize",
]


# --------------------------------------------------------------------------------------
# Success interval and run summary
# --------------------------------------------------------------------------------------


def success_interval(
    successes: float, n: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Wilson score interval for a success rate.

    Args:
        successes: number of successful episodes, ``0 <= successes <= n``.
        n: number of episodes, at least 1.
        confidence: two-sided confidence level in ``(0, 1)``.

    Returns:
        ``(low, high)``: the interval's bounds as success fractions in ``[0, 1]``.

    Raises:
        ValueError: if ``n < 1``, ``successes`` is outside ``[0, n]`` or ``confidence`` is
            outside ``(0, 1)``.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not math.isfinite(successes) or not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    z2 = z * z
    p = successes / n
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def _episode_array(name: str, values: Any, n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} episodes, expected {n}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative")
    return arr


def _flag_array(name: str, values: Any, n: int) -> np.ndarray:
    arr = _episode_array(name, values, n)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold booleans (0 or 1) per episode")
    return arr


def summarize(
    success: Any,
    cost: Any,
    expensive_calls: Any,
    calls: Any,
    overspent: Any,
    bankrupt: Any,
    steps: Any,
    expensive_cost_ref: float | None = None,
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """Summarize a batch of evaluation episodes.

    Every argument but the last two is a 1-D array with one entry per episode.

    Args:
        success: whether the episode succeeded (bool or 0/1).
        cost: money spent in the episode, USD.
        expensive_calls: number of calls made to the expensive model(s).
        calls: number of model calls in total.
        overspent: whether the episode spent more than its budget (bool or 0/1).
        bankrupt: whether the episode ended because no model was affordable.
        steps: number of steps the episode lasted.
        expensive_cost_ref: mean cost per episode of the always-expensive policy, USD, on
            the same tasks; when given, ``relative_cost`` is reported against it.
        confidence: confidence level of the Wilson interval on the success rate.

    Returns:
        A JSON-serialisable dict with the keys

        - ``episodes`` (int): number of episodes;
        - ``successes`` (int): number of successful episodes;
        - ``success`` (float): success rate, a fraction in ``[0, 1]``;
        - ``success_low``, ``success_high`` (float): Wilson interval on the success rate;
        - ``mean_cost`` (float): mean cost per episode, USD;
        - ``relative_cost`` (float or None): ``mean_cost / expensive_cost_ref``, a ratio;
          ``None`` when no reference is given;
        - ``expensive_share`` (float or None): total expensive calls over total calls, a
          fraction; ``None`` when no call was made at all;
        - ``overspends`` (int): number of episodes that overspent their budget;
        - ``bankruptcies`` (int): number of episodes that ended bankrupt;
        - ``mean_steps`` (float): mean episode length, steps.

    Raises:
        ValueError: on empty or mismatched arrays, non-finite or negative values, flags
            that are not 0/1, more expensive calls than calls, or a non-positive reference.
    """
    succ = _episode_array("success", success, None)
    n = succ.shape[0]
    if n == 0:
        raise ValueError("summarize needs at least one episode")
    succ = _flag_array("success", succ, n)
    cost_arr = _episode_array("cost", cost, n)
    exp_arr = _episode_array("expensive_calls", expensive_calls, n)
    calls_arr = _episode_array("calls", calls, n)
    if np.any(exp_arr > calls_arr):
        raise ValueError("expensive_calls cannot exceed calls in any episode")
    over = _flag_array("overspent", overspent, n)
    bank = _flag_array("bankrupt", bankrupt, n)
    steps_arr = _episode_array("steps", steps, n)

    n_success = int(succ.sum())
    low, high = success_interval(n_success, n, confidence)
    mean_cost = float(cost_arr.mean())
    relative_cost: float | None = None
    if expensive_cost_ref is not None:
        ref = float(expensive_cost_ref)
        if not math.isfinite(ref) or ref <= 0.0:
            raise ValueError(f"expensive_cost_ref must be positive, got {ref!r}")
        relative_cost = mean_cost / ref
    total_calls = float(calls_arr.sum())
    share = float(exp_arr.sum()) / total_calls if total_calls > 0 else None
    return {
        "episodes": int(n),
        "successes": n_success,
        "success": n_success / n,
        "success_low": low,
        "success_high": high,
        "mean_cost": mean_cost,
        "relative_cost": relative_cost,
        "expensive_share": share,
        "overspends": int(over.sum()),
        "bankruptcies": int(bank.sum()),
        "mean_steps": float(steps_arr.mean()),
    }


# --------------------------------------------------------------------------------------
# Frontiers
# --------------------------------------------------------------------------------------


def _points(costs: Any, successes: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(costs, dtype=float).reshape(-1)
    s = np.asarray(successes, dtype=float).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"costs and successes differ in length: {c.size} != {s.size}")
    if c.size == 0:
        raise ValueError("a frontier needs at least one point")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
        raise ValueError("costs and successes must be finite")
    if np.any(s < 0):
        raise ValueError("successes must be non-negative")
    return c, s


def pareto_frontier(costs: Any, successes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated operating points (lower cost and higher success are better).

    A point is dominated when another point has cost ``<=`` and success ``>=`` with at
    least one inequality strict. Duplicates are kept once.

    Args:
        costs: mean cost of each operating point, USD.
        successes: success rate of each operating point.

    Returns:
        ``(costs, successes)``: float arrays of the non-dominated points sorted by cost;
        both are strictly increasing. These are the corners of the upper-left staircase
        and the inputs of the hull in :func:`frontier_curve`.
    """
    c, s = _points(costs, successes)
    order = np.lexsort((-s, c))  # by cost ascending, then success descending
    keep_c: list[float] = []
    keep_s: list[float] = []
    for i in order:
        if not keep_s or s[i] > keep_s[-1]:
            keep_c.append(float(c[i]))
            keep_s.append(float(s[i]))
    return np.asarray(keep_c), np.asarray(keep_s)


def _upper_hull(c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper concave hull of points strictly increasing in both coordinates."""
    hc: list[float] = []
    hs: list[float] = []
    for x, y in zip(c.tolist(), s.tolist(), strict=True):
        while len(hc) >= 2:
            cross = (hc[-1] - hc[-2]) * (y - hs[-2]) - (hs[-1] - hs[-2]) * (x - hc[-2])
            if cross < 0:  # strict right turn: the middle vertex stays
                break
            hc.pop()
            hs.pop()
        hc.append(x)
        hs.append(y)
    return np.asarray(hc), np.asarray(hs)


@dataclass(frozen=True, eq=False)
class Frontier:
    """A method's success-vs-cost frontier under the conventions of this module.

    Build it with :func:`frontier_curve`. Calling it with a cost (USD, scalar or array)
    returns the best success achievable at that mean cost or less: ``0`` below the
    cheapest vertex, linear interpolation between vertices, flat after the last one.

    Attributes:
        costs: costs of the hull vertices, USD, strictly increasing.
        successes: successes of the hull vertices, strictly increasing and concave in cost.
    """

    costs: np.ndarray
    successes: np.ndarray

    def __post_init__(self) -> None:
        c = np.array(self.costs, dtype=float).reshape(-1)
        s = np.array(self.successes, dtype=float).reshape(-1)
        if c.size == 0 or c.shape != s.shape:
            raise ValueError("a Frontier needs equal-length, non-empty costs and successes")
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
            raise ValueError("Frontier costs and successes must be finite")
        if np.any(np.diff(c) <= 0) or np.any(np.diff(s) <= 0) or s[0] < 0:
            raise ValueError(
                "Frontier vertices must be strictly increasing in cost and success, with "
                "non-negative success; build one with frontier_curve"
            )
        c.setflags(write=False)
        s.setflags(write=False)
        object.__setattr__(self, "costs", c)
        object.__setattr__(self, "successes", s)

    @property
    def cheapest(self) -> float:
        """Cost of the cheapest operating point, USD; the curve is 0 below it."""
        return float(self.costs[0])

    @property
    def best(self) -> float:
        """Highest success on the frontier, reached at :attr:`most_expensive`."""
        return float(self.successes[-1])

    @property
    def most_expensive(self) -> float:
        """Cost of the last vertex, USD; the curve is flat above it."""
        return float(self.costs[-1])

    def __call__(self, cost: Any) -> np.ndarray | float:
        """Best success at mean cost ``<= cost``; a float for a scalar, else an array."""
        c = np.asarray(cost, dtype=float)
        value = np.where(c < self.costs[0], 0.0, np.interp(c, self.costs, self.successes))
        return float(value) if value.ndim == 0 else value

    def area(self, cost_low: float, cost_high: float) -> float:
        """Exact integral of the curve over ``[cost_low, cost_high]``.

        Returns:
            The area in success times USD (success fraction times cost unit).
        """
        low, high = _cost_range(cost_low, cost_high)
        inner = self.costs[(self.costs > low) & (self.costs < high)]
        knots = np.concatenate(([low], inner, [high]))
        mids = 0.5 * (knots[1:] + knots[:-1])
        return float(np.sum(np.diff(knots) * np.asarray(self(mids))))


def frontier_curve(costs: Any, successes: Any) -> Frontier:
    """The frontier of a set of operating points as a callable curve.

    Args:
        costs: mean cost of each operating point, USD.
        successes: success rate of each operating point (non-negative).

    Returns:
        A :class:`Frontier`: calling it with a cost gives the best success achievable at
        that cost or less (the upper concave hull of the points, 0 below the cheapest
        point, flat above the most expensive hull vertex; see the module docstring).
    """
    pc, ps = pareto_frontier(costs, successes)
    hc, hs = _upper_hull(pc, ps)
    return Frontier(costs=hc, successes=hs)


Points = Frontier | Sequence[Any] | np.ndarray


def _as_frontier(name: str, points: Points) -> Frontier:
    if isinstance(points, Frontier):
        return points
    try:
        n_parts = len(points)
    except TypeError:
        n_parts = -1
    if n_parts != 2:
        raise ValueError(
            f"{name} must be a Frontier or a pair (costs, successes) of equal-length arrays"
        )
    costs, successes = points
    return frontier_curve(costs, successes)


def _cost_range(cost_low: float, cost_high: float) -> tuple[float, float]:
    low, high = float(cost_low), float(cost_high)
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ValueError(
            f"need finite cost_low < cost_high, got cost_low={cost_low!r}, "
            f"cost_high={cost_high!r}"
        )
    return low, high


def frontier_efficiency(
    method_points: Points,
    random_points: Points,
    oracle_points: Points,
    cost_low: float,
    cost_high: float,
) -> float:
    """Frontier efficiency of a method: 0 = random mix, 1 = oracle.

    Each of the three point sets is a pair ``(costs, successes)`` of equal-length arrays
    (costs in USD) or a :class:`Frontier`. The three frontiers are integrated exactly over
    ``[cost_low, cost_high]`` under the conventions of the module docstring (points outside
    the range still shape the curve inside it; a method is credited 0 left of its cheapest
    point).

    Args:
        method_points: operating points of the method under evaluation.
        random_points: operating points of the random-mix baseline (the sweep over the
            probability of calling the expensive model).
        oracle_points: operating points of the oracle.
        cost_low: lower end of the range, normally the always-cheap mean cost, USD.
        cost_high: upper end, normally the always-expensive mean cost, USD.

    Returns:
        ``(A_method - A_random) / (A_oracle - A_random)``, a unitless float. It is not
        clipped: below 0 when the method is worse than the random mix, above 1 when it
        beats the oracle's frontier.

    Raises:
        ValueError: if the range is empty or not finite, a point set is malformed, or the
            oracle's area does not exceed the random mix's (the ratio is undefined).
    """
    low, high = _cost_range(cost_low, cost_high)
    a_method = _as_frontier("method_points", method_points).area(low, high)
    a_random = _as_frontier("random_points", random_points).area(low, high)
    a_oracle = _as_frontier("oracle_points", oracle_points).area(low, high)
    denom = a_oracle - a_random
    if not denom > 1e-12 * (high - low):
        raise ValueError(
            "frontier efficiency is undefined: the oracle frontier's area "
            f"({a_oracle:.6g}) does not exceed the random-mix frontier's ({a_random:.6g}) "
            f"over [{low:.6g}, {high:.6g}]"
        )
    return (a_method - a_random) / denom


def frontier_gap(method_points: Points, other_points: Points, costs: Any = None) -> float:
    """Smallest margin of a method's frontier over another's at matched costs.

    Args:
        method_points: the method's operating points, a pair ``(costs, successes)`` or a
            :class:`Frontier`.
        other_points: the other method's (e.g. a baseline's), in the same form.
        costs: the costs (USD) at which to compare. By default every cost at which both
            methods operate, i.e. ``c >= max(cheapest of each)`` (above its last vertex a
            frontier stays flat, so the range is unbounded above). Both curves are
            piecewise linear there, so the minimum is taken exactly over their vertices
            and the range start; no grid is involved. Given costs are evaluated with the
            module's conventions, including the 0 below a method's cheapest point.

    Returns:
        ``min over c of f_method(c) - f_other(c)``, in success units: positive when the
        method is strictly above the other everywhere compared, negative where it is
        below.
    """
    f_m = _as_frontier("method_points", method_points)
    f_o = _as_frontier("other_points", other_points)
    if costs is None:
        start = max(f_m.cheapest, f_o.cheapest)
        knots = np.concatenate(([start], f_m.costs, f_o.costs))
        grid = knots[knots >= start]
    else:
        grid = np.asarray(costs, dtype=float).reshape(-1)
        if grid.size == 0 or not np.all(np.isfinite(grid)):
            raise ValueError("costs must be a non-empty array of finite values")
    return float(np.min(np.asarray(f_m(grid)) - np.asarray(f_o(grid))))


def dominates_at_matched_cost(
    method_points: Points, other_points: Points, costs: Any = None, margin: float = 0.0
) -> bool:
    """Whether a method's frontier is at least ``margin`` above another's at matched costs.

    Args:
        method_points: the method's operating points (see :func:`frontier_gap`).
        other_points: the other method's operating points.
        costs: costs at which to compare, USD; by default all costs both methods reach.
        margin: required lead in success units; ``0`` accepts ties, a positive value asks
            for a strict lead, a small negative value tolerates noise.

    Returns:
        ``True`` when ``frontier_gap(method_points, other_points, costs) >= margin``.
    """
    return frontier_gap(method_points, other_points, costs) >= margin
