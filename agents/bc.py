"""Behaviour cloning: the supervised warm start of the router (DESIGN section 1, step 3).

The dataset is a dict of arrays, one row a decision:

- ``features`` (N, F) float: :func:`agents.networks.policy_features` of the observation;
- ``mask`` (N, A) bool or 0/1: the action mask of that observation;
- ``action`` (N,) int: the target action (allowed by the mask);
- ``weight`` (N,) float: sample weight (class and stratum balancing).

:func:`make_bc_train` returns a pure ``train`` function: the normaliser is fitted on the
dataset's features, then every epoch draws a fresh permutation into minibatches and takes
one AdamW step per minibatch on the weighted, masked cross-entropy. The run's key ``rng``
splits into ``(init_key, epoch_key)``; epoch ``e`` draws its permutation from
``fold_in(epoch_key, e)``, and the state counts its epochs, so training resumed from a
checkpoint after ``k`` epochs for the remaining ones ends with exactly the parameters of
an uninterrupted run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from agents import networks

DATASET_KEYS = ("features", "mask", "action", "weight")
"""Arrays a behaviour-cloning dataset holds."""


@dataclass(frozen=True)
class BCConfig:
    """Hyperparameters of behaviour cloning."""

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_sizes",)
    """Fields that change the shapes of the training state (checked on restore)."""

    learning_rate: float = 3e-4
    """AdamW step size."""
    batch_size: int = 256
    """Decisions per minibatch (the whole dataset if it is smaller)."""
    epochs: int = 20
    """Passes over the dataset."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden layer widths of each tower of the network."""
    activation: str = "tanh"
    """Hidden activation of the network (see ``agents.networks.ACTIVATIONS``)."""
    seed: int = 0
    """Seed of the initial parameters and of the minibatch permutations."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay, applied to weight matrices only (not biases)."""

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.learning_rate <= 0 or self.batch_size < 1 or self.epochs < 0:
            raise ValueError(
                "BCConfig needs learning_rate > 0, batch_size >= 1, epochs >= 0"
            )
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"BCConfig hidden_sizes must be positive: {self.hidden_sizes}")
        if self.activation not in networks.ACTIVATIONS:
            raise ValueError(
                f"BCConfig activation {self.activation!r} is not one of "
                f"{sorted(networks.ACTIVATIONS)}"
            )


class BCTrainState(train_state.TrainState):
    """Flax train state that also carries the feature normaliser and the epoch count."""

    normalizer: networks.RunningNormalizer
    """Feature statistics, fitted on the dataset before the first epoch."""
    epoch: jax.Array
    """Epochs completed (int32); selects each epoch's permutation."""


def make_network(config: BCConfig, n_actions: int) -> networks.ActorCritic:
    """Return the policy network a config describes."""
    return networks.ActorCritic(
        n_actions=n_actions,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
    )


def make_optimizer(config: BCConfig) -> optax.GradientTransformation:
    """Return the optimizer: global-norm clipping then AdamW (decay on matrices only)."""
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(
            config.learning_rate,
            weight_decay=config.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    )


def init_state(
    config: BCConfig,
    n_features: int,
    n_actions: int,
    rng: jax.Array | None = None,
    features: jax.Array | None = None,
) -> BCTrainState:
    """Return a fresh training state (epoch 0).

    ``rng`` initialises the parameters (default: ``jax.random.key(config.seed)``); the
    normaliser is fitted on ``features`` (N, F) when given, else left empty. Also serves
    as the template to restore a checkpoint into.
    """
    if rng is None:
        rng = jax.random.key(config.seed)
    return _init_fn(config, n_features, n_actions)(rng, features)


@functools.lru_cache(maxsize=32)
def _init_fn(config: BCConfig, n_features: int, n_actions: int):
    """Return the jitted initialiser of :func:`init_state` (one per config and sizes, so
    states share their optimizer object and eager initialisation is compiled once)."""
    network = make_network(config, n_actions)
    tx = make_optimizer(config)

    @jax.jit
    def init(rng, features):
        dummy_x = jnp.zeros((1, n_features), jnp.float32)
        dummy_mask = jnp.ones((1, n_actions), bool)
        params = network.init(rng, dummy_x, dummy_mask)
        normalizer = networks.RunningNormalizer.create(n_features)
        if features is not None:
            normalizer = networks.update(normalizer, features)
        state = BCTrainState.create(
            apply_fn=network.apply,
            params=params,
            tx=tx,
            normalizer=normalizer,
            epoch=jnp.int32(0),
        )
        return state.replace(step=jnp.int32(0))

    return init


