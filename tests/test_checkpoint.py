"""Tests of saving, restoring and resuming training states."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import bc
from agents.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
)

N_FEATURES, N_ACTIONS = 3, 2
CONFIG = bc.BCConfig(learning_rate=3e-3, batch_size=64, epochs=4, hidden_sizes=(16,))


def make_dataset(n: int = 256) -> dict:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    return {
        "features": features,
        "mask": np.ones((n, N_ACTIONS), bool),
        "action": (features[:, 0] > 0).astype(np.int32),
        "weight": np.ones(n, np.float32),
    }


@pytest.fixture(scope="module")
def train():
    return jax.jit(
        bc.make_bc_train(CONFIG, N_FEATURES, N_ACTIONS), static_argnames="n_epochs"
    )


@pytest.fixture(scope="module")
def start():
    """The run's base key, its dataset and a fresh state with the fitted normaliser."""
    rng = jax.random.key(CONFIG.seed)
    dataset = make_dataset()
    init_key = jax.random.split(rng)[0]
    state = bc.init_state(CONFIG, N_FEATURES, N_ACTIONS, init_key, dataset["features"])
    return rng, dataset, state


def template():
    return {
        "bc": bc.init_state(CONFIG, N_FEATURES, N_ACTIONS),
        "key": jax.random.key(0),
        "raw_key": jax.random.PRNGKey(0),
    }


def assert_same_state(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    paths_a, leaves_a = zip(*jax.tree_util.tree_flatten_with_path(a)[0], strict=True)
    paths_b, leaves_b = zip(*jax.tree_util.tree_flatten_with_path(b)[0], strict=True)
    assert paths_a == paths_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)


def some_state(start, train, seed=1):
    _, dataset, state = start
    trained, _ = train(jax.random.key(seed), dataset, state, n_epochs=2)
    return {
        "bc": trained,
        "key": jax.random.key(seed),
        "raw_key": jax.random.PRNGKey(seed),
    }


def test_save_restore_round_trip(tmp_path, start, train):
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    assert ckpt.latest_step() is None
    states = {}
    for step in (1, 2, 3):
        states[step] = some_state(start, train, seed=step)
        ckpt.save(step, states[step], CONFIG)
    assert ckpt.all_steps() == [2, 3]
    assert ckpt.latest_step() == 3

    restored, step = ckpt.restore(template(), CONFIG)
    assert step == 3
    assert_same_state(restored, states[3])
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(states[3]["key"])
    assert isinstance(restored["bc"], bc.BCTrainState)
    restored, step = ckpt.restore(template(), CONFIG, step=2)
    assert step == 2
    assert_same_state(restored, states[2])

    with pytest.raises(ValueError, match="steps must increase"):
        ckpt.save(3, states[3], CONFIG)
    with pytest.raises(FileNotFoundError, match="step 1"):
        ckpt.restore(template(), CONFIG, step=1)


def test_incompatible_config_or_template_is_refused(tmp_path, start, train):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, some_state(start, train), CONFIG)

    wider = dataclasses.replace(CONFIG, hidden_sizes=(32,))
    with pytest.raises(IncompatibleCheckpointError, match="hidden_sizes"):
        ckpt.restore(template(), wider)

    # Same config, a template of other shapes (one more action), dtypes or leaves
    def more_actions(path, x):
        name = jax.tree_util.keystr(path)
        if "['actor']['Dense_1']['kernel']" in name:
            return jnp.zeros((x.shape[0], N_ACTIONS + 1), x.dtype)
        return x

    wrong_shape = jax.tree_util.tree_map_with_path(more_actions, template())
    with pytest.raises(IncompatibleCheckpointError, match="actor.Dense_1.kernel: saved"):
        ckpt.restore(wrong_shape, CONFIG)
    with pytest.raises(IncompatibleCheckpointError, match="extra: not in the checkpoint"):
        ckpt.restore(dict(template(), extra=jnp.zeros(2)), CONFIG)
    half = jax.tree.map(
        lambda x: x.astype(jnp.float16) if x.dtype == jnp.float32 else x, template()
    )
    with pytest.raises(IncompatibleCheckpointError, match="float16"):
        ckpt.restore(half, CONFIG)
    # A field that does not change shapes only warns
    longer = dataclasses.replace(CONFIG, epochs=CONFIG.epochs + 5)
    with pytest.warns(UserWarning, match="epochs"):
        _, step = ckpt.restore(template(), longer)
    assert step == 1


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Checkpointer(tmp_path / "nowhere").restore(template(), CONFIG)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer(tmp_path / "empty").restore(template(), CONFIG)


# Orbax reads a step's arrays concurrently; when one read fails, the others may report
# to an event loop already closed, which Python prints as an ignored exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_half_written_latest_step_falls_back(tmp_path, start, train):
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory)
    states = {s: some_state(start, train, seed=s) for s in (1, 2, 3)}
    for s in (1, 2, 3):
        ckpt.save(s, states[s], CONFIG)

    # An interrupted save leaves an orbax temporary directory: never listed
    tmp = directory / "4.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "partial").write_bytes(b"\0" * 10)
    assert ckpt.latest_step() == 3

    # Step 3 lost its array files: restore falls back to step 2 and moves 3 aside
    shutil.rmtree(directory / "3" / "state" / "d")
    (directory / "3" / "state" / "manifest.ocdbt").unlink()
    with pytest.warns(RuntimeWarning, match="step 3"):
        restored, step = ckpt.restore(template(), CONFIG)
    assert step == 2
    assert_same_state(restored, states[2])
    assert (directory / "3.corrupt").is_dir()
    assert ckpt.all_steps() == [1, 2]

    # Training goes on: step 3 can be saved again, the leftover temporary one is gone
    ckpt.save(3, states[3], CONFIG)
    assert ckpt.restore(template(), CONFIG)[1] == 3
    assert not tmp.exists()

    # A corrupt metadata file: an explicit step never falls back
    (directory / "3" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CorruptCheckpointError):
        ckpt.restore(template(), CONFIG, step=3)

    # Nothing readable left: an error, never a silent fresh start
    for s in (1, 2):
        for name in os.listdir(directory / str(s) / "state"):
            path = directory / str(s) / "state" / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(CorruptCheckpointError):
        ckpt.restore(template(), CONFIG)


def test_resumed_training_matches_an_uninterrupted_run(tmp_path, start, train):
    rng, dataset, state = start
    full, full_metrics = train(rng, dataset, state, n_epochs=4)

    first, first_metrics = train(rng, dataset, state, n_epochs=2)
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(int(first.epoch), first, CONFIG)
    restored, epoch = Checkpointer(tmp_path / "ckpt").restore(
        bc.init_state(CONFIG, N_FEATURES, N_ACTIONS), CONFIG
    )
    assert epoch == 2
    resumed, rest_metrics = train(rng, dataset, restored, n_epochs=2)

    assert_same_state(resumed, full)
    assert int(resumed.epoch) == 4
    for k in ("loss", "accuracy"):
        np.testing.assert_array_equal(
            np.concatenate([first_metrics[k], rest_metrics[k]]), full_metrics[k]
        )
