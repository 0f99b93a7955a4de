"""PPO-Lagrangian: a budget-conditioned router trained towards a cost target.

On-policy PPO in the JAX twin with two critics (the :class:`agents.networks.ActorCritic`
reward and cost heads) and a Lagrange multiplier that adapts the cost trade-off to a
target, instead of fixing it before training (DESIGN section 1, last paragraph).

**Batches.** Every update runs ``episodes`` whole episodes of the current (sampling)
policy with :func:`agents.rollout.rollout` (``record=True``): arrays of shape
``(N, H)`` with the ``valid`` mask of the steps that happened. Budgets and caps are
sampled per episode from the ranges in :class:`envs.jax_env.EnvParams` (see
:func:`envs.jax_env.make_params`, ``budget_usd=(lo, hi)``, ``expensive_cap``); the
policy reads the money and calls left in its features, and budget-constrained decoding
in the twin means no episode ever overspends.

**Signals per step.** Reward ``r_t``: the environment's reward (success, 1 at the
terminal step of a successful episode). Cost ``c_t``, in the *constraint's units*
(multiples of ``unit = cost_scale``, by default the target itself):

- ``cost_mode="usd"``: ``info["cost"] / unit``; the constraint is
  ``mean_episodes(C) <= cost_target`` with ``C`` the episode's cost in USD;
- ``cost_mode="budget_fraction"``: ``info["cost"] / (B * unit)`` with ``B`` the
  episode's budget (USD, finite); the constraint is
  ``mean_episodes(C / B) <= cost_target``.

The violation ``g = mean_episodes(sum_t c_t) - cost_target / unit`` (by default the
relative excess over the target, ``mean / target - 1``) is what the multiplier sees,
so its learning rate and the multiplier itself do not depend on the currency scale or
on how large the target is. An optional second constraint bounds the share of calls
that go to a model other than the cheapest, ``sum(expensive calls) / sum(calls) <=
share_target``, with the per-step cost ``e_t - share_target`` (``e_t`` 1 for an
expensive call), its own critic (a small MLP beside the network) and its own
multiplier.

**GAE** runs per episode for each signal with ``gamma`` and ``gae_lambda``; a step whose
successor is not valid is terminal (the episode ended, or hit the horizon: the steps
left are in the features, so the horizon is part of the state and is not bootstrapped).

**Multipliers** (:class:`Multiplier`, a pytree; :func:`update_multiplier` is pure).
Projected dual ascent ``lam <- clip(lam + lr * g, 0, bound)``, or the PID form of
Stooke, Achiam and Abbeel (2020)::

    I   <- clip(I + lr * g, 0, bound)              # integral (anti-windup at bound)
    lam <- clip(I + kp * g + kd * max(g - g_prev, 0), 0, bound)

which is dual ascent when ``kp = kd = 0`` (the share multiplier has its own step size
and the same ``kp``, ``kd``). Each update first updates the multipliers with the
batch's violations, then uses them. The targets and the multipliers (with their gains)
are leaves of the training state: one compiled ``train`` serves any target, a sweep
over targets is one ``vmap`` over states, and a resumed state keeps its own.

**Loss.** With ``lam`` (cost) and ``mu`` (share, 0 when off) the combined advantage is
``A = (A_r - lam * A_c - mu * A_s) / (1 + lam + mu)``, centred and scaled over the
batch's decisions; the loss is PPO's clipped surrogate on it, minus ``ent_coef`` times
the entropy, plus ``vf_coef`` times the squared error of each critic against its GAE
return. Steps with no allowed action (bankruptcy at the first call) are not decisions
and are left out. During the first ``critic_warmup`` updates only the critics learn
(the warm-started actor is held), so the untrained critics of a cloned policy do not
drive its first steps.

**Training loop.** :func:`make_train` returns a pure ``train(rng, state=None,
n_updates=config.updates)`` whose loop is one ``lax.scan``; it can be jitted
(``n_updates`` static) and vmapped over seeds. Update ``u`` draws everything from
``fold_in(update_root, u)`` where ``u`` is the state's own update count, so training
for ``k`` updates, saving the state (:class:`agents.checkpoint.Checkpointer`) and
resuming it for the rest equals one uninterrupted run. :func:`train_and_log` does that
in chunks and prints one line per update.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from agents import networks
from agents.policy import NetworkPolicy
from agents.rollout import rollout

COST_MODES = ("usd", "budget_fraction")
"""How the cost constraint is measured (see the module docstring)."""
LOG_FIELDS = (
    "return",
    "success",
    "cost",
    "lagrange_multiplier",
    "violation",
    "expensive_share",
    "entropy",
    "kl",
)
"""Metrics :func:`format_update` prints, in order, after ``update``."""


@dataclass(frozen=True)
class PPOLagConfig:
    """Hyperparameters of PPO-Lagrangian."""

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_sizes", "activation")
    """Fields a checkpoint must match on restore: they change the shapes of the
    training state, or what its parameters mean."""

    updates: int = 200
    """Policy updates (each: roll out a batch of episodes, then optimise)."""
    episodes: int = 128
    """Episodes per update (``N``; each runs to its end or the horizon ``H``)."""
    epochs: int = 4
    """Passes over each update's batch."""
    minibatches: int = 4
    """Minibatches per pass, over episodes (must divide ``episodes``)."""
    learning_rate: float = 6e-4
    """Adam step size."""
    anneal_lr: bool = True
    """Decay the step size linearly to 0 over ``updates`` (by the optimizer's own step
    count, so a resumed run follows the same schedule); the policy then settles where
    the multiplier has brought it instead of still oscillating around the target.
    Updates beyond ``updates`` then leave the policy as it is."""
    max_grad_norm: float = 0.5
    """Gradients are clipped to this global norm."""
    clip_eps: float = 0.2
    """PPO ratio clipping."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of each critic's squared error (reward, cost and share critics)."""
    gamma: float = 1.0
    """Discount of reward and cost (1: episodes are finite and the constraint is on the
    undiscounted episode cost)."""
    gae_lambda: float = 0.95
    """GAE's bias-variance trade-off."""
    normalize_advantage: bool = True
    """Centre and scale the combined advantage over each batch's decisions."""
    critic_warmup: int = 10
    """First updates in which only the critics learn (the actor is held)."""
    cost_mode: str = "usd"
    """``"usd"``: the target is a mean episode cost in USD; ``"budget_fraction"``: a
    mean share of each episode's (finite) budget."""
    cost_target: float = 0.1
    """The cost target: USD per episode, or a fraction of the episode's budget."""
    cost_scale: float = 0.0
    """Unit of the cost signal, in the target's units (USD, or a fraction of the
    budget); 0: the target itself, so the constraint reads ``mean / target <= 1``.
    Needed when the target is 0."""
    multiplier_init: float = 0.0
    """Initial Lagrange multiplier (success per unit of the cost signal)."""
    multiplier_lr: float = 0.1
    """Dual ascent step size (the PID integral gain ``ki``), per unit of violation."""
    multiplier_max: float = 100.0
    """The multipliers are kept in ``[0, multiplier_max]``."""
    pid_kp: float = 0.5
    """PID proportional gain (0 with ``pid_kd`` 0: plain projected dual ascent)."""
    pid_kd: float = 0.0
    """PID derivative gain, on the positive part of the violation's increase."""
    share_target: float | None = None
    """Largest share of calls to any model but the cheapest (None: no such
    constraint)."""
    share_multiplier_lr: float = 0.5
    """Dual ascent step size of the share multiplier, per unit of share violation."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of each tower (must match the warm start)."""
    activation: str = "tanh"
    """Hidden activation (see ``agents.networks.ACTIVATIONS``; must match the warm
    start)."""

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.updates < 0 or self.episodes < 1 or self.epochs < 1:
            raise ValueError("PPOLagConfig needs updates >= 0, episodes >= 1, epochs >= 1")
        if self.minibatches < 1 or self.episodes % self.minibatches:
            raise ValueError(
                f"minibatches ({self.minibatches}) must divide episodes ({self.episodes})"
            )
        if self.learning_rate <= 0 or self.clip_eps <= 0 or self.max_grad_norm <= 0:
            raise ValueError("learning_rate, clip_eps and max_grad_norm must be > 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError("gamma and gae_lambda must lie in [0, 1]")
        if self.cost_mode not in COST_MODES:
            raise ValueError(
                f"cost_mode must be one of {COST_MODES}, got {self.cost_mode!r}"
            )
        if not np.isfinite(self.cost_target) or self.cost_target < 0:
            raise ValueError(f"cost_target must be finite and >= 0, got {self.cost_target}")
        if self.cost_scale < 0 or (self.cost_scale == 0 and self.cost_target == 0):
            raise ValueError("a cost_target of 0 needs a positive cost_scale")
        if self.multiplier_max <= 0 or not 0 <= self.multiplier_init <= self.multiplier_max:
            raise ValueError("need multiplier_max > 0 and multiplier_init in [0, max]")
        if min(self.multiplier_lr, self.share_multiplier_lr, self.pid_kp, self.pid_kd) < 0:
            raise ValueError("multiplier gains must be >= 0")
        if self.share_target is not None and not 0 <= self.share_target <= 1:
            raise ValueError(f"share_target must lie in [0, 1], got {self.share_target}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive: {self.hidden_sizes}")
        if self.activation not in networks.ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")

    @property
    def unit(self) -> float:
        """Return the size of one unit of the cost signal (USD, or a fraction of the
        budget)."""
        return self.cost_scale if self.cost_scale > 0 else self.cost_target

    @property
    def target(self) -> float:
        """Return the cost target in the constraint's units (1 unless ``cost_scale`` is
        set)."""
        return self.cost_target / self.unit


# ------------------------------------------------------------------- multiplier
@struct.dataclass
class Multiplier:
    """A Lagrange multiplier with its PID memory and gains (a pytree of float32
    scalars; see :func:`update_multiplier`)."""

    value: jax.Array
    """Current multiplier, in ``[0, bound]``."""
    integral: jax.Array
    """Integral term: the projected sum of ``lr * violation`` (equals ``value`` under
    plain dual ascent)."""
    prev_violation: jax.Array
    """Violation of the previous update (``nan`` before the first)."""
    lr: jax.Array
    """Dual ascent step size (integral gain), multiplier per unit of violation."""
    bound: jax.Array
    """Upper end of the projection interval ``[0, bound]``."""
    kp: jax.Array
    """Proportional gain."""
    kd: jax.Array
    """Derivative gain (on the positive part of the violation's increase)."""

    @classmethod
    def create(
        cls,
        init: float = 0.0,
        lr: float = 0.05,
        bound: float = 100.0,
        kp: float = 0.0,
        kd: float = 0.0,
    ) -> Multiplier:
        """Return a multiplier at ``init`` (clipped to ``[0, bound]``) with its gains."""
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        value = jnp.clip(f32(init), 0.0, f32(bound))
        return cls(
            value=value,
            integral=value,
            prev_violation=f32(jnp.nan),
            lr=f32(lr),
            bound=f32(bound),
            kp=f32(kp),
            kd=f32(kd),
        )


def update_multiplier(multiplier: Multiplier, violation: jax.Array) -> Multiplier:
    """Return the multiplier after one update on ``violation`` (constraint value minus
    target, in the constraint's units; positive when the constraint is broken).

    ``I <- clip(I + lr * g, 0, bound)`` then ``value <- clip(I + kp * g + kd * max(g -
    g_prev, 0), 0, bound)``; with ``kp = kd = 0`` this is projected dual ascent. A
    non-finite violation counts as 0, so the multiplier always stays finite.
    """
    m = multiplier
    g = jnp.asarray(violation, jnp.float32)
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    integral = jnp.clip(m.integral + m.lr * g, 0.0, m.bound)
    rise = jnp.where(jnp.isnan(m.prev_violation), 0.0, g - m.prev_violation)
    value = integral + m.kp * g + m.kd * jnp.maximum(rise, 0.0)
    return m.replace(
        value=jnp.clip(value, 0.0, m.bound), integral=integral, prev_violation=g
    )


# ------------------------------------------------------------------------- GAE
def gae(
    rewards: jax.Array,
    values: jax.Array,
    valid: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    """Return ``(advantages, returns)`` of generalised advantage estimation.

    All arrays have shape ``(..., H)`` (time last; ``valid`` broadcasts against the
    others, so several signals can share one mask). A step is in the episode where
    ``valid``; a valid step whose successor is not valid is terminal (its successor's
    value counts as 0). Advantages and returns are 0 on steps that are not valid;
    ``returns = advantages + values`` on valid ones.
    """
    values = jnp.asarray(values, jnp.float32)
    valid = jnp.broadcast_to(jnp.asarray(valid).astype(jnp.float32), values.shape)
    rewards = jnp.asarray(rewards, jnp.float32) * valid
    values = values * valid
    zero = jnp.zeros_like(values[..., :1])
    next_valid = jnp.concatenate([valid[..., 1:], zero], axis=-1)
    next_values = jnp.concatenate([values[..., 1:], zero], axis=-1) * next_valid
    deltas = (rewards + gamma * next_values - values) * valid

    def _step(carry, x):
        delta, nv, v = x
        adv = (delta + gamma * gae_lambda * nv * carry) * v
        return adv, adv

    xs = tuple(jnp.moveaxis(a, -1, 0) for a in (deltas, next_valid, valid))
    _, adv = jax.lax.scan(_step, jnp.zeros_like(values[..., 0]), xs, reverse=True)
    adv = jnp.moveaxis(adv, 0, -1)
    return adv, (adv + values) * valid


def step_costs(cost_usd: jax.Array, budget: jax.Array, config: PPOLagConfig) -> jax.Array:
    """Return per-step costs in the constraint's units, shape (N, H).

    ``cost_usd`` (N, H) are the steps' costs in USD, ``budget`` (N,) the episodes'
    budgets in USD. ``"usd"`` mode divides by ``config.unit`` (USD);
    ``"budget_fraction"`` by the episode's budget times ``config.unit`` (0 where the
    budget is 0). Summed over an episode's steps and averaged over episodes, the result
    is what ``config.target`` bounds.
    """
    cost = jnp.asarray(cost_usd, jnp.float32) / jnp.float32(config.unit)
    if config.cost_mode == "usd":
        return cost
    budget = jnp.asarray(budget, jnp.float32)[:, None]
    return jnp.where(budget > 0, cost / jnp.maximum(budget, 1e-12), 0.0)


# ---------------------------------------------------------------------- state
class _ValueMLP(nn.Module):
    """A value tower like the network's critics (the share constraint's critic)."""

    hidden_sizes: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, x):
        act = networks.ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(x)[..., 0]


class PPOLagState(train_state.TrainState):
    """Training state: ``params`` holds ``{"actor_critic": ActorCritic variables,
    "share_critic": variables of the share constraint's critic}``."""

    normalizer: networks.RunningNormalizer
    """Feature statistics (from the warm start, or fitted at initialisation; frozen)."""
    lagrange: Multiplier
    """The cost constraint's multiplier."""
    share_lagrange: Multiplier
    """The share constraint's multiplier (stays 0 when that constraint is off)."""
    update: jax.Array
    """Updates completed (int32); selects each update's random key."""
    cost_target: jax.Array
    """The cost target in the constraint's units (float32; see
    :attr:`PPOLagConfig.target`). A leaf, so one compiled ``train`` serves any target
    and a sweep over targets is one ``vmap`` over states."""
    share_target: jax.Array
    """The largest share of expensive calls (float32; used only when the config turns
    the share constraint on)."""


def make_network(config: PPOLagConfig, n_actions: int) -> networks.ActorCritic:
    """Return the actor-critic network a config describes."""
    return networks.ActorCritic(
        n_actions=n_actions,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
    )


def make_policy(
    config: PPOLagConfig, state: PPOLagState, n_actions: int, greedy: bool = False
) -> NetworkPolicy:
    """Return the trained router as a :class:`agents.policy.NetworkPolicy` (sampling by
    default: the constrained optimum is in general a stochastic policy)."""
    network, _ = _static_parts(config, n_actions)
    return NetworkPolicy(state.params["actor_critic"], state.normalizer, network, greedy)


@functools.lru_cache(maxsize=32)
def _static_parts(config: PPOLagConfig, n_actions: int):
    """Return the network and the optimizer of a config, one object each per config, so
    that states built apart (fresh, restored) share them and hit the same compiled
    functions."""
    network = make_network(config, n_actions)
    lr = config.learning_rate
    if config.anneal_lr:
        steps = max(config.updates * config.epochs * config.minibatches, 1)
        lr = optax.linear_schedule(config.learning_rate, 0.0, steps)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr))
    return network, tx


