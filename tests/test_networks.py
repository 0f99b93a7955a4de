"""Tests of the shared policy network: features, normaliser, masking."""

import chex
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs  # noqa: F401  (registers BudgetRoute-v0)
from agents import networks
from envs import jax_env

N_ACTIONS = 4


@pytest.fixture(scope="module")
def net_and_params():
    net = networks.ActorCritic(n_actions=N_ACTIONS, hidden_sizes=(16, 16))
    x = jnp.zeros((1, 6))
    params = jax.jit(net.init)(jax.random.key(0), x, jnp.ones((1, N_ACTIONS), bool))
    return net, params


def _masks():
    """Every mask over 4 actions with at least one allowed action, plus all-masked."""
    bits = (np.arange(16)[:, None] >> np.arange(N_ACTIONS)) & 1
    return jnp.asarray(bits, jnp.int8)


def test_masked_actions_get_exactly_zero_probability(net_and_params):
    net, params = net_and_params
    masks = _masks()[1:]  # at least one action allowed
    x = jax.random.normal(jax.random.key(1), (masks.shape[0], 6)) * 5.0
    logits, reward_value, cost_value = jax.jit(net.apply)(params, x, masks)
    chex.assert_shape(logits, (masks.shape[0], N_ACTIONS))
    chex.assert_shape([reward_value, cost_value], (masks.shape[0],))
    probs = jax.nn.softmax(logits, axis=-1)
    assert np.all(np.asarray(probs)[np.asarray(masks) == 0] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(masks)[np.arange(len(masks)), np.argmax(logits, -1)] == 1)
    # Sampling never picks a masked action
    keys = jax.random.split(jax.random.key(2), 200)
    samples = jax.jit(jax.vmap(lambda k: jax.random.categorical(k, logits)))(keys)
    picked = np.take_along_axis(np.asarray(masks)[None], np.asarray(samples)[..., None], -1)
    assert np.all(picked == 1)


def test_masked_helpers_are_nan_free(net_and_params):
    net, params = net_and_params
    masks = _masks()  # includes all-masked and all-but-one masks
    x = jax.random.normal(jax.random.key(3), (masks.shape[0], 6))
    actions = jnp.argmax(masks, axis=-1)  # an allowed action where there is one

    def objective(p):
        logits, v, c = net.apply(p, x, masks)
        logp = networks.masked_log_prob(logits, actions)
        ent = networks.masked_entropy(logits, masks)
        return (logp + 0.01 * ent + v + c).sum(), (logits, logp, ent)

    grads, (logits, logp, ent) = jax.jit(jax.grad(objective, has_aux=True))(params)
    for leaf in jax.tree.leaves((grads, logits, logp, ent)):
        assert np.all(np.isfinite(leaf))
    one_allowed = np.asarray(masks).sum(-1) == 1
    np.testing.assert_allclose(np.asarray(ent)[one_allowed], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logp)[one_allowed], 0.0, atol=1e-6)
    # A masked action's log-probability is very negative but finite
    logp_masked = networks.masked_log_prob(logits[1:2], jnp.array([1]))
    assert np.isfinite(logp_masked).all() and float(logp_masked[0]) < -1e8
    # Entropy over all allowed actions of a uniform policy is log(n)
    uniform = networks.masked_entropy(jnp.zeros((1, N_ACTIONS)), jnp.ones((1, N_ACTIONS)))
    np.testing.assert_allclose(uniform, np.log(N_ACTIONS), rtol=1e-6)


def test_forward_traces_once_per_shape(net_and_params):
    net, params = net_and_params

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(p, x, mask):
        return net.apply(p, x, mask)

    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (5, 6))
        forward(params, x, jnp.ones((5, N_ACTIONS), bool))


def _unlimited_params():
    return jax_env.make_params(n_train=32, n_test=8, budget_usd=None, expensive_cap=None)


