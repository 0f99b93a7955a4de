"""The clairvoyant oracle, the plug-in planner and the replay oracle.

**What is solved.** On a synthetic suite (:mod:`envs.synthetic`, dynamics as in
:func:`envs.jax_env.step_env`) the oracle knows each task's latent parameters
(``p_success``, ``p_derail``, ``p_lost`` per subgoal and model, the number of subgoals)
and sees the full state: calls made ``t``, subgoals done ``k``, derailed, lost, and the
calls ``e`` the expensive-call cap counts. For each task it maximises, exactly,

    P(success) - lam * E[total cost in USD]

over all closed-loop policies, by backward dynamic programming over
``(t, k, s, e[, x])`` with ``t = H - 1 .. 0``:

* ``s`` is on track, derailed or lost. Derailed-and-lost and lost behave the same in the
  dynamics (no progress, every call costs), so the two ``(d, l)`` pairs with ``l = 1``
  are one state. With ``end_on_lost`` losing ends the episode (value 0).
* ``e`` runs over ``0 .. cap`` when a cap on expensive calls is set: exact.
* A call with model ``m`` at step ``t`` on subgoal ``j = k`` costs
  ``prompt_tokens[t] * price_in[m] + (lo + hi) / 2 * price_out[m]`` USD in expectation
  (completion tokens are uniform on ``[lo, hi]``); costs enter the objective only through
  this mean, so the expectation is exact.
* Terminal values: success (``k`` reaches ``K``) is worth 1; the horizon, an abort
  (when ``params.abort_action``; value 0, no cost) and bankruptcy (no model allowed)
  are worth 0.
* At ``lam = 0`` ties in the objective (for instance every action of a lost agent) are
  broken towards the lowest expected cost, so the ``lam = 0`` point is "most success,
  then cheapest". Any near-tie within ``1e-6 * (1 + |value|)`` counts as a tie.

**Hard USD budget** (optional). Money is an extra state on a grid of ``n_bins`` bins of
``w = budget / n_bins`` USD. Every call is booked at its *worst-case* cost (the prompt
plus the model's most completion tokens, the amount the environment's mask checks). The
part every call pays at step ``t``, ``base[t]`` (the least worst-case cost of any model
at that step), is booked exactly, since ``t`` is in the state; the rest of a call's
worst-case cost is rounded *up* to whole bins and added to the ledger state ``x``. The
ledger therefore never books less than was spent, and a model is allowed only when its
worst-case cost fits in ``budget - sum(base[:t]) - x * w`` (less a ``1e-5 * budget``
margin for float32 rounding in the environment): the plan's calls always pass the
environment's mask, whatever the completion lengths turn out to be. It is a *feasible,
slightly conservative* plan, exact up to the grid and the worst-case booking. On
synthetic banks (completion ranges do not change along the chain) the cheapest model's
worst case is booked without rounding and each call of a dearer one loses at most one
bin; on the household preset 128 bins come within 0.3 points of success of 512. When
the ledger allows no model but the environment would still allow one (real spend is
below the booked worst case), the plan counts the episode as ended there (value 0, no
further cost). :func:`rollout_oracle` then aborts when ``abort_action`` is on (so the
DP's expectations are exact), and otherwise calls the cheapest model the environment
allows until it ends the episode (the extra calls can only add success and cost over
the DP's figures; ``plan_exhausted`` flags them).

**Outputs.** The same backward pass carries the success probability and the expected
cost of the chosen policy separately, so every frontier point is an exact
``(mean cost in USD, success rate)`` pair, no sampling. :func:`oracle_points` gives one
point per ``lam``; :func:`oracle_table` the action table (``-1`` where no model is
allowed); :func:`evaluate_table` evaluates any action table exactly;
:func:`rollout_oracle` runs the table in the twin on the true state.

**Plug-in planner** (:func:`fit_plugin`, :func:`plugin_points`). The same DP on task
parameters *estimated* from what a router reads, then evaluated exactly under the true
parameters; the gap to the oracle is the information about the task the router lacks
(plus what the certainty-equivalent plan below gives away). It still sees the state
``(t, k, s, e)`` and uses the true token counts (prompt sizes are known before each call
and grow by a fixed step) and the suite-wide recovery dynamics. Estimation, fitted on a
*training* bank only:

* Per subgoal level ``L`` (``bank.latent["level"]``), the one-step outcome
  probabilities per model: success, failure that derails without losing, failure that
  loses (averaged over the training subgoals of that level).
* ``P(L | features, quarter, position)``: a multinomial logistic regression (Newton's
  method, small ridge) on ``[1, bottleneck_in_quarter_q, bottleneck_hint,
  difficulty_hint, length_hint, (j + 0.5) / K]`` where ``q = min(4 j // K, 3)`` is the
  quarter of subgoal ``j`` (as in the generator); a second one adds the subgoal's step
  hint (``step_features``, read in the context before each call).
* The number of subgoals ``K``: ``length_hint = a + b K + N(0, sd^2)`` by least
  squares, with the training frequencies of ``K`` as prior, gives a posterior over
  ``K`` per task. The plan is Bayesian in ``K``: on reaching ``k`` subgoals the task is
  complete with the hazard ``P(K = k | K >= k)``. Subgoal ``j``'s outcome probabilities
  are their mean under ``P(K | features, K > j)`` and the level model.
* Two value functions run in the same backward pass: the *prior* DP (task features
  only) values the subgoals not reached yet, and the *current* one, whose actions are
  taken, sees the subgoal at hand through its step hint and continues into the prior
  DP on reaching the next subgoal (``step_hints=False`` drops the hint). The plan is
  certainty-equivalent: it uses the mean outcome chances and does not learn a subgoal's
  level from repeated failures, so it is optimistic about its own success.

**Replay suites** (``advance_on_failure``: every call moves to the next item, outcomes
are 0 or 1 per item and model). :func:`replay_oracle_points` picks, per task (a run of
``K`` items), the model sequence that maximises the reward (success under the ``all``
rule, share of items right under ``share``), then the lowest cost: with no budget, the
cheapest right model per item (the cheapest model where none is right). Under a USD
budget it is a small knapsack over the items: a forward DP over ``(item, items right,
lost)`` keeping, for each, the path with the most money left, with the environment's
float32 accounting, bankruptcy and, when enabled, abort. More money never lowers the
reward, so the reward is exact; the cost tie-break can only miss a path that spends
more early to go bankrupt sooner.

**Cost of a solve.** Per task and ``lam`` the arrays hold ``K * 3 * E * X`` states
(``E = cap + 1``, ``X = n_bins + 1``; 1 each when unused), swept over ``H`` steps. The
household preset's 2048 test tasks times 12 values of ``lam`` take about a second on
two CPU cores with neither cap nor budget; a cap or a budget multiplies that by ``E``
or ``X``. Tasks are processed in chunks that bound the memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.rollout import add_step, episode_result, episode_totals
from envs import core
from envs.jax_env import NO_CAP, EnvParams, model_mask, next_call_cost, reset_from_seed
from envs.jax_env import step_env as _step_env

__all__ = [
    "DEFAULT_BUDGET_BINS",
    "Outcomes",
    "PluginModel",
    "constant_model_points",
    "default_lams",
    "evaluate_table",
    "fit_plugin",
    "oracle_points",
    "oracle_table",
    "plugin_points",
    "plugin_problem",
    "replay_oracle_points",
    "rollout_oracle",
    "true_outcomes",
]

DEFAULT_BUDGET_BINS = 128
"""Bins of the money grid under a hard USD budget."""
TIE_TOL = 1e-6
"""Relative tolerance under which two actions' objectives count as tied."""
BUDGET_MARGIN = 1e-5
"""Share of the budget kept free for float32 rounding in the environment's money."""
_CHUNK_ELEMENTS = 1 << 25
"""Rough limit on the state-array elements one jitted chunk of tasks handles."""
TRACK, DERAILED, LOST = range(3)
"""Indices of the agent states in the DP's ``s`` axis."""


