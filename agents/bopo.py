"""BoPO: Boundary-Guided Policy Optimization.

Group-based policy-gradient fine-tuning of the warm-started router. For each sampled
training task ``i``, ``G`` rollouts of the current policy run in the JAX twin beside the
task's replayed boundary references (always-cheap and always-expensive: mean success
``s_c``, ``s_e`` and mean cost ``c_c``, ``c_e`` in USD, from the boundary store).

**Boundary-relative reward** of a rollout with success ``S`` (0 or 1) and cost ``C``::

    cost_rel = clip((C - c_c) / max(c_e - c_c, eps * c_e), -1, 3)
    R        = S * (1 + hard_bonus * [task i is Hard]) - lam * cost_rel

so cost is measured on the task's own scale (0 = what always-cheap spends, 1 = what
always-expensive spends), solving a Hard task earns a bonus, and failing a task costs
nothing beyond what was spent relative to its cheap boundary (failing an Intractable
task cheaply is the best it can do). With ``boundary_relative=False`` (the raw-cost
ablation) ``cost_rel = C / c_ref`` with one global ``c_ref``, the mean always-expensive
cost over the training tasks, and there is no Hard bonus.

**Reference-guided advantage.** The boundary references get rewards from the same
formula with their mean success and cost (``cost_rel`` is 0 for the cheap one, and 1
for the expensive one unless its span is the ``eps`` floor). The group baseline and
scale are taken over the ``G`` rollouts *and* the two references::

    pool = {R_1, ..., R_G, R_cheap, R_expensive}
    A_g  = (R_g - mean(pool)) / (std(pool) + adv_eps)

A group whose rollouts all failed cheaply on a Hard task still gets a signal: the
successful expensive reference lifts the baseline above their reward, so their
(cheap) actions are pushed down. Without reference guidance (ablation) the pool is the
``G`` rollouts alone, as in GRPO, and such a group gets no signal at all.

**Common random numbers.** The ``G`` rollouts of a task share one episode seed. The
twin draws every random number from the episode seed and the step index, so the
rollouts meet the same luck and their rewards differ through their routing alone;
the group comparison then measures the routing, not the dice (``shared_seeds``).

**Cost to go.** A call cannot change what was spent before it, so step ``t`` of
rollout ``g`` is not charged with it. With ``P_{g,t} = (sum_{s<t} c_{g,s}) / span``
(the rollout's spending before step ``t``, on the task's cost scale ``span =
max(c_e - c_c, eps * c_e)``) and ``P_t`` its mean over the group::

    A_{g,t} = A_g + lam * (P_{g,t} - P_t) / (std(pool) + adv_eps)

which is ``A_g`` with the reward ``R_g + lam * P_{g,t}`` in place of ``R_g`` (exact
while ``cost_rel`` is inside its clip). With ``cost_to_go=False`` (ablation) every
step gets ``A_g``.

**Update.** The loss is PPO's clipped objective on per-step probability ratios with
the advantage ``A_{g,t}``, averaged over valid steps, plus ``kl_coef`` times the exact
KL divergence from the warm-start policy and minus ``ent_coef`` times the entropy. The
whole loop (task sampling, rollouts, advantages, epochs of minibatch updates) is one
``lax.scan`` inside a pure ``train(rng, lam)``, which can be jitted and vmapped over
seeds and trade-off weights ``lam`` (the sweep that traces the frontier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from agents import networks
from agents.boundary import HARD
from agents.policy import NetworkPolicy
from agents.rollout import rollout


@dataclass(frozen=True)
class BoPOConfig:
    """Hyperparameters of BoPO."""

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_sizes",)

    updates: int = 120
    """Policy updates (each: sample tasks, roll out groups, optimise)."""
    tasks_per_update: int = 32
    """Training tasks sampled per update."""
    group_size: int = 8
    """Rollouts of the current policy per task (``G``)."""
    epochs: int = 2
    """Passes over each update's rollouts."""
    minibatches: int = 4
    """Minibatches per pass (over rollouts)."""
    learning_rate: float = 1e-3
    """Adam step size."""
    max_grad_norm: float = 0.5
    """Gradients are clipped to this global norm."""
    clip_eps: float = 0.2
    """PPO ratio clipping."""
    kl_coef: float = 0.0
    """Weight of the KL divergence from the warm-start policy."""
    ent_coef: float = 0.003
    """Weight of the entropy bonus."""
    hard_bonus: float = 0.5
    """Extra success credit for solving a Hard task."""
    cost_eps: float = 0.05
    """Smallest cost span, as a share of ``c_e``, used to normalise a task's cost."""
    adv_eps: float = 0.1
    """Added to the group's reward spread before dividing."""
    reference_guided: bool = True
    """Put the boundary references in the group baseline (off: ablation)."""
    boundary_relative: bool = True
    """Measure cost and success against the task's boundaries (off: raw cost)."""
    shared_seeds: bool = True
    """Give the ``G`` rollouts of a task one episode seed: common random numbers, so
    that the group's outcomes differ by the routing, not by luck (off: ablation)."""
    cost_to_go: bool = True
    """Leave out of a step's advantage what its rollout spent before it (off: the
    whole trajectory's cost, ablation)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of each tower (must match the warm start)."""


