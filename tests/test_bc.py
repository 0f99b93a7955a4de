"""Tests of behaviour cloning on a synthetic dataset with a known rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import bc

N_FEATURES, N_ACTIONS = 4, 3
CONFIG = bc.BCConfig(
    learning_rate=3e-3, batch_size=128, epochs=6, hidden_sizes=(32, 32), seed=0
)


def make_dataset(n: int, seed: int) -> dict:
    """Return decisions whose target is 1 when feature 0 is positive, else 0; action 2 is
    never the target and is masked at random, so are non-target actions."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, N_FEATURES)).astype(np.float32) * 2.0 + 0.5
    action = (features[:, 0] > 0.5).astype(np.int32)
    mask = rng.random((n, N_ACTIONS)) < 0.6
    mask[np.arange(n), action] = True
    weight = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    return {"features": features, "mask": mask, "action": action, "weight": weight}


@pytest.fixture(scope="module")
def trained():
    train = jax.jit(bc.make_bc_train(CONFIG, N_FEATURES, N_ACTIONS))
    dataset = make_dataset(2048, seed=0)
    state, metrics = train(jax.random.key(CONFIG.seed), dataset)
    return train, dataset, state, metrics


def test_bc_learns_the_rule(trained):
    _, _, state, metrics = trained
    assert metrics["loss"].shape == (CONFIG.epochs,)
    assert metrics["accuracy"].shape == (CONFIG.epochs,)
    assert float(metrics["loss"][-1]) < float(metrics["loss"][0])
    assert float(metrics["accuracy"][-1]) > 0.95
    assert int(state.epoch) == CONFIG.epochs
    assert int(state.step) == CONFIG.epochs * (2048 // CONFIG.batch_size)

    test = make_dataset(1024, seed=1)
    predicted = bc.predict(state, test["features"], test["mask"])
    accuracy = float(np.mean(np.asarray(predicted) == test["action"]))
    assert accuracy > 0.95


def test_bc_never_predicts_masked_actions(trained):
    _, _, state, _ = trained
    rng = np.random.default_rng(2)
    features = rng.normal(size=(512, N_FEATURES)).astype(np.float32) * 3.0
    mask = rng.random((512, N_ACTIONS)) < 0.4
    mask[np.arange(512), rng.integers(0, N_ACTIONS, 512)] = True  # one allowed at least
    predicted = np.asarray(bc.predict(state, features, mask))
    assert np.all(mask[np.arange(512), predicted])
    probs = np.asarray(bc.action_probs(state, features, mask))
    assert np.all(probs[~mask] == 0.0)
    # Rows where the rule's action is masked still get an allowed action
    assert np.any(~mask[np.arange(512), (features[:, 0] > 0.5).astype(int)])


def test_bc_is_deterministic_given_the_seed(trained):
    train, dataset, state, metrics = trained
    again, metrics_again = train(jax.random.key(CONFIG.seed), dataset)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics["loss"], metrics_again["loss"])
    other, _ = train(jax.random.key(CONFIG.seed + 1), dataset)
    kernel = lambda s: s.params["params"]["actor"]["Dense_0"]["kernel"]  # noqa: E731
    assert not np.array_equal(kernel(state), kernel(other))


def test_bc_normalizer_is_fitted_on_the_dataset(trained):
    _, dataset, state, _ = trained
    np.testing.assert_allclose(
        state.normalizer.mean, dataset["features"].mean(0), atol=1e-5
    )
    np.testing.assert_allclose(state.normalizer.var, dataset["features"].var(0), rtol=1e-4)
    assert float(state.normalizer.count) == len(dataset["action"])


def test_bc_rejects_bad_datasets():
    dataset = make_dataset(16, seed=3)
    bad = dict(dataset, mask=np.zeros_like(dataset["mask"]))
    with pytest.raises(ValueError, match="masked out"):
        bc.check_dataset(bad, N_FEATURES, N_ACTIONS)
    with pytest.raises(ValueError, match="shape"):
        bc.check_dataset(dict(dataset, weight=jnp.ones(3)), N_FEATURES, N_ACTIONS)
    with pytest.raises(ValueError, match="lacks"):
        bc.check_dataset({"features": dataset["features"]}, N_FEATURES, N_ACTIONS)
    assert bc.check_dataset(dataset, N_FEATURES, N_ACTIONS) == 16