# --------------------------------------------------------------------------------------
# Problem data
# --------------------------------------------------------------------------------------
class Outcomes(NamedTuple):
    """One-step outcome probabilities of an on-track call, per task (leading axis)."""

    p_ok: jax.Array
    """(n, K, M): the call completes subgoal ``k``."""
    p_derail: jax.Array
    """(n, K, M): it fails and derails the agent without losing the task."""
    p_lost: jax.Array
    """(n, K, M): it fails and loses the task (derailed or not)."""
    done: jax.Array
    """(n, K + 1): chance the task is complete on reaching ``k`` subgoals, given it was
    not before (1 at the true ``K`` for the oracle; a hazard for the plug-in)."""


class Costs(NamedTuple):
    """Per-call costs and the budget ledger, per task (leading axis)."""

    mean: jax.Array
    """(n, H, K, M) float32: expected USD of a call at step ``t`` on subgoal ``k``."""
    charge: jax.Array
    """(n, H, K, M) int32: ledger bins a call books (0 without a budget)."""
    limit: jax.Array
    """(n, H, K, M) int32: the largest ledger ``x`` at which the call is allowed."""


@dataclass(frozen=True)
class Rules:
    """Static budget rules of a solve: the pieces that shape the DP's arrays."""

    n_models: int
    capped: tuple[bool, ...]
    cap: int | None
    """Cap on capped calls (``None``: none)."""
    budget: float | None
    """Hard budget in USD (``None``: none)."""
    n_bins: int
    abort: bool
    end_on_lost: bool

    @property
    def n_e(self) -> int:
        """Return the size of the ``e`` axis (capped calls made, ``0 .. cap``)."""
        return 1 if self.cap is None else self.cap + 1

    @property
    def n_x(self) -> int:
        """Return the size of the ledger axis (bins booked, ``0 .. n_bins``)."""
        return 1 if self.budget is None else self.n_bins + 1


def _resolve_rules(params: EnvParams, cap, budget, n_bins: int, use_budget=True) -> Rules:
    if bool(np.asarray(params.advance_on_failure)):
        raise ValueError(
            "the DP oracle is for synthetic suites; use replay_oracle_points on replay "
            "suites (advance_on_failure)"
        )
    if cap is None:
        lo, hi = int(params.cap_low), int(params.cap_high)
        if lo != hi:
            raise ValueError(f"params sample the cap from [{lo}, {hi}]: pass cap=")
        cap = None if lo >= NO_CAP else lo
    elif isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0:
        raise ValueError(f"cap must be an integer >= 0 or None, got {cap!r}")
    if not use_budget:
        budget = None
    elif budget is None:
        lo, hi = float(params.budget_low), float(params.budget_high)
        if lo != hi:
            raise ValueError(f"params sample the budget from [{lo}, {hi}]: pass budget=")
        budget = None if math.isinf(lo) else lo
    elif not math.isfinite(float(budget)) or float(budget) < 0:
        raise ValueError(f"budget must be a finite USD amount >= 0, got {budget!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return Rules(
        n_models=params.n_models,
        capped=tuple(bool(c) for c in np.asarray(params.capped)),
        cap=None if cap is None else int(cap),
        budget=None if budget is None else float(budget),
        n_bins=int(n_bins) if budget is not None else 0,
        abort=bool(params.abort_action),
        end_on_lost=bool(np.asarray(params.end_on_lost)),
    )


def _task_array(params: EnvParams, tasks) -> np.ndarray:
    n = params.n_tasks
    tasks = np.arange(n) if tasks is None else np.asarray(tasks, dtype=np.int64).ravel()
    if tasks.size == 0 or tasks.min() < 0 or tasks.max() >= n:
        raise ValueError(f"tasks must be indices in [0, {n}), got {tasks!r}")
    return tasks


def true_outcomes(params: EnvParams, tasks) -> Outcomes:
    """Return the true one-step outcome probabilities of ``tasks`` (float32 arrays)."""
    ps = np.asarray(params.p_success, np.float64)[tasks]
    pd = np.asarray(params.p_derail, np.float64)[tasks][..., None]
    pl = np.asarray(params.p_lost, np.float64)[tasks][..., None]
    n_sub = np.asarray(params.n_subgoals)[tasks]
    done = np.arange(ps.shape[1] + 1)[None, :] >= n_sub[:, None]
    return Outcomes(
        p_ok=jnp.asarray(ps, jnp.float32),
        p_derail=jnp.asarray((1 - ps) * pd * (1 - pl), jnp.float32),
        p_lost=jnp.asarray((1 - ps) * pl, jnp.float32),
        done=jnp.asarray(done, jnp.float32),
    )


