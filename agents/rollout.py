"""Run policies for whole episodes: jitted and vmapped on the JAX twin, or step by step
on the Gymnasium environment."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from envs import jax_env

EPISODE_FIELDS = (
    "success",
    "score",
    "reward",
    "cost",
    "steps",
    "expensive_calls",
    "model_counts",
    "bankrupt",
    "aborted",
    "downgrades",
    "overspent",
    "budget",
    "task",
)
"""Keys of the per-episode results of :func:`rollout`."""


def episode_seeds(key: jax.Array, n: int) -> jax.Array:
    """Return ``n`` uint32 episode seeds drawn from ``key``."""
    return jax.random.bits(key, (n,), dtype=jnp.uint32)


def rollout(
    policy,
    params: jax_env.EnvParams,
    tasks: jax.Array,
    seeds: jax.Array,
    key: jax.Array,
    budgets: jax.Array | None = None,
    caps: jax.Array | None = None,
    record: bool = False,
) -> dict:
    """Run one episode per ``(task, seed)`` pair with ``policy``; return a dict of arrays.

    ``tasks`` (B,) are task indices (``-1`` to sample), ``seeds`` (B,) uint32 episode
    seeds, ``budgets`` (B,) USD (``nan`` to sample from ``params``) and ``caps`` (B,)
    (``-1`` to sample). The result holds the :data:`EPISODE_FIELDS`, each of shape (B,)
    (``model_counts`` (B, M)); with ``record`` also a ``"trajectory"`` dict of per-step
    arrays of shape (B, H, ...): ``obs``, ``action`` (as chosen), ``model`` (as called,
    ``-1`` for none), ``cost``, ``reward``, ``progress`` (the call did its job: the
    step-level label a logged agent run provides) and ``valid`` (the step happened).
    """
    return _rollout(policy, params, tasks, seeds, key, budgets, caps, record, type(policy))


@functools.partial(jax.jit, static_argnames=("record", "policy_type"))
def _rollout(policy, params, tasks, seeds, key, budgets, caps, record, policy_type):
    """Return :func:`rollout`'s result, jitted once per policy class.

    ``policy_type`` is part of the cache key: the tree structures of two flax dataclass
    policies with the same fields (``ExpensiveFirst(k)``, ``EscalateOnError(m)``)
    compare equal, so without it a hash collision in the jit cache could run one
    policy's compiled code for the other.
    """
    del policy_type
    n = tasks.shape[0]
    budgets = jnp.full(n, jnp.nan) if budgets is None else budgets
    caps = jnp.full(n, -1, jnp.int32) if caps is None else caps
    keys = jax.random.split(key, n)
    return jax.vmap(lambda *a: _episode(policy, params, record, *a))(
        tasks, seeds, keys, budgets, caps
    )


def _episode(policy, params, record, task, seed, key, budget, cap):
    obs, state = jax_env.reset_from_seed(seed, params, task, budget, cap)
    carry = policy.init_carry(obs)

    def body(loop, step_key):
        state, obs, carry, done, totals = loop
        action, new_carry = policy.act(step_key, obs, carry)
        new_obs, new_state, reward, terminated, truncated, info = jax_env.step_env(
            state, action, params
        )
        live = ~done
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(live, a, b), new, old
        )
        totals = add_step(totals, live, reward, terminated, truncated, info)
        step_out = {
            "obs": obs,
            "action": action,
            "model": jnp.where(live, info["model"], -1),
            "cost": jnp.where(live, info["cost"], 0.0),
            "reward": jnp.where(live, reward, 0.0),
            "progress": live & (new_state.n_correct > state.n_correct),
            "valid": live,
        }
        loop = (
            keep(new_state, state),
            keep(new_obs, obs),
            keep(new_carry, carry),
            done | terminated | truncated,
            totals,
        )
        return loop, (step_out if record else None)

    step_keys = jax.random.split(key, params.horizon)
    init = (state, obs, carry, jnp.bool_(False), episode_totals())
    (state, _, _, _, totals), traj = jax.lax.scan(body, init, step_keys)
    out = episode_result(state, totals)
    if record:
        out["trajectory"] = traj
    return out


def episode_totals() -> dict:
    """Return the running totals of an episode before its first step."""
    return {
        "reward": jnp.float32(0.0),
        "downgrades": jnp.int32(0),
        "success": jnp.bool_(False),
        "score": jnp.float32(0.0),
        "bankrupt": jnp.bool_(False),
        "aborted": jnp.bool_(False),
    }


def add_step(totals, live, reward, terminated, truncated, info) -> dict:
    """Return the totals after one step of the twin (ignored unless ``live``)."""
    return {
        **totals,
        "reward": totals["reward"] + jnp.where(live, reward, 0.0),
        "downgrades": totals["downgrades"] + (live & info["downgraded"]),
        "success": totals["success"] | (live & info["success"]),
        "score": jnp.where(live & (terminated | truncated), info["score"], totals["score"]),
        "bankrupt": totals["bankrupt"] | (live & info["bankrupt"]),
        "aborted": totals["aborted"] | (live & info["aborted"]),
    }


def episode_result(state, totals) -> dict:
    """Return the per-episode fields (:data:`EPISODE_FIELDS`) from the final state."""
    out = dict(totals)
    out.update(
        cost=state.spent,
        steps=state.t,
        expensive_calls=state.expensive_used,
        model_counts=state.model_counts,
        overspent=state.spent > state.budget,
        budget=state.budget,
        task=state.task,
    )
    return out


def run_gym_episode(env, policy, seed: int, key: jax.Array, options: dict | None = None):
    """Run ``policy`` for one episode of a Gymnasium ``BudgetRoute`` env; return
    ``(total_reward, total_cost_usd, last_info)``."""
    obs, _ = env.reset(seed=seed, options=options)
    carry = policy.init_carry(jax.tree.map(jnp.asarray, obs))
    total_reward = total_cost = 0.0
    while True:
        key, step_key = jax.random.split(key)
        action, carry = _act(policy, step_key, jax.tree.map(jnp.asarray, obs), carry)
        obs, reward, terminated, truncated, info = env.step(int(action))
        total_reward += reward
        total_cost += info["cost"]
        if terminated or truncated:
            return total_reward, total_cost, info


def _act(policy, key, obs, carry):
    return _act_jit(policy, key, obs, carry, type(policy))


@functools.partial(jax.jit, static_argnames="policy_type")
def _act_jit(policy, key, obs, carry, policy_type):
    """Return ``policy.act(key, obs, carry)``, jitted once per policy class (see
    :func:`_rollout`)."""
    del policy_type
    return policy.act(key, obs, carry)


def to_numpy(tree) -> dict:
    """Return a pytree of device arrays as numpy arrays."""
    return jax.tree.map(np.asarray, tree)
