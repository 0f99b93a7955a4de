"""The JAX twin: parity with the Gymnasium env, jit/vmap safety and auto-reset."""

import chex
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs  # noqa: F401 (registers the ids)
from envs import jax_env

SETTINGS = [
    {"suite": "household"},
    {"suite": "science", "budget_usd": (0.05, 0.4), "expensive_cap": (0, 8)},
    {"suite": "apps", "budget_usd": (0.01, 0.1), "expensive_cap": 15, "abort_action": True},
    {"suite": "science", "budget_usd": (0.05, 0.4), "privileged_state": True},
]


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_gym_env_and_twin_give_the_same_episodes(kwargs):
    env = gym.make("BudgetRoute-v0", **kwargs).unwrapped
    params = jax_env.make_params(**kwargs)
    reset = jax.jit(jax_env.reset_from_seed)
    step = jax.jit(jax_env.step_env)
    privileged = kwargs.get("privileged_state", False)
    rng = np.random.default_rng(0)
    n_steps = 0
    latent_seen = np.zeros(3, int)
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        jobs, state = reset(np.uint32(info["episode_seed"]), params)
        _assert_obs_equal(obs, jobs)
        assert ("latent_state" in obs) == privileged
        done = False
        while not done:
            action = int(rng.integers(env.action_space.n))
            obs, reward, terminated, truncated, info = env.step(action)
            jobs, state, jreward, jterm, jtrunc, jinfo = step(state, action, params)
            _assert_obs_equal(obs, jobs)
            if privileged:
                latent_seen += obs["latent_state"].astype(int)
            assert (terminated, truncated) == (bool(jterm), bool(jtrunc))
            assert reward == pytest.approx(float(jreward), abs=1e-6)
            for k in ("model", "success", "bankrupt", "downgraded", "aborted"):
                assert info[k] == jinfo[k], k
            for k in ("cost", "prompt_tokens", "completion_tokens"):
                assert info[k] == pytest.approx(float(jinfo[k]), rel=1e-5), k
            np.testing.assert_array_equal(info["action_mask"], jinfo["action_mask"])
            done = terminated or truncated
            n_steps += 1
    assert n_steps > 100
    if privileged:  # the compared episodes went through every latent state
        assert np.all(latent_seen > 0), latent_seen


def _assert_obs_equal(obs, jobs):
    # The twin accounts money in float32, the Gym env in float64: USD amounts agree to
    # a millionth of a dollar, everything else exactly or to float32 rounding.
    assert set(obs) == set(jobs)
    for k, v in obs.items():
        atol = 1e-6 if k in ("budget_left", "budget_fraction", "spent") else 1e-8
        np.testing.assert_allclose(
            np.asarray(v, np.float64),
            np.asarray(jobs[k], np.float64),
            rtol=1e-5,
            atol=atol,
            err_msg=k,
        )


