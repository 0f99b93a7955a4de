"""Tests of PPO-Lagrangian: GAE, the multipliers, a probe with a known constrained
optimum, tracing and exact resumption."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import oracle
from agents import ppo_lagrangian as pl
from agents.checkpoint import Checkpointer
from agents.rollout import episode_seeds, rollout
from envs import jax_env
from envs.synthetic import SyntheticConfig

# Probe: one subgoal, two calls at most, no derailing or losing, identical tasks. The
# cheap model solves the subgoal with chance 1/2, the expensive one with 0.95, at
# about 4.5 times the price. The exact frontier (oracle DP) has three vertices:
# cheap-cheap, cheap-then-expensive, expensive-expensive. Between the first two the
# constrained optimum calls the cheap model first and, after a failure, the expensive
# one with the probability that spends the target exactly; spending the same on an
# expensive first call does clearly worse.
PROBE = SyntheticConfig(
    name="probe",
    horizon=2,
    min_subgoals=1,
    max_subgoals=1,
    moderate_rate=0.0,
    bottleneck_rate=0.0,
    extreme_rate=0.0,
    cheap_skill=0.0,
    expensive_skill=3.0,
    level_difficulty=(0.0, 0.0, 0.0, 0.0),
    derail_prob=(0.0, 0.0, 0.0, 0.0),
    lost_prob=(0.0, 0.0, 0.0, 0.0),
    token_jitter=0.0,
    feature_noise=0.0,
    step_hint_noise=0.0,
)
TARGET_USD = 0.0014
"""Between the cheap-cheap (0.0009 USD) and cheap-then-expensive (0.0020 USD) vertices."""
CONFIG = pl.PPOLagConfig(
    updates=100,
    episodes=256,
    epochs=4,
    minibatches=4,
    learning_rate=3e-3,
    anneal_lr=True,
    critic_warmup=0,
    ent_coef=0.0,
    cost_target=TARGET_USD,
    multiplier_lr=0.1,
    pid_kp=2.0,
    share_target=1.0,  # compiles the share constraint, which never binds here
    hidden_sizes=(16, 16),
)
SEED = 0


@pytest.fixture(scope="module")
def probe_params():
    return jax_env.make_params(PROBE, n_train=8, n_test=8)


@pytest.fixture(scope="module")
def trained(probe_params):
    """The probe trained for ``CONFIG.updates`` updates, one jitted update at a time
    (it must trace once), from the fresh state of ``train``."""
    train = jax.jit(pl.make_train(CONFIG, probe_params), static_argnames="n_updates")
    rng = jax.random.key(SEED)
    state0, _ = train(rng, n_updates=0)
    update = jax.jit(chex.assert_max_traces(pl.make_update(CONFIG, probe_params), n=1))
    update_root = jax.random.split(rng)[1]  # as train derives it
    state, history = state0, []
    for _ in range(CONFIG.updates):
        state, metrics = update(update_root, state)
        history.append(metrics)
    metrics = {k: np.stack([np.asarray(m[k]) for m in history]) for k in history[0]}
    return train, state0, state, metrics


# ------------------------------------------------------------------------- GAE
def python_gae(rewards, values, lengths, gamma, lam):
    """Return GAE advantages and returns, one episode and one step at a time."""
    adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            running = delta + gamma * lam * running
            adv[i, t] = running
            ret[i, t] = running + values[i, t]
    return adv, ret


def test_gae_matches_a_python_loop():
    rng = np.random.default_rng(0)
    n, h = 7, 9
    lengths = [9, 1, 4, 0, 6, 9, 2]
    valid = np.arange(h)[None, :] < np.asarray(lengths)[:, None]
    rewards = rng.normal(size=(n, h)).astype(np.float32)
    values = rng.normal(size=(n, h)).astype(np.float32)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.7), (0.99, 1.0), (0.8, 0.0)):
        adv, ret = jax.jit(pl.gae, static_argnums=(3, 4))(
            rewards, values, valid, gamma, lam
        )
        want_adv, want_ret = python_gae(rewards, values, lengths, gamma, lam)
        np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
        assert np.all(np.asarray(adv)[~valid] == 0) and np.all(np.asarray(ret)[~valid] == 0)

    # Several signals can share one mask
    stacked, _ = pl.gae(
        np.stack([rewards, -rewards]), np.stack([values, values]), valid, 1, 1
    )
    np.testing.assert_allclose(
        stacked[0], pl.gae(rewards, values, valid, 1, 1)[0], atol=1e-6
    )


# ------------------------------------------------------------------ multipliers
def run_multiplier(m, violations):
    values, integrals = [], []
    for g in violations:
        m = pl.update_multiplier(m, g)
        values.append(float(m.value))
        integrals.append(float(m.integral))
    return m, values, integrals


def test_cost_signal_and_violation_by_hand():
    cost = jnp.array([[0.01, 0.02, 0.0], [0.04, 0.0, 0.0]])
    budget = jnp.array([0.10, 0.20])
    usd = pl.PPOLagConfig(cost_target=0.02)
    per_episode = pl.step_costs(cost, budget, usd).sum(axis=1)
    np.testing.assert_allclose(per_episode, [1.5, 2.0], rtol=1e-6)  # units of 0.02 USD
    assert usd.target == 1.0
    np.testing.assert_allclose(per_episode.mean() - usd.target, 0.75, rtol=1e-6)

    scaled = pl.PPOLagConfig(cost_target=0.0, cost_scale=0.01)
    np.testing.assert_allclose(pl.step_costs(cost, budget, scaled).sum(1), [3.0, 4.0])
    assert scaled.target == 0.0

    fraction = pl.PPOLagConfig(cost_mode="budget_fraction", cost_target=0.25)
    per_episode = pl.step_costs(cost, budget, fraction).sum(axis=1)
    # Shares of the budget 0.3 and 0.2, in units of the target share 0.25
    np.testing.assert_allclose(per_episode, [1.2, 0.8], rtol=1e-6)
    np.testing.assert_allclose(per_episode.mean() - fraction.target, 0.0, atol=1e-6)
    zero_budget = pl.step_costs(cost, jnp.array([0.0, 0.2]), fraction)
    assert np.all(np.isfinite(zero_budget)) and float(zero_budget[0].sum()) == 0.0

    with pytest.raises(ValueError, match="cost_scale"):
        pl.PPOLagConfig(cost_target=0.0)
    with pytest.raises(ValueError, match="minibatches"):
        pl.PPOLagConfig(episodes=10, minibatches=4)


def test_dual_ascent_by_hand():
    m = pl.Multiplier.create(init=0.0, lr=0.5, bound=2.0)
    m, values, integrals = run_multiplier(m, [0.4, 1.0, 3.0, -5.0, 0.2])
    # 0 + 0.2 = 0.2; + 0.5 = 0.7; + 1.5 = 2.2 -> 2 (bound); - 2.5 -> 0; + 0.1
    np.testing.assert_allclose(values, [0.2, 0.7, 2.0, 0.0, 0.1], rtol=1e-6)
    np.testing.assert_allclose(integrals, values, rtol=1e-6)
    assert float(m.prev_violation) == pytest.approx(0.2)


def test_pid_by_hand():
    m = pl.Multiplier.create(init=0.0, lr=0.5, bound=10.0, kp=1.0, kd=2.0)
    m, values, integrals = run_multiplier(m, [0.4, 1.0, 0.2, -3.0])
    # I: 0.2, 0.7, 0.8, 0 (projected); derivative on the rise only, none at first:
    # 0.2 + 0.4; 0.7 + 1.0 + 2 * 0.6; 0.8 + 0.2 + 0; max(0 - 3.0, 0)
    np.testing.assert_allclose(integrals, [0.2, 0.7, 0.8, 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(values, [0.6, 2.9, 1.0, 0.0], rtol=1e-6, atol=1e-7)

    # Projection: the proportional kick cannot leave [0, bound]
    big = pl.Multiplier.create(init=1.0, lr=0.1, bound=3.0, kp=10.0)
    assert float(pl.update_multiplier(big, 1.0).value) == 3.0
    assert float(pl.update_multiplier(big, -1.0).value) == 0.0
    assert float(pl.Multiplier.create(init=5.0, bound=3.0).value) == 3.0


def test_infeasible_target_keeps_the_multiplier_bounded():
    # Cost target 0 while every episode costs something: the violation never ends
    costs = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, 5000), jnp.float32)
    for kp, kd in ((0.0, 0.0), (0.5, 1.0)):
        m0 = pl.Multiplier.create(init=0.0, lr=0.3, bound=7.0, kp=kp, kd=kd)

        def step(m, g):
            m = pl.update_multiplier(m, g)
            return m, m.value

        m, values = jax.lax.scan(step, m0, costs - 0.0)  # violation = cost - target 0
        values = np.asarray(values)
        assert np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 7.0
        assert float(m.value) == 7.0 and float(m.integral) == 7.0  # no wind-up
        # The first feasible batch brings it down at once (no integral beyond the bound)
        assert float(pl.update_multiplier(m, -1.0).value) < 7.0
    nan_step = pl.update_multiplier(pl.Multiplier.create(init=1.0), jnp.nan)
    assert float(nan_step.value) == 1.0


# ------------------------------------------------------------------------ probe
def test_probe_reaches_the_constrained_optimum(probe_params, trained):
    _, _, state, metrics = trained
    p = probe_params

    # The exact frontier and the best success at the target cost (mixing two plans)
    pts = oracle.oracle_points(p, lams=np.geomspace(1.0, 1e5, 40))
    order = np.argsort(pts["costs"])
    hull_c, hull_s = pts["costs"][order], pts["successes"][order]
    assert hull_c[0] < TARGET_USD < hull_c[-1]
    optimum = float(np.interp(TARGET_USD, hull_c, hull_s))

    # The trained (sampling) policy on many fresh episodes
    n = 16384
    tasks = jnp.zeros(n, jnp.int32)
    out = rollout(
        pl.make_policy(CONFIG, state, p.n_actions),
        p,
        tasks,
        episode_seeds(jax.random.key(100), n),
        jax.random.key(101),
    )
    cost, success = float(out["cost"].mean()), float(out["success"].mean())
    assert abs(cost / TARGET_USD - 1.0) < 0.1, (cost, TARGET_USD)
    assert success > optimum - 0.03, (success, optimum)
    assert success < float(np.interp(cost, hull_c, hull_s)) + 0.02  # never above the DP
    # Spending as much by mixing cheap-cheap with expensive-then-cheap (exact, by the
    # DP's evaluation of that plan) does clearly worse than this policy
    plan = np.zeros((p.horizon, 1, 3, 1, 1), np.int8)
    plan[0] = 1
    first = oracle.evaluate_table(p, [0], plan)
    first_c, first_s = float(first["costs"][0]), float(first["successes"][0])
    naive = np.interp(cost, [hull_c[0], first_c], [hull_s[0], first_s])
    assert success > naive + 0.015, (success, naive)

    # Logged metrics: finite, the multiplier settled inside its interval
    assert metrics["update"].tolist() == list(range(1, CONFIG.updates + 1))
    for name in pl.LOG_FIELDS:
        assert metrics[name].shape == (CONFIG.updates,) and np.all(
            np.isfinite(metrics[name])
        )
    tail = metrics["lagrange_multiplier"][-30:]
    assert 0.0 < tail.mean() < CONFIG.multiplier_max
    assert abs(metrics["violation"][-30:].mean()) < 0.1
    line = pl.format_update(metrics, 0, 1234.0)
    assert line.startswith("update=1 return=") and "lagrange_multiplier=" in line
    assert line.split()[-1] == "steps_per_s=1234"


def test_resume_equals_uninterrupted(probe_params, trained, tmp_path):
    # Half the updates in one scan, a checkpoint, then the rest from the restored state:
    # the same state and metrics as the uninterrupted update-by-update run
    train, state0, state, metrics = trained
    rng = jax.random.key(SEED)
    half = CONFIG.updates // 2
    first, m1 = train(rng, state0, n_updates=half)
    ckpt = Checkpointer(tmp_path / "ppo_lag")
    ckpt.save(int(first.update), first, CONFIG)
    template = jax.eval_shape(lambda k: train(k, n_updates=0)[0], jax.random.key(99))
    restored, step = ckpt.restore(template, CONFIG)
    restored = pl.uncommit(restored)  # runs the train already compiled
    assert step == half and int(restored.update) == half
    resumed, m2 = train(rng, restored, n_updates=CONFIG.updates - half)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in metrics:
        np.testing.assert_array_equal(
            metrics[name], np.concatenate([np.asarray(m1[name]), np.asarray(m2[name])])
        )


def test_infeasible_training_stays_bounded(trained):
    # Cost target 0 (every episode costs money) and at most 10% expensive calls, with
    # PID gains: both multipliers stay in [0, bound], everything stays finite. Targets
    # and gains are leaves of the state, so the train compiled above runs it.
    train, state0, _, _ = trained
    mult = pl.Multiplier.create(init=0.0, lr=1.0, bound=5.0, kp=1.0, kd=1.0)
    state = state0.replace(
        cost_target=jnp.float32(0.0),
        share_target=jnp.float32(0.1),
        lagrange=mult,
        share_lagrange=mult,
    )
    n = CONFIG.updates // 2
    state, metrics = train(jax.random.key(2), state, n_updates=n)
    metrics = jax.tree.map(np.asarray, metrics)
    lams, shares = metrics["lagrange_multiplier"], metrics["share_multiplier"]
    assert int(state.update) == n
    assert np.all(metrics["violation"] > 0)  # every batch costs something
    assert lams.min() >= 0 and lams.max() <= 5.0 and shares.min() >= 0 and shares.max() <= 5
    assert lams[-1] == 5.0  # pinned at the bound, not beyond
    assert float(state.lagrange.integral) == 5.0
    assert metrics["expensive_share"][-5:].mean() < metrics["expensive_share"][:5].mean()
    for leaf in jax.tree.leaves(state.params) + [metrics[k] for k in pl.LOG_FIELDS]:
        assert np.all(np.isfinite(leaf))


def test_train_is_vmappable_over_seeds(probe_params):
    train = pl.make_train(CONFIG, probe_params)
    keys = jax.random.split(jax.random.key(0), 3)
    state, metrics = jax.eval_shape(jax.vmap(lambda k: train(k, n_updates=5)), keys)
    assert metrics["cost"].shape == (3, 5)
    assert state.lagrange.value.shape == (3,)


# ------------------------------------------------------------ budget warm start
def test_a_warm_start_without_budgets_learns_to_read_them():
    config = pl.PPOLagConfig(episodes=64, hidden_sizes=(16, 16))
    free = jax_env.make_params("household", n_train=16, n_test=8)
    budgeted = free.replace(budget_low=jnp.float32(0.05), budget_high=jnp.float32(0.2))
    network = pl.make_network(config, free.n_actions)
    names = pl.networks.policy_feature_names(
        free.n_models, free.features.shape[-1], free.step_features.shape[-1]
    )
    # A "cloned" policy and its normaliser, fitted where no budget was ever seen
    out = rollout(
        pl.NetworkPolicy(
            network.init(jax.random.key(1), jnp.zeros((1, len(names))), jnp.ones((1, 2))),
            pl.networks.RunningNormalizer.create(len(names)),
            network,
        ),
        free, jnp.full(64, -1), jnp.arange(64, dtype=jnp.uint32), jax.random.key(2),
        record=True,
    )  # fmt: skip
    features = pl.networks.policy_features(out["trajectory"]["obs"])
    norm = pl._masked_normalizer(features, out["trajectory"]["valid"])
    params = network.init(jax.random.key(3), features[0, :1], jnp.ones((1, 2)))
    budget = names.index("budget_left")
    assert norm.var[budget] < 1e-8  # no budget: always the same feature

    new_params, new_norm = pl.adapt_warm_start(
        config, params, norm, [budgeted], None, jax.random.key(4)
    )
    unseen = np.asarray(norm.var) <= 1e-8
    assert unseen[budget] and unseen[names.index("budget_fraction")]
    assert not unseen[names.index("spent")]
    assert new_norm.var[budget] > 0.0  # finite budgets now spread out
    np.testing.assert_array_equal(new_norm.mean[~unseen], norm.mean[~unseen])
    np.testing.assert_array_equal(new_norm.var[~unseen], norm.var[~unseen])
    # Under budgets the adapted policy acts as the warm start did where it sat at the
    # mean of what it saw (no budget)
    under = rollout(
        pl.NetworkPolicy(params, norm, network), budgeted, jnp.full(16, -1),
        jnp.arange(16, dtype=jnp.uint32), jax.random.key(5), record=True,
    )  # fmt: skip
    x = pl.networks.policy_features(under["trajectory"]["obs"])
    mask = under["trajectory"]["obs"]["action_mask"]
    as_seen = jnp.where(jnp.asarray(unseen), norm.mean, x)
    want = network.apply(params, pl.networks.normalize(norm, as_seen), mask)
    got = network.apply(new_params, pl.networks.normalize(new_norm, x), mask)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # The budget feature now reaches the actor: its gradient there is not zero
    grad = jax.grad(
        lambda p: network.apply(p, pl.networks.normalize(new_norm, x), mask)[0].sum()
    )(new_params)
    assert float(jnp.abs(grad["params"]["actor"]["Dense_0"]["kernel"][budget]).sum()) > 0


def test_a_privileged_router_reads_three_more_features():
    config = pl.PPOLagConfig(episodes=8, minibatches=2, hidden_sizes=(8,))
    params = jax_env.make_params("household", n_train=16, n_test=8, privileged_state=True)
    sizes = (params.n_models, params.features.shape[-1], params.step_features.shape[-1])
    width = pl.networks.n_policy_features(*sizes) + 3
    # the normaliser is fitted on a rollout's features: they have the latent state too
    state = pl.init_state(config, params, jax.random.key(0))
    assert state.normalizer.mean.shape == (width,)
    kernel = state.params["actor_critic"]["params"]["actor"]["Dense_0"]["kernel"]
    assert kernel.shape == (width, 8)