class BoPOState(train_state.TrainState):
    """Training state: parameters, optimiser state, the (frozen) normaliser and the
    number of updates done."""

    normalizer: networks.RunningNormalizer
    updates_done: jax.Array


def task_rewards(
    success: jax.Array,
    cost: jax.Array,
    ref: dict,
    is_hard: jax.Array,
    lam: jax.Array,
    config: BoPOConfig,
    cost_scale: jax.Array,
) -> jax.Array:
    """Return the reward of each rollout (see the module docstring).

    ``success`` and ``cost`` (USD) have shape (..., ) matching ``is_hard`` and each
    reference array (``cheap_cost``, ``expensive_cost``); ``cost_scale`` is the global
    cost of the raw-cost ablation.
    """
    span = cost_span(ref, config, cost_scale)
    if config.boundary_relative:
        cost_rel = jnp.clip((cost - ref["cheap_cost"]) / span, -1.0, 3.0)
        credit = 1.0 + config.hard_bonus * is_hard
    else:
        cost_rel = cost / span
        credit = jnp.ones_like(cost)
    return success * credit - lam * cost_rel


def cost_span(ref: dict, config: BoPOConfig, cost_scale: jax.Array) -> jax.Array:
    """Return the USD that one unit of relative cost stands for: per task
    ``max(c_e - c_c, cost_eps * c_e)`` (shaped like the reference arrays), or the
    global ``cost_scale`` in the raw-cost ablation."""
    if not config.boundary_relative:
        return jnp.asarray(cost_scale, jnp.float32)
    return jnp.maximum(
        ref["expensive_cost"] - ref["cheap_cost"], config.cost_eps * ref["expensive_cost"]
    )


def group_advantages(
    rewards: jax.Array, ref_rewards: jax.Array, config: BoPOConfig
) -> jax.Array:
    """Return the advantage of each rollout, shape (B, G), from rewards (B, G) and the
    references' rewards (B, 2) (see the module docstring)."""
    pool = (
        jnp.concatenate([rewards, ref_rewards], axis=1)
        if config.reference_guided
        else (rewards)
    )
    mean = pool.mean(axis=1, keepdims=True)
    std = pool.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + config.adv_eps)