def test_step_is_traced_once_per_shape():
    params = jax_env.make_params(budget_usd=0.1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batched_step(keys, states, actions):
        return jax.vmap(jax_env.step, in_axes=(0, 0, 0, None))(
            keys, states, actions, params
        )

    keys = jax.random.split(jax.random.key(0), 8)
    _, states = jax.vmap(jax_env.reset, in_axes=(0, None))(keys, params)
    for i in range(3):
        actions = jnp.full(8, i % 2)
        _, states, *_ = batched_step(keys, states, actions)
    chex.clear_trace_counter()


def test_outputs_are_finite_and_typed():
    params = jax_env.make_params(budget_usd=(0.01, 0.1), expensive_cap=(0, 5))
    obs, state = jax_env.reset(jax.random.key(1), params)
    obs, state, reward, term, trunc, info = jax.jit(jax_env.step)(
        jax.random.key(2), state, 1, params
    )
    for k, v in obs.items():
        if k not in ("budget_left", "expensive_calls_left"):
            chex.assert_tree_all_finite(v)
    assert obs["action_mask"].dtype == jnp.int8
    assert reward.dtype == jnp.float32 and term.dtype == jnp.bool_


def test_auto_reset_keeps_the_true_final_observation():
    params = jax_env.make_params(abort_action=True)
    _, state = jax_env.reset(jax.random.key(0), params)
    _, state = jax.jit(jax_env.step)(jax.random.key(1), state, 0, params)[:2]
    abort = params.n_models
    obs, new_state, reward, terminated, truncated, info = jax.jit(jax_env.step)(
        jax.random.key(2), state, abort, params
    )
    assert bool(terminated) and bool(info["aborted"])
    # the final observation is the aborted episode's, after one call
    assert float(info["final_observation"]["step"][0]) == 1.0
    # the returned observation and state belong to the new episode
    assert float(obs["step"][0]) == 0.0 and int(new_state.t) == 0


def test_vmapped_rollout_under_scan_runs_many_envs():
    params = jax_env.make_params()
    n = 64

    def run(key):
        keys = jax.random.split(key, n)
        obs, states = jax.vmap(jax_env.reset, in_axes=(0, None))(keys, params)

        def body(carry, k):
            states, total = carry
            ka, ks = jax.random.split(k)
            actions = jax.random.randint(ka, (n,), 0, 2)
            _, states, reward, *_ = jax.vmap(jax_env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(ks, n), states, actions, params
            )
            return (states, total + reward.sum()), None

        return jax.lax.scan(body, (states, 0.0), jax.random.split(key, 200))[0]

    states, total = jax.jit(run)(jax.random.key(0))
    # episodes finished and restarted: some success reward was collected
    assert float(total) > 0
    assert int(states.t.max()) <= params.horizon


def test_latent_state_is_the_one_hot_of_the_derailed_and_lost_flags():
    params = jax_env.make_params("science", n_train=64, n_test=8, privileged_state=True)
    n = 64

    def run(key):
        keys = jax.random.split(key, n)
        obs, states = jax.vmap(jax_env.reset, in_axes=(0, None))(keys, params)

        def body(states, k):
            ka, ks = jax.random.split(k)
            actions = jax.random.randint(ka, (n,), 0, params.n_actions)
            obs, states, *_ = jax.vmap(jax_env.step, in_axes=(None, 0, 0, None))(
                ks, states, actions, params
            )
            return states, (obs["latent_state"], states.derailed, states.lost)

        return jax.lax.scan(body, states, jax.random.split(key, 30))[1]

    latent, derailed, lost = (np.asarray(x) for x in jax.jit(run)(jax.random.key(0)))
    assert latent.shape == (30, n, 3) and latent.dtype == np.float32
    expected = np.where(lost, 2, np.where(derailed, 1, 0))
    np.testing.assert_array_equal(latent, np.eye(3, dtype=np.float32)[expected])
    # every state occurs, and derailed and lost at once reads as lost
    assert np.all(np.bincount(expected.ravel(), minlength=3) > 0)
    both = derailed & lost
    assert both.any()
    np.testing.assert_array_equal(latent[both], [[0.0, 0.0, 1.0]] * int(both.sum()))


def test_privileged_state_only_adds_the_latent_state_key():
    plain = jax_env.make_params(n_train=16, n_test=8)
    privileged = plain.replace(privileged_state=True)
    assert jax.tree.structure(plain) != jax.tree.structure(privileged)  # static field
    obs, state = jax_env.reset(jax.random.key(0), plain)
    obs_p = jax_env.get_obs(state, privileged)
    assert "latent_state" not in obs
    assert set(obs_p) == set(obs) | {"latent_state"}
    for k, v in obs.items():
        np.testing.assert_array_equal(v, obs_p[k], err_msg=k)
    np.testing.assert_array_equal(obs_p["latent_state"], [1.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="privileged_state must be True or False"):
        jax_env.make_params(n_train=16, n_test=8, privileged_state=1)
