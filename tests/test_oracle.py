"""The oracle: optimality by brute force, exactness against simulation, the plug-in
planner and the replay oracle."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import oracle
from agents.policy import AlwaysModel
from agents.rollout import rollout
from envs import core, jax_env
from envs.pricing import make_pool
from envs.suite import Dynamics, Suite, make_suite, synthetic_suite
from envs.synthetic import SyntheticConfig

TINY = SyntheticConfig(
    name="tiny",
    horizon=4,
    min_subgoals=2,
    max_subgoals=2,
    moderate_rate=0.5,
    bottleneck_rate=0.3,
    cheap_skill=0.0,
    expensive_skill=2.0,
    level_difficulty=(-0.5, 0.5, 1.5, 2.5),
    derail_prob=(0.3, 0.4, 0.5, 0.6),
    lost_prob=(0.1, 0.2, 0.3, 0.4),
    recover_difficulty=0.5,
    lost_prob_derailed=0.2,
)
LAMS = (0.0, 30.0, 300.0, 3000.0)


def _tiny_params(config=TINY, **kwargs):
    suite = synthetic_suite(config, n_train=4, n_test=6, seed=3)
    return jax_env.params_from_suite(suite, "test", **kwargs)


@functools.lru_cache(maxsize=1)
def _household():
    return make_suite("household")


class BruteForce:
    """Expectimax over every action at every reachable state, read off ``step_env``'s
    rules: state ``(t, k, derailed, lost, capped calls, ledger bins)``."""

    def __init__(self, params, task, lam, cap=None, budget=None, n_bins=8):
        g = lambda a: np.asarray(a, np.float64)  # noqa: E731
        self.ps = g(params.p_success)[task]
        self.pd = g(params.p_derail)[task]
        self.pl = g(params.p_lost)[task]
        self.pr = g(params.p_recover)
        self.ld = float(params.lost_prob_derailed)
        self.K = int(params.n_subgoals[task])
        self.H = params.horizon
        self.M = params.n_models
        self.capped = np.asarray(params.capped)
        self.abort = params.abort_action
        self.end_on_lost = bool(params.end_on_lost)
        prompt = g(params.prompt_tokens)[task]
        lo, hi = g(params.completion_lo)[task], g(params.completion_hi)[task]
        p_in, p_out = g(params.price_in), g(params.price_out)
        self.cost = lambda t, j, m: (
            prompt[t] * p_in[m] + (lo[j, m] + hi[j, m]) / 2 * p_out[m]
        )
        self.worst = lambda t, j, m: prompt[t] * p_in[m] + hi[j, m] * p_out[m]
        self.base = lambda t: min(
            self.worst(t, j, m) for j in range(lo.shape[0]) for m in range(self.M)
        )
        self.lam, self.cap, self.budget, self.n_bins = lam, cap, budget, n_bins

    def allowed(self, t, k, e, x):
        out = []
        for m in range(self.M):
            if self.cap is not None and self.capped[m] and e >= self.cap:
                continue
            if self.budget is not None:
                # The ledger: what every call pays at each step, plus whole bins
                width = self.budget / self.n_bins
                paid = sum(self.base(s) for s in range(t))
                room = self.budget * (1 - oracle.BUDGET_MARGIN) - paid - x * width
                if self.worst(t, k, m) > room:
                    continue
            out.append(m)
        return out

    def booked(self, t, k, m):
        if self.budget is None:
            return 0
        excess = self.worst(t, k, m) - self.base(t)
        return math.ceil(excess / (self.budget / self.n_bins))

    def outcomes(self, t, k, d, l, m):
        """Return ``[(prob, next state or "success" or "ended")]`` of a call."""
        if l:
            return [(1.0, (k, d, l))]
        if d:
            pr = self.pr[m]
            lost = "ended" if self.end_on_lost else (k, 1, 1)
            return [
                (pr, (k, 0, 0)),
                ((1 - pr) * self.ld, lost),
                ((1 - pr) * (1 - self.ld), (k, 1, 0)),
            ]
        ps, pd, pl = self.ps[k, m], self.pd[k], self.pl[k]
        done = "success" if k + 1 >= self.K else (k + 1, 0, 0)
        out = [(ps, done)]
        for dd, ll in itertools.product((0, 1), (0, 1)):
            p = (1 - ps) * (pd if dd else 1 - pd) * (pl if ll else 1 - pl)
            nxt = "ended" if ll and self.end_on_lost else (k, dd, ll)
            out.append((p, nxt))
        return out

    @functools.cache  # noqa: B019
    def value(self, t, k, d, l, e, x, policy=None):
        """Return ``(objective, success probability, expected USD)`` from a state."""
        if t >= self.H:
            return 0.0, 0.0, 0.0
        options = [(0.0, 0.0, 0.0)] if self.abort else []
        for m in self.allowed(t, k, e, x):
            if policy is not None and policy[(t, k, d, l, e, x)] != m:
                continue
            p_total, c_total = 0.0, self.cost(t, k, m)
            e2 = e + int(self.capped[m] and self.cap is not None)
            x2 = x + self.booked(t, k, m)
            for p, nxt in self.outcomes(t, k, d, l, m):
                if nxt == "success":
                    p_total += p
                elif nxt != "ended":
                    _, ps, cs = self.value(t + 1, *nxt, e2, x2, policy)
                    p_total += p * ps
                    c_total += p * cs
            options.append((p_total - self.lam * c_total, p_total, c_total))
        if not options:
            return 0.0, 0.0, 0.0
        return max(options, key=lambda o: o[0])


def _objective(points):
    return points["per_task_successes"] - points["lams"] * points["per_task_costs"]


@pytest.mark.parametrize(
    "kwargs, rules",
    [
        ({}, {}),
        ({"abort_action": True}, {"cap": 1}),
        ({}, {"cap": 2}),
        ({"abort_action": True}, {"budget": 0.006, "n_bins": 8}),
        ({}, {"cap": 1, "budget": 0.008, "n_bins": 8}),
    ],
)
def test_dp_matches_brute_force_on_tiny_tasks(kwargs, rules):
    params = _tiny_params(**kwargs)
    pts = oracle.oracle_points(params, lams=LAMS, **rules)
    objective = _objective(pts)
    for task in range(params.n_tasks):
        for i, lam in enumerate(LAMS):
            bf = BruteForce(params, task, lam, **rules)
            best, p, c = bf.value(0, 0, 0, 0, 0, 0)
            assert objective[task, i] == pytest.approx(best, abs=2e-6)
            if lam == 0.0:
                assert pts["per_task_successes"][task, i] == pytest.approx(p, abs=2e-6)


def test_dp_matches_brute_force_with_end_on_lost():
    params = _tiny_params(TINY.replace(end_on_lost=True), abort_action=True)
    pts = oracle.oracle_points(params, lams=LAMS, cap=1)
    objective = _objective(pts)
    for task in range(params.n_tasks):
        for i, lam in enumerate(LAMS):
            best, _, _ = BruteForce(params, task, lam, cap=1).value(0, 0, 0, 0, 0, 0)
            assert objective[task, i] == pytest.approx(best, abs=2e-6)


def test_dp_is_the_best_of_every_deterministic_policy():
    config = TINY.replace(horizon=3, min_subgoals=1, max_subgoals=1)
    params = _tiny_params(config)
    pts = oracle.oracle_points(params, [0, 1], lams=LAMS)
    states = [(0, 0, 0, 0, 0, 0)]
    states += [(t, 0, d, l, 0, 0) for t in (1, 2) for d in (0, 1) for l in (0, 1)]
    for task in (0, 1):
        for i, lam in enumerate(LAMS):
            best = -np.inf
            for actions in itertools.product(range(2), repeat=len(states)):
                policy = dict(zip(states, actions, strict=True))
                bf = BruteForce(params, task, lam)
                best = max(best, bf.value(0, 0, 0, 0, 0, 0, _Policy(policy))[0])
            assert _objective(pts)[task, i] == pytest.approx(best, abs=2e-6)


class _Policy(dict):
    """A hashable state-to-model map (for the brute force's cache)."""

    def __hash__(self):
        return hash(frozenset(self.items()))


def test_table_evaluation_reproduces_the_dp_and_always_models():
    params = _tiny_params(abort_action=True)
    table, info = oracle.oracle_table(params, lam=300.0, cap=1)
    ev = oracle.evaluate_table(params, info["tasks"], table, cap=1)
    np.testing.assert_allclose(ev["successes"], info["successes"], atol=1e-6)
    np.testing.assert_allclose(ev["costs"], info["costs"], atol=1e-9)
    const = oracle.constant_model_points(params, cap=1)
    for m in range(2):
        table = np.full_like(table, m)
        ev = oracle.evaluate_table(params, info["tasks"], table, cap=1)
        np.testing.assert_allclose(ev["successes"], const["per_task_successes"][:, m])


def test_dp_expectation_matches_simulation_in_the_twin():
    params = jax_env.params_from_suite(_household(), "test")
    tasks = np.repeat(np.arange(128), 16)
    seeds = np.arange(tasks.size, dtype=np.uint32) * 7919 + 11
    out = oracle.rollout_oracle(params, tasks, seeds, lam=10.0)
    n = tasks.size
    for sim, exact in (("success", "expected_success"), ("cost", "expected_cost")):
        se = out[sim].std() / np.sqrt(n)
        assert abs(out[sim].mean() - out[exact].mean()) < 4.5 * se, sim
    assert out["downgrades"].sum() == 0 and not out["plan_exhausted"].any()

    # The exact value of always-cheap agrees with the twin's rollout too
    const = oracle.constant_model_points(params, np.arange(128))
    sim = rollout(
        AlwaysModel(0), params, jnp.asarray(tasks), jnp.asarray(seeds), jax.random.key(0)
    )
    se = np.asarray(sim["success"]).std() / np.sqrt(n)
    assert abs(np.asarray(sim["success"]).mean() - const["successes"][0]) < 4.5 * se


def test_capped_budgeted_oracle_is_exact_and_never_breaks_the_rules():
    params = jax_env.params_from_suite(_household(), "test", abort_action=True)
    tasks = np.repeat(np.arange(16), 64)
    seeds = np.arange(tasks.size, dtype=np.uint32) * 104729 + 3
    out = oracle.rollout_oracle(
        params, tasks, seeds, lam=0.0, cap=4, budget=0.04, n_bins=64
    )
    assert out["expensive_calls"].max() <= 4
    assert out["cost"].max() <= 0.04 and not out["overspent"].any()
    assert out["downgrades"].sum() == 0
    n = tasks.size
    for sim, exact in (("success", "expected_success"), ("cost", "expected_cost")):
        se = out[sim].std() / np.sqrt(n)
        assert abs(out[sim].mean() - out[exact].mean()) < 4.5 * se, sim


def test_oracle_spans_the_boundaries():
    params = jax_env.params_from_suite(_household(), "test")
    tasks = np.arange(128)
    lams = oracle.default_lams(params, tasks, n=5)
    pts = oracle.oracle_points(params, tasks, lams)
    const = oracle.constant_model_points(params, tasks)
    assert lams[0] == 0.0
    assert pts["successes"][0] >= const["successes"][-1] - 1e-6
    assert pts["costs"][-1] <= const["costs"][0]
    assert np.all(np.diff(pts["costs"]) <= 1e-6)
    assert np.all(np.diff(pts["successes"]) <= 1e-6)


def test_plugin_planner_sits_between_always_cheap_and_the_oracle():
    suite = _household()
    params = jax_env.params_from_suite(suite, "test")
    tasks = np.arange(128)
    model = oracle.fit_plugin(suite.bank("train"))
    lams = oracle.default_lams(params, tasks, n=5)
    best = oracle.oracle_points(params, tasks, lams)
    const = oracle.constant_model_points(params, tasks)
    for hints in (True, False):
        plug = oracle.plugin_points(model, params, tasks, lams, step_hints=hints)
        assert np.all(_objective(plug) <= _objective(best) + 1e-5)
        assert plug["successes"].max() >= const["successes"][0]
    prior, current = oracle.plugin_problem(model, params, tasks)
    for est in (prior, current):
        np.testing.assert_allclose(np.asarray(est.done)[:, -1], 1.0)
        p_ok = np.asarray(est.p_ok)
        assert np.all(p_ok > 0) and np.all(p_ok < 1)
        total = p_ok + np.asarray(est.p_derail) + np.asarray(est.p_lost)
        assert np.all(total <= 1 + 1e-6)


def _replay_params(correct, prompt, completion, rule, **kwargs):
    correct = np.asarray(correct, np.float32)[None]
    n_items, n_models = correct.shape[1:]
    lost = 1.0 if rule == core.SUCCESS_ALL else 0.0
    comp = np.asarray(completion, np.int32)[None]
    bank = core.TaskBank(
        ids=("s0",),
        n_subgoals=np.array([n_items], np.int32),
        p_success=correct,
        p_derail=np.zeros((1, n_items), np.float32),
        p_lost=np.full((1, n_items), lost, np.float32),
        prompt_tokens=np.asarray(prompt, np.int32)[None],
        completion_lo=comp,
        completion_hi=comp.copy(),
        features=np.zeros((1, 1), np.float32),
        step_features=np.zeros((1, n_items, 1), np.float32),
    )
    dyn = Dynamics(p_recover=(0.0,) * n_models, advance_on_failure=True, success_rule=rule)
    suite = Suite("hand", make_pool(None), dyn, {"train": bank, "test": bank})
    return jax_env.params_from_suite(suite, "test", **kwargs)


_reset = jax.jit(jax_env.reset_from_seed)
_step = jax.jit(jax_env.step_env)


def _replay_in_twin(params, models, budget):
    _, state = _reset(np.uint32(1), params, 0, budget, -1)
    reward = cost = 0.0
    for m in models:
        if m < 0:
            break
        _, state, r, term, trunc, info = _step(state, m, params)
        reward, cost = reward + float(r), cost + float(info["cost"])
        if term or trunc:
            break
    return reward, cost


@pytest.mark.parametrize("rule", [core.SUCCESS_SHARE, core.SUCCESS_ALL])
def test_replay_oracle_on_three_items(rule):
    # Item 0: both right; item 1: only the expensive model; item 2: neither
    correct = [[1, 1], [0, 1], [0, 0]]
    prompt, completion = [1000, 1000, 1000], [[100, 100]] * 3
    params = _replay_params(correct, prompt, completion, rule)
    price = lambda m: 1000 * params.price_in[m] + 100 * params.price_out[m]  # noqa: E731
    c0, c1 = float(price(0)), float(price(1))
    budgets = [math.inf, 2 * c0 + c1 + 1e-7, 3 * c0 + 1e-7, 2 * c0 + 1e-7]
    res = oracle.replay_oracle_points(params, budgets=budgets)
    models = res["models"][0]
    if rule == core.SUCCESS_SHARE:
        assert models[0].tolist() == [0, 1, 0] and models[1].tolist() == [0, 1, 0]
        np.testing.assert_allclose(res["rewards"], [2 / 3, 2 / 3, 1 / 3, 1 / 3], atol=1e-6)
        np.testing.assert_allclose(
            res["costs"][:3], [2 * c0 + c1, 2 * c0 + c1, 3 * c0], rtol=1e-5
        )
        # Bankrupt after two cheap items: the third is never asked
        assert res["costs"][3] == pytest.approx(2 * c0, rel=1e-5)
    else:
        # Success is impossible: the cheapest calls
        assert models[0].tolist() == [0, 0, 0]
        np.testing.assert_allclose(res["rewards"], 0.0)
    for b, budget in enumerate(budgets):
        reward, cost = _replay_in_twin(params, models[b], budget)
        assert reward == pytest.approx(res["rewards"][b], abs=1e-6)
        assert cost == pytest.approx(res["costs"][b], rel=1e-5)

    # All right is possible when the expensive model answers item 2; abort saves money
    correct = [[1, 1], [0, 1], [0, 1]]
    params = _replay_params(correct, prompt, completion, rule, abort_action=True)
    res = oracle.replay_oracle_points(
        params, budgets=[math.inf, c0 + 2 * c1 + 1e-7, c0 + c1 + 1e-7]
    )
    models = res["models"][0]
    assert models[0].tolist() == [0, 1, 1] and models[1].tolist() == [0, 1, 1]
    if rule == core.SUCCESS_ALL:
        assert res["rewards"].tolist() == [1.0, 1.0, 0.0]
        assert models[2].tolist()[:1] == [2]  # abort at once: nothing to win
        assert res["costs"][2] == 0.0
    else:
        np.testing.assert_allclose(res["rewards"], [1.0, 1.0, 2 / 3], atol=1e-6)
        assert models[2].tolist()[:2] == [0, 1]
        assert res["costs"][2] == pytest.approx(c0 + c1, rel=1e-5)
