"""The policy network family every algorithm shares, and what it reads.

- :func:`policy_features` turns the environment's observation dict (Gymnasium or JAX
  twin, any leading batch axes) into one float32 vector of well-scaled features.
- :class:`RunningNormalizer` standardises those features with running statistics kept as a
  pytree, so it is saved and restored with the rest of a training state.
- :class:`ActorCritic` maps normalised features and the action mask to masked logits, a
  reward value and a cost value.
- :func:`masked_log_prob` and :func:`masked_entropy` are the NaN-free distribution helpers.

The action mask is never a feature: it is applied to the logits, so a masked action has
exactly zero probability whatever the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import core

MONEY_SCALE = 100.0
"""Money features are ``log1p(USD * MONEY_SCALE)``: one cent is ``log(2)``."""
MONEY_INF_USD = 1e4
"""An unlimited budget (``inf``) reads as this many USD: far above any real budget."""
MONEY_INF_FEATURE = float(np.log1p(MONEY_INF_USD * MONEY_SCALE))
"""The feature value of an unlimited budget, ``log1p(1e6)``, about 13.8."""
CALLS_SCALE = 50.0
"""Expensive calls left are clipped to [0, CALLS_SCALE] and divided by it."""
STEP_SCALE = 100.0
"""Step index and steps left are divided by this."""
COUNT_SCALE = 50.0
"""Running counts (models used, errors, progress seen) are divided by this."""
MASK_LOGIT = -1e9
"""Logit given to masked actions: ``exp`` of it underflows to exactly 0 in float32, yet it
stays finite under the arithmetic of a loss (scaling, differences), unlike ``-inf``."""
NORM_CLIP = 10.0
"""Normalised features are clipped to [-NORM_CLIP, NORM_CLIP]."""


def n_policy_features(
    n_models: int, n_features: int, n_step_features: int, privileged: bool = False
) -> int:
    """Return the length of :func:`policy_features` for ``n_models`` models,
    ``n_features`` task features and ``n_step_features`` per-step features; with
    ``privileged``, of observations holding ``latent_state`` (``privileged_state=True``
    in the environment)."""
    return (
        14 + 2 * n_models + n_features + n_step_features + core.N_LATENT * bool(privileged)
    )


def policy_feature_names(
    n_models: int, n_features: int, n_step_features: int, privileged: bool = False
) -> list[str]:
    """Return the name of each entry of :func:`policy_features`, in order (``privileged``
    as in :func:`n_policy_features`)."""
    names = ["budget_left", "spent"]
    names += [f"next_call_cost[{i}]" for i in range(n_models)]
    names += ["budget_fraction", "expensive_calls_left", "capped", "step", "steps_left"]
    names += [f"model_counts[{i}]" for i in range(n_models)]
    names += ["error_count", "progress_count", "calls_since_progress"]
    names += [f"feedback[{i}]" for i in range(core.N_FEEDBACK)]
    names += [f"task_features[{i}]" for i in range(n_features)]
    names += [f"step_features[{i}]" for i in range(n_step_features)]
    if privileged:
        names += [f"latent_state[{name}]" for name in core.LATENT_STATES]
    return names


def _money(x: jax.Array) -> jax.Array:
    x = jnp.maximum(x, 0.0)
    finite = jnp.log1p(jnp.where(jnp.isfinite(x), x, 0.0) * MONEY_SCALE)
    return jnp.where(
        jnp.isfinite(x), jnp.minimum(finite, MONEY_INF_FEATURE), MONEY_INF_FEATURE
    )


def policy_features(obs: dict) -> jax.Array:
    """Return the policy's feature vector of an observation, float32 ``(..., n)``.

    ``obs`` is the observation dict of ``BudgetRoute-v0`` or of the JAX twin, with any
    leading batch axes (scalar fields have a trailing axis of 1; ``feedback`` may have it
    or not); ``n`` is :func:`n_policy_features`. In order (see
    :func:`policy_feature_names`):

    - money (``budget_left``, ``spent``, ``next_call_cost`` per model) as
      ``log1p(USD * 100)``; an unlimited budget (``inf``) reads as
      :data:`MONEY_INF_FEATURE`, the value of ``1e4`` USD, and finite values are capped
      there too;
    - ``budget_fraction`` as is;
    - ``expensive_calls_left`` clipped to [0, 50] and divided by 50 (``inf``: 1), then a
      0/1 flag ``capped`` that is 1 when a finite cap is in force;
    - ``step`` and ``steps_left`` divided by 100;
    - ``model_counts``, ``error_count``, ``progress_count``, ``calls_since_progress``
      divided by 50;
    - ``feedback`` one-hot (4 codes);
    - ``task_features`` and ``step_features`` as they are;
    - ``latent_state`` as it is, only when the observation has it (the diagnostic
      ``privileged_state`` option of the environment; ``n`` is then
      ``n_policy_features(..., privileged=True)``).

    The action mask is not included: :class:`ActorCritic` applies it to the logits.
    """
    f32 = lambda k: jnp.asarray(obs[k], jnp.float32)  # noqa: E731
    budget_left = f32("budget_left")
    batch = budget_left.shape[:-1]
    calls = f32("expensive_calls_left")
    capped = jnp.isfinite(calls)
    calls = jnp.where(capped, jnp.clip(calls, 0.0, CALLS_SCALE) / CALLS_SCALE, 1.0)
    feedback = jnp.reshape(jnp.asarray(obs["feedback"]), batch)
    parts = [
        _money(budget_left),
        _money(f32("spent")),
        _money(f32("next_call_cost")),
        f32("budget_fraction"),
        calls,
        capped.astype(jnp.float32),
        f32("step") / STEP_SCALE,
        f32("steps_left") / STEP_SCALE,
        f32("model_counts") / COUNT_SCALE,
        f32("error_count") / COUNT_SCALE,
        f32("progress_count") / COUNT_SCALE,
        f32("calls_since_progress") / COUNT_SCALE,
        jax.nn.one_hot(feedback, core.N_FEEDBACK, dtype=jnp.float32),
        f32("task_features"),
        f32("step_features"),
    ]
    if "latent_state" in obs:
        parts.append(f32("latent_state"))
    parts = [jnp.broadcast_to(p, batch + p.shape[-1:]) for p in parts]
    return jnp.concatenate(parts, axis=-1)


# ------------------------------------------------------------------ normalizer
@struct.dataclass
class RunningNormalizer:
    """Running mean and variance of features (a pytree, saved with the training state).

    Create one with :meth:`create`, fold batches in with :func:`update`, apply it with
    :func:`normalize`.
    """

    mean: jax.Array
    """(n,) float32 running mean."""
    var: jax.Array
    """(n,) float32 running (population) variance."""
    count: jax.Array
    """() float32 number of samples seen."""

    @classmethod
    def create(cls, n: int) -> RunningNormalizer:
        """Return an empty normaliser for ``n`` features (mean 0, variance 1, count 0)."""
        return cls(
            mean=jnp.zeros(n, jnp.float32),
            var=jnp.ones(n, jnp.float32),
            count=jnp.zeros((), jnp.float32),
        )


def update(norm: RunningNormalizer, batch: jax.Array) -> RunningNormalizer:
    """Return the normaliser with ``batch`` (shape ``(..., n)``) folded in.

    Merges the batch's mean and variance with the running ones (the parallel form of
    Welford's algorithm, Chan et al.), so the result equals the mean and population
    variance of everything seen so far, whatever the batch sizes.
    """
    x = jnp.reshape(jnp.asarray(batch, jnp.float32), (-1, norm.mean.shape[-1]))
    n = x.shape[0]
    if n == 0:
        return norm
    b_mean = jnp.mean(x, axis=0)
    b_var = jnp.mean(jnp.square(x - b_mean), axis=0)
    b_count = jnp.float32(n)
    total = norm.count + b_count
    delta = b_mean - norm.mean
    mean = norm.mean + delta * (b_count / total)
    m2 = norm.var * norm.count + b_var * b_count
    m2 = m2 + jnp.square(delta) * (norm.count * b_count / total)
    return RunningNormalizer(mean=mean, var=m2 / total, count=total)


def normalize(norm: RunningNormalizer, x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Return ``x`` standardised by the running statistics, clipped to +-:data:`NORM_CLIP`.

    A feature that never varied (variance 0) comes out as 0 where it equals its mean.
    Features of another length than the statistics' raise ``ValueError`` (a policy
    trained with or without ``privileged_state`` run on the other kind of observation).
    """
    n, seen = jnp.shape(x)[-1], norm.mean.shape[-1]
    if n != seen:
        hint = ""
        if abs(n - seen) == core.N_LATENT:
            hint = (
                f" ({core.N_LATENT} apart: the length of latent_state; was the policy "
                "trained with another privileged_state than this environment's?)"
            )
        raise ValueError(
            f"features have {n} entries but the normaliser was fitted on {seen}{hint}"
        )
    z = (jnp.asarray(x, jnp.float32) - norm.mean) / jnp.sqrt(norm.var + eps)
    return jnp.clip(z, -NORM_CLIP, NORM_CLIP)


