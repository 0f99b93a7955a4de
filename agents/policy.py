"""The policy interface every router implements, and the fixed baseline policies.

A policy is a pytree (a ``flax.struct`` dataclass) with two pure methods on ONE
observation (no batch axis; runners ``vmap`` them):

* ``init_carry(obs)`` returns the policy's per-episode memory (any pytree, ``()`` if none);
* ``act(key, obs, carry)`` returns ``(action, carry)``.

Numeric knobs (a mixing probability, a number of steps) are pytree leaves, so a sweep over
a knob is one ``vmap``. The same object runs jitted on the JAX twin
(:func:`agents.rollout.rollout`) and step by step on the Gymnasium environment
(:func:`agents.rollout.run_gym_episode`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from envs.core import FEEDBACK_ERROR


def _expensive_or_best(obs, want_expensive):
    """Return the most expensive model if wanted, else the cheapest (index 0)."""
    n_models = obs["next_call_cost"].shape[-1]
    return jnp.where(want_expensive, n_models - 1, 0).astype(jnp.int32)


@struct.dataclass
class AlwaysModel:
    """Always call model ``model`` (0 is the cheapest): a boundary policy."""

    model: jax.Array | int = 0

    def init_carry(self, obs):
        """Return no memory."""
        return ()

    def act(self, key, obs, carry):
        """Return the fixed model."""
        return jnp.asarray(self.model, jnp.int32), carry


@struct.dataclass
class RandomMix:
    """Call the most expensive model with probability ``p`` at each step, else the
    cheapest."""

    p: jax.Array | float = 0.5

    def init_carry(self, obs):
        """Return no memory."""
        return ()

    def act(self, key, obs, carry):
        """Return a random choice between the cheapest and the most expensive model."""
        return _expensive_or_best(obs, jax.random.uniform(key) < self.p), carry


@struct.dataclass
class ExpensiveFirst:
    """Call the most expensive model for the first ``k`` steps, then the cheapest."""

    k: jax.Array | int = 3

    def init_carry(self, obs):
        """Return no memory (the step index is observed)."""
        return ()

    def act(self, key, obs, carry):
        """Return the expensive model while ``step < k``."""
        return _expensive_or_best(obs, obs["step"][0] < self.k), carry


@struct.dataclass
class EscalateOnError:
    """Call the cheapest model, and the most expensive one for ``m`` steps after each
    observed error."""

    m: jax.Array | int = 2

    def init_carry(self, obs):
        """Return the number of expensive calls still owed."""
        return jnp.int32(0)

    def act(self, key, obs, carry):
        """Return the expensive model while calls are owed after an error."""
        owed = jnp.where(obs["feedback"] == FEEDBACK_ERROR, self.m, carry)
        action = _expensive_or_best(obs, owed > 0)
        return action, jnp.maximum(owed - 1, 0).astype(jnp.int32)


@struct.dataclass
class BudgetPacing:
    """Call the most expensive model while the budget left per remaining step allows
    ``pace`` times its next-call cost, else the cheapest.

    With no hard budget, ``reference_budget`` (USD) stands in for it.
    """

    pace: jax.Array | float = 1.0
    reference_budget: jax.Array | float = 0.05

    def init_carry(self, obs):
        """Return no memory."""
        return ()

    def act(self, key, obs, carry):
        """Return the expensive model when the per-step allowance covers it."""
        left = obs["budget_left"][0]
        left = jnp.where(jnp.isfinite(left), left, self.reference_budget - obs["spent"][0])
        per_step = left / jnp.maximum(obs["steps_left"][0], 1.0)
        expensive_cost = obs["next_call_cost"][-1]
        return _expensive_or_best(obs, per_step >= self.pace * expensive_cost), carry


@struct.dataclass
class NetworkPolicy:
    """A trained actor: the :class:`agents.networks.ActorCritic` parameters, their
    normaliser, and whether to act greedily (most likely allowed action) or sample."""

    params: dict
    normalizer: object
    network: object = struct.field(pytree_node=False)
    greedy: bool = struct.field(pytree_node=False, default=True)

    def init_carry(self, obs):
        """Return no memory."""
        return ()

    def logits(self, obs) -> jax.Array:
        """Return the masked action logits of an observation."""
        from agents import networks

        x = networks.normalize(self.normalizer, networks.policy_features(obs))
        logits, _, _ = self.network.apply(self.params, x, obs["action_mask"].astype(bool))
        return logits

    def act(self, key, obs, carry):
        """Return the greedy or a sampled allowed action."""
        logits = self.logits(obs)
        if self.greedy:
            return jnp.argmax(logits).astype(jnp.int32), carry
        return jax.random.categorical(key, logits).astype(jnp.int32), carry
