"""Tests of the evaluation metrics: Wilson interval, summary, frontiers, efficiency."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.metrics import (
    Frontier,
    dominates_at_matched_cost,
    frontier_curve,
    frontier_efficiency,
    frontier_gap,
    pareto_frontier,
    success_interval,
    summarize,
)

# Reference frontiers over the cost range [1, 3] used by the hand-computed cases.
LOW, HIGH = 1.0, 3.0
RANDOM = ([1.0, 3.0], [0.2, 0.6])  # area 0.8
ORACLE = ([1.0, 3.0], [0.6, 1.0])  # area 1.6


# --------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------


def test_wilson_known_value():
    low, high = success_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-5)
    assert high == pytest.approx(0.9433, abs=5e-5)


def test_wilson_edges():
    low, high = success_interval(0, 10)
    assert low == 0.0
    # z^2 / (n + z^2) with z = 1.959964
    assert high == pytest.approx(1.959964**2 / (10 + 1.959964**2), rel=1e-6)
    assert success_interval(10, 10)[1] == 1.0


def test_wilson_wider_at_higher_confidence():
    lo95, hi95 = success_interval(30, 50, 0.95)
    lo99, hi99 = success_interval(30, 50, 0.99)
    assert lo99 < lo95 < 0.6 < hi95 < hi99


@pytest.mark.parametrize(
    ("successes", "n", "confidence"),
    [(1, 0, 0.95), (-1, 10, 0.95), (11, 10, 0.95), (5, 10, 1.0), (5, 10, 0.0)],
)
def test_wilson_rejects_bad_input(successes, n, confidence):
    with pytest.raises(ValueError):
        success_interval(successes, n, confidence)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_estimate_and_is_symmetric(sn):
    s, n = sn
    low, high = success_interval(s, n)
    assert 0.0 <= low <= s / n <= high <= 1.0
    low_f, high_f = success_interval(n - s, n)
    assert low == pytest.approx(1.0 - high_f, abs=1e-12)
    assert high == pytest.approx(1.0 - low_f, abs=1e-12)


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def test_summarize_hand_case():
    out = summarize(
        success=[True, False, True, True],
        cost=[0.10, 0.30, 0.20, 0.40],
        expensive_calls=[1, 0, 2, 3],
        calls=[4, 5, 4, 7],
        overspent=[0, 0, 0, 0],
        bankrupt=[False, True, False, False],
        steps=[4, 5, 4, 7],
        expensive_cost_ref=0.5,
    )
    assert set(out) == {
        "episodes",
        "successes",
        "success",
        "success_low",
        "success_high",
        "mean_cost",
        "relative_cost",
        "expensive_share",
        "overspends",
        "bankruptcies",
        "mean_steps",
    }
    assert out["episodes"] == 4
    assert out["successes"] == 3
    assert out["success"] == 0.75
    assert (out["success_low"], out["success_high"]) == success_interval(3, 4)
    assert out["mean_cost"] == pytest.approx(0.25)
    assert out["relative_cost"] == pytest.approx(0.5)
    assert out["expensive_share"] == pytest.approx(6 / 20)
    assert out["overspends"] == 0
    assert out["bankruptcies"] == 1
    assert out["mean_steps"] == pytest.approx(5.0)
    json.dumps(out)  # plain Python types only


def test_summarize_without_reference_or_calls():
    out = summarize(
        success=np.array([0, 0]),
        cost=np.zeros(2),
        expensive_calls=np.zeros(2),
        calls=np.zeros(2),
        overspent=np.array([1, 0]),
        bankrupt=np.zeros(2),
        steps=np.array([1, 1]),
    )
    assert out["relative_cost"] is None
    assert out["expensive_share"] is None
    assert out["overspends"] == 1
    assert out["success_low"] == 0.0


@pytest.mark.parametrize(
    "change",
    [
        {"success": []},
        {"success": [1, 0, 1]},
        {"success": [2, 0]},
        {"cost": [0.1, np.nan]},
        {"cost": [0.1, -0.1]},
        {"expensive_calls": [5, 0]},
        {"expensive_cost_ref": 0.0},
    ],
)
def test_summarize_rejects_bad_input(change):
    args = {
        "success": [1, 0],
        "cost": [0.1, 0.2],
        "expensive_calls": [1, 0],
        "calls": [2, 3],
        "overspent": [0, 0],
        "bankrupt": [0, 0],
        "steps": [2, 3],
    }
    args.update(change)
    with pytest.raises(ValueError):
        summarize(**args)


# --------------------------------------------------------------------------------------
# Pareto filter and frontier curve
# --------------------------------------------------------------------------------------


def test_pareto_frontier_filters_and_sorts():
    costs = [1.0, 2.0, 2.0, 3.0, 0.5, 1.0, 4.0]
    succ = [0.5, 0.4, 0.7, 0.7, 0.1, 0.5, 0.9]
    pc, ps = pareto_frontier(costs, succ)
    np.testing.assert_array_equal(pc, [0.5, 1.0, 2.0, 4.0])
    np.testing.assert_array_equal(ps, [0.1, 0.5, 0.7, 0.9])


def test_frontier_curve_hull_and_extensions():
    # (2, 0.3) lies below the chord from (1, 0.2) to (3, 0.8): randomising between the
    # two outer policies beats it, so it is not a vertex.
    f = frontier_curve([1.0, 2.0, 3.0], [0.2, 0.3, 0.8])
    np.testing.assert_array_equal(f.costs, [1.0, 3.0])
    np.testing.assert_array_equal(f.successes, [0.2, 0.8])
    assert f(2.0) == pytest.approx(0.5)
    assert f(0.999) == 0.0  # below the cheapest point: nothing is credited
    assert f(1.0) == 0.2  # right-continuous at the cheapest point
    assert f(10.0) == 0.8  # flat above the most expensive point
    np.testing.assert_allclose(f(np.array([0.0, 1.5, 3.0])), [0.0, 0.35, 0.8])
    assert (f.cheapest, f.most_expensive, f.best) == (1.0, 3.0, 0.8)


def test_frontier_curve_drops_collinear_points():
    f = frontier_curve([1.0, 2.0, 3.0], [0.2, 0.5, 0.8])
    np.testing.assert_array_equal(f.costs, [1.0, 3.0])
    assert f(2.0) == pytest.approx(0.5)


def test_frontier_area_hand_case():
    # Rises linearly 0.2 -> 0.8 over [1, 2] (area 0.5), flat 0.8 over [2, 3] (area 0.8).
    f = frontier_curve([1.0, 2.0, 3.0], [0.2, 0.8, 0.8])
    assert f.area(1.0, 3.0) == pytest.approx(1.3)
    # The jump at the cheapest point is integrated exactly: 0 over [0, 1] adds nothing.
    assert f.area(0.0, 3.0) == pytest.approx(1.3)


@pytest.mark.parametrize(
    ("costs", "successes"),
    [([], []), ([1.0], [0.5, 0.6]), ([1.0, np.inf], [0.1, 0.2]), ([1.0], [-0.1])],
)
def test_frontier_curve_rejects_bad_points(costs, successes):
    with pytest.raises(ValueError):
        frontier_curve(costs, successes)


def test_frontier_rejects_non_hull_vertices():
    with pytest.raises(ValueError):
        Frontier(costs=np.array([1.0, 2.0]), successes=np.array([0.5, 0.4]))


# --------------------------------------------------------------------------------------
# Frontier efficiency
# --------------------------------------------------------------------------------------


def test_efficiency_of_references_is_exactly_zero_and_one():
    assert frontier_efficiency(RANDOM, RANDOM, ORACLE, LOW, HIGH) == 0.0
    assert frontier_efficiency(ORACLE, RANDOM, ORACLE, LOW, HIGH) == 1.0


def test_efficiency_hand_cases():
    halfway = ([1.0, 3.0], [0.4, 0.8])  # area 1.2
    assert frontier_efficiency(halfway, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(0.5)
    bend = ([1.0, 2.0, 3.0], [0.2, 0.8, 0.8])  # area 1.3
    assert frontier_efficiency(bend, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(0.625)


def test_efficiency_accepts_frontier_objects():
    eff = frontier_efficiency(
        frontier_curve([1.0, 3.0], [0.4, 0.8]),
        frontier_curve(*RANDOM),
        frontier_curve(*ORACLE),
        LOW,
        HIGH,
    )
    assert eff == pytest.approx(0.5)


def test_points_below_cost_low_lift_the_curve():
    # A single point cheaper than always-cheap: flat 0.5 over [1, 3], area 1.0.
    cheap_only = ([0.5], [0.5])
    assert frontier_efficiency(cheap_only, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(0.25)
    # The chord from (0.5, 0.6) to (3, 1.0) is at 0.68 at cost 1: area (0.68 + 1) = 1.68,
    # efficiency 1.1, which is not clipped.
    below = ([0.5, 3.0], [0.6, 1.0])
    assert frontier_efficiency(below, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(1.1)


def test_points_above_cost_high_enter_through_the_chord():
    # The chord from (1, 0.2) to (5, 1.0) passes through (3, 0.6): the random line.
    beyond = ([1.0, 5.0], [0.2, 1.0])
    assert frontier_efficiency(beyond, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(0.0)


def test_non_spanning_frontier_gets_zero_left_of_its_cheapest_point():
    # 0 over [1, 2), then 0.8 -> 0.9 over [2, 3]: area 0.85, efficiency 0.05 / 0.8.
    late = ([2.0, 3.0], [0.8, 0.9])
    assert frontier_efficiency(late, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(0.0625)
    # Negative efficiency is reported as is: area 0.4.
    worse = ([2.0], [0.4])
    assert frontier_efficiency(worse, RANDOM, ORACLE, LOW, HIGH) == pytest.approx(-0.5)


def test_efficiency_degenerate_oracle_raises():
    with pytest.raises(ValueError, match="undefined"):
        frontier_efficiency(ORACLE, RANDOM, RANDOM, LOW, HIGH)
    with pytest.raises(ValueError, match="undefined"):
        frontier_efficiency(ORACLE, ORACLE, RANDOM, LOW, HIGH)  # oracle below random


@pytest.mark.parametrize(("low", "high"), [(3.0, 1.0), (1.0, 1.0), (math.nan, 3.0)])
def test_efficiency_bad_range_raises(low, high):
    with pytest.raises(ValueError):
        frontier_efficiency(ORACLE, RANDOM, ORACLE, low, high)


def test_efficiency_malformed_points_raise():
    with pytest.raises(ValueError):
        frontier_efficiency(([1.0, 2.0, 3.0],), RANDOM, ORACLE, LOW, HIGH)
    with pytest.raises(ValueError):
        frontier_efficiency([[1.0, 0.2], [2.0, 0.4], [3.0, 0.5]], RANDOM, ORACLE, LOW, HIGH)


# --------------------------------------------------------------------------------------
# Matched-cost comparison
# --------------------------------------------------------------------------------------


def test_frontier_gap_hand_cases():
    method = ([1.0, 3.0], [0.4, 0.8])
    assert frontier_gap(method, RANDOM) == pytest.approx(0.2)
    assert frontier_gap(method, ORACLE) == pytest.approx(-0.2)
    assert dominates_at_matched_cost(method, RANDOM)
    assert dominates_at_matched_cost(method, RANDOM, margin=0.15)
    assert not dominates_at_matched_cost(method, RANDOM, margin=0.25)
    assert not dominates_at_matched_cost(method, ORACLE)
    assert frontier_gap(RANDOM, RANDOM) == 0.0
    assert dominates_at_matched_cost(RANDOM, RANDOM)


def test_frontier_gap_crossing_and_partial_overlap():
    # Crossing curves: method wins at cost 1 (0.5 vs 0.2), loses at 3 (0.55 vs 0.6).
    method = ([1.0, 3.0], [0.5, 0.55])
    assert frontier_gap(method, RANDOM) == pytest.approx(-0.05)
    # Compared only where both operate: from cost 2 on, 0.5 flat vs 0.4 -> 0.6.
    late = ([2.0], [0.5])
    assert frontier_gap(late, RANDOM) == pytest.approx(-0.1)
    # Explicit costs use the conventions, including 0 below the cheapest point.
    assert frontier_gap(late, RANDOM, costs=[1.0]) == pytest.approx(-0.2)
    assert frontier_gap(late, RANDOM, costs=[2.0]) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        frontier_gap(late, RANDOM, costs=[])


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

unit = st.floats(0.0, 1.0, allow_nan=False)
cost = st.floats(0.0, 5.0, allow_nan=False)
point_sets = st.lists(st.tuples(cost, unit), min_size=1, max_size=8)


def _split(points):
    return [p[0] for p in points], [p[1] for p in points]


def _efficiency(points):
    return frontier_efficiency(_split(points), RANDOM, ORACLE, LOW, HIGH)


@settings(max_examples=200, deadline=None)
@given(point_sets, st.tuples(cost, unit))
def test_adding_a_point_never_lowers_efficiency(points, extra):
    assert _efficiency([*points, extra]) >= _efficiency(points) - 1e-12


@settings(max_examples=200, deadline=None)
@given(point_sets, st.lists(st.tuples(st.floats(0.0, 1.0), unit), min_size=8, max_size=8))
def test_pointwise_dominating_frontier_is_at_least_as_efficient(points, moves):
    # Make each point cheaper and more successful: the new frontier dominates the old.
    better = [
        (max(0.0, c - dc), min(1.0, s + ds))
        for (c, s), (dc, ds) in zip(points, moves, strict=False)
    ]
    assert dominates_at_matched_cost(_split(better), _split(points), margin=-1e-12)
    assert _efficiency(better) >= _efficiency(points) - 1e-12


@settings(max_examples=200, deadline=None)
@given(point_sets)
def test_frontier_curve_properties(points):
    costs, succ = _split(points)
    f = frontier_curve(costs, succ)
    # Every point is achievable: the curve is at least its success at its cost.
    assert np.all(np.asarray(f(costs)) >= np.asarray(succ) - 1e-12)
    grid = np.linspace(-1.0, 7.0, 801)
    values = np.asarray(f(grid))
    assert np.all(np.diff(values) >= -1e-12)  # monotone
    assert values.max() == pytest.approx(max(succ))
    # Concave on its domain: the midpoint value is at least the chord's.
    inside = grid[grid >= f.cheapest]
    left, right = inside[:-2], inside[2:]
    mid = np.asarray(f(0.5 * (left + right)))
    chord = 0.5 * (np.asarray(f(left)) + np.asarray(f(right)))
    assert np.all(mid >= chord - 1e-9)


@settings(max_examples=200, deadline=None)
@given(point_sets, cost, st.floats(0.01, 5.0))
def test_exact_area_matches_dense_trapezoid(points, low, width):
    f = frontier_curve(*_split(points))
    high = low + width
    grid = np.linspace(low, high, 20001)
    values = np.asarray(f(grid))
    trapezoid = float(np.sum(0.5 * (values[1:] + values[:-1]) * np.diff(grid)))
    # The only error of the trapezoid is at the jump and the kinks: one cell each.
    assert f.area(low, high) == pytest.approx(
        trapezoid, abs=(len(points) + 1) * 2 * width / 20000
    )


@settings(max_examples=200, deadline=None)
@given(point_sets, point_sets)
def test_frontier_gap_is_the_minimum_over_matched_costs(a, b):
    fa, fb = frontier_curve(*_split(a)), frontier_curve(*_split(b))
    start = max(fa.cheapest, fb.cheapest)
    grid = np.linspace(start, start + 10.0, 4001)
    dense = float(np.min(np.asarray(fa(grid)) - np.asarray(fb(grid))))
    # The exact gap is never above what a dense grid of matched costs shows ...
    gap = frontier_gap(fa, fb)
    assert gap <= dense + 1e-12
    # ... and the minimum is attained at one of the compared costs (a vertex or the start).
    knots = np.concatenate((grid, fa.costs, fb.costs))
    knots = knots[knots >= start]
    assert np.min(np.asarray(fa(knots)) - np.asarray(fb(knots))) == pytest.approx(gap)
