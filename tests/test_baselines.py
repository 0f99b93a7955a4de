"""The baseline routers: the fixed heuristics of :mod:`agents.policy` checked step by step
on recorded episodes of the twin, the per-step router of :mod:`agents.baselines`, and the
sweeps and scores of :mod:`agents.evaluate`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from agents import evaluate, oracle
from agents.baselines import StepRouter, fit_step_router
from agents.policy import (
    AlwaysModel,
    BudgetPacing,
    EscalateOnError,
    ExpensiveFirst,
    RandomMix,
)
from agents.rollout import EPISODE_FIELDS, rollout, to_numpy
from envs import core, jax_env
from envs.suite import synthetic_suite
from envs.synthetic import PRESETS

N_TASKS, RUNS = 64, 2
EXPENSIVE = 1  # the default pool has two models


@functools.lru_cache(maxsize=1)
def _params():
    suite = synthetic_suite(PRESETS["household"], n_train=N_TASKS, n_test=4)
    return jax_env.params_from_suite(suite, "train")


@functools.lru_cache(maxsize=1)
def _episodes() -> evaluate.Episodes:
    """Two episodes of each training task: every rollout below runs on them."""
    return evaluate.Episodes.make(_params(), N_TASKS, RUNS, seed=0)


@struct.dataclass
class OneOf:
    """Act as ``policies[which]``.

    Each heuristic under test sits in the same tuple and ``which`` and every knob are
    traced, so one compiled rollout serves all of them. Every policy keeps its own carry
    and sees the same observations and keys as it would alone, so the episodes are
    exactly those of the selected policy.
    """

    policies: tuple
    which: jax.Array

    def init_carry(self, obs):
        return tuple(p.init_carry(obs) for p in self.policies)

    def act(self, key, obs, carry):
        outs = [p.act(key, obs, c) for p, c in zip(self.policies, carry, strict=True)]
        actions = jnp.stack([jnp.asarray(a, jnp.int32) for a, _ in outs])
        return actions[self.which], tuple(c for _, c in outs)


ALWAYS, RANDOM, FIRST, ESCALATE, PACING = range(5)


def run_heuristic(
    which: int,
    budgets=np.inf,
    model: int = 0,
    p: float = 0.0,
    k: int = 0,
    m: int = 0,
    pace: float = 1.0,
    reference_budget: float = 0.05,
) -> dict:
    """Return the recorded rollout (numpy) of one heuristic on the shared episodes."""
    policy = OneOf(
        (
            AlwaysModel(jnp.int32(model)),
            RandomMix(jnp.float32(p)),
            ExpensiveFirst(jnp.int32(k)),
            EscalateOnError(jnp.int32(m)),
            BudgetPacing(jnp.float32(pace), jnp.float32(reference_budget)),
        ),
        jnp.int32(which),
    )
    ep = _episodes()
    budgets = jnp.broadcast_to(jnp.asarray(budgets, jnp.float32), ep.tasks.shape)
    out = rollout(policy, ep.params, ep.tasks, ep.seeds, ep.key, budgets, record=True)
    return to_numpy(out)


def mixed_budgets() -> np.ndarray:
    """Hard budgets (USD) from tight to ample, unlimited for every fourth episode."""
    n = _episodes().tasks.shape[0]
    budgets = np.random.default_rng(0).uniform(0.01, 0.4, n).astype(np.float32)
    budgets[::4] = np.inf
    return budgets


def check_calls_follow_actions(out: dict) -> None:
    """A call uses the chosen model when the mask allows it, else the most capable
    allowed one (or none)."""
    traj = out["trajectory"]
    valid, action, model = traj["valid"], traj["action"], traj["model"]
    mask = traj["obs"]["action_mask"].astype(bool)
    allowed = np.take_along_axis(mask, action[..., None], axis=-1)[..., 0]
    best = np.where(mask.any(-1), mask.shape[-1] - 1 - np.argmax(mask[..., ::-1], -1), -1)
    np.testing.assert_array_equal(model[valid], np.where(allowed, action, best)[valid])
    assert np.all(model[~valid] == -1)


# ---------------------------------------------------------------- fixed heuristics
@pytest.mark.parametrize("k", [0, 1, 4, 10, 60])
def test_expensive_first_calls_the_expensive_model_for_the_first_k_steps(k):
    out = run_heuristic(FIRST, budgets=mixed_budgets(), k=k)
    traj = out["trajectory"]
    valid = traj["valid"]
    step = traj["obs"]["step"][..., 0]
    np.testing.assert_array_equal(step[valid], np.nonzero(valid)[1])  # step = call index
    want = np.where(step < k, EXPENSIVE, 0)
    np.testing.assert_array_equal(traj["action"][valid], want[valid])
    check_calls_follow_actions(out)
    if k >= 10:  # tight budgets mask some of the expensive calls it asks for
        assert np.any(valid & (traj["model"] != traj["action"]))
    # Without a budget every chosen model is allowed: calls follow the rule exactly.
    free = np.isinf(out["budget"])
    np.testing.assert_array_equal(
        out["model_counts"][free, EXPENSIVE], np.minimum(k, out["steps"][free])
    )


@pytest.mark.parametrize("m", [0, 1, 3])
def test_escalate_on_error_calls_expensive_for_m_calls_after_an_error(m):
    out = run_heuristic(ESCALATE, m=m)
    traj = out["trajectory"]
    valid, feedback = traj["valid"], traj["obs"]["feedback"]
    n, horizon = valid.shape
    # Expensive at step t exactly when the last ERROR seen, at step s <= t, has t - s < m.
    last_error = np.full(n, -(10**6))
    want = np.zeros((n, horizon), bool)
    for t in range(horizon):
        last_error = np.where(feedback[:, t] == core.FEEDBACK_ERROR, t, last_error)
        want[:, t] = t - last_error < m
    assert (feedback[valid] == core.FEEDBACK_ERROR).sum() > 50
    np.testing.assert_array_equal(
        traj["action"][valid], np.where(want, EXPENSIVE, 0)[valid]
    )
    np.testing.assert_array_equal(traj["model"][valid], traj["action"][valid])
    assert np.all(feedback[:, 0] == core.FEEDBACK_NONE)  # nothing is owed at the start
    if m > 0:
        assert want[valid].any()


@pytest.mark.parametrize("p", [0.1, 0.35, 0.8])
def test_random_mix_calls_expensive_with_probability_p(p):
    traj = run_heuristic(RANDOM, p=p)["trajectory"]
    actions = traj["action"][traj["valid"]]
    assert set(np.unique(actions)) <= {0, EXPENSIVE}
    n = actions.size
    assert n > 1000
    share = np.mean(actions == EXPENSIVE)
    assert abs(share - p) < 4.5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("model", [0, EXPENSIVE])
def test_random_mix_at_the_ends_is_an_always_model_boundary(model):
    mixed = run_heuristic(RANDOM, p=float(model))
    always = run_heuristic(ALWAYS, model=model)
    for name in EPISODE_FIELDS:
        np.testing.assert_array_equal(mixed[name], always[name], err_msg=name)
    for name in ("model", "cost", "valid"):
        np.testing.assert_array_equal(mixed["trajectory"][name], always["trajectory"][name])
    assert np.all(always["trajectory"]["model"][always["trajectory"]["valid"]] == model)


@pytest.mark.parametrize(
    "hard_budget, pace, reference_budget",
    [(True, 1.0, 0.0), (True, 2.0, 0.0), (False, 1.0, 0.3)],
)
def test_budget_pacing_calls_expensive_while_the_allowance_covers_it(
    hard_budget, pace, reference_budget
):
    budgets = mixed_budgets() if hard_budget else np.inf
    out = run_heuristic(
        PACING, budgets=budgets, pace=pace, reference_budget=reference_budget
    )
    traj = out["trajectory"]
    obs, valid = traj["obs"], traj["valid"]
    f32 = np.float32
    left = obs["budget_left"][..., 0]
    left = np.where(np.isfinite(left), left, f32(reference_budget) - obs["spent"][..., 0])
    per_step = left / np.maximum(obs["steps_left"][..., 0], f32(1.0))
    needed = f32(pace) * obs["next_call_cost"][..., -1]
    clear = valid & (np.abs(per_step - needed) > 1e-6 * np.abs(needed))  # skip ties
    want = np.where(per_step >= needed, EXPENSIVE, 0)
    np.testing.assert_array_equal(traj["action"][clear], want[clear])
    assert clear.sum() > 0.99 * valid.sum()
    actions = traj["action"][valid]
    assert (actions == EXPENSIVE).any() and (actions == 0).any()
    check_calls_follow_actions(out)
    assert not out["overspent"].any()


# ---------------------------------------------------------------- step router
@jax.jit
def _router_outputs(router, obs):
    """Return the router's cheap-success chance and action per observation (B, H)."""
    one = lambda o: (router.cheap_success_prob(o), router.act(None, o, ())[0])  # noqa: E731
    return jax.vmap(jax.vmap(one))(obs)