def call_costs(params: EnvParams, tasks, rules: Rules) -> Costs:
    """Return the expected cost and the ledger booking of every call of ``tasks``."""
    prompt = np.asarray(params.prompt_tokens, np.float64)[tasks][:, :, None, None]
    lo = np.asarray(params.completion_lo, np.float64)[tasks][:, None]
    hi = np.asarray(params.completion_hi, np.float64)[tasks][:, None]
    p_in = np.asarray(params.price_in, np.float64)
    p_out = np.asarray(params.price_out, np.float64)
    mean = prompt * p_in + 0.5 * (lo + hi) * p_out
    worst = prompt * p_in + hi * p_out
    if rules.budget is None:
        charge = np.zeros(worst.shape, np.int32)
        limit = np.zeros(worst.shape, np.int32)
    else:
        # Book the part every call pays exactly, the rest rounded up to whole bins
        budget = rules.budget
        width = max(budget, 1e-12) / rules.n_bins
        base = worst.min(axis=(2, 3))
        spent_before = np.cumsum(base, axis=1) - base
        excess = worst - base[:, :, None, None]
        charge = np.ceil(excess / width).astype(np.int32)
        room = budget * (1 - BUDGET_MARGIN) - spent_before[:, :, None, None] - worst
        limit = np.where(room >= 0, np.floor(room / width), -1)
        limit = np.clip(limit, -1, rules.n_bins).astype(np.int32)
    return Costs(
        mean=jnp.asarray(mean, jnp.float32),
        charge=jnp.asarray(charge),
        limit=jnp.asarray(limit),
    )


# --------------------------------------------------------------------------------------
# The backward pass
# --------------------------------------------------------------------------------------
def _q_values(P, C, out, costs_t, suite, rules, up=None):
    """Return ``(QP, QC, feasible)`` of every action from next-step values ``P, C``.

    ``P, C`` (K, 3, E, X) are success probabilities and expected USD from step ``t + 1``;
    ``up`` (a pair like it, default ``(P, C)``) gives the values on reaching the next
    subgoal. The results have a leading action axis (models, then abort when enabled).
    """
    mean_t, charge_t, limit_t = costs_t
    p_recover, lost_derailed = suite
    K, _, E, X = P.shape
    e_range, x_range = np.arange(E), jnp.arange(X)
    h = out.done[1:, None, None]
    qp, qc, feas = [], [], []
    for m in range(rules.n_models):
        # Next state's values after this model's booking (cap count and money ledger)
        counted = rules.capped[m] and rules.cap is not None
        e_next = np.minimum(e_range + int(counted), E - 1)
        if X > 1:
            idx = jnp.minimum(x_range[None, :] + charge_t[:, m][:, None], X - 1)
            idx = jnp.broadcast_to(idx[:, None, None, :], (K, 3, E, X))

        def booked(V, e_next=e_next, idx=idx if X > 1 else None):
            V = V[:, :, e_next]
            return V if idx is None else jnp.take_along_axis(V, idx, axis=3)

        nP, nC = booked(P), booked(C)
        uP, uC = (nP, nC) if up is None else (booked(up[0]), booked(up[1]))
        ok_e = e_range < rules.cap if counted else np.ones(E, bool)
        ok_x = x_range[None, :] <= limit_t[:, m][:, None]
        feas.append(ok_x[:, None, None, :] & jnp.asarray(ok_e)[None, None, :, None])

        # Outcome mixture of each agent state
        ps = out.p_ok[:, m, None, None]
        pd = out.p_derail[:, m, None, None]
        pl = out.p_lost[:, m, None, None]
        pn = 1.0 - ps - pd - pl
        pr, ld = p_recover[m], lost_derailed
        zero_row = jnp.zeros((1, E, X), P.dtype)
        values = []
        for V, U, arrive in ((nP, uP, h), (nC, uC, 0.0)):
            after = jnp.concatenate([U[1:, TRACK], zero_row], axis=0)
            arrival = arrive + (1.0 - h) * after
            lost_next = jnp.zeros_like(V[:, LOST]) if rules.end_on_lost else V[:, LOST]
            track = ps * arrival + pn * V[:, TRACK] + pd * V[:, DERAILED] + pl * lost_next
            derailed = pr * V[:, TRACK] + (1 - pr) * (
                (1 - ld) * V[:, DERAILED] + ld * lost_next
            )
            values.append(jnp.stack([track, derailed, V[:, LOST]], axis=1))
        qp.append(values[0])
        qc.append(values[1] + mean_t[:, m, None, None, None])
    QP, QC, F = jnp.stack(qp), jnp.stack(qc), jnp.stack(feas)
    if rules.abort:
        QP = jnp.concatenate([QP, jnp.zeros_like(QP[:1])])
        QC = jnp.concatenate([QC, jnp.zeros_like(QC[:1])])
        F = jnp.concatenate([F, jnp.ones_like(F[:1])])
    return QP, QC, jnp.broadcast_to(F, QP.shape)


def _choose_optimal(QP, QC, feas, lam):
    """Return the best action (``-1`` if none is allowed): highest ``QP - lam QC``,
    near-ties to the lowest expected cost."""
    q = jnp.where(feas, QP - lam * QC, -jnp.inf)
    best = q.max(axis=0)
    tied = feas & (q >= best - TIE_TOL * (1.0 + jnp.abs(best)))
    action = jnp.argmin(jnp.where(tied, QC, jnp.inf), axis=0)
    return jnp.where(feas.any(axis=0), action, -1)


def _apply_table(actions, feas, rules):
    """Return the action the environment carries out for table entries ``actions``:
    a disallowed model becomes the most capable allowed one (``-1``: none allowed)."""
    M = rules.n_models
    model_feas = feas[:M]
    idx = jnp.arange(M).reshape((M,) + (1,) * (feas.ndim - 1))
    best_model = jnp.max(jnp.where(model_feas, idx, -1), axis=0)
    safe = jnp.clip(actions, 0, feas.shape[0] - 1)
    allowed = jnp.take_along_axis(feas, safe[None], axis=0)[0]
    chosen = jnp.where(allowed, safe, best_model)
    return jnp.where(actions < 0, -1, chosen)


def _pick(Q, action):
    safe = jnp.maximum(action, 0)[None]
    return jnp.where(action >= 0, jnp.take_along_axis(Q, safe, axis=0)[0], 0.0)


