"""``BudgetRoute-v0``: route each call of an LLM agent to a cheap or an expensive model."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import gymnasium as gym
import numpy as np

from envs import core
from envs.suite import Suite, make_suite, parse_budget, parse_cap

_F32 = np.float32
RESET_OPTIONS = ("task", "budget", "cap")


class BudgetRouteEnv(gym.Env):
    """Budget-aware routing of an LLM agent, one model call per step.

    Actions are ``Discrete(n_models)`` (index 0 the cheapest model), plus a last
    ``abort`` action when ``abort_action`` is on. The observation is a ``Dict`` (see the
    README for every key); ``info["cost"]`` is the step's cost in USD.

    Args:
        suite: a preset name (``"household"``, ``"science"``, ``"apps"``), a replay suite
            name, a :class:`envs.synthetic.SyntheticConfig` or a :class:`envs.suite.Suite`.
        models: the model pool for synthetic suites: 2 to 4 names from
            :data:`envs.pricing.PRICE_TABLE` or custom prices, cheapest first.
            Default GPT-4.1-mini / GPT-4.1.
        split: ``"train"`` or ``"test"`` (held-out tasks, disjoint from training).
        budget_usd: hard budget per task in USD: ``None`` (none), a number, or a
            ``(low, high)`` range sampled uniformly each episode.
        expensive_cap: hard cap on calls to capped models per task: ``None``, an
            integer, or a ``(low, high)`` range sampled uniformly each episode.
        capped_models: indices of the models the cap counts; default all but the
            cheapest.
        cost_penalty: reward is ``success - cost_penalty * cost`` (USD); default 0.
        abort_action: add an ``abort`` action that ends the episode as a failure
            without further cost.
        strict: raise on an action outside the mask instead of downgrading it to the
            most capable affordable model.
        n_train, n_test, suite_seed: size and seed of the generated task banks (the
            seed also splits and groups a replay suite's items).
        suite_kwargs: options of a replay suite, see :func:`envs.replay.replay_suite`
            (``session_items``, ``success_rule``, ``history``, ``data_dir``...).
        privileged_state: a diagnostic, off by default: add ``latent_state`` to the
            observation, the one-hot of the agent's true latent state (on track,
            derailed, lost; lost wins over derailed). It reveals what a real router
            cannot see, to measure the cost of partial observability.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        suite: str | Suite = "household",
        models: Sequence | None = None,
        split: str = "train",
        budget_usd=None,
        expensive_cap=None,
        capped_models: Sequence[int] | None = None,
        cost_penalty: float = 0.0,
        abort_action: bool = False,
        strict: bool = False,
        n_train: int = 4096,
        n_test: int = 2048,
        suite_seed: int = 0,
        suite_kwargs: dict | None = None,
        privileged_state: bool = False,
        render_mode: str | None = None,
    ):
        self.suite = make_suite(suite, models, n_train, n_test, suite_seed, suite_kwargs)
        self.bank = self.suite.bank(split)
        self.split = split
        self.budget_range = parse_budget(budget_usd)
        self.cap_range = parse_cap(expensive_cap)
        check_cost_penalty(cost_penalty)
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        for name, flag in (
            ("abort_action", abort_action),
            ("strict", strict),
            ("privileged_state", privileged_state),
        ):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.cost_penalty = float(cost_penalty)
        self.abort_action = bool(abort_action)
        self.strict = bool(strict)
        self.privileged_state = bool(privileged_state)
        self.render_mode = render_mode

        m = self.suite.n_models
        self.n_models = m
        self.capped = capped_mask(m, capped_models)
        self.model_names = tuple(p.name for p in self.suite.models)
        self._price_in = [p.input_usd_per_mtok / 1e6 for p in self.suite.models]
        self._price_out = [p.output_usd_per_mtok / 1e6 for p in self.suite.models]
        self._capped = self.capped.tolist()
        dyn = self.suite.dynamics
        self._p_recover = list(dyn.p_recover)
        self._dyn = dyn
        self.horizon = self.bank.horizon
        n_actions = m + int(self.abort_action)
        self.abort_index = m if self.abort_action else None
        self.action_space = gym.spaces.Discrete(n_actions)
        self.observation_space = core.observation_space(
            m,
            self.bank.n_features,
            n_actions,
            self.bank.n_step_features,
            self.privileged_state,
        )
        self._ep = None

    # ----------------------------------------------------------------- reset
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; return ``(observation, info)``.

        ``options`` may hold ``task`` (index or id in this split), ``budget`` (USD,
        ``None`` for none) and ``cap`` (calls, ``None`` for none); each overrides the
        sampled value for this episode.
        """
        task, budget, cap = self._check_options(options)
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**32))
        ep = _Episode()
        ep.seed = episode_seed
        if task is None:
            bits = core.draw_u32(episode_seed, core.EPISODE_STEP, core.SLOT_TASK)
            task = bits % self.bank.n_tasks
        if budget is _UNSET:
            lo, hi = self.budget_range
            u = core.to_uniform(
                core.draw_u32(episode_seed, core.EPISODE_STEP, core.SLOT_BUDGET)
            )
            budget = lo if lo == hi else lo + u * (hi - lo)
        elif budget is None:
            budget = math.inf
        if cap is _UNSET:
            lo, hi = self.cap_range
            if lo == hi:
                cap = lo
            else:
                bits = core.draw_u32(episode_seed, core.EPISODE_STEP, core.SLOT_CAP)
                cap = lo + bits % (hi - lo + 1)
        elif cap is None:
            cap = math.inf
        b = self.bank
        ep.task = int(task)
        ep.n_sub = int(b.n_subgoals[task])
        ep.p_success = b.p_success[task].tolist()
        ep.p_derail = b.p_derail[task].tolist()
        ep.p_lost = b.p_lost[task].tolist()
        ep.prompt = b.prompt_tokens[task].tolist()
        ep.comp_lo = b.completion_lo[task].tolist()
        ep.comp_hi = b.completion_hi[task].tolist()
        ep.features = b.features[task].copy()
        ep.step_features = b.step_features[task]
        ep.budget = float(budget)
        ep.left = float(budget)
        ep.cap = cap
        ep.counts = [0] * self.n_models
        self._ep = ep
        self._update_mask()
        info = {
            "task_id": b.ids[task],
            "task_index": ep.task,
            "budget": ep.budget,
            "cap": ep.cap,
            "episode_seed": episode_seed,
            "action_mask": self._mask_array(),
        }
        return self._observation(), info

    def _check_options(self, options):
        task, budget, cap = None, _UNSET, _UNSET
        if options is None:
            return task, budget, cap
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict, got {type(options).__name__}")
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; known: {RESET_OPTIONS}"
            )
        if "task" in options and options["task"] is not None:
            task = self.bank.index_of(options["task"])
        for key in ("budget", "cap"):
            if isinstance(options.get(key), (tuple, list)):
                raise TypeError(
                    f"options['{key}'] fixes one episode's value: give a number or None, "
                    f"not {options[key]!r} (ranges are set when the env is made)"
                )
        if "budget" in options:
            budget = options["budget"]
            if budget is not None:
                budget = parse_budget(budget, "options['budget']")[0]
        if "cap" in options:
            cap = options["cap"]
            if cap is not None:
                cap = parse_cap(cap, "options['cap']")[0]
        return task, budget, cap

    # ------------------------------------------------------------------ step
    def step(self, action):
        """Make one call with the chosen model; return the Gymnasium 5-tuple."""
        ep = self._ep
        if ep is None:
            raise RuntimeError("call reset() before step()")
        if ep.done:
            raise RuntimeError("the episode has ended; call reset() before step()")
        action = self._check_action(action)
        mask = ep.mask
        info = {
            "cost": 0.0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "model": -1,
            "action_mask": self._mask_array(),
            "success": False,
            "bankrupt": False,
            "downgraded": False,
            "aborted": False,
        }
        m = action
        if action == self.abort_index:
            info["aborted"] = True
            return self._finish(ep, info, terminated=True)
        if not ep.any_affordable:
            info["bankrupt"] = True
            return self._finish(ep, info, terminated=True)
        if not mask[m]:
            if self.strict:
                raise ValueError(
                    f"action {action} ({self.model_names[action]}) is masked out "
                    f"(action_mask={mask}); strict mode forbids downgrades"
                )
            m = max(i for i in range(self.n_models) if mask[i])
            info["downgraded"] = True

        # The call: tokens and cost
        t, j, seed = ep.t, min(ep.k, ep.n_sub - 1), ep.seed
        lo, hi = ep.comp_lo[j][m], ep.comp_hi[j][m]
        completion = lo + core.draw_u32(seed, t, core.SLOT_TOKENS) % (hi - lo + 1)
        prompt = ep.prompt[t]
        cost = prompt * self._price_in[m] + completion * self._price_out[m]
        ep.left -= cost  # cost <= worst case <= left
        ep.spent += cost
        ep.counts[m] += 1
        if self._capped[m]:
            ep.expensive_used += 1

        # The agent's environment responds
        dyn = self._dyn
        u_out = core.to_uniform(core.draw_u32(seed, t, core.SLOT_OUTCOME))
        ok = False
        if ep.derailed and not ep.lost:
            if u_out < self._p_recover[m]:
                ep.derailed = False
            elif core.to_uniform(core.draw_u32(seed, t, core.SLOT_LOST)) < (
                dyn.lost_prob_derailed
            ):
                ep.lost = True
        elif not ep.lost or dyn.advance_on_failure:
            ok = u_out < ep.p_success[j][m] and not ep.lost
            if ok:
                ep.n_correct += 1
            else:
                if (
                    core.to_uniform(core.draw_u32(seed, t, core.SLOT_DERAIL))
                    < ep.p_derail[j]
                ):
                    ep.derailed = True
                if core.to_uniform(core.draw_u32(seed, t, core.SLOT_LOST)) < ep.p_lost[j]:
                    ep.lost = True
            if ok or dyn.advance_on_failure:
                ep.k += 1
        u_fb = core.to_uniform(core.draw_u32(seed, t, core.SLOT_FEEDBACK))
        ep.feedback = feedback_code(ok, ep.derailed or ep.lost, u_fb, dyn)
        if ep.feedback == core.FEEDBACK_ERROR:
            ep.errors += 1
        if ep.feedback == core.FEEDBACK_PROGRESS:
            ep.progress_seen += 1
            ep.since_progress = 0
        else:
            ep.since_progress += 1
        ep.t = t + 1

        info.update(cost=cost, prompt_tokens=prompt, completion_tokens=completion, model=m)
        finished = ep.k >= ep.n_sub
        terminated = finished or (ep.lost and dyn.end_on_lost)
        self._update_mask()
        if not terminated and ep.t < self.horizon and not ep.any_affordable:
            info["bankrupt"] = True
            terminated = True
        return self._finish(ep, info, terminated, cost)

    def _finish(self, ep, info, terminated, cost=0.0):
        truncated = not terminated and ep.t >= self.horizon
        done = terminated or truncated
        reward = -self.cost_penalty * cost if self.cost_penalty else 0.0
        if done:
            ep.done = True
            finished = ep.k >= ep.n_sub
            # Success: every subgoal (item) done right; the share rule scores the rest
            success = finished and not ep.lost and ep.n_correct >= ep.n_sub
            info["success"] = success
            if self._dyn.success_rule == core.SUCCESS_SHARE:
                info["score"] = ep.n_correct / ep.n_sub
                reward += info["score"]
            else:
                reward += float(success)
        return self._observation(), reward, terminated, truncated, info

    def _check_action(self, action) -> int:
        if isinstance(action, np.ndarray) and action.size == 1:
            action = action.reshape(()).item() if action.dtype.kind in "iu" else action
        if isinstance(action, (bool, np.bool_)) or not isinstance(
            action, (int, np.integer)
        ):
            raise TypeError(
                f"action must be an integer in [0, {self.action_space.n}), "
                f"got {action!r} of type {type(action).__name__}"
            )
        action = int(action)
        if not 0 <= action < self.action_space.n:
            raise ValueError(f"action must be in [0, {self.action_space.n}), got {action}")
        return action

    # ----------------------------------------------------- budget and obs
    def _update_mask(self):
        ep = self._ep
        t = min(ep.t, self.horizon - 1)
        j = min(ep.k, ep.n_sub - 1)
        prompt = ep.prompt[t]
        hi = ep.comp_hi[j]
        worst = [
            prompt * self._price_in[i] + hi[i] * self._price_out[i]
            for i in range(self.n_models)
        ]
        under_cap = ep.expensive_used < ep.cap
        mask = [
            worst[i] <= ep.left and (under_cap or not self._capped[i])
            for i in range(self.n_models)
        ]
        ep.worst = worst
        ep.any_affordable = any(mask)
        if self.abort_action:
            mask.append(True)
        ep.mask = mask

    def _mask_array(self):
        return np.array(self._ep.mask, np.int8)

    def _observation(self):
        # One float32 buffer per step, handed out as views: cheaper than one array a key.
        ep = self._ep
        budget, m = ep.budget, self.n_models
        fraction = ep.left / budget if 0 < budget < math.inf else float(budget > 0)
        values = np.array(
            [
                ep.left,
                fraction,
                ep.spent,
                ep.cap - ep.expensive_used,
                ep.t,
                self.horizon - ep.t,
                ep.errors,
                ep.progress_seen,
                ep.since_progress,
                *ep.worst,
                *ep.counts,
            ],
            _F32,
        )
        obs = {
            "budget_left": values[0:1],
            "budget_fraction": values[1:2],
            "spent": values[2:3],
            "expensive_calls_left": values[3:4],
            "step": values[4:5],
            "steps_left": values[5:6],
            "next_call_cost": values[9 : 9 + m],
            "task_features": ep.features.copy(),
            "step_features": ep.step_features[min(ep.k, ep.n_sub - 1)].copy(),
            "feedback": ep.feedback,
            "model_counts": values[9 + m :],
            "error_count": values[6:7],
            "progress_count": values[7:8],
            "calls_since_progress": values[8:9],
            "action_mask": np.array(ep.mask, np.int8),
        }
        if self.privileged_state:
            latent = np.zeros(core.N_LATENT, _F32)
            latent[2 if ep.lost else int(ep.derailed)] = 1.0  # lost wins over derailed
            obs["latent_state"] = latent
        return obs

    def latent_state(self) -> dict:
        """Return the hidden state of the current episode (for analysis, not routing)."""
        ep = self._ep
        if ep is None:
            raise RuntimeError("call reset() first")
        return {
            "subgoal": ep.k,
            "n_subgoals": ep.n_sub,
            "derailed": ep.derailed,
            "lost": ep.lost,
            "n_correct": ep.n_correct,
        }

    def render(self):
        """Return a one-line text summary of the episode so far (``ansi`` mode)."""
        if self.render_mode != "ansi" or self._ep is None:
            return None
        ep = self._ep
        counts = ", ".join(
            f"{n}={c}" for n, c in zip(self.model_names, ep.counts, strict=True)
        )
        return (
            f"task {self.bank.ids[ep.task]} step {ep.t}/{self.horizon} "
            f"spent ${ep.spent:.4f} left ${ep.left:.4f} calls: {counts}"
        )


def capped_mask(n_models: int, capped_models) -> np.ndarray:
    """Return a boolean mask of the models the expensive-call cap counts."""
    if capped_models is None:
        return np.arange(n_models) > 0
    if isinstance(capped_models, (str, bytes)) or not isinstance(capped_models, Iterable):
        raise TypeError(
            f"capped_models must be a sequence of model indices, got {capped_models!r}"
        )
    mask = np.zeros(n_models, dtype=bool)
    for i in capped_models:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"capped_models must hold model indices, got {i!r}")
        if not 0 <= i < n_models:
            raise ValueError(f"capped_models index {i} out of range [0, {n_models})")
        mask[i] = True
    return mask


def check_cost_penalty(cost_penalty) -> None:
    """Raise unless ``cost_penalty`` is a finite number >= 0."""
    if isinstance(cost_penalty, (bool, np.bool_)) or not isinstance(
        cost_penalty, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"cost_penalty must be a number, got {cost_penalty!r}")
    if not math.isfinite(cost_penalty) or cost_penalty < 0:
        raise ValueError(f"cost_penalty must be finite and >= 0, got {cost_penalty!r}")


def feedback_code(ok: bool, troubled: bool, u: float, dyn) -> int:
    """Return the feedback the router sees after a call, from one uniform draw ``u``.

    ``ok`` says the call did its job; ``troubled`` that the agent is derailed or lost.
    """
    if ok:
        return (
            core.FEEDBACK_PROGRESS
            if u < dyn.feedback_progress_seen
            else (core.FEEDBACK_NOTHING)
        )
    p_error = dyn.feedback_error_derailed if troubled else dyn.feedback_error_on_failure
    if u < p_error:
        return core.FEEDBACK_ERROR
    if 1.0 - u <= dyn.feedback_false_progress:
        return core.FEEDBACK_PROGRESS
    return core.FEEDBACK_NOTHING


class _Episode:
    """Mutable state of the current episode (plain Python for speed)."""

    __slots__ = (
        "seed", "task", "n_sub", "p_success", "p_derail", "p_lost", "prompt",
        "comp_lo", "comp_hi", "features", "step_features", "budget", "left", "spent", "cap",
        "expensive_used", "counts", "t", "k", "derailed", "lost", "n_correct",
        "errors", "progress_seen", "since_progress", "feedback", "mask", "worst",
        "any_affordable", "done",
    )  # fmt: skip

    def __init__(self):
        self.spent = 0.0
        self.expensive_used = 0
        self.t = self.k = self.n_correct = self.errors = self.progress_seen = 0
        self.since_progress = 0
        self.derailed = self.lost = self.done = False
        self.feedback = core.FEEDBACK_NONE


class _Unset:
    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()
