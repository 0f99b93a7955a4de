"""The pure-JAX twin of ``BudgetRoute-v0`` for jitted, vmapped training.

Functional in the style of gymnax: :func:`reset` and :func:`step` take explicit
:class:`EnvParams` and :class:`EnvState` pytrees and have no side effects, so they can be
``jit``-ed, ``vmap``-ed over keys, states and even parameters, and scanned.

The dynamics are those of :class:`envs.gym_env.BudgetRouteEnv`: the same task bank, the
same random draws from the episode seed, the same budget-constrained decoding (an action
outside the mask is always downgraded here; there is no strict mode under ``jit``). Under
``jit`` nothing can raise: an action outside ``[0, n_actions)`` is clipped to the nearest
model and reported as ``info["downgraded"]``; validate actions before they reach the
twin when that matters.

Auto-reset: :func:`step` starts a new episode whenever the one it stepped has ended, and
returns the new episode's first observation. The new episode's seed is a hash of the
``key`` and of the ended episode's seed, so a vmapped batch may share one key per step
(``in_axes=None``) and still start a different episode in each environment. The true final
observation of the ended episode is in ``info["final_observation"]``; ``terminated``,
``truncated``, ``reward`` and every other ``info`` entry describe the step that ended it.
:func:`step_env` steps without resetting.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import core
from envs.gym_env import capped_mask, check_cost_penalty
from envs.suite import Suite, make_suite, parse_budget, parse_cap

NO_CAP = 2**30
"""Cap value meaning "no cap" inside the twin (integers cannot be infinite)."""


@struct.dataclass
class EnvParams:
    """Everything that defines the environment: task bank, prices and budget rules."""

    # Task bank (see envs.core.TaskBank)
    n_subgoals: jax.Array
    p_success: jax.Array
    p_derail: jax.Array
    p_lost: jax.Array
    prompt_tokens: jax.Array
    completion_lo: jax.Array
    completion_hi: jax.Array
    features: jax.Array
    step_features: jax.Array
    # Models
    price_in: jax.Array
    """(M,) USD per prompt token."""
    price_out: jax.Array
    """(M,) USD per completion token."""
    capped: jax.Array
    """(M,) bool: models the expensive-call cap counts."""
    # Suite dynamics (see envs.suite.Dynamics)
    p_recover: jax.Array
    lost_prob_derailed: jax.Array
    feedback_progress_seen: jax.Array
    feedback_error_on_failure: jax.Array
    feedback_error_derailed: jax.Array
    feedback_false_progress: jax.Array
    advance_on_failure: jax.Array
    end_on_lost: jax.Array
    success_rule: jax.Array
    # Budget rules
    budget_low: jax.Array
    """Lowest hard budget in USD (``inf``: no budget)."""
    budget_high: jax.Array
    """Highest hard budget in USD (sampled uniformly each episode)."""
    cap_low: jax.Array
    """Lowest cap on capped calls (:data:`NO_CAP`: no cap)."""
    cap_high: jax.Array
    """Highest cap on capped calls (sampled uniformly each episode)."""
    cost_penalty: jax.Array
    """Reward is ``success - cost_penalty * cost``."""
    abort_action: bool = struct.field(pytree_node=False, default=False)
    """Whether the last action aborts the episode."""
    privileged_state: bool = struct.field(pytree_node=False, default=False)
    """Whether the observation holds ``latent_state``, the one-hot of the agent's true
    latent state (a diagnostic: a real router cannot see it)."""

    @property
    def n_models(self) -> int:
        """Return the number of models."""
        return self.price_in.shape[0]

    @property
    def n_actions(self) -> int:
        """Return the number of actions (models, plus abort when enabled)."""
        return self.n_models + int(self.abort_action)

    @property
    def horizon(self) -> int:
        """Return the step horizon."""
        return self.prompt_tokens.shape[1]

    @property
    def n_tasks(self) -> int:
        """Return the number of tasks in the bank."""
        return self.n_subgoals.shape[0]


@struct.dataclass
class EnvState:
    """One episode's full state, hidden parts included."""

    seed: jax.Array
    """uint32 episode seed all random draws derive from."""
    task: jax.Array
    budget: jax.Array
    """Hard budget of the episode in USD (``inf``: none)."""
    budget_left: jax.Array
    spent: jax.Array
    cap: jax.Array
    expensive_used: jax.Array
    model_counts: jax.Array
    t: jax.Array
    """Calls made so far."""
    subgoal: jax.Array
    derailed: jax.Array
    lost: jax.Array
    n_correct: jax.Array
    error_count: jax.Array
    progress_count: jax.Array
    calls_since_progress: jax.Array
    feedback: jax.Array