def check_dataset(dataset: dict, n_features: int, n_actions: int) -> int:
    """Return the number of decisions N after checking the dataset's keys and shapes,
    and, when its arrays are concrete, that every target action is allowed by its mask
    and weights are finite and non-negative. Raises ``ValueError`` otherwise."""
    missing = [k for k in DATASET_KEYS if k not in dataset]
    if missing:
        raise ValueError(f"dataset lacks {missing}; it needs {list(DATASET_KEYS)}")
    n = dataset["features"].shape[0]
    expected = {
        "features": (n, n_features),
        "mask": (n, n_actions),
        "action": (n,),
        "weight": (n,),
    }
    for k, shape in expected.items():
        if tuple(dataset[k].shape) != shape:
            raise ValueError(f"dataset {k} has shape {dataset[k].shape}, expected {shape}")
    if n == 0:
        raise ValueError("dataset is empty")
    if any(isinstance(dataset[k], jax.core.Tracer) for k in DATASET_KEYS):
        return n
    mask = np.asarray(dataset["mask"]).astype(bool)
    action = np.asarray(dataset["action"])
    if np.any((action < 0) | (action >= n_actions)):
        raise ValueError(f"dataset actions must lie in [0, {n_actions})")
    if not np.all(mask[np.arange(n), action]):
        bad = int(np.sum(~mask[np.arange(n), action]))
        raise ValueError(f"{bad} dataset target actions are masked out")
    weight = np.asarray(dataset["weight"])
    if not np.all(np.isfinite(weight) & (weight >= 0)):
        raise ValueError("dataset weights must be finite and non-negative")
    return n


def make_bc_train(
    config: BCConfig, n_features: int, n_actions: int
) -> Callable[..., tuple[BCTrainState, dict]]:
    """Return ``train(rng, dataset, state=None, n_epochs=config.epochs)``.

    ``train`` is pure and can be jitted (``n_epochs`` is then static:
    ``jax.jit(train, static_argnames="n_epochs")``). It returns ``(state, metrics)``
    where ``metrics`` maps ``"loss"`` (weighted cross-entropy) and ``"accuracy"`` (share
    of decisions whose most likely allowed action is the target) to per-epoch means of
    shape ``(n_epochs,)``.

    ``rng`` is the run's base key (same key, same result). Without ``state`` a fresh one
    is built, ``init_state(config, n_features, n_actions, jax.random.split(rng)[0],
    dataset["features"])``; with a ``state`` (for instance restored from a checkpoint)
    training continues from its epoch count for ``n_epochs`` more epochs with the same
    ``rng``, and the result equals an uninterrupted run.
    """
    network = make_network(config, n_actions)

    def loss_fn(params, normalizer, batch):
        x = networks.normalize(normalizer, batch["features"])
        logits, _, _ = network.apply(params, x, batch["mask"])
        logp = networks.masked_log_prob(logits, batch["action"])
        w = batch["weight"]
        loss = -jnp.sum(w * logp) / jnp.maximum(jnp.sum(w), 1e-8)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["action"])
        return loss, accuracy

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train(
        rng: jax.Array,
        dataset: dict,
        state: BCTrainState | None = None,
        n_epochs: int = config.epochs,
    ) -> tuple[BCTrainState, dict]:
        n = check_dataset(dataset, n_features, n_actions)
        data = {
            "features": jnp.asarray(dataset["features"], jnp.float32),
            "mask": jnp.asarray(dataset["mask"]).astype(bool),
            "action": jnp.asarray(dataset["action"], jnp.int32),
            "weight": jnp.asarray(dataset["weight"], jnp.float32),
        }
        batch_size = min(config.batch_size, n)
        n_minibatches = n // batch_size
        init_key, epoch_root = jax.random.split(rng)

        # Fresh state: initial parameters and the normaliser fitted on the dataset
        if state is None:
            state = init_state(config, n_features, n_actions, init_key, data["features"])

        def _update_minibatch(state, batch):
            (loss, accuracy), grads = grad_fn(state.params, state.normalizer, batch)
            state = state.apply_gradients(grads=grads)
            return state, (loss, accuracy)

        def _update_epoch(state, _):
            # Shuffle with the key of this epoch index, split into minibatches
            key = jax.random.fold_in(epoch_root, state.epoch)
            perm = jax.random.permutation(key, n)[: n_minibatches * batch_size]
            perm = perm.reshape(n_minibatches, batch_size)
            batches = jax.tree.map(lambda x: x[perm], data)

            # One gradient step per minibatch
            state, (loss, accuracy) = jax.lax.scan(_update_minibatch, state, batches)
            state = state.replace(epoch=state.epoch + 1)
            return state, {"loss": loss.mean(), "accuracy": accuracy.mean()}

        state, metrics = jax.lax.scan(_update_epoch, state, None, length=n_epochs)
        chex.assert_shape(metrics["loss"], (n_epochs,))
        return state, metrics

    return train


@jax.jit
def predict(state: BCTrainState, features: jax.Array, mask: jax.Array) -> jax.Array:
    """Return the most likely allowed action for each row of ``features``, shape
    ``(...)`` int32 (never a masked action while one is allowed)."""
    x = networks.normalize(state.normalizer, features)
    logits, _, _ = state.apply_fn(state.params, x, mask)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@jax.jit
def action_probs(state: BCTrainState, features: jax.Array, mask: jax.Array) -> jax.Array:
    """Return the policy's action probabilities, shape ``(..., n_actions)`` (exactly 0 on
    masked actions)."""
    x = networks.normalize(state.normalizer, features)
    logits, _, _ = state.apply_fn(state.params, x, mask)
    return jax.nn.softmax(logits, axis=-1)
