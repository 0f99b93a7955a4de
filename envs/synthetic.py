"""Synthetic agentic tasks: a parametric generator and three calibrated presets.

A task is a chain of subgoals the agent must complete, in order, within a step horizon.
Every step is one model call. What happens at a step depends on the model, the current
subgoal's difficulty and the agent's state:

* **On track**, the call completes the subgoal with probability
  ``sigmoid(skill[model] - level_difficulty[level])``. A failed call derails the agent
  with probability ``derail_prob[level]`` and loses the task for good with probability
  ``lost_prob[level]``.
* **Derailed** (a wrong turn that persists), no progress is possible. Each call recovers
  with probability ``sigmoid(skill[model] - recover_difficulty)`` (strong models recover
  more often); a call that does not recover loses the task with ``lost_prob_derailed``.
* **Lost** (irreversible failure), nothing the agent does helps, but the episode runs on
  and keeps costing until the horizon, as a real agent that does not know it is lost.

Subgoal levels are ``0`` routine, ``1`` moderate, ``2`` bottleneck and ``3`` extreme.
Most subgoals are routine; a task's latent difficulty ``z ~ U(0, 1)`` raises its share of
bottlenecks and its chance of one extreme subgoal (which makes it close to intractable).
Bottlenecks lie more often late in the chain (the hard part of a task tends to come
after the set-up), so spending early is not enough.

**What the router sees** (``task_features``, fixed per task, like reading the instruction):
a noisy length hint, a noisy bottleneck count, a noisy difficulty hint, and for each of
four quarters of the subgoal chain a noisy flag that a bottleneck lies there. Before each
call it reads a noisy hint of the current subgoal's level in the context
(``step_features``: ``level / 3`` plus Gaussian noise of ``step_hint_noise``). During the
episode it sees noisy feedback (progress / nothing / error) and its own counts. **What
stays hidden**: the subgoal levels, the current subgoal, derailed and lost states, and
``z``; those are kept in :attr:`TaskBank.latent` for analysis and the oracle only.

**Cost**: the prompt of step ``t`` has ``prefix_tokens + t * step_tokens`` tokens (the
instruction plus a history that grows each step, independent of the models chosen); the
completion draws uniformly from each model's ``[lo, hi]`` token range. Cost is tokens
times the model's list prices, so late steps cost more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from envs.core import TaskBank

N_LEVELS = 4
LEVEL_NAMES = ("routine", "moderate", "bottleneck", "extreme")
N_QUARTERS = 4
N_FEATURES = 3 + N_QUARTERS
FEATURE_NAMES = (
    "length_hint",
    "bottleneck_hint",
    "difficulty_hint",
    *(f"bottleneck_in_quarter_{q}" for q in range(N_QUARTERS)),
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic task generator and its step dynamics."""

    name: str = "custom"
    """Name of the preset (used in task ids)."""
    horizon: int = 50
    """Step cap: the episode is truncated after this many calls."""
    min_subgoals: int = 6
    """Fewest subgoals a task has."""
    max_subgoals: int = 14
    """Most subgoals a task has."""
    moderate_rate: float = 0.25
    """Share of non-bottleneck subgoals that are moderate rather than routine."""
    bottleneck_rate: float = 0.15
    """Mean share of subgoals that are bottlenecks (scaled by the task's difficulty)."""
    bottleneck_spread: float = 0.8
    """How much a task's latent difficulty moves its bottleneck share (0 = not at all)."""
    bottleneck_late: float = 0.8
    """How much later subgoals are more often bottlenecks: the share at relative position
    ``r`` in [0, 1] is scaled by ``1 + bottleneck_late * (2 r - 1)`` (0 = uniform)."""
    extreme_rate: float = 0.12
    """Mean chance that a task has one extreme subgoal (rises with its difficulty)."""
    cheap_skill: float = 0.0
    """Skill of the cheapest model (logit scale)."""
    expensive_skill: float = 2.0
    """Skill of the most expensive model; models between are spaced evenly."""
    level_difficulty: tuple[float, ...] = (-2.6, -1.2, 1.4, 3.6)
    """Difficulty of each subgoal level (logit scale)."""
    derail_prob: tuple[float, ...] = (0.05, 0.15, 0.45, 0.5)
    """Chance that a failed call at each level derails the agent."""
    lost_prob: tuple[float, ...] = (0.0, 0.02, 0.12, 0.2)
    """Chance that a failed call at each level loses the task for good."""
    recover_difficulty: float = 0.8
    """Difficulty of recovering from a derailment (logit scale)."""
    lost_prob_derailed: float = 0.06
    """Chance that a call which fails to recover loses the task for good."""
    feedback_progress_seen: float = 0.9
    """Chance that real progress shows as ``PROGRESS`` feedback."""
    feedback_error_on_failure: float = 0.5
    """Chance that a failed on-track call shows an ``ERROR``."""
    feedback_error_derailed: float = 0.8
    """Chance that a call while derailed or lost shows an ``ERROR``."""
    feedback_false_progress: float = 0.03
    """Chance that a call without progress shows ``PROGRESS`` anyway."""
    feature_noise: float = 0.15
    """Standard deviation of the noise on the task features."""
    step_hint_noise: float = 0.2
    """Standard deviation of the noise on the step hint (the current subgoal's level
    divided by 3, read from the context before each call)."""
    prefix_tokens: int = 900
    """Mean tokens of the first prompt (system prompt, instruction, examples)."""
    step_tokens: int = 120
    """Mean tokens the history grows by at each step (action plus observation)."""
    token_jitter: float = 0.25
    """Per-task spread of ``prefix_tokens`` and ``step_tokens`` (uniform, +/- share)."""
    completion_tokens: tuple[tuple[int, int], ...] = ((60, 220), (50, 160))
    """Completion token range ``(lo, hi)`` of the cheapest and the most expensive model;
    models between are interpolated."""
    end_on_lost: bool = False
    """End the episode as soon as the task is lost (real agents run on by default)."""

    def __post_init__(self) -> None:
        _check_positive_int(self, "horizon", "min_subgoals", "max_subgoals")
        _check_positive_int(self, "prefix_tokens", "step_tokens", low=0)
        if self.min_subgoals > self.max_subgoals:
            raise ValueError(
                f"min_subgoals ({self.min_subgoals}) exceeds max_subgoals "
                f"({self.max_subgoals})"
            )
        if self.max_subgoals > self.horizon:
            raise ValueError(
                f"max_subgoals ({self.max_subgoals}) exceeds horizon ({self.horizon})"
            )
        for name in ("cheap_skill", "expensive_skill", "recover_difficulty"):
            _check_finite(name, getattr(self, name))
        for i, v in enumerate(self.level_difficulty):
            _check_finite(f"level_difficulty[{i}]", v)
        longest = (self.prefix_tokens + self.horizon * self.step_tokens) * (
            1 + self.token_jitter
        )
        if longest > MAX_PROMPT_TOKENS:
            raise ValueError(
                f"prefix_tokens + horizon * step_tokens reaches {longest:.0f} tokens, "
                f"above {MAX_PROMPT_TOKENS}"
            )
        for name in (
            "moderate_rate",
            "bottleneck_rate",
            "bottleneck_spread",
            "bottleneck_late",
            "extreme_rate",
            "lost_prob_derailed",
            "feedback_progress_seen",
            "feedback_error_on_failure",
            "feedback_error_derailed",
            "feedback_false_progress",
            "token_jitter",
        ):
            _check_probability(name, getattr(self, name))
        for name in ("level_difficulty", "derail_prob", "lost_prob"):
            values = getattr(self, name)
            if len(values) != N_LEVELS:
                raise ValueError(f"{name} needs {N_LEVELS} values, got {len(values)}")
        for name in ("derail_prob", "lost_prob"):
            for i, v in enumerate(getattr(self, name)):
                _check_probability(f"{name}[{i}]", v)
        if self.feedback_error_on_failure + self.feedback_false_progress > 1 or (
            self.feedback_error_derailed + self.feedback_false_progress > 1
        ):
            raise ValueError("feedback_error_* + feedback_false_progress must be <= 1")
        for name in ("feature_noise", "step_hint_noise"):
            value = getattr(self, name)
            _check_finite(name, value)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        ranges = self.completion_tokens
        if len(ranges) != 2 or any(
            len(r) != 2
            or not all(
                isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in r
            )
            or not 0 < r[0] <= r[1] <= MAX_PROMPT_TOKENS
            for r in ranges
        ):
            raise ValueError(
                "completion_tokens needs two (lo, hi) ranges with 0 < lo <= hi, got "
                f"{self.completion_tokens!r}"
            )

    def replace(self, **changes) -> SyntheticConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def model_skills(self, n_models: int) -> np.ndarray:
        """Return the skill of each model in a pool of ``n_models``, cheapest first."""
        return np.linspace(self.cheap_skill, self.expensive_skill, n_models)

    def completion_ranges(self, n_models: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``(lo, hi)`` completion token ranges of each model, shape (M,)."""
        (lo0, hi0), (lo1, hi1) = self.completion_tokens
        lo = np.rint(np.linspace(lo0, lo1, n_models)).astype(np.int32)
        hi = np.rint(np.linspace(hi0, hi1, n_models)).astype(np.int32)
        return lo, hi

    def recover_prob(self, n_models: int) -> np.ndarray:
        """Return the chance each model recovers a derailed agent, shape (M,)."""
        return _sigmoid(self.model_skills(n_models) - self.recover_difficulty)

    def step_success_prob(self, n_models: int) -> np.ndarray:
        """Return the on-track success chance per level and model, shape (L, M)."""
        skills = self.model_skills(n_models)
        return _sigmoid(skills[None, :] - np.asarray(self.level_difficulty)[:, None])


MAX_PROMPT_TOKENS = 10_000_000
"""Largest prompt (or completion) of one call a generator config may produce."""


def _check_finite(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {v!r}")
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _check_positive_int(cfg, *names, low=1):
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def _check_probability(name, v):
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float, np.integer, np.floating))
        or not 0 <= v <= 1
    ):
        raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")


def generate_tasks(
    config: SyntheticConfig, n_models: int, n_tasks: int, seed: int, split: str
) -> TaskBank:
    """Return a bank of ``n_tasks`` tasks drawn from ``config`` for ``n_models`` models.

    The bank is a pure function of ``(config, n_models, n_tasks, seed, split)``; task ids
    read ``"{config.name}-{split}-{index:05d}"``.
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    split_code = sum(split.encode()) * 1_000_003
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, split_code & 0xFFFFFFFF])
    J, H = config.max_subgoals, config.horizon

    # Latent task difficulty and subgoal chain
    z = rng.random(n_tasks)
    n_sub = rng.integers(config.min_subgoals, config.max_subgoals + 1, size=n_tasks)
    valid = np.arange(J)[None, :] < n_sub[:, None]
    share = config.bottleneck_rate * (
        1 - config.bottleneck_spread + 2 * config.bottleneck_spread * z
    )
    rel = np.arange(J)[None, :] / np.maximum(n_sub[:, None] - 1, 1)
    late = 1 + config.bottleneck_late * (2 * rel - 1)
    u_level, u_moderate = rng.random((n_tasks, J)), rng.random((n_tasks, J))
    level = np.where(u_moderate < config.moderate_rate, 1, 0)
    level = np.where(u_level < share[:, None] * late, 2, level)
    has_extreme = rng.random(n_tasks) < np.clip(config.extreme_rate * 2 * z, 0, 1)
    extreme_at = np.floor(rng.random(n_tasks) * n_sub).astype(int)
    level[np.arange(n_tasks)[has_extreme], extreme_at[has_extreme]] = 3
    level = np.where(valid, level, 0)

    # Step dynamics per subgoal
    p_level = config.step_success_prob(n_models)
    p_success = np.where(valid[..., None], p_level[level], 1.0).astype(np.float32)
    p_derail = np.where(valid, np.asarray(config.derail_prob)[level], 0.0)
    p_lost = np.where(valid, np.asarray(config.lost_prob)[level], 0.0)

    # Tokens: prefix plus a history that grows each step
    jitter = lambda: 1 + config.token_jitter * (2 * rng.random(n_tasks) - 1)  # noqa: E731
    prefix = np.rint(config.prefix_tokens * jitter())
    per_step = np.rint(config.step_tokens * jitter())
    prompt = prefix[:, None] + per_step[:, None] * np.arange(H)[None, :]
    lo, hi = config.completion_ranges(n_models)
    comp_lo = np.broadcast_to(lo, (n_tasks, J, n_models))
    comp_hi = np.broadcast_to(hi, (n_tasks, J, n_models))

    # What the instruction tells the router: noisy hints, never the truth
    noise = config.feature_noise
    is_hard = (level >= 2) & valid
    n_hard = is_hard.sum(1)
    quarter = np.minimum((np.arange(J)[None, :] * N_QUARTERS) // n_sub[:, None], 3)
    in_quarter = np.stack(
        [(is_hard & (quarter == q)).any(1) for q in range(N_QUARTERS)], axis=1
    )
    features = np.concatenate(
        [
            (n_sub / config.max_subgoals + noise * rng.normal(size=n_tasks))[:, None],
            (n_hard / 4 + noise * rng.normal(size=n_tasks))[:, None],
            (z + noise * rng.normal(size=n_tasks))[:, None],
            in_quarter + noise * rng.normal(size=(n_tasks, N_QUARTERS)),
        ],
        axis=1,
    )

    # What the context of each call tells the router about the subgoal at hand
    step_hint = level / 3 + config.step_hint_noise * rng.normal(size=(n_tasks, J))
    step_hint = np.where(valid, step_hint, 0.0)

    return TaskBank(
        ids=tuple(f"{config.name}-{split}-{i:05d}" for i in range(n_tasks)),
        n_subgoals=n_sub.astype(np.int32),
        p_success=p_success,
        p_derail=p_derail.astype(np.float32),
        p_lost=p_lost.astype(np.float32),
        prompt_tokens=prompt.astype(np.int32),
        completion_lo=np.ascontiguousarray(comp_lo, dtype=np.int32),
        completion_hi=np.ascontiguousarray(comp_hi, dtype=np.int32),
        features=features.astype(np.float32),
        step_features=step_hint[..., None].astype(np.float32),
        latent={"difficulty": z.astype(np.float32), "level": level.astype(np.int8)},
    )


PRESETS: dict[str, SyntheticConfig] = {
    # Household instruction following (ALFWorld-like): ~900 starting context tokens,
    # a 50-step cap.
    "household": SyntheticConfig(
        name="household",
        min_subgoals=10,
        max_subgoals=24,
        bottleneck_rate=0.09,
        cheap_skill=0.15,
        expensive_skill=1.73,
        extreme_rate=0.16,
    ),
    # Science experiments (ScienceWorld-like): ~2,800 starting context tokens, long
    # horizons and more subgoals.
    "science": SyntheticConfig(
        name="science",
        horizon=80,
        min_subgoals=16,
        max_subgoals=36,
        bottleneck_rate=0.07,
        prefix_tokens=2800,
        step_tokens=180,
        completion_tokens=((80, 260), (60, 200)),
        cheap_skill=-0.30,
        expensive_skill=1.25,
        extreme_rate=0.16,
    ),
    # App / API workflows (AppWorld-like): long API documentation in the prompt,
    # code-writing steps with long completions; hard for the cheap model.
    "apps": SyntheticConfig(
        name="apps",
        horizon=40,
        min_subgoals=8,
        max_subgoals=18,
        bottleneck_rate=0.10,
        prefix_tokens=4500,
        step_tokens=350,
        completion_tokens=((150, 500), (120, 400)),
        cheap_skill=-1.00,
        expensive_skill=1.61,
        extreme_rate=0.16,
    ),
}
"""Named generator settings; see :data:`PRESET_TARGETS` and the README for their
calibration."""


@dataclass(frozen=True)
class PresetTargets:
    """The statistics a preset is calibrated to, and where each figure comes from."""

    cheap_success: float
    """Target success rate of always-cheap."""
    expensive_success: float
    """Target success rate of always-expensive (under ``expensive_cap`` if set)."""
    expensive_cap: int | None
    """Cap on expensive calls under which the targets are measured."""
    sources: str
    """Where the figures come from."""


PRESET_TARGETS: dict[str, PresetTargets] = {
    "household": PresetTargets(
        0.50,
        0.80,
        None,
        "Starting context ~900 tokens and the 50-step cap follow ALFWorld agent "
        "prompts; boundary success rates are not published for this pair and are "
        "chosen as plausible (GPT-4.1-class agents solve most household tasks).",
    ),
    "science": PresetTargets(
        0.35,
        0.70,
        None,
        "Starting context ~2,800 tokens follows ScienceWorld agent prompts; longer "
        "tasks and horizons; boundary rates chosen as plausible, not published.",
    ),
    "apps": PresetTargets(
        0.30,
        0.667,
        15,
        "Always-expensive 66.7% under a cap of 15 expensive calls is the AppWorld "
        "figure of the routing paper; the cheap rate is chosen as plausible. Prompt "
        "sizes follow API-documentation-heavy prompts (several thousand tokens).",
    ),
}
"""Calibration targets of each preset (checked by ``python -m experiments.calibrate``)."""