def test_features_finite_with_infinite_budget_and_batch_axes():
    params = _unlimited_params()
    n_models, n_feat = params.n_models, params.features.shape[1]
    n_step = params.step_features.shape[-1]
    keys = jax.random.split(jax.random.key(0), 6).reshape(2, 3)
    reset = jax.jit(jax.vmap(jax.vmap(jax_env.reset, in_axes=(0, None)), in_axes=(0, None)))
    obs, state = reset(keys, params)
    assert np.isinf(np.asarray(obs["budget_left"])).all()
    assert np.isinf(np.asarray(obs["expensive_calls_left"])).all()

    step = jax.vmap(
        jax.vmap(jax_env.step, in_axes=(0, 0, 0, None)), in_axes=(0, 0, 0, None)
    )
    step = jax.jit(step)
    for t in range(5):
        k = jax.random.split(jax.random.key(t + 1), 6).reshape(2, 3)
        action = jnp.full((2, 3), t % n_models, jnp.int32)
        obs, state, *_ = step(k, state, action, params)

    feats = jax.jit(networks.policy_features)(obs)
    assert feats.dtype == jnp.float32
    assert feats.shape == (2, 3, networks.n_policy_features(n_models, n_feat, n_step))
    assert np.isfinite(np.asarray(feats)).all()
    names = networks.policy_feature_names(n_models, n_feat, n_step)
    assert len(names) == feats.shape[-1]
    col = {name: np.asarray(feats[..., i]) for i, name in enumerate(names)}
    np.testing.assert_allclose(col["budget_left"], networks.MONEY_INF_FEATURE, rtol=1e-6)
    np.testing.assert_array_equal(col["expensive_calls_left"], 1.0)
    np.testing.assert_array_equal(col["capped"], 0.0)
    one_hot = np.stack([col[f"feedback[{i}]"] for i in range(4)], -1)
    np.testing.assert_array_equal(one_hot.sum(-1), 1.0)
    # The action mask is not a feature
    assert not any("mask" in name for name in names)


def test_features_of_a_gymnasium_observation():
    env = gym.make("BudgetRoute-v0", n_train=32, n_test=8, budget_usd=0.05, expensive_cap=3)
    obs, _ = env.reset(seed=0)
    feats = networks.policy_features(obs)
    n_models = env.observation_space["model_counts"].shape[0]
    n_feat = env.observation_space["task_features"].shape[0]
    n_step = env.observation_space["step_features"].shape[0]
    assert feats.shape == (networks.n_policy_features(n_models, n_feat, n_step),)
    assert np.isfinite(np.asarray(feats)).all()
    names = networks.policy_feature_names(n_models, n_feat, n_step)
    col = dict(zip(names, np.asarray(feats).tolist(), strict=True))
    np.testing.assert_allclose(col["budget_left"], np.log1p(0.05 * 100), rtol=1e-6)
    np.testing.assert_allclose(col["expensive_calls_left"], 3 / 50, rtol=1e-6)
    assert col["capped"] == 1.0 and col["feedback[0]"] == 1.0
    env.close()


def test_feature_values_of_a_handmade_observation():
    obs = {
        "budget_left": np.array([0.0], np.float32),
        "budget_fraction": np.array([0.0], np.float32),
        "spent": np.array([1e9], np.float32),
        "expensive_calls_left": np.array([80.0], np.float32),
        "step": np.array([50.0], np.float32),
        "steps_left": np.array([0.0], np.float32),
        "next_call_cost": np.array([0.01, np.inf], np.float32),
        "task_features": np.array([-2.0], np.float32),
        "step_features": np.array([0.3, 0.7], np.float32),
        "feedback": 3,
        "model_counts": np.array([25.0, 0.0], np.float32),
        "error_count": np.array([5.0], np.float32),
        "progress_count": np.array([0.0], np.float32),
        "calls_since_progress": np.array([10.0], np.float32),
        "action_mask": np.array([1, 0], np.int8),
    }
    f = np.asarray(networks.policy_features(obs))
    expected = [0.0, networks.MONEY_INF_FEATURE, np.log(2.0), networks.MONEY_INF_FEATURE]
    expected += [
        0.0,
        1.0,
        1.0,
        0.5,
        0.0,
        0.5,
        0.0,
        0.1,
        0.0,
        0.2,
        0,
        0,
        0,
        1,
        -2.0,
        0.3,
        0.7,
    ]
    np.testing.assert_allclose(f, expected, rtol=1e-6, atol=1e-7)