def _n_features(params) -> int:
    return networks.n_policy_features(
        params.n_models,
        params.features.shape[-1],
        params.step_features.shape[-1],
        privileged=params.privileged_state,
    )


def _draw_tasks(key: jax.Array, tasks: jax.Array | None, n: int) -> jax.Array:
    if tasks is None:
        return jnp.full(n, -1, jnp.int32)
    return tasks[jax.random.randint(key, (n,), 0, tasks.shape[0])]


def _masked_normalizer(x: jax.Array, weight: jax.Array) -> networks.RunningNormalizer:
    """Return a normaliser fitted on the rows of ``x`` (..., n) where ``weight`` is 1."""
    n = x.shape[-1]
    x = x.reshape(-1, n)
    w = weight.reshape(-1).astype(jnp.float32)
    count = jnp.maximum(w.sum(), 1.0)
    mean = (x * w[:, None]).sum(0) / count
    var = (jnp.square(x - mean) * w[:, None]).sum(0) / count
    return networks.RunningNormalizer(mean=mean, var=var, count=w.sum())


def adapt_warm_start(
    config: PPOLagConfig,
    params,
    normalizer: networks.RunningNormalizer,
    envs: Sequence,
    tasks: jax.Array | None,
    rng: jax.Array,
    min_var: float = 1e-8,
):
    """Return ``(params, normalizer)``: a warm start made ready for budgets and caps its
    training data never had.

    Boundary rollouts without a budget or a cap show constant budget features (an
    unlimited budget, no cap), so the cloned policy's normaliser has zero variance there,
    and any finite budget would read as a feature clipped to +-:data:`networks.NORM_CLIP`:
    every budget alike. For each feature whose variance is at most ``min_var``, the
    statistics are refitted on ``config.episodes`` episodes of the cloned policy in each
    of ``envs`` (the twin's parameters under the new budgets), and the first-layer
    weights of every tower on that feature are set to 0. The policy, its values and its
    behaviour are then those of the warm start (where the feature sat at its mean, its
    normalised value was 0), and gradients reach the new inputs from the first update.
    Features that varied keep the warm start's statistics.
    """
    network = make_network(config, envs[0].n_actions)
    policy = NetworkPolicy(params, normalizer, network, greedy=False)
    n = config.episodes
    features, valid = [], []
    for env, key in zip(envs, jax.random.split(rng, len(envs)), strict=True):
        k_task, k_seed, k_roll = jax.random.split(key, 3)
        seeds = jax.random.bits(k_seed, (n,), jnp.uint32)
        out = rollout(
            policy, env, _draw_tasks(k_task, tasks, n), seeds, k_roll, record=True
        )
        features.append(networks.policy_features(out["trajectory"]["obs"]))
        valid.append(out["trajectory"]["valid"])
    fitted = _masked_normalizer(jnp.stack(features), jnp.stack(valid))
    unseen = normalizer.var <= min_var
    adapted = networks.RunningNormalizer(
        mean=jnp.where(unseen, fitted.mean, normalizer.mean),
        var=jnp.where(unseen, fitted.var, normalizer.var),
        count=normalizer.count,
    )

    def first_layer(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        if "Dense_0" in names and names[-1] == "kernel":
            return jnp.where(unseen[:, None], 0.0, leaf).astype(leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(first_layer, params), adapted


def init_state(
    config: PPOLagConfig,
    params,
    rng: jax.Array,
    init_params: dict | None = None,
    normalizer: networks.RunningNormalizer | None = None,
    tasks: jax.Array | None = None,
    cost_target: float | jax.Array | None = None,
    share_target: float | jax.Array | None = None,
) -> PPOLagState:
    """Return a fresh training state (update 0); pure and jittable.

    ``params`` are the twin's :class:`envs.jax_env.EnvParams`. ``init_params`` (the
    variables of an :class:`agents.networks.ActorCritic` with the config's hidden sizes
    and activation, e.g. ``BCTrainState.params``) and ``normalizer`` warm-start the
    router; without them the network is initialised from ``rng`` and the normaliser is
    fitted on the features of one batch of episodes of that initial policy. Also serves
    as the template to restore a checkpoint into.

    ``cost_target`` (USD or fraction of the budget, as ``config.cost_mode`` says) and
    ``share_target`` override the config's targets; costs keep the config's unit
    (:attr:`PPOLagConfig.unit`).
    """
    network, tx = _static_parts(config, params.n_actions)
    n_features = _n_features(params)
    k_net, k_share, k_norm = jax.random.split(rng, 3)
    dummy_x = jnp.zeros((1, n_features), jnp.float32)
    dummy_mask = jnp.ones((1, params.n_actions), bool)
    fresh = network.init(k_net, dummy_x, dummy_mask)
    if init_params is None:
        init_params = fresh
    else:
        spec = lambda a: (tuple(jnp.shape(a)), str(jnp.result_type(a)))  # noqa: E731
        same_tree = jax.tree.structure(fresh) == jax.tree.structure(init_params)
        if not same_tree or [spec(a) for a in jax.tree.leaves(fresh)] != [
            spec(a) for a in jax.tree.leaves(init_params)
        ]:
            raise ValueError(
                "init_params do not fit an ActorCritic with hidden_sizes "
                f"{config.hidden_sizes}, activation {config.activation!r} and "
                f"{params.n_actions} actions"
            )
    share = _ValueMLP(config.hidden_sizes, config.activation).init(k_share, dummy_x)
    if normalizer is None:
        # Fit the features of one batch of episodes of the initial policy
        identity = networks.RunningNormalizer.create(n_features)
        policy = NetworkPolicy(init_params, identity, network, greedy=False)
        k_task, k_seed, k_roll = jax.random.split(k_norm, 3)
        n = config.episodes
        seeds = jax.random.bits(k_seed, (n,), jnp.uint32)
        task_ids = _draw_tasks(k_task, tasks, n)
        out = rollout(policy, params, task_ids, seeds, k_roll, record=True)
        traj = out["trajectory"]
        features = networks.policy_features(traj["obs"])
        normalizer = _masked_normalizer(features, traj["valid"])
    # Targets in the constraint's units, and the multipliers
    if cost_target is None:
        target = config.target
    else:
        target = jnp.asarray(cost_target, jnp.float32) / config.unit
    if share_target is None:
        share_target = config.share_target if config.share_target is not None else 1.0
    make_mult = lambda lr, init: Multiplier.create(  # noqa: E731
        init, lr, config.multiplier_max, config.pid_kp, config.pid_kd
    )
    state = PPOLagState.create(
        apply_fn=network.apply,
        params={"actor_critic": init_params, "share_critic": share},
        tx=tx,
        normalizer=normalizer,
        lagrange=make_mult(config.multiplier_lr, config.multiplier_init),
        share_lagrange=make_mult(
            config.share_multiplier_lr if config.share_target is not None else 0.0, 0.0
        ),
        update=jnp.int32(0),
        cost_target=jnp.asarray(target, jnp.float32),
        share_target=jnp.asarray(share_target, jnp.float32),
    )
    return state.replace(step=jnp.int32(0))


# --------------------------------------------------------------------- update
def make_update(
    config: PPOLagConfig, params, tasks: np.ndarray | None = None
) -> Callable[[jax.Array, PPOLagState], tuple[PPOLagState, dict]]:
    """Return the pure single update ``update(update_root, state) -> (state, metrics)``.

    The update's randomness is ``fold_in(update_root, state.update)``. ``params`` are
    the twin's training parameters; ``tasks`` the task indices to sample from (default:
    every task of ``params``). ``metrics`` are scalars, see :func:`make_train`.
    """
    bounds = (params.budget_low, params.budget_high)
    concrete = not any(isinstance(b, jax.core.Tracer) for b in bounds)
    if (
        config.cost_mode == "budget_fraction"
        and concrete
        and not all(np.isfinite(float(b)) for b in bounds)
    ):
        raise ValueError(
            "cost_mode 'budget_fraction' needs finite budgets: make the params with "
            "budget_usd=(low, high)"
        )
    network, _ = _static_parts(config, params.n_actions)
    share_critic = _ValueMLP(config.hidden_sizes, config.activation)
    task_pool = None if tasks is None else jnp.asarray(tasks, jnp.int32)
    n = config.episodes
    share_on = config.share_target is not None

    def _evaluate(p, x, mask):
        logits, v_r, v_c = network.apply(p["actor_critic"], x, mask)
        v_s = share_critic.apply(p["share_critic"], x) if share_on else jnp.zeros_like(v_r)
        return logits, v_r, v_c, v_s

    def loss_fn(p, batch, actor_on):
        logits, v_r, v_c, v_s = _evaluate(p, batch["x"], batch["mask"])
        w = batch["decision"].astype(jnp.float32)
        n_w = jnp.maximum(w.sum(), 1.0)
        mean = lambda a: jnp.sum(a * w) / n_w  # noqa: E731

        # Clipped surrogate on the combined advantage
        logp = networks.masked_log_prob(logits, batch["action"])
        log_ratio = logp - batch["logp_old"]
        ratio = jnp.exp(log_ratio)
        adv = batch["advantage"]
        clipped = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
        pg_loss = mean(-jnp.minimum(ratio * adv, clipped * adv))
        entropy = mean(networks.masked_entropy(logits, batch["mask"]))

        # The critics regress on their GAE returns
        value_loss = mean(0.5 * jnp.square(v_r - batch["return_reward"]))
        cost_value_loss = mean(0.5 * jnp.square(v_c - batch["return_cost"]))
        share_value_loss = mean(0.5 * jnp.square(v_s - batch["return_share"]))
        critic_loss = value_loss + cost_value_loss + share_value_loss
        loss = actor_on * (pg_loss - config.ent_coef * entropy)
        loss = loss + config.vf_coef * critic_loss
        aux = {
            "policy_loss": pg_loss,
            "value_loss": value_loss,
            "cost_value_loss": cost_value_loss,
            "entropy": entropy,
            "kl": mean((ratio - 1.0) - log_ratio),
            "clip_fraction": mean((jnp.abs(ratio - 1.0) > config.clip_eps) * 1.0),
        }
        return loss, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(update_root: jax.Array, state: PPOLagState) -> tuple[PPOLagState, dict]:
        key = jax.random.fold_in(update_root, state.update)
        k_task, k_seed, k_roll, k_perm = jax.random.split(key, 4)

        # Collect a batch of episodes with the current sampling policy
        policy = NetworkPolicy(
            state.params["actor_critic"], state.normalizer, network, greedy=False
        )
        seeds = jax.random.bits(k_seed, (n,), jnp.uint32)
        task_ids = _draw_tasks(k_task, task_pool, n)
        out = rollout(policy, params, task_ids, seeds, k_roll, record=True)
        traj = out["trajectory"]
        valid = traj["valid"]
        obs = traj["obs"]
        mask = obs["action_mask"].astype(bool)
        decision = valid & mask.any(axis=-1)

        # Per-step reward, cost in the constraint's units, and expensive-call signal
        reward = traj["reward"]
        cost = step_costs(traj["cost"], out["budget"], config)
        called = valid & (traj["model"] >= 0)
        expensive = called & (traj["model"] >= 1)
        share_cost = jnp.where(called, expensive - state.share_target, 0.0)

        # Behaviour policy's log-probabilities and the critics' values
        x = networks.normalize(state.normalizer, networks.policy_features(obs))
        logits, v_r, v_c, v_s = _evaluate(state.params, x, mask)
        logp_old = networks.masked_log_prob(logits, traj["action"])

        # Update the multipliers on this batch's constraint violations
        episode_cost = jnp.sum(cost * valid, axis=1)
        violation = episode_cost.mean() - state.cost_target
        n_calls = jnp.maximum(called.sum(), 1)
        share = expensive.sum() / n_calls
        share_violation = share - state.share_target
        lagrange = update_multiplier(state.lagrange, violation)
        share_lagrange = state.share_lagrange
        if share_on:
            share_lagrange = update_multiplier(share_lagrange, share_violation)
        lam, mu = lagrange.value, share_lagrange.value

        # GAE per signal (stacked: reward, cost, share), combined into one advantage
        signals = jnp.stack([reward, cost, share_cost])
        values = jnp.stack([v_r, v_c, v_s])
        advs, rets = gae(signals, values, valid, config.gamma, config.gae_lambda)
        (adv_r, adv_c, adv_s), (ret_r, ret_c, ret_s) = advs, rets
        advantage = (adv_r - lam * adv_c - mu * adv_s) / (1.0 + lam + mu)
        if config.normalize_advantage:
            w = decision.astype(jnp.float32)
            n_w = jnp.maximum(w.sum(), 1.0)
            a_mean = jnp.sum(advantage * w) / n_w
            a_std = jnp.sqrt(jnp.sum(jnp.square(advantage - a_mean) * w) / n_w)
            advantage = (advantage - a_mean) / (a_std + 1e-8)
        data = {
            "x": x,
            "mask": mask,
            "action": traj["action"],
            "decision": decision,
            "logp_old": logp_old,
            "advantage": advantage,
            "return_reward": ret_r,
            "return_cost": ret_c,
            "return_share": ret_s,
        }

        # Epochs of minibatch updates over the episodes
        actor_on = (state.update >= config.critic_warmup).astype(jnp.float32)

        def _epoch(ts, k):
            perm = jax.random.permutation(k, n).reshape(config.minibatches, -1)
            batches = jax.tree.map(lambda a: a[perm], data)

            def _minibatch(ts, batch):
                (_, aux), grads = grad_fn(ts.params, batch, actor_on)
                return ts.apply_gradients(grads=grads), aux

            return jax.lax.scan(_minibatch, ts, batches)

        state = state.replace(lagrange=lagrange, share_lagrange=share_lagrange)
        keys = jax.random.split(k_perm, config.epochs)
        state, aux = jax.lax.scan(_epoch, state, keys)
        state = state.replace(update=state.update + 1)

        counts = out["model_counts"]
        metrics = {
            "update": state.update,
            "return": out["reward"].mean(),
            "success": out["success"].mean(),
            "cost": out["cost"].mean(),
            "constraint": episode_cost.mean(),
            "violation": violation,
            "lagrange_multiplier": lam,
            "expensive_share": counts[:, 1:].sum() / jnp.maximum(counts.sum(), 1),
            "share_violation": share_violation,
            "share_multiplier": mu,
            "steps": valid.sum(),
            **jax.tree.map(jnp.mean, aux),
        }
        return state, metrics

    return update


def make_train(
    config: PPOLagConfig,
    params,
    init_params: dict | None = None,
    normalizer: networks.RunningNormalizer | None = None,
    tasks: np.ndarray | None = None,
) -> Callable[..., tuple[PPOLagState, dict]]:
    """Return a pure ``train(rng, state=None, n_updates=config.updates)``.

    ``params`` are the twin's training parameters (budget and cap ranges included);
    ``init_params`` and ``normalizer`` the warm start (see :func:`init_state`);
    ``tasks`` the task indices to train on (default: all of ``params``).

    ``train`` can be jitted (``jax.jit(train, static_argnames="n_updates")``) and
    vmapped over ``rng``. ``rng`` is the run's base key, split into ``(init_key,
    update_root)``; without ``state`` a fresh one is built from ``init_key``; with one
    (e.g. restored from a checkpoint) training continues from its update count and
    equals an uninterrupted run. Returns ``(state, metrics)``, ``metrics`` mapping each
    name to an array of shape ``(n_updates,)``: ``update`` (count after it),
    ``return`` (mean episode reward), ``success``, ``cost`` (mean episode cost, USD),
    ``constraint`` (mean episode cost in the constraint's units), ``violation``
    (``constraint`` minus the target), ``lagrange_multiplier`` (the value used in the
    update), ``expensive_share`` (share of calls to any model but the cheapest),
    ``share_violation``, ``share_multiplier``, ``steps`` (environment steps taken),
    ``policy_loss``, ``value_loss``, ``cost_value_loss``, ``entropy`` (nats per
    decision), ``kl`` (approximate KL from the behaviour policy) and
    ``clip_fraction``, the last six averaged over the minibatches.
    """
    update = make_update(config, params, tasks)
    task_pool = None if tasks is None else jnp.asarray(tasks, jnp.int32)

    def train(
        rng: jax.Array, state: PPOLagState | None = None, n_updates: int = config.updates
    ) -> tuple[PPOLagState, dict]:
        init_key, update_root = jax.random.split(rng)
        if state is None:
            state = init_state(config, params, init_key, init_params, normalizer, task_pool)
        if n_updates == 0:
            # No update to run: empty metrics of the right dtypes, nothing compiled
            shapes = jax.eval_shape(update, update_root, state)[1]
            return state, jax.tree.map(lambda s: jnp.zeros((0,), s.dtype), shapes)
        return jax.lax.scan(lambda s, _: update(update_root, s), state, None, n_updates)

    return train


# -------------------------------------------------------------------- logging
def uncommit(state):
    """Return ``state`` with its arrays as uncommitted device arrays (host round trip).

    A checkpoint restores arrays committed to a device, and ``jax.jit`` keys its cache
    on that, so a restored state would compile ``train`` a second time; uncommitted, it
    runs the function already compiled for a fresh state.
    """
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)


def format_update(metrics: dict, i: int, steps_per_second: float | None = None) -> str:
    """Return the log line of update ``i`` of per-update ``metrics`` (arrays): stable
    ``name=value`` pairs, ``update`` then :data:`LOG_FIELDS` then ``steps_per_s``."""
    parts = [f"update={int(metrics['update'][i])}"]
    for name in LOG_FIELDS:
        parts.append(f"{name}={float(metrics[name][i]):.5g}")
    if steps_per_second is not None:
        parts.append(f"steps_per_s={steps_per_second:.0f}")
    return " ".join(parts)


def train_and_log(
    train: Callable,
    rng: jax.Array,
    config: PPOLagConfig,
    n_updates: int | None = None,
    chunk: int = 10,
    checkpointer=None,
    log: Callable[[str], None] | None = print,
) -> tuple[PPOLagState, dict]:
    """Run ``train`` in chunks of ``chunk`` updates up to ``n_updates`` in total
    (default ``config.updates``), print one line per update (:func:`format_update`)
    and, with an :class:`agents.checkpoint.Checkpointer`, save the state after each
    chunk (step = updates done) and resume from its latest checkpoint when there is
    one. Environment steps per second are measured per chunk from wall time (the first
    chunk includes compilation; a last chunk of another size compiles again, so a
    ``chunk`` that divides the total avoids that). Returns the final state and the
    metrics of the updates run here, concatenated.
    """
    total = config.updates if n_updates is None else int(n_updates)
    jitted = jax.jit(train, static_argnames="n_updates")
    if checkpointer is not None and checkpointer.latest_step() is not None:
        template = jax.eval_shape(lambda k: train(k, n_updates=0)[0], rng)
        state, done = checkpointer.restore(template, config)
        state = uncommit(state)
        if log is not None:
            log(f"resumed from update {done}")
    else:
        # The fresh state first, so every chunk runs the same compiled function
        state, done = jitted(rng, n_updates=0)[0], 0
    pieces = []
    while done < total:
        size = min(chunk, total - done)
        start = time.perf_counter()
        state, metrics = jitted(rng, state, n_updates=size)
        metrics = jax.tree.map(np.asarray, metrics)
        wall = time.perf_counter() - start
        rate = float(metrics["steps"].sum()) / max(wall, 1e-9)
        if log is not None:
            for i in range(size):
                log(format_update(metrics, i, rate))
        done += size
        if checkpointer is not None:
            checkpointer.save(done, state, config)
        pieces.append(metrics)
    if not pieces:
        return state, jax.tree.map(np.asarray, jitted(rng, state, n_updates=0)[1])
    return state, {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