def step_advantages(
    rewards: jax.Array,
    ref_rewards: jax.Array,
    step_cost: jax.Array,
    span: jax.Array,
    lam: jax.Array,
    config: BoPOConfig,
) -> jax.Array:
    """Return the advantage of every step of every rollout, shape (B, G, H).

    ``rewards`` (B, G) and ``ref_rewards`` (B, 2) as in :func:`group_advantages`,
    ``step_cost`` (B, G, H) the USD of each step (0 after the episode's end) and
    ``span`` (B,) or () from :func:`cost_span`. Each step gets its rollout's group
    advantage; with ``cost_to_go`` the relative cost the rollout had already spent
    before the step, measured against the group's mean at the same step, is given back
    (see the module docstring).
    """
    advantage = jnp.broadcast_to(
        group_advantages(rewards, ref_rewards, config)[..., None], step_cost.shape
    )
    if not config.cost_to_go:
        return advantage
    pool = jnp.concatenate([rewards, ref_rewards], axis=1)
    pool = pool if config.reference_guided else rewards
    scale = pool.std(axis=1) + config.adv_eps
    span = jnp.broadcast_to(span, scale.shape)
    past = (jnp.cumsum(step_cost, axis=-1) - step_cost) / span[:, None, None]
    past = past - past.mean(axis=1, keepdims=True)
    return advantage + lam * past / scale[:, None, None]


def reference_rewards(
    ref: dict, is_hard: jax.Array, lam: jax.Array, config: BoPOConfig, cost_scale
) -> jax.Array:
    """Return the rewards of the two boundary references of each task, shape (B, 2)."""
    cheap = task_rewards(
        ref["cheap_success"], ref["cheap_cost"], ref, is_hard, lam, config, cost_scale
    )
    expensive = task_rewards(
        ref["expensive_success"],
        ref["expensive_cost"],
        ref,
        is_hard,
        lam,
        config,
        cost_scale,
    )
    return jnp.stack([cheap, expensive], axis=-1)


