"""Invariants of the budget rules over random seeds, budgets, caps and actions."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.gym_env import BudgetRouteEnv

ENVS = {
    abort: BudgetRouteEnv(suite="apps", abort_action=abort, n_train=64, n_test=8)
    for abort in (False, True)
}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    budget=st.one_of(st.none(), st.floats(0.0, 0.5)),
    cap=st.one_of(st.none(), st.integers(0, 20)),
    abort=st.booleans(),
    actions=st.lists(st.integers(0, 2), min_size=1, max_size=60),
    penalty=st.sampled_from([0.0, 2.0]),
)
def test_budget_rules_hold_for_any_action_sequence(
    seed, budget, cap, abort, actions, penalty
):
    env = ENVS[abort]
    env.cost_penalty = penalty
    n_actions = env.action_space.n
    obs, info = env.reset(seed=seed, options={"budget": budget, "cap": cap})
    total_cost, expensive, steps, done = 0.0, 0, 0, False
    for i, a in enumerate(actions * 10):
        a = a % n_actions
        mask = obs["action_mask"].copy()
        obs, reward, terminated, truncated, info = env.step(a)
        steps += 1
        total_cost += info["cost"]
        done = terminated or truncated
        if info["model"] > 0:
            expensive += 1
        # the call made is always one the mask allowed
        if info["model"] >= 0:
            assert mask[info["model"]] == 1
            assert info["downgraded"] == (a != info["model"])
        # the budget is never overspent, the cap never exceeded
        assert obs["budget_left"][0] >= 0.0
        if budget is not None:
            assert total_cost <= budget
        if cap is not None:
            assert expensive <= cap
        # sum of step costs is the money spent
        assert math.isclose(obs["spent"][0], total_cost, rel_tol=1e-5, abs_tol=1e-9)
        # reward: cost penalty, plus success only at the terminal step
        terminal = float(info["success"]) if done else 0.0
        assert math.isclose(reward, terminal - penalty * info["cost"], abs_tol=1e-12)
        assert not (info["success"] and not terminated)
        assert steps <= env.horizon
        if done:
            break
        assert i < env.horizon
    # episodes end within the horizon
    assert done or steps < env.horizon


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), budget=st.floats(0.001, 0.3))
def test_mask_only_allows_models_whose_worst_case_fits(seed, budget):
    env = ENVS[False]
    obs, _ = env.reset(seed=seed, options={"budget": budget})
    done = False
    while not done:
        allowed = obs["next_call_cost"] <= obs["budget_left"][0] * (1 + 1e-6)
        assert np.all(obs["action_mask"][:2] <= allowed)
        obs, _, terminated, truncated, _ = env.step(1)
        done = terminated or truncated