def test_policies_of_the_same_shape_each_run_their_own_code():
    # ExpensiveFirst(k) and EscalateOnError(m) are pytrees of one int32 each, and their
    # tree structures compare equal: each must still run its own compiled rollout
    ep = _episodes()
    first = evaluate.sweep("f", "k", lambda v: ExpensiveFirst(jnp.int32(v)), [3], ep)
    escalate = evaluate.sweep("e", "m", lambda v: EscalateOnError(jnp.int32(v)), [3], ep)
    again = evaluate.sweep("f", "k", lambda v: ExpensiveFirst(jnp.int32(v)), [3], ep)
    for which, knob, swept in ((FIRST, "k", first), (ESCALATE, "m", escalate)):
        out = run_heuristic(which, **{knob: 3})
        expensive = out["model_counts"][:, 1:].sum()
        assert swept.points[0]["expensive_share"] == pytest.approx(
            expensive / out["model_counts"].sum()
        )
        assert swept.points[0]["mean_cost"] == pytest.approx(float(out["cost"].mean()))
    assert again.points == first.points
    assert first.points[0]["mean_cost"] != escalate.points[0]["mean_cost"]


def test_step_router_fit_on_always_cheap_rollouts():
    # One test for the fit (it costs a compiled rollout and a training loop).
    ep = _episodes()
    router = fit_step_router(
        ep.params, jnp.arange(N_TASKS), jax.random.key(3), RUNS, steps=300, batch_size=256
    )
    assert isinstance(router, StepRouter) and float(router.threshold) == 0.5
    out = rollout(AlwaysModel(0), ep.params, ep.tasks, ep.seeds, ep.key, record=True)
    traj = to_numpy(out["trajectory"])
    valid, progress = traj["valid"], traj["progress"]
    prob, _ = (np.asarray(x) for x in _router_outputs(router, traj["obs"]))

    # Probabilities that tell steps apart, about right on average
    assert np.all(np.isfinite(prob[valid]))
    assert np.all((prob[valid] >= 0) & (prob[valid] <= 1))
    assert prob[valid].std() > 0.05
    assert abs(prob[valid].mean() - progress[valid].mean()) < 0.1

    # Lower at bottlenecks: the step hint is level / 3 plus noise
    hint = traj["obs"]["step_features"][..., 0]
    high, low = valid & (hint > 0.5), valid & (hint < 0.15)
    assert high.sum() > 30 and low.sum() > 300
    assert progress[high].mean() < progress[low].mean() - 0.2  # what it learnt from
    assert prob[high].mean() < prob[low].mean() - 0.2

    # Expensive below the threshold: 0 is always cheap, above 1 always expensive
    for threshold in (0.0, float(np.median(prob[valid])), 1.01):
        _, actions = _router_outputs(
            router.replace(threshold=jnp.float32(threshold)), traj["obs"]
        )
        actions = np.asarray(actions)
        want = np.where(prob < np.float32(threshold), EXPENSIVE, 0)
        np.testing.assert_array_equal(actions, want, err_msg=f"threshold {threshold}")
        if threshold == 0.0:
            assert np.all(actions == 0)
        if threshold > 1:
            assert np.all(actions == EXPENSIVE)