def make_train(
    config: BoPOConfig,
    params,
    train_tasks: np.ndarray,
    reference: dict,
    classes: np.ndarray,
    init_params: dict,
    normalizer: networks.RunningNormalizer,
) -> Callable:
    """Return a pure ``train(rng, lam, state=None, n_updates=config.updates)``.

    ``train`` returns ``(state, metrics)``. Update ``u`` draws from
    ``fold_in(rng, u)`` and the state counts its updates (``state.step`` counts
    gradient steps; ``updates_done`` updates), so training resumed from a saved state
    for the remaining updates ends exactly where an uninterrupted run does. With
    ``state=None`` it starts from ``init_params``; ``n_updates`` is static under ``jit``.

    ``params`` are the twin's training-split parameters; ``train_tasks`` (n,) the task
    indices of the boundary store with their ``reference`` arrays (n,) and ``classes``
    (n,); ``init_params`` and ``normalizer`` the warm start (or a fresh network's).
    ``metrics`` hold per-update means: ``success``, ``cost`` (USD), ``reward``,
    ``expensive_share``, ``entropy``, ``kl``, ``clip_fraction``, and ``steps`` (the
    environment steps the update's rollouts took).
    """
    network = networks.ActorCritic(
        n_actions=params.n_actions, hidden_sizes=tuple(config.hidden_sizes)
    )
    tasks = jnp.asarray(train_tasks, jnp.int32)
    ref_all = {k: jnp.asarray(v, jnp.float32) for k, v in reference.items()}
    hard_all = jnp.asarray(classes == HARD, jnp.float32)
    cost_scale = jnp.mean(ref_all["expensive_cost"])
    n_tasks = tasks.shape[0]
    b, g = config.tasks_per_update, config.group_size
    tx = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate)
    )

    def log_probs(p, obs, actions):
        x = networks.normalize(normalizer, networks.policy_features(obs))
        logits, _, _ = network.apply(p, x, obs["action_mask"].astype(bool))
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, actions[..., None], axis=-1)[..., 0]
        return logp, logp_all

    def loss_fn(p, batch):
        logp, logp_all = log_probs(p, batch["obs"], batch["action"])
        valid = batch["valid"].astype(jnp.float32)
        n_valid = jnp.maximum(valid.sum(), 1.0)
        ratio = jnp.exp(logp - batch["logp_old"])
        adv = batch["advantage"]
        clipped = jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps)
        pg = -jnp.minimum(ratio * adv, clipped * adv)
        probs = jnp.exp(logp_all)
        entropy = -jnp.sum(jnp.where(probs > 0, probs * logp_all, 0.0), axis=-1)
        kl = jnp.sum(
            jnp.where(probs > 0, probs * (logp_all - batch["logp_ref_all"]), 0.0), axis=-1
        )
        mean = lambda x: jnp.sum(x * valid) / n_valid  # noqa: E731
        loss = mean(pg) + config.kl_coef * mean(kl) - config.ent_coef * mean(entropy)
        clip_frac = mean((jnp.abs(ratio - 1) > config.clip_eps).astype(jnp.float32))
        return loss, (mean(entropy), mean(kl), clip_frac)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def init_state():
        return BoPOState.create(
            apply_fn=network.apply,
            params=init_params,
            tx=tx,
            normalizer=normalizer,
            updates_done=jnp.int32(0),
        )

    def train(rng, lam, state=None, n_updates=config.updates):
        lam = jnp.asarray(lam, jnp.float32)
        state = init_state() if state is None else state

        def _update(state, _):
            key = jax.random.fold_in(rng, state.updates_done)
            k_task, k_seed, k_roll, k_perm = jax.random.split(key, 4)

            # Sample tasks, roll out a group of the current policy on each
            rows = jax.random.randint(k_task, (b,), 0, n_tasks)
            group_tasks = jnp.repeat(tasks[rows], g)
            if config.shared_seeds:
                seeds = jnp.repeat(jax.random.bits(k_seed, (b,), jnp.uint32), g)
            else:
                seeds = jax.random.bits(k_seed, (b * g,), jnp.uint32)
            policy = NetworkPolicy(state.params, normalizer, network, greedy=False)
            out = rollout(policy, params, group_tasks, seeds, k_roll, record=True)
            traj = out["trajectory"]

            # Boundary-relative rewards and the reference-guided advantage
            ref = {k: v[rows] for k, v in ref_all.items()}
            is_hard = hard_all[rows]
            success = out["success"].astype(jnp.float32).reshape(b, g)
            cost = out["cost"].reshape(b, g)
            expand = lambda x: x[:, None]  # noqa: E731
            rewards = task_rewards(
                success,
                cost,
                jax.tree.map(expand, ref),
                expand(is_hard),
                lam,
                config,
                cost_scale,
            )
            ref_rewards = reference_rewards(ref, is_hard, lam, config, cost_scale)
            advantage = step_advantages(
                rewards,
                ref_rewards,
                traj["cost"].reshape(b, g, -1),
                cost_span(ref, config, cost_scale),
                lam,
                config,
            ).reshape(b * g, -1)

            # Probabilities of the behaviour and of the warm start
            logp_old, _ = log_probs(state.params, traj["obs"], traj["action"])
            _, logp_ref_all = log_probs(init_params, traj["obs"], traj["action"])
            data = {
                "obs": traj["obs"],
                "action": traj["action"],
                "valid": traj["valid"],
                "logp_old": logp_old,
                "logp_ref_all": logp_ref_all,
                "advantage": advantage,
            }

            # Epochs of minibatch updates over the rollouts
            def _epoch(state, k):
                perm = jax.random.permutation(k, b * g).reshape(config.minibatches, -1)
                batches = jax.tree.map(lambda x: x[perm], data)

                def _minibatch(state, batch):
                    (loss, aux), grads = grad_fn(state.params, batch)
                    return state.apply_gradients(grads=grads), (loss, *aux)

                return jax.lax.scan(_minibatch, state, batches)

            keys = jax.random.split(k_perm, config.epochs)
            state, (loss, entropy, kl, clip_frac) = jax.lax.scan(_epoch, state, keys)
            counts = out["model_counts"]
            metrics = {
                "success": success.mean(),
                "cost": cost.mean(),
                "reward": rewards.mean(),
                "expensive_share": counts[:, 1:].sum() / jnp.maximum(counts.sum(), 1),
                "steps": traj["valid"].sum(),
                "loss": loss.mean(),
                "entropy": entropy.mean(),
                "kl": kl.mean(),
                "clip_fraction": clip_frac.mean(),
            }
            return state.replace(updates_done=state.updates_done + 1), metrics

        return jax.lax.scan(_update, state, None, length=n_updates)

    train.init_state = init_state
    return train