def _backward(plan, truth, costs, table, lam, suite, rules, mode, with_truth, with_table):
    """Backward pass for one task and one ``lam``: return the start state's values.

    ``plan`` is a pair ``(prior, current)`` of :class:`Outcomes` the plan believes:
    ``current`` (or ``None``: the same as ``prior``) holds the chances of the subgoal at
    hand once its step hint is read, ``prior`` those of subgoals not reached yet. The
    plan's value on reaching a subgoal is then the ``prior`` DP's, and its actions come
    from ``current`` at the subgoal at hand. ``mode`` is ``"optimal"`` (choose by the
    plan's values) or ``"table"`` (carry out ``table``). Returns a dict with
    ``p_plan, c_plan`` (success probability and USD the plan expects), ``p_true,
    c_true`` (under ``truth``, when ``with_truth``) and ``table`` (H, K, 3, E, X) int8
    (when ``with_table``).
    """
    prior, current = plan
    K = prior.p_ok.shape[0]
    zeros = jnp.zeros((K, 3, rules.n_e, rules.n_x), jnp.float32)

    def step(carry, xs):
        (Wp, Wc), (Vp, Vc), (Pt, Ct) = carry
        costs_t, table_t = xs[:3], xs[3]
        QP, QC, feas = _q_values(Wp, Wc, prior, costs_t, suite, rules)
        if mode == "optimal":
            action = _choose_optimal(QP, QC, feas, lam)
        else:
            action = _apply_table(table_t.astype(jnp.int32), feas, rules)
        new_w = (_pick(QP, action), _pick(QC, action))
        new_v = new_w
        if current is not None:
            # The subgoal at hand seen through its hint; the next ones through the prior
            QP, QC, _ = _q_values(Vp, Vc, current, costs_t, suite, rules, up=(Wp, Wc))
            action = _choose_optimal(QP, QC, feas, lam)
            new_v = (_pick(QP, action), _pick(QC, action))
        new_t = new_v
        if with_truth:
            TP, TC, _ = _q_values(Pt, Ct, truth, costs_t, suite, rules)
            new_t = (_pick(TP, action), _pick(TC, action))
        out = action.astype(jnp.int8) if with_table else None
        return (new_w, new_v, new_t), out

    xs = (costs.mean, costs.charge, costs.limit, table)
    init = ((zeros, zeros), (zeros, zeros), (zeros, zeros))
    (_, (Vp, Vc), (Pt, Ct)), actions = jax.lax.scan(step, init, xs, reverse=True)
    out = {"p_plan": Vp[0, TRACK, 0, 0], "c_plan": Vc[0, TRACK, 0, 0]}
    if with_truth:
        out.update(p_true=Pt[0, TRACK, 0, 0], c_true=Ct[0, TRACK, 0, 0])
    if with_table:
        out["table"] = actions
    return out


@functools.partial(jax.jit, static_argnames=("rules", "mode", "with_truth", "with_table"))
def _solve_batch(
    plan, truth, costs, table, lams, suite, rules, mode, with_truth, with_table
):
    def one_task(plan, truth, costs, table):
        def one_lam(lam):
            return _backward(
                plan, truth, costs, table, lam, suite, rules, mode, with_truth, with_table
            )

        return jax.vmap(one_lam)(lams)

    return jax.vmap(one_task)(plan, truth, costs, table)