def test_normalizer_merge_equals_numpy_statistics():
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(3.0, 2.0, size=(4, 5, 3)),
        rng.normal(-1.0, 0.5, size=(1, 3)),
        rng.normal(10.0, 4.0, size=(37, 3)),
    ]
    update = jax.jit(chex.assert_max_traces(networks.update, n=3))
    norm = networks.RunningNormalizer.create(3)
    for b in batches:
        norm = update(norm, jnp.asarray(b, jnp.float32))
    data = np.concatenate([b.reshape(-1, 3) for b in batches])
    np.testing.assert_allclose(norm.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var, data.var(0), rtol=1e-5)
    assert float(norm.count) == data.shape[0]

    z = networks.normalize(norm, jnp.asarray(data, jnp.float32))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-4)
    far = networks.normalize(norm, jnp.full((1, 3), 1e6))
    np.testing.assert_array_equal(far, networks.NORM_CLIP)
    # A fresh normaliser leaves features unchanged
    fresh = networks.RunningNormalizer.create(3)
    np.testing.assert_allclose(networks.normalize(fresh, jnp.ones(3)), 1.0, rtol=1e-6)


def test_features_end_with_the_latent_state_when_privileged():
    params = jax_env.make_params(
        n_train=32, n_test=8, budget_usd=0.1, privileged_state=True
    )
    sizes = (params.n_models, params.features.shape[1], params.step_features.shape[-1])
    n_plain = networks.n_policy_features(*sizes)
    n = networks.n_policy_features(*sizes, privileged=True)
    names = networks.policy_feature_names(*sizes, privileged=True)
    assert n == n_plain + 3 == len(names)
    assert names[:-3] == networks.policy_feature_names(*sizes)
    assert names[-3:] == [
        "latent_state[on_track]",
        "latent_state[derailed]",
        "latent_state[lost]",
    ]
    keys = jax.random.split(jax.random.key(0), 16)
    obs, state = jax.vmap(jax_env.reset, in_axes=(0, None))(keys, params)
    step = jax.jit(jax.vmap(jax_env.step, in_axes=(0, 0, None, None)))
    for t in range(4):
        obs, state, *_ = step(jax.random.split(jax.random.key(t + 1), 16), state, 1, params)
    feats = np.asarray(jax.jit(networks.policy_features)(obs))
    assert feats.shape == (16, n)
    np.testing.assert_array_equal(feats[:, -3:], obs["latent_state"])
    plain = {k: v for k, v in obs.items() if k != "latent_state"}
    np.testing.assert_array_equal(feats[:, :-3], networks.policy_features(plain))

    env = gym.make("BudgetRoute-v0", n_train=32, n_test=8, privileged_state=True)
    gym_obs, _ = env.reset(seed=0)
    gym_feats = np.asarray(networks.policy_features(gym_obs))
    assert gym_feats.shape == (n,)
    np.testing.assert_array_equal(gym_feats[-3:], [1.0, 0.0, 0.0])
    env.close()


def test_features_of_another_length_than_the_normaliser_are_named():
    norm = networks.RunningNormalizer.create(26)
    with pytest.raises(ValueError, match=r"29 entries but .* fitted on 26 \(3 apart"):
        networks.normalize(norm, jnp.zeros((4, 29)))
    with pytest.raises(
        ValueError, match=r"25 entries but the normaliser was fitted on 26$"
    ):
        networks.normalize(norm, jnp.zeros(25))
