"""BoPO: the reward and advantage formulas, a probe task, tracing and resume."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import bc
from agents.bopo import (
    BoPOConfig,
    cost_span,
    group_advantages,
    make_train,
    reference_rewards,
    step_advantages,
    task_rewards,
)
from agents.policy import NetworkPolicy
from agents.rollout import episode_seeds, rollout
from agents.warmstart import collect_boundaries
from envs import jax_env
from envs.suite import synthetic_suite
from envs.synthetic import SyntheticConfig

REF = {
    "cheap_success": jnp.array([0.0, 1.0]),
    "cheap_cost": jnp.array([1.0, 2.0]),
    "expensive_success": jnp.array([1.0, 1.0]),
    "expensive_cost": jnp.array([3.0, 2.05]),
}


def test_boundary_relative_reward_on_hand_computed_cases():
    config = BoPOConfig(hard_bonus=0.5, cost_eps=0.05)
    success = jnp.array([1.0, 0.0])
    cost = jnp.array([2.0, 4.0])
    is_hard = jnp.array([1.0, 0.0])
    r = task_rewards(success, cost, REF, is_hard, jnp.float32(0.4), config, 1.0)
    # task 0: cost_rel = (2 - 1) / (3 - 1) = 0.5; reward 1 * 1.5 - 0.4 * 0.5 = 1.3
    # task 1: span = max(0.05, 0.05 * 2.05) = 0.1025, (4 - 2) / 0.1025 = 19.5 -> 3
    np.testing.assert_allclose(r, [1.3, -1.2], rtol=1e-6)


def test_raw_cost_ablation_uses_one_global_scale():
    config = BoPOConfig(boundary_relative=False)
    r = task_rewards(
        jnp.array([1.0, 0.0]),
        jnp.array([2.0, 4.0]),
        REF,
        jnp.array([1.0, 0.0]),
        jnp.float32(0.5),
        config,
        4.0,
    )
    np.testing.assert_allclose(r, [1.0 - 0.25, -0.5], rtol=1e-6)


def test_reference_rewards_of_the_boundaries():
    config = BoPOConfig(hard_bonus=0.5)
    ref = reference_rewards(REF, jnp.array([1.0, 0.0]), jnp.float32(0.4), config, 1.0)
    # cheap: success * credit - 0; expensive: success * credit - lam * cost_rel, with
    # cost_rel 1 on task 0 and 0.05 / 0.1025 on task 1 (its span is the eps floor)
    expected = [[0.0, 1.5 - 0.4], [1.0, 1.0 - 0.4 * 0.05 / 0.1025]]
    np.testing.assert_allclose(ref, expected, rtol=1e-6)


def test_group_advantage_on_a_hand_computed_group():
    config = BoPOConfig(adv_eps=0.0)
    rewards = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    refs = jnp.array([[0.0, 1.0]])
    adv = group_advantages(rewards, refs, config)
    pool = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    expected = (np.array([1.0, 0.0, 0.0, 1.0]) - pool.mean()) / pool.std()
    np.testing.assert_allclose(adv[0], expected, rtol=1e-6)


def test_cost_to_go_advantage_on_a_hand_computed_group():
    rewards = jnp.array([[1.0, 0.0]])
    refs = jnp.array([[0.0, 1.0]])
    step_cost = jnp.array([[[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])  # USD per step
    span = jnp.array([2.0])
    lam = jnp.float32(0.4)
    # pool {1, 0, 0, 1}: mean 0.5, std 0.5, scale 0.5 + adv_eps 0.1 = 0.6
    a = 0.5 / 0.6
    plain = step_advantages(
        rewards, refs, step_cost, span, lam, BoPOConfig(cost_to_go=False)
    )
    np.testing.assert_allclose(plain[0], [[a, a, a], [-a, -a, -a]], rtol=1e-6)
    # Spent before each step, over the span: [0, 0.5, 1.5] and [0, 1.5, 1.5]; the
    # group's mean [0, 1, 1.5]; each step gets back lam * (own - mean) / scale
    ctg = step_advantages(rewards, refs, step_cost, span, lam, BoPOConfig(cost_to_go=True))
    back = 0.4 * 0.5 / 0.6
    expected = [[a, a - back, a], [-a, -a + back, -a]]
    np.testing.assert_allclose(ctg[0], expected, rtol=1e-6)


def test_cost_span_is_per_task_or_the_global_scale():
    span = cost_span(REF, BoPOConfig(cost_eps=0.05), 4.0)
    np.testing.assert_allclose(span, [2.0, 0.05 * 2.05], rtol=1e-6)
    raw = cost_span(REF, BoPOConfig(boundary_relative=False), 4.0)
    assert float(raw) == 4.0


def test_reference_guidance_gives_a_signal_when_every_rollout_failed_cheaply():
    rewards = jnp.zeros((1, 8))  # all failed at the cheap boundary's cost
    refs = jnp.array([[0.0, 1.5 - 0.3]])  # the expensive reference solved it
    guided = group_advantages(rewards, refs, BoPOConfig(reference_guided=True))
    plain = group_advantages(rewards, refs, BoPOConfig(reference_guided=False))
    assert np.all(np.asarray(guided) < 0)  # the cheap failures are pushed down
    np.testing.assert_array_equal(plain, 0.0)  # plain GRPO has nothing to learn from


PROBE = SyntheticConfig(
    name="probe",
    horizon=8,
    min_subgoals=3,
    max_subgoals=3,
    moderate_rate=0.0,
    bottleneck_rate=0.3,
    bottleneck_spread=0.0,
    bottleneck_late=0.0,
    extreme_rate=0.0,
    cheap_skill=0.0,
    expensive_skill=12.0,
    level_difficulty=(-8.0, -1.0, 5.0, 14.0),
    derail_prob=(0.0, 0.0, 0.0, 0.0),
    lost_prob=(0.0, 0.0, 1.0, 1.0),
    step_hint_noise=0.05,
    prefix_tokens=100,
    step_tokens=10,
)
"""Routine subgoals both models pass; a bottleneck only the expensive model passes, and a
cheap failure there loses the task. The step hint tells which is which."""


@pytest.fixture(scope="module")
def probe():
    suite = synthetic_suite(PROBE, n_train=256, n_test=128)
    params = jax_env.params_from_suite(suite, "train")
    store = collect_boundaries(params, np.arange(256), 2, jax.random.key(0))
    cfg = bc.BCConfig(hidden_sizes=(32, 32))
    n_features = 14 + 2 * 2 + 7 + 1
    init = bc.init_state(cfg, n_features, 2, jax.random.key(1))
    return suite, params, store, init


def test_bopo_finds_the_known_routing_on_a_probe_task(probe):
    suite, params, store, init = probe
    # A fresh (not warm-started) policy, normalised on boundary observations
    from agents import networks

    obs = jax.tree.map(
        lambda x: x.reshape((-1,) + x.shape[3:]), store.trajectories["cheap"]["obs"]
    )
    norm = networks.update(init.normalizer, networks.policy_features(obs))
    config = BoPOConfig(
        updates=60,
        tasks_per_update=16,
        group_size=8,
        hidden_sizes=(32, 32),
        learning_rate=3e-3,
    )
    train = make_train(
        config, params, store.tasks, store.reference(), store.classes(1), init.params, norm
    )
    state, metrics = jax.jit(train)(jax.random.key(2), 0.3)
    network = bc.make_network(bc.BCConfig(hidden_sizes=(32, 32)), 2)
    policy = NetworkPolicy(state.params, norm, network)
    test = jax_env.params_from_suite(suite, "test")
    tasks = jnp.arange(128)
    out = rollout(
        policy,
        test,
        tasks,
        episode_seeds(jax.random.key(3), 128),
        jax.random.key(4),
        record=True,
    )
    traj = out["trajectory"]
    hint = np.asarray(traj["obs"]["step_features"][..., 0])
    valid = np.asarray(traj["valid"])
    model = np.asarray(traj["model"])
    # The known routing: expensive exactly at bottlenecks (hint near 2/3), cheap else
    at_bottleneck = valid & (hint > 0.4)
    routine = valid & (hint < 0.3)
    assert model[at_bottleneck].mean() > 0.9
    assert model[routine].mean() < 0.1
    assert float(out["success"].mean()) > 0.9


def test_bopo_update_is_traced_once_and_resume_equals_one_run(probe):
    _, params, store, init = probe
    config = BoPOConfig(
        updates=4, tasks_per_update=4, group_size=4, hidden_sizes=(32, 32), minibatches=2
    )
    train = make_train(
        config,
        params,
        store.tasks,
        store.reference(),
        store.classes(1),
        init.params,
        init.normalizer,
    )
    traced = jax.jit(chex.assert_max_traces(train, n=1), static_argnames="n_updates")
    key = jax.random.key(5)
    whole, _ = traced(key, 0.2, None, n_updates=4)
    half, _ = jax.jit(train, static_argnames="n_updates")(key, 0.2, None, n_updates=2)
    rest, _ = jax.jit(train, static_argnames="n_updates")(key, 0.2, half, n_updates=2)
    chex.assert_trees_all_close(whole.params, rest.params)
    assert int(rest.updates_done) == 4
    chex.clear_trace_counter()