def make_params(
    suite: str | Suite = "household",
    models: Sequence | None = None,
    split: str = "train",
    budget_usd=None,
    expensive_cap=None,
    capped_models: Sequence[int] | None = None,
    cost_penalty: float = 0.0,
    abort_action: bool = False,
    n_train: int = 4096,
    n_test: int = 2048,
    suite_seed: int = 0,
    suite_kwargs: dict | None = None,
    privileged_state: bool = False,
) -> EnvParams:
    """Return the parameters of the twin for the same arguments as ``BudgetRouteEnv``."""
    suite = make_suite(suite, models, n_train, n_test, suite_seed, suite_kwargs)
    return params_from_suite(
        suite,
        split,
        budget_usd,
        expensive_cap,
        capped_models,
        cost_penalty,
        abort_action,
        privileged_state,
    )


def params_from_suite(
    suite: Suite,
    split: str = "train",
    budget_usd=None,
    expensive_cap=None,
    capped_models=None,
    cost_penalty: float = 0.0,
    abort_action: bool = False,
    privileged_state: bool = False,
) -> EnvParams:
    """Return the parameters of the twin for one split of a suite.

    ``privileged_state`` (a diagnostic, off by default) adds ``latent_state`` to the
    observation: what a real router cannot see (see ``BudgetRouteEnv``).
    """
    bank = suite.bank(split)
    dyn = suite.dynamics
    check_cost_penalty(cost_penalty)
    for name, flag in (
        ("abort_action", abort_action),
        ("privileged_state", privileged_state),
    ):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    b_lo, b_hi = parse_budget(budget_usd)
    c_lo, c_hi = parse_cap(expensive_cap)
    c_lo, c_hi = (min(int(c), NO_CAP) if np.isfinite(c) else NO_CAP for c in (c_lo, c_hi))
    f32 = lambda x: jnp.asarray(x, dtype=jnp.float32)  # noqa: E731
    return EnvParams(
        n_subgoals=jnp.asarray(bank.n_subgoals),
        p_success=f32(bank.p_success),
        p_derail=f32(bank.p_derail),
        p_lost=f32(bank.p_lost),
        prompt_tokens=jnp.asarray(bank.prompt_tokens),
        completion_lo=jnp.asarray(bank.completion_lo),
        completion_hi=jnp.asarray(bank.completion_hi),
        features=f32(bank.features),
        step_features=f32(bank.step_features),
        price_in=f32([p.input_usd_per_mtok / 1e6 for p in suite.models]),
        price_out=f32([p.output_usd_per_mtok / 1e6 for p in suite.models]),
        capped=jnp.asarray(capped_mask(suite.n_models, capped_models)),
        p_recover=f32(dyn.p_recover),
        lost_prob_derailed=f32(dyn.lost_prob_derailed),
        feedback_progress_seen=f32(dyn.feedback_progress_seen),
        feedback_error_on_failure=f32(dyn.feedback_error_on_failure),
        feedback_error_derailed=f32(dyn.feedback_error_derailed),
        feedback_false_progress=f32(dyn.feedback_false_progress),
        advance_on_failure=jnp.asarray(dyn.advance_on_failure),
        end_on_lost=jnp.asarray(dyn.end_on_lost),
        success_rule=jnp.asarray(dyn.success_rule, dtype=jnp.int32),
        budget_low=f32(b_lo),
        budget_high=f32(b_hi),
        cap_low=jnp.asarray(c_lo, dtype=jnp.int32),
        cap_high=jnp.asarray(c_hi, dtype=jnp.int32),
        cost_penalty=f32(cost_penalty),
        abort_action=bool(abort_action),
        privileged_state=bool(privileged_state),
    )


# ------------------------------------------------------------------ random draws
def mix32(x: jax.Array) -> jax.Array:
    """Return the 32-bit hash of :func:`envs.core.mix32` on uint32 arrays."""
    x = jnp.asarray(x, dtype=jnp.uint32)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def draw_u32(seed: jax.Array, step: jax.Array, slot: int) -> jax.Array:
    """Return the same 32 random bits as :func:`envs.core.draw_u32`."""
    counter = jnp.asarray(step, jnp.uint32) * jnp.uint32(16) + jnp.uint32(
        (slot + 0x9E3779B9) & 0xFFFFFFFF
    )
    return mix32(seed ^ mix32(counter))


def to_uniform(bits: jax.Array) -> jax.Array:
    """Return a float32 uniform in [0, 1) from 32 random bits."""
    return (bits >> 8).astype(jnp.float32) * jnp.float32(1.0 / 16777216.0)