# ---------------------------------------------------------------- sweeps and scores
def _same_point(a: dict, b: dict) -> None:
    for name in ("episodes", "successes", "mean_cost", "expensive_share", "mean_steps"):
        assert a[name] == b[name], name


def test_sweeps_and_their_scores():
    # One test for the sweeps: each policy class costs a compiled rollout.
    ep = _episodes()

    # A sweep runs each knob value on the same episodes
    make = lambda v: RandomMix(jnp.float32(v))  # noqa: E731
    res = evaluate.sweep("random-mix", "p", make, [0.0, 0.5, 1.0], ep)
    again = evaluate.sweep("random-mix", "p", make, [1.0], ep, expensive_cost_ref=0.1)
    assert (res.name, res.knob) == ("random-mix", "p")
    assert [p["knob"] for p in res.points] == [0.0, 0.5, 1.0]
    assert all(p["episodes"] == ep.tasks.shape[0] for p in res.points)
    assert res.points[0]["relative_cost"] is None
    _same_point(res.points[2], again.points[0])  # common random numbers
    assert again.points[0]["relative_cost"] == pytest.approx(res.costs[2] / 0.1)
    assert res.points[0]["expensive_share"] == 0.0
    assert 0.3 < res.points[1]["expensive_share"] < 0.7
    assert res.points[2]["expensive_share"] == 1.0
    np.testing.assert_array_equal(res.costs, [p["mean_cost"] for p in res.points])
    np.testing.assert_array_equal(res.successes, [p["success"] for p in res.points])

    # The baselines
    results = evaluate.baseline_sweeps(ep, grid=3)
    assert set(results) == {
        evaluate.CHEAP,
        evaluate.EXPENSIVE,
        evaluate.RANDOM,
        "expensive-first-k",
        "escalate-on-error",
        "budget-pacing",
    }
    cheap = results[evaluate.CHEAP].points[0]
    expensive = results[evaluate.EXPENSIVE].points[0]
    assert cheap["relative_cost"] < 1.0 and expensive["relative_cost"] == 1.0
    assert expensive["success"] > cheap["success"]

    # Random mixing runs from p = 0 to p = 1, the two boundaries
    random = results[evaluate.RANDOM]
    for p, q in zip(random.points, res.points, strict=True):
        _same_point(p, q)
    assert [p["knob"] for p in random.points] == [0.0, 0.5, 1.0]
    _same_point(random.points[0], cheap)
    _same_point(random.points[-1], expensive)
    assert random.points[-1]["relative_cost"] == 1.0
    first = results["expensive-first-k"].points[0]  # k = 0 is always-cheap
    assert first["knob"] == 0.0
    _same_point(first, cheap)

    # Without an oracle there is no score
    assert set(evaluate.score_methods(results).values()) == {None}

    # With one, random mixing scores exactly 0 and the oracle exactly 1
    ref = expensive["mean_cost"]
    lams = np.concatenate([[0.0], np.geomspace(0.03, 3000.0, 9) / ref])
    pts = oracle.oracle_points(_params(), np.arange(N_TASKS), lams=lams)
    points = [
        {"mean_cost": float(c), "success": float(s), "knob": float(lam)}
        for c, s, lam in zip(pts["costs"], pts["successes"], pts["lams"], strict=True)
    ]
    best = evaluate.MethodResult("oracle", "lam", points)
    scores = evaluate.score_methods(results, best)
    assert evaluate.CHEAP not in scores and evaluate.EXPENSIVE not in scores
    assert scores[evaluate.RANDOM] == 0.0
    assert scores["oracle"] == 1.0
    assert best.efficiency == 1.0 and random.efficiency == 0.0
    for name in ("expensive-first-k", "escalate-on-error", "budget-pacing"):
        assert np.isfinite(scores[name]) and scores[name] < 1.0, name
        assert results[name].efficiency == scores[name]