# ---------------------------------------------------------------------- network
ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}
"""Activations :class:`ActorCritic` accepts by name."""


class _MLP(nn.Module):
    hidden_sizes: Sequence[int]
    activation: str
    out_size: int
    out_scale: float

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = nn.Dense(
                size,
                kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)),
                bias_init=nn.initializers.zeros,
            )(x)
            x = act(x)
        return nn.Dense(
            self.out_size,
            kernel_init=nn.initializers.orthogonal(self.out_scale),
            bias_init=nn.initializers.zeros,
        )(x)


class ActorCritic(nn.Module):
    """Actor, reward critic and cost critic: three separate MLPs on the same features.

    Initialised as in PPO implementations: orthogonal weights with gain ``sqrt(2)`` in the
    hidden layers, 0.01 on the policy head (near-uniform initial policy) and 1 on the
    value heads; zero biases.
    """

    n_actions: int
    """Number of actions (models, plus abort when enabled)."""
    hidden_sizes: Sequence[int] = (128, 128)
    """Width of each hidden layer, in every tower."""
    activation: str = "tanh"
    """Hidden activation, a key of :data:`ACTIVATIONS`."""

    @nn.compact
    def __call__(
        self, features: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Return ``(logits, reward_value, cost_value)`` for normalised ``features``.

        ``features`` is ``(..., n)``, ``mask`` is ``(..., n_actions)`` (bool or 0/1).
        Logits are ``(..., n_actions)`` with masked actions set to :data:`MASK_LOGIT`
        (zero probability under softmax); both values are ``(...)``.
        """
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; expected one of "
                f"{sorted(ACTIVATIONS)}"
            )
        if mask.shape[-1] != self.n_actions:
            raise ValueError(
                f"mask has {mask.shape[-1]} actions, the network {self.n_actions}"
            )
        x = jnp.asarray(features, jnp.float32)
        hidden = tuple(self.hidden_sizes)
        logits = _MLP(hidden, self.activation, self.n_actions, 0.01, name="actor")(x)
        logits = apply_mask(logits, mask)
        reward_value = _MLP(hidden, self.activation, 1, 1.0, name="reward_critic")(x)
        cost_value = _MLP(hidden, self.activation, 1, 1.0, name="cost_critic")(x)
        return logits, reward_value[..., 0], cost_value[..., 0]


def apply_mask(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Return ``logits`` with every action where ``mask`` is false set to
    :data:`MASK_LOGIT`."""
    return jnp.where(jnp.asarray(mask).astype(bool), logits, MASK_LOGIT)


def masked_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    """Return the log-probability of ``action`` (shape ``(...)``) under masked ``logits``.

    Finite even for a masked action (about :data:`MASK_LOGIT`), so it never yields NaN.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    action = jnp.asarray(action, jnp.int32)[..., None]
    return jnp.take_along_axis(logp, action, axis=-1)[..., 0]


def masked_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Return the entropy of the masked policy, shape ``(...)``, summed over the allowed
    actions only (masked ones contribute exactly 0, so no ``0 * -inf`` NaN)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    terms = jnp.where(jnp.asarray(mask).astype(bool), p * logp, 0.0)
    return -jnp.sum(terms, axis=-1)
