"""A per-step router in the style of single-turn routing: a classifier of whether the
cheap model's call will succeed, trained on always-cheap boundary rollouts, that calls
the most expensive model when that chance falls below a threshold.

It sees everything a router sees (task features, budget state, feedback, counts) but
judges each call on its own: it cannot weigh what a failure costs later (derailment,
losing the task) or whether the task is worth finishing at all. The fixed heuristics
(always-model, random mix, expensive-first-k, escalate-on-error, budget pacing) are in
:mod:`agents.policy`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents.networks import policy_features
from agents.policy import AlwaysModel
from agents.rollout import episode_seeds, rollout


class _Classifier(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(1)(x)[..., 0]


@struct.dataclass
class StepRouter:
    """Call the most expensive model when the predicted chance that the cheap model's
    call succeeds is below ``threshold``; otherwise the cheapest."""

    weights: dict
    mean: jax.Array
    std: jax.Array
    threshold: jax.Array | float = 0.5

    def init_carry(self, obs):
        """Return no memory."""
        return ()

    def cheap_success_prob(self, obs) -> jax.Array:
        """Return the predicted chance that a call by the cheapest model succeeds."""
        x = (policy_features(obs) - self.mean) / self.std
        return jax.nn.sigmoid(_Classifier().apply(self.weights, x))

    def act(self, key, obs, carry):
        """Return the expensive model when the cheap one looks likely to fail."""
        n_models = obs["next_call_cost"].shape[-1]
        expensive = self.cheap_success_prob(obs) < self.threshold
        return jnp.where(expensive, n_models - 1, 0).astype(jnp.int32), carry


def fit_step_router(
    params,
    tasks: jax.Array,
    key: jax.Array,
    runs: int = 2,
    steps: int = 1500,
    batch_size: int = 1024,
    learning_rate: float = 3e-3,
) -> StepRouter:
    """Return a :class:`StepRouter` trained on always-cheap rollouts of ``tasks``.

    The label of each call is whether it did its job (``progress`` in the recorded
    trajectory), the per-step success a logged agent run provides.
    """
    k_seed, k_roll, k_init, k_train = jax.random.split(key, 4)
    tasks = jnp.repeat(tasks, runs)
    seeds = episode_seeds(k_seed, tasks.shape[0])
    out = rollout(AlwaysModel(0), params, tasks, seeds, k_roll, record=True)
    traj = out["trajectory"]
    x = policy_features(traj["obs"])
    x = x.reshape(-1, x.shape[-1])
    y = traj["progress"].reshape(-1).astype(jnp.float32)
    w = traj["valid"].reshape(-1).astype(jnp.float32)
    mean = jnp.sum(x * w[:, None], 0) / w.sum()
    std = jnp.sqrt(jnp.sum((x - mean) ** 2 * w[:, None], 0) / w.sum()) + 1e-6
    xn = (x - mean) / std

    model = _Classifier()
    weights = model.init(k_init, xn[:1])
    opt = optax.adam(learning_rate)

    def loss_fn(weights, idx):
        logits = model.apply(weights, xn[idx])
        loss = optax.sigmoid_binary_cross_entropy(logits, y[idx])
        return jnp.sum(loss * w[idx]) / jnp.maximum(w[idx].sum(), 1.0)

    @jax.jit
    def train(weights, key):
        def body(carry, k):
            weights, opt_state = carry
            idx = jax.random.randint(k, (batch_size,), 0, x.shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(weights, idx)
            updates, opt_state = opt.update(grads, opt_state, weights)
            return (optax.apply_updates(weights, updates), opt_state), loss

        init = (weights, opt.init(weights))
        (weights, _), losses = jax.lax.scan(body, init, jax.random.split(key, steps))
        return weights, losses

    weights, _ = train(weights, k_train)
    return StepRouter(weights=weights, mean=mean, std=std, threshold=jnp.float32(0.5))