# ---------------------------------------------------------------------- reset
def reset(key: jax.Array, params: EnvParams) -> tuple[dict, EnvState]:
    """Start an episode from a PRNG key; return ``(observation, state)``."""
    return reset_from_seed(key_to_seed(key), params)


def key_to_seed(key: jax.Array) -> jax.Array:
    """Return the uint32 episode seed of a PRNG key (a hash of its key data).

    Hashing the key's words is much cheaper than drawing from it, which matters when
    every vmapped step prepares an auto-reset.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.asarray(key, jnp.uint32).reshape(-1)
    seed = jnp.uint32(0x85EBCA6B)
    for i in range(words.shape[0]):
        seed = mix32(seed ^ (words[i] + jnp.uint32(i)))
    return seed


def reset_from_seed(
    seed: jax.Array,
    params: EnvParams,
    task: jax.Array | int = -1,
    budget: jax.Array | float = jnp.nan,
    cap: jax.Array | int = -1,
) -> tuple[dict, EnvState]:
    """Start the episode of a uint32 seed; return ``(observation, state)``.

    ``task`` (index, ``-1`` to sample), ``budget`` (USD, ``nan`` to sample, ``inf`` for
    none) and ``cap`` (``-1`` to sample, :data:`NO_CAP` for none) fix parts of it.
    The same seed gives the same episode as ``BudgetRouteEnv`` with that episode seed.
    """
    seed = jnp.asarray(seed, dtype=jnp.uint32)
    state = _reset_state(seed, params, task, budget, cap)
    return get_obs(state, params), state


def _reset_state(seed, params, task=-1, budget=jnp.nan, cap=-1) -> EnvState:
    ep = core.EPISODE_STEP
    sampled_task = (draw_u32(seed, ep, core.SLOT_TASK) % params.n_tasks).astype(jnp.int32)
    task = jnp.where(jnp.asarray(task) < 0, sampled_task, task).astype(jnp.int32)

    u = to_uniform(draw_u32(seed, ep, core.SLOT_BUDGET))
    span = params.budget_high - params.budget_low
    sampled_budget = jnp.where(
        span > 0, params.budget_low + u * jnp.where(span > 0, span, 0), params.budget_low
    )
    budget = jnp.asarray(budget, jnp.float32)
    budget = jnp.where(jnp.isnan(budget), sampled_budget, budget)

    width = (params.cap_high - params.cap_low + 1).astype(jnp.uint32)
    sampled_cap = params.cap_low + (
        draw_u32(seed, ep, core.SLOT_CAP) % jnp.maximum(width, 1)
    ).astype(jnp.int32)
    sampled_cap = jnp.where(params.cap_low == params.cap_high, params.cap_low, sampled_cap)
    cap = jnp.where(jnp.asarray(cap) < 0, sampled_cap, cap).astype(jnp.int32)

    zero_i = jnp.int32(0)
    return EnvState(
        seed=seed,
        task=task,
        budget=budget,
        budget_left=budget,
        spent=jnp.float32(0.0),
        cap=cap,
        expensive_used=zero_i,
        model_counts=jnp.zeros(params.n_models, jnp.int32),
        t=zero_i,
        subgoal=zero_i,
        derailed=jnp.bool_(False),
        lost=jnp.bool_(False),
        n_correct=zero_i,
        error_count=zero_i,
        progress_count=zero_i,
        calls_since_progress=zero_i,
        feedback=jnp.int32(core.FEEDBACK_NONE),
    )


# ---------------------------------------------------------------- budget mask
def next_call_cost(state: EnvState, params: EnvParams) -> jax.Array:
    """Return the worst-case cost in USD of the next call with each model, shape (M,)."""
    t = jnp.minimum(state.t, params.horizon - 1)
    j = jnp.minimum(state.subgoal, params.n_subgoals[state.task] - 1)
    prompt = params.prompt_tokens[state.task, t]
    hi = params.completion_hi[state.task, j]
    return _call_cost(prompt, hi, params)


def _call_cost(prompt, completion, params):
    prompt_cost = prompt.astype(jnp.float32) * params.price_in
    return prompt_cost + completion.astype(jnp.float32) * params.price_out


def model_mask(state: EnvState, params: EnvParams) -> jax.Array:
    """Return which models are affordable for the next call, bool (M,)."""
    affordable = next_call_cost(state, params) <= state.budget_left
    under_cap = state.expensive_used < state.cap
    return affordable & (under_cap | ~params.capped)


def action_mask(state: EnvState, params: EnvParams) -> jax.Array:
    """Return the action mask (models, plus abort when enabled), bool (n_actions,)."""
    mask = model_mask(state, params)
    if params.abort_action:
        mask = jnp.concatenate([mask, jnp.ones(1, bool)])
    return mask


# ----------------------------------------------------------------------- step
def step_env(
    state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[dict, EnvState, jax.Array, jax.Array, jax.Array, dict]:
    """Make one call without auto-reset; return ``(obs, state, reward, terminated,
    truncated, info)``. Stepping an ended episode is undefined: use :func:`step`."""
    action = jnp.asarray(action, jnp.int32)
    m_mask = model_mask(state, params)
    any_affordable = m_mask.any()
    aborted = action == params.n_models if params.abort_action else jnp.bool_(False)
    bankrupt_now = ~aborted & ~any_affordable
    calls = ~aborted & any_affordable

    # Budget-constrained decoding: a masked model becomes the most capable affordable one
    idx = jnp.arange(params.n_models)
    best = jnp.max(jnp.where(m_mask, idx, -1))
    chosen = jnp.clip(action, 0, params.n_models - 1)
    downgraded = calls & (~m_mask[chosen] | (chosen != action))
    m = jnp.where(downgraded, best, chosen)

    # The call: tokens and cost
    seed, t, task = state.seed, state.t, state.task
    j = jnp.minimum(state.subgoal, params.n_subgoals[task] - 1)
    lo = params.completion_lo[task, j, m]
    hi = params.completion_hi[task, j, m]
    span = (hi - lo + 1).astype(jnp.uint32)
    completion = lo + (draw_u32(seed, t, core.SLOT_TOKENS) % span).astype(jnp.int32)
    prompt = params.prompt_tokens[task, jnp.minimum(t, params.horizon - 1)]
    cost = jnp.where(calls, _call_cost(prompt, completion, params)[m], 0.0)
    one_hot = (idx == m) & calls

    # The agent's environment responds
    u_out = to_uniform(draw_u32(seed, t, core.SLOT_OUTCOME))
    u_derail = to_uniform(draw_u32(seed, t, core.SLOT_DERAIL))
    u_lost = to_uniform(draw_u32(seed, t, core.SLOT_LOST))
    u_fb = to_uniform(draw_u32(seed, t, core.SLOT_FEEDBACK))
    in_derail = state.derailed & ~state.lost
    recovered = in_derail & (u_out < params.p_recover[m])
    lost_in_derail = in_derail & ~recovered & (u_lost < params.lost_prob_derailed)
    on_track = ~in_derail & (~state.lost | params.advance_on_failure)
    ok = on_track & (u_out < params.p_success[task, j, m]) & ~state.lost
    failed = on_track & ~ok
    derails = failed & (u_derail < params.p_derail[task, j])
    loses = (failed & (u_lost < params.p_lost[task, j])) | lost_in_derail
    advances = ok | (on_track & params.advance_on_failure)

    derailed = jnp.where(calls, (state.derailed & ~recovered) | derails, state.derailed)
    lost = state.lost | (calls & loses)
    troubled = derailed | lost
    p_error = jnp.where(
        troubled, params.feedback_error_derailed, params.feedback_error_on_failure
    )
    fb_fail = jnp.where(
        u_fb < p_error,
        core.FEEDBACK_ERROR,
        jnp.where(
            1.0 - u_fb <= params.feedback_false_progress,
            core.FEEDBACK_PROGRESS,
            core.FEEDBACK_NOTHING,
        ),
    )
    fb_ok = jnp.where(
        u_fb < params.feedback_progress_seen,
        core.FEEDBACK_PROGRESS,
        core.FEEDBACK_NOTHING,
    )
    feedback = jnp.where(calls, jnp.where(ok, fb_ok, fb_fail), state.feedback)

    budget_left = jnp.maximum(state.budget_left - cost, 0.0)  # cost <= worst <= left
    new = state.replace(
        budget_left=budget_left,
        spent=state.spent + cost,
        expensive_used=state.expensive_used + (calls & params.capped[m]).astype(jnp.int32),
        model_counts=state.model_counts + one_hot.astype(jnp.int32),
        t=t + calls.astype(jnp.int32),
        subgoal=state.subgoal + (calls & advances).astype(jnp.int32),
        derailed=derailed,
        lost=lost,
        n_correct=state.n_correct + (calls & ok).astype(jnp.int32),
        error_count=state.error_count
        + (calls & (feedback == core.FEEDBACK_ERROR)).astype(jnp.int32),
        progress_count=state.progress_count
        + (calls & (feedback == core.FEEDBACK_PROGRESS)).astype(jnp.int32),
        calls_since_progress=jnp.where(
            calls,
            jnp.where(
                feedback == core.FEEDBACK_PROGRESS, 0, state.calls_since_progress + 1
            ),
            state.calls_since_progress,
        ),
        feedback=feedback.astype(jnp.int32),
    )

    # How the episode ends
    n_sub = params.n_subgoals[task]
    finished = new.subgoal >= n_sub
    ends = finished | (new.lost & params.end_on_lost) | aborted | bankrupt_now
    running = ~ends & (new.t < params.horizon)
    bankrupt_next = running & ~model_mask(new, params).any()
    bankrupt = bankrupt_now | bankrupt_next
    terminated = ends | bankrupt_next
    truncated = ~terminated & (new.t >= params.horizon)
    done = terminated | truncated

    success = done & finished & ~new.lost & (new.n_correct >= n_sub)
    score = new.n_correct.astype(jnp.float32) / n_sub.astype(jnp.float32)
    terminal = jnp.where(
        params.success_rule == core.SUCCESS_SHARE, score, success.astype(jnp.float32)
    )
    reward = jnp.where(done, terminal, 0.0) - params.cost_penalty * cost
    info = {
        "cost": cost,
        "prompt_tokens": jnp.where(calls, prompt, 0),
        "completion_tokens": jnp.where(calls, completion, 0),
        "model": jnp.where(calls, m, -1),
        "action_mask": action_mask(state, params),
        "success": success,
        "score": jnp.where(done, score, 0.0),
        "bankrupt": bankrupt,
        "downgraded": downgraded,
        "aborted": aborted,
    }
    return get_obs(new, params), new, reward, terminated, truncated, info


def step(
    key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[dict, EnvState, jax.Array, jax.Array, jax.Array, dict]:
    """Make one call and auto-reset an ended episode (see the module docstring)."""
    final_obs, state, reward, terminated, truncated, info = step_env(state, action, params)
    done = terminated | truncated
    # The next episode's seed mixes the key with the ended episode's seed, so one key
    # can be shared by a whole vmapped batch and still start different episodes
    seed = mix32(key_to_seed(key) ^ mix32(state.seed + jnp.uint32(0x632BE5AB)))
    state_reset = _reset_state(seed, params)
    state = jax.tree.map(lambda r, s: jnp.where(done, r, s), state_reset, state)
    info["final_observation"] = final_obs
    return get_obs(state, params), state, reward, terminated, truncated, info


# ---------------------------------------------------------------- observation
def get_obs(state: EnvState, params: EnvParams) -> dict:
    """Return the observation of a state: the same keys and dtypes as the Gym env."""
    f32 = lambda x: jnp.reshape(jnp.asarray(x, jnp.float32), (1,))  # noqa: E731
    budget = state.budget
    fraction = jnp.where(
        (budget > 0) & jnp.isfinite(budget),
        state.budget_left / jnp.where(budget > 0, budget, 1.0),
        (budget > 0).astype(jnp.float32),
    )
    calls_left = jnp.where(
        state.cap >= NO_CAP,
        jnp.inf,
        (state.cap - state.expensive_used).astype(jnp.float32),
    )
    obs = {
        "budget_left": f32(state.budget_left),
        "budget_fraction": f32(fraction),
        "spent": f32(state.spent),
        "expensive_calls_left": f32(calls_left),
        "step": f32(state.t),
        "steps_left": f32(params.horizon - state.t),
        "next_call_cost": next_call_cost(state, params),
        "task_features": params.features[state.task],
        "step_features": params.step_features[
            state.task, jnp.minimum(state.subgoal, params.n_subgoals[state.task] - 1)
        ],
        "feedback": state.feedback,
        "model_counts": state.model_counts.astype(jnp.float32),
        "error_count": f32(state.error_count),
        "progress_count": f32(state.progress_count),
        "calls_since_progress": f32(state.calls_since_progress),
        "action_mask": action_mask(state, params).astype(jnp.int8),
    }
    if params.privileged_state:
        obs["latent_state"] = latent_state(state)
    return obs


def latent_state(state: EnvState) -> jax.Array:
    """Return the one-hot of the agent's latent state over :data:`envs.core.LATENT_STATES`
    (on track, derailed, lost; lost wins over derailed), float32 ``(3,)``."""
    index = jnp.where(state.lost, 2, jnp.where(state.derailed, 1, 0))
    return jax.nn.one_hot(index, core.N_LATENT, dtype=jnp.float32)