def _solve(
    plan,
    truth,
    costs,
    lams,
    params,
    rules,
    *,
    table=None,
    mode="optimal",
    with_truth=False,
    with_table=False,
    chunk=None,
):
    """Run :func:`_backward` over every task (in chunks) and every ``lam``; return numpy
    arrays with leading axes (n, L). ``plan`` is :class:`Outcomes` or a pair
    ``(prior, current)`` (see :func:`_backward`)."""
    plan = (plan, None) if isinstance(plan, Outcomes) else tuple(plan)
    n = plan[0].p_ok.shape[0]
    lams = jnp.asarray(lams, jnp.float32).reshape(-1)
    K, H = plan[0].p_ok.shape[1], costs.mean.shape[1]
    per_task = lams.shape[0] * K * 3 * rules.n_e * rules.n_x * (rules.n_models + 1)
    if chunk is None:
        chunk = int(max(1, min(n, _CHUNK_ELEMENTS // (8 * per_task))))
        if with_table:
            chunk = int(max(1, min(chunk, _CHUNK_ELEMENTS // (per_task * H))))
    if table is None:
        table = np.zeros((n, H), np.int8)
    suite = (
        jnp.asarray(params.p_recover, jnp.float32),
        jnp.asarray(params.lost_prob_derailed, jnp.float32),
    )
    parts = []
    for start in range(0, n, chunk):
        # Pad the last chunk to the chunk size so it reuses the compiled function
        idx = np.arange(start, start + chunk)
        idx = np.where(idx < n, idx, start)
        take = functools.partial(jax.tree.map, lambda a, idx=idx: a[idx])
        res = _solve_batch(
            take(plan),
            take(truth),
            take(costs),
            jnp.asarray(table)[idx],
            lams,
            suite,
            rules,
            mode,
            with_truth,
            with_table,
        )
        size = min(chunk, n - start)
        parts.append(jax.tree.map(lambda a, size=size: np.asarray(a)[:size], res))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------
def _points(per_success, per_cost, lams, tasks, rules, **extra) -> dict:
    return {
        "lams": np.asarray(lams, np.float64).reshape(-1),
        "costs": per_cost.mean(axis=0).astype(np.float64),
        "successes": per_success.mean(axis=0).astype(np.float64),
        "per_task_costs": per_cost,
        "per_task_successes": per_success,
        "tasks": tasks,
        "cap": rules.cap,
        "budget": rules.budget,
        "n_bins": rules.n_bins if rules.budget is not None else None,
        **extra,
    }


def oracle_points(
    params: EnvParams,
    tasks=None,
    lams=None,
    cap: int | None = None,
    budget: float | None = None,
    n_bins: int = DEFAULT_BUDGET_BINS,
    chunk: int | None = None,
) -> dict:
    """Return the oracle's frontier: one exact ``(mean cost, success)`` point per ``lam``.

    Args:
        params: a synthetic suite's twin parameters (:func:`envs.jax_env.make_params`).
        tasks: task indices (default: every task of ``params``).
        lams: cost weights in success per USD (default :func:`default_lams`).
        cap: cap on the calls ``params.capped`` counts; ``None`` takes ``params``' cap
            (none if ``params`` has none; an error if it samples a range).
        budget: hard budget in USD per episode; ``None`` as for ``cap``.
        n_bins: bins of the money grid under a budget.
        chunk: tasks per jitted batch (default: sized to the state arrays).

    Returns:
        A dict: ``lams`` (L,); ``costs`` (L,) mean expected USD per episode and
        ``successes`` (L,) mean success probability over ``tasks``; ``per_task_costs``
        and ``per_task_successes`` (n, L); ``tasks``; ``cap``, ``budget`` and ``n_bins``
        as used.
    """
    tasks = _task_array(params, tasks)
    rules = _resolve_rules(params, cap, budget, n_bins)
    lams = default_lams(params, tasks, cap=rules.cap) if lams is None else lams
    truth = true_outcomes(params, tasks)
    costs = call_costs(params, tasks, rules)
    res = _solve(truth, truth, costs, lams, params, rules, chunk=chunk)
    return _points(res["p_plan"], res["c_plan"], lams, tasks, rules)


def oracle_table(
    params: EnvParams,
    tasks=None,
    lam: float = 0.0,
    cap: int | None = None,
    budget: float | None = None,
    n_bins: int = DEFAULT_BUDGET_BINS,
) -> tuple[np.ndarray, dict]:
    """Return the oracle's action table for one ``lam`` and its exact values.

    The table is int8 of shape (n, H, K, 3, E, X): the action at step ``t``, subgoals
    done ``k``, agent state ``s`` (0 on track, 1 derailed, 2 lost), capped calls made
    ``e`` (``E = cap + 1``, or 1 with no cap) and ledger bins booked ``x``
    (``X = n_bins + 1``, or 1 with no budget). Actions are model indices, ``M`` for
    abort, ``-1`` where no model is allowed. The dict holds ``successes`` and ``costs``
    (n,) (success probability and expected USD from the start) and the ``rules``.
    """
    tasks = _task_array(params, tasks)
    rules = _resolve_rules(params, cap, budget, n_bins)
    truth = true_outcomes(params, tasks)
    costs = call_costs(params, tasks, rules)
    res = _solve(truth, truth, costs, [lam], params, rules, with_table=True)
    info = {
        "successes": res["p_plan"][:, 0],
        "costs": res["c_plan"][:, 0],
        "rules": rules,
        "tasks": tasks,
    }
    return res["table"][:, 0], info


def evaluate_table(
    params: EnvParams,
    tasks,
    table,
    cap: int | None = None,
    budget: float | None = None,
    n_bins: int = DEFAULT_BUDGET_BINS,
) -> dict:
    """Return the exact success probability and expected USD of an action table.

    ``table`` (n, H, K, 3, E, X) as from :func:`oracle_table` (or (H, K, 3, E, X) for
    every task). Each entry is carried out as the environment would: a model the rules
    do not allow becomes the most capable allowed one; ``-1``, or no model allowed, ends
    the episode there (value 0, no further cost). Returns ``successes`` and ``costs``
    (n,) under the true parameters.
    """
    tasks = _task_array(params, tasks)
    rules = _resolve_rules(params, cap, budget, n_bins)
    truth = true_outcomes(params, tasks)
    costs = call_costs(params, tasks, rules)
    K, H = truth.p_ok.shape[1], costs.mean.shape[1]
    table = np.asarray(table, np.int8)
    want = (H, K, 3, rules.n_e, rules.n_x)
    if table.shape == want:
        table = np.broadcast_to(table, (len(tasks), *want))
    if table.shape != (len(tasks), *want):
        raise ValueError(f"table has shape {table.shape}, expected (n, *{want})")
    res = _solve(truth, truth, costs, [0.0], params, rules, table=table, mode="table")
    return {"successes": res["p_plan"][:, 0], "costs": res["c_plan"][:, 0]}


def constant_model_points(params: EnvParams, tasks=None, cap: int | None = None) -> dict:
    """Return the exact success and cost of always calling each model (no USD budget).

    A model the cap rules out is downgraded to the most capable allowed one, as in the
    environment. Returns ``successes`` and ``costs`` (M,) means over ``tasks`` (USD),
    and ``per_task_successes``, ``per_task_costs`` (n, M).
    """
    tasks = _task_array(params, tasks)
    rules = _resolve_rules(params, cap, None, DEFAULT_BUDGET_BINS, use_budget=False)
    truth = true_outcomes(params, tasks)
    costs = call_costs(params, tasks, rules)
    K, H = truth.p_ok.shape[1], costs.mean.shape[1]
    succ, cost = [], []
    for m in range(rules.n_models):
        table = np.full((len(tasks), H, K, 3, rules.n_e, 1), m, np.int8)
        res = _solve(truth, truth, costs, [0.0], params, rules, table=table, mode="table")
        succ.append(res["p_plan"][:, 0])
        cost.append(res["c_plan"][:, 0])
    succ, cost = np.stack(succ, axis=1), np.stack(cost, axis=1)
    return {
        "successes": succ.mean(axis=0).astype(np.float64),
        "costs": cost.mean(axis=0).astype(np.float64),
        "per_task_successes": succ,
        "per_task_costs": cost,
    }


def default_lams(
    params: EnvParams, tasks=None, n: int = 12, cap: int | None = None
) -> np.ndarray:
    """Return ``n`` cost weights (success per USD) spanning the frontier: 0 (most
    success) and ``n - 1`` geometric steps from ``0.003 / c`` to ``300 / c``, where ``c``
    is the mean cost of always calling the most expensive model (min cost at the top)."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    tasks = _task_array(params, tasks)
    if tasks.size > 256:
        tasks = tasks[np.linspace(0, tasks.size - 1, 256).astype(int)]
    ref = float(constant_model_points(params, tasks, cap)["costs"][-1])
    return np.concatenate([[0.0], np.geomspace(0.003, 300.0, n - 1) / max(ref, 1e-12)])


# --------------------------------------------------------------------------------------
# Rollouts in the twin
# --------------------------------------------------------------------------------------
def rollout_oracle(
    params: EnvParams,
    tasks,
    seeds,
    lam: float = 0.0,
    cap: int | None = None,
    budget: float | None = None,
    n_bins: int = DEFAULT_BUDGET_BINS,
) -> dict:
    """Run the oracle's table in the twin (:func:`envs.jax_env.step_env`), one episode
    per ``(task, seed)`` pair, acting on the true state.

    The table comes from :func:`oracle_table` for the distinct ``tasks`` (memory:
    ``H K 3 E X`` bytes per task). Each step reads ``state.t``, ``state.subgoal``,
    ``state.derailed``, ``state.lost``, ``state.expensive_used`` and the budget ledger.
    Where the ledger allows no model the episode is aborted when ``abort_action`` is on,
    and otherwise continues with the cheapest model the environment allows.

    Returns numpy arrays of shape (B,) with the fields of :func:`agents.rollout.rollout`
    (``success``, ``score``, ``reward``, ``cost`` USD, ``steps``, ``expensive_calls``,
    ``model_counts`` (B, M), ``bankrupt``, ``aborted``, ``downgrades``, ``overspent``,
    ``budget``, ``task``) plus ``plan_exhausted`` (the ledger ran out) and
    ``expected_success``, ``expected_cost`` (the DP's values of each episode's task).
    """
    tasks = np.asarray(tasks, np.int64).ravel()
    seeds = jnp.asarray(seeds, jnp.uint32).ravel()
    if seeds.shape[0] != tasks.shape[0]:
        raise ValueError("tasks and seeds need the same length")
    unique, inverse = np.unique(tasks, return_inverse=True)
    table, info = oracle_table(params, unique, lam, cap, budget, n_bins)
    rules = info["rules"]
    charge = call_costs(params, unique, rules).charge
    out = _rollout_batch(
        params,
        jnp.asarray(table),
        charge,
        jnp.asarray(unique, jnp.int32),
        jnp.asarray(inverse, jnp.int32),
        seeds,
        rules,
    )
    out = jax.tree.map(np.asarray, out)
    out["expected_success"] = info["successes"][inverse]
    out["expected_cost"] = info["costs"][inverse]
    return out


@functools.partial(jax.jit, static_argnames=("rules",))
def _rollout_batch(params, table, charge, unique, inverse, seeds, rules):
    def episode(u, seed):
        return _oracle_episode(params, table[u], charge[u], unique[u], seed, rules)

    return jax.vmap(episode)(inverse, seeds)


def _oracle_episode(params, table, charge, task, seed, rules):
    H, K = table.shape[0], table.shape[1]
    M = rules.n_models
    budget = jnp.float32(math.inf if rules.budget is None else rules.budget)
    cap = jnp.int32(NO_CAP if rules.cap is None else rules.cap)
    _, state = reset_from_seed(seed, params, task, budget, cap)

    def body(loop, _):
        state, ledger, done, totals = loop
        # Look up the table on the true state
        t = jnp.minimum(state.t, H - 1)
        k = jnp.minimum(state.subgoal, K - 1)
        s = jnp.where(state.lost, LOST, jnp.where(state.derailed, DERAILED, TRACK))
        e = jnp.minimum(state.expensive_used, rules.n_e - 1)
        planned = table[t, k, s, e, ledger].astype(jnp.int32)
        exhausted = planned < 0
        allowed = model_mask(state, params)
        cheapest = jnp.argmin(jnp.where(allowed, next_call_cost(state, params), jnp.inf))
        fallback = M if rules.abort else cheapest.astype(jnp.int32)
        action = jnp.where(exhausted, fallback, planned)

        # Step the twin and book the call in the ledger
        _, new_state, reward, terminated, truncated, info = _step_env(state, action, params)
        model = info["model"]
        booked = jnp.where(model >= 0, charge[t, k, jnp.maximum(model, 0)], 0)
        live = ~done
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(live, a, b), new, old
        )
        totals = add_step(totals, live, reward, terminated, truncated, info)
        totals["plan_exhausted"] = totals["plan_exhausted"] | (live & exhausted)
        ledger = jnp.where(live, jnp.minimum(ledger + booked, rules.n_x - 1), ledger)
        loop = (keep(new_state, state), ledger, done | terminated | truncated, totals)
        return loop, None

    totals = {**episode_totals(), "plan_exhausted": jnp.bool_(False)}
    init = (state, jnp.int32(0), jnp.bool_(False), totals)
    (state, _, _, totals), _ = jax.lax.scan(body, init, None, length=H)
    return episode_result(state, totals)


# --------------------------------------------------------------------------------------
# The plug-in planner
# --------------------------------------------------------------------------------------
N_LEVEL_INPUTS = 6
"""Inputs of the level model: bias, the subgoal's quarter flag, bottleneck hint,
difficulty hint, length hint and relative position (the hint model adds the step
hint)."""


@dataclass(frozen=True)
class PluginModel:
    """What the plug-in planner learned from a training bank (see the module docstring)."""

    level_coef: np.ndarray
    """(N_LEVEL_INPUTS, L) multinomial logistic coefficients of a subgoal's level."""
    hint_coef: np.ndarray | None
    """(N_LEVEL_INPUTS + 1, L) the same with the subgoal's step hint as a last input
    (``None`` when the bank has no step features)."""
    level_outcomes: np.ndarray
    """(3, L, M): success, derail-only and lost chances of an on-track call per level."""
    length_coef: tuple[float, float]
    """``(a, b)`` of ``length_hint = a + b * n_subgoals``."""
    length_sd: float
    """Standard deviation of the length hint around that line."""
    length_prior: np.ndarray
    """(J + 1,) training frequency of each number of subgoals (index = ``K``)."""


def _level_inputs(features, quarter, rel, hint=None):
    """Return the level model's inputs (..., D) for subgoals in a quarter at a relative
    position, given the task features (and step hints) broadcast against them."""
    flag = np.take_along_axis(features[..., 3:7], quarter[..., None], axis=-1)[..., 0]
    ones = np.ones_like(rel)
    cols = [ones, flag, features[..., 1] * ones, features[..., 2] * ones]
    cols += [features[..., 0] * ones, rel]
    if hint is not None:
        cols.append(hint * ones)
    return np.stack(cols, axis=-1)


def _fit_softmax(x, y, n_classes, ridge=1e-3, iters=30):
    """Return multinomial logistic coefficients (D, C) fitted by damped Newton steps."""
    n, d = x.shape
    onehot = np.eye(n_classes)[y]
    w = np.zeros((d, n_classes))

    def loss_grad(w):
        z = x @ w
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -(onehot * logp).sum() / n + 0.5 * ridge * (w**2).sum()
        p = np.exp(logp)
        return loss, p, x.T @ (p - onehot) / n + ridge * w

    loss, p, grad = loss_grad(w)
    for _ in range(iters):
        # Newton direction from the exact Hessian of the mean log-loss, then backtrack
        cov = p[:, :, None] * (np.eye(n_classes)[None] - p[:, None, :])
        hess = np.zeros((d, n_classes, d, n_classes))
        for a in range(n_classes):
            for b in range(n_classes):
                hess[:, a, :, b] = (x * cov[:, a, b, None]).T @ x
        hess = hess.reshape(d * n_classes, -1) / n
        hess += ridge * np.eye(d * n_classes)
        step = np.linalg.solve(hess, grad.reshape(-1)).reshape(d, n_classes)
        size, new_loss = 1.0, np.inf
        while size > 1e-4:
            new_loss, new_p, new_grad = loss_grad(w - size * step)
            if new_loss <= loss:
                break
            size /= 2
        if new_loss > loss:
            break
        converged = loss - new_loss < 1e-10
        w, loss, p, grad = w - size * step, new_loss, new_p, new_grad
        if converged:
            break
    return w


def fit_plugin(train_bank: core.TaskBank) -> PluginModel:
    """Return the plug-in planner's estimates fitted on a synthetic training bank."""
    if "level" not in train_bank.latent:
        raise ValueError("the plug-in planner needs a synthetic bank (latent levels)")
    level = np.asarray(train_bank.latent["level"], np.int64)
    n_sub = np.asarray(train_bank.n_subgoals, np.int64)
    feats = np.asarray(train_bank.features, np.float64)
    n, J = level.shape
    n_levels = int(level.max()) + 1
    valid = np.arange(J)[None, :] < n_sub[:, None]

    # Outcome chances of an on-track call per level (averaged over training subgoals)
    ps = np.asarray(train_bank.p_success, np.float64)
    pd = np.asarray(train_bank.p_derail, np.float64)[..., None]
    pl = np.asarray(train_bank.p_lost, np.float64)[..., None]
    per_subgoal = np.stack([ps, (1 - ps) * pd * (1 - pl), (1 - ps) * pl])
    level_outcomes = np.zeros((3, n_levels, ps.shape[2]))
    for lv in range(n_levels):
        sel = valid & (level == lv)
        level_outcomes[:, lv] = per_subgoal[:, sel].mean(axis=1)

    # Level of a subgoal given the features, its quarter and its relative position
    j = np.arange(J)[None, :]
    quarter = np.minimum(j * 4 // n_sub[:, None], 3)
    rel = (j + 0.5) / n_sub[:, None]
    x = _level_inputs(feats[:, None, :], quarter, rel)
    coef = _fit_softmax(x[valid], level[valid], n_levels)
    hint_coef = None
    step = getattr(train_bank, "step_features", None)
    if step is not None and step.shape[-1] >= 1:
        hint = np.asarray(step[..., 0], np.float64)
        x = _level_inputs(feats[:, None, :], quarter, rel, hint)
        hint_coef = _fit_softmax(x[valid], level[valid], n_levels)

    # Length hint as a noisy line in the number of subgoals
    design = np.stack([np.ones(n), n_sub.astype(np.float64)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, feats[:, 0], rcond=None)
    sd = float(np.std(feats[:, 0] - design @ np.array([a, b])))
    prior = np.bincount(n_sub, minlength=J + 1)[: J + 1].astype(np.float64)
    return PluginModel(
        level_coef=coef,
        hint_coef=hint_coef,
        level_outcomes=level_outcomes,
        length_coef=(float(a), float(b)),
        length_sd=max(sd, 1e-6),
        length_prior=prior / prior.sum(),
    )


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def plugin_problem(
    model: PluginModel, params: EnvParams, tasks, step_hints: bool = True
) -> tuple[Outcomes, Outcomes | None]:
    """Return the plug-in planner's estimates for ``tasks`` from what a router reads.

    Returns ``(prior, current)``: ``prior`` from the task features only (the subgoals
    not reached yet) with the completion hazard; ``current`` the same once the subgoal's
    step hint is read (``None`` without ``step_hints``, a hint model or step features).
    """
    tasks = _task_array(params, tasks)
    feats = np.asarray(params.features, np.float64)[tasks]
    n = feats.shape[0]
    J = params.p_success.shape[1]

    # Posterior over the number of subgoals from the length hint
    sizes = np.arange(J + 1)
    prior = np.zeros(J + 1)
    m = min(J + 1, model.length_prior.shape[0])
    prior[:m] = model.length_prior[:m]
    a, b = model.length_coef
    resid = (feats[:, :1] - a - b * sizes[None, :]) / model.length_sd
    with np.errstate(divide="ignore"):
        logpost = np.log(prior)[None, :] - 0.5 * resid**2
    post = np.exp(logpost - logpost.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)

    # Completion hazard on reaching k subgoals: P(K = k | K >= k)
    tail = np.cumsum(post[:, ::-1], axis=1)[:, ::-1]
    done = np.where(tail > 1e-12, post / np.maximum(tail, 1e-300), 1.0)
    done[:, 0] = 0.0
    done[:, J] = 1.0

    # Weights of each K for subgoal j: P(K | features, K > j)
    j = np.arange(J)
    weight = post[:, None, :] * (sizes[None, None, :] > j[None, :, None])
    total = weight.sum(axis=-1, keepdims=True)
    beyond = (sizes[None, None, :] == j[None, :, None] + 1).astype(np.float64)
    weight = np.where(total > 0, weight / np.maximum(total, 1e-300), beyond)

    # Outcome chances of subgoal j: mean over those weights and the level model
    sizes_pos = np.maximum(sizes, 1)
    quarter = np.broadcast_to(
        np.minimum(j[:, None] * 4 // sizes_pos[None, :], 3), (n, J, J + 1)
    )
    rel = np.broadcast_to((j[:, None] + 0.5) / sizes_pos[None, :], (n, J, J + 1))
    f = feats[:, None, None, :]

    def outcomes(p_level):
        mix = np.einsum("njs,njsl->njl", weight, p_level)
        est = np.einsum("njl,olm->onjm", mix, model.level_outcomes)
        return Outcomes(
            p_ok=jnp.asarray(est[0], jnp.float32),
            p_derail=jnp.asarray(est[1], jnp.float32),
            p_lost=jnp.asarray(est[2], jnp.float32),
            done=jnp.asarray(done, jnp.float32),
        )

    prior_out = outcomes(_softmax(_level_inputs(f, quarter, rel) @ model.level_coef))
    step = params.step_features
    if not step_hints or model.hint_coef is None or step.shape[-1] < 1:
        return prior_out, None
    hint = np.asarray(step[..., 0], np.float64)[tasks][:, :, None]
    x = _level_inputs(f, quarter, rel, hint)
    return prior_out, outcomes(_softmax(x @ model.hint_coef))


def plugin_points(
    train_bank: core.TaskBank | PluginModel,
    params: EnvParams,
    tasks=None,
    lams=None,
    cap: int | None = None,
    budget: float | None = None,
    n_bins: int = DEFAULT_BUDGET_BINS,
    step_hints: bool = True,
    chunk: int | None = None,
) -> dict:
    """Return the plug-in planner's frontier, evaluated exactly under the true tasks.

    ``train_bank`` is a training bank (fitted with :func:`fit_plugin`) or a fitted
    :class:`PluginModel`; ``step_hints`` lets the planner read the step hint of the
    subgoal at hand (as a router does before each call); the other arguments are those
    of :func:`oracle_points`. Returns the same dict (``costs`` USD and ``successes``
    under the *true* parameters), plus ``planned_costs`` and ``planned_successes``
    (L,): what the planner expected.
    """
    model = train_bank if isinstance(train_bank, PluginModel) else fit_plugin(train_bank)
    tasks = _task_array(params, tasks)
    rules = _resolve_rules(params, cap, budget, n_bins)
    lams = default_lams(params, tasks, cap=rules.cap) if lams is None else lams
    plan = plugin_problem(model, params, tasks, step_hints)
    truth = true_outcomes(params, tasks)
    costs = call_costs(params, tasks, rules)
    res = _solve(plan, truth, costs, lams, params, rules, with_truth=True, chunk=chunk)
    return _points(
        res["p_true"],
        res["c_true"],
        lams,
        tasks,
        rules,
        planned_costs=res["c_plan"].mean(axis=0).astype(np.float64),
        planned_successes=res["p_plan"].mean(axis=0).astype(np.float64),
    )


# --------------------------------------------------------------------------------------
# Replay suites
# --------------------------------------------------------------------------------------
def replay_oracle_points(params: EnvParams, tasks=None, budgets=None) -> dict:
    """Return the clairvoyant replay oracle's point for each budget.

    Per task the oracle knows every item's outcome per model and picks the model
    sequence with the highest reward (success under the ``all`` rule, share of items
    right under ``share``), then the lowest cost, following the environment's rules
    (float32 money, bankruptcy when no model fits the budget, abort when enabled).

    Args:
        params: a replay suite's twin parameters.
        tasks: task indices (default: all).
        budgets: USD budgets per task (default: ``params``' fixed budget, or none).

    Returns:
        A dict: ``budgets`` (B,) (``inf``: none); ``costs`` (B,) mean USD; ``rewards``
        (B,) mean terminal reward; ``successes`` (B,) and ``scores`` (B,) (the
        environment's ``success`` flag and share of items right); per-task arrays
        ``per_task_costs``, ``per_task_rewards``, ``per_task_successes``,
        ``per_task_scores`` (n, B); ``models`` (n, B, H) int (``M`` abort, ``-1`` no
        call); ``tasks``.
    """
    if not bool(np.asarray(params.advance_on_failure)):
        raise ValueError("replay_oracle_points needs a replay suite (advance_on_failure)")
    tasks = _task_array(params, tasks)
    if budgets is None:
        lo, hi = float(params.budget_low), float(params.budget_high)
        if lo != hi:
            raise ValueError(f"params sample the budget from [{lo}, {hi}]: pass budgets=")
        budgets = [lo]
    budgets = np.asarray(budgets, np.float64).reshape(-1)
    share = int(np.asarray(params.success_rule)) == core.SUCCESS_SHARE
    prompt = np.asarray(params.prompt_tokens)
    comp = np.asarray(params.completion_hi)
    right = np.asarray(params.p_success) > 0.5
    loses = np.asarray(params.p_lost) > 0.5
    n_sub = np.asarray(params.n_subgoals)
    price_in = np.asarray(params.price_in, np.float32)
    price_out = np.asarray(params.price_out, np.float32)
    end_on_lost = bool(np.asarray(params.end_on_lost))
    H = prompt.shape[1]
    n, nb = len(tasks), len(budgets)
    fields = {k: np.zeros((n, nb)) for k in ("cost", "reward", "success", "score")}
    models = np.full((n, nb, H), -1, np.int64)
    for a, task in enumerate(tasks):
        # Exact float32 cost of every item and model, as the environment computes it
        cost = (
            prompt[task].astype(np.float32)[:, None] * price_in[None, :]
            + comp[task].astype(np.float32)[:H] * price_out[None, :]
        ).astype(np.float32)
        for b, budget in enumerate(budgets):
            best = _replay_task(
                cost,
                right[task],
                loses[task],
                int(n_sub[task]),
                np.float32(budget),
                share,
                bool(params.abort_action),
                end_on_lost,
            )
            for key in fields:
                fields[key][a, b] = best[key]
            models[a, b, : len(best["models"])] = best["models"]
    return {
        "budgets": budgets,
        "costs": fields["cost"].mean(axis=0),
        "rewards": fields["reward"].mean(axis=0),
        "successes": fields["success"].mean(axis=0),
        "scores": fields["score"].mean(axis=0),
        "per_task_costs": fields["cost"],
        "per_task_rewards": fields["reward"],
        "per_task_successes": fields["success"],
        "per_task_scores": fields["score"],
        "models": models,
        "tasks": tasks,
    }


def _replay_task(cost, right, loses, n_items, budget, share, abort, end_on_lost):
    """Return the best outcome of one replay task (a dict with ``models``)."""
    n_models = cost.shape[1]
    f32 = np.float32

    # Forward DP over (item, items right, lost): keep the path with the most money left
    states = {(0, False): (f32(budget), f32(0.0), [])}
    ends = []

    def finish(c, lost, spent, path, finished):
        success = finished and not lost and c >= n_items
        score = c / n_items
        reward = score if share else float(success)
        ends.append((reward, -float(spent), spent, success, score, path))

    for i in range(n_items):
        nxt = {}
        for (c, lost), (left, spent, path) in states.items():
            if abort:
                finish(c, lost, spent, [*path, n_models], False)
            allowed = [m for m in range(n_models) if cost[i, m] <= left]
            if not allowed:
                finish(c, lost, spent, path, False)
                continue
            for m in allowed:
                ok = bool(right[i, m]) and not lost
                new_lost = lost or (not ok and bool(loses[i]))
                key = (c + int(ok), new_lost)
                new_left = f32(max(f32(left - cost[i, m]), f32(0.0)))
                new_spent = f32(spent + cost[i, m])
                if key not in nxt or new_left > nxt[key][0]:
                    nxt[key] = (new_left, new_spent, [*path, m])
        states = {}
        for (c, lost), value in nxt.items():
            if lost and end_on_lost:
                finish(c, lost, value[1], value[2], False)
            else:
                states[(c, lost)] = value
    for (c, lost), (_, spent, path) in states.items():
        finish(c, lost, spent, path, True)
    reward, _, spent, success, score, path = max(ends, key=lambda e: (e[0], e[1]))
    return {
        "cost": float(spent),
        "reward": reward,
        "success": float(success),
        "score": score,
        "models": path,
    }
