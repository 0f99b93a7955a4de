"""What both implementations of the environment share: the task bank, the per-episode
random draws, the feedback codes and the observation layout.

The Gymnasium environment (:mod:`envs.gym_env`) steps in plain Python for speed; the JAX
twin (:mod:`envs.jax_env`) steps in ``jax.numpy`` for jitted, vmapped training. Both read
the same :class:`TaskBank` and draw the same random numbers from the same counter-based
hash, so the same episode seed and actions give the same episode in both
(``tests/test_parity.py`` checks this step by step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

# Feedback the router sees after each call (``obs["feedback"]``).
FEEDBACK_NONE = 0
"""No call made yet in this episode."""
FEEDBACK_PROGRESS = 1
"""The agent's environment showed progress (a subgoal looks done)."""
FEEDBACK_NOTHING = 2
"""Nothing visible happened."""
FEEDBACK_ERROR = 3
"""The agent's environment showed an error."""
N_FEEDBACK = 4

SUCCESS_ALL = 0
"""Success rule: every subgoal (or item) must be done; terminal reward is 0 or 1."""
SUCCESS_SHARE = 1
"""Success rule: the terminal reward is the share of items answered correctly."""

# Slots of the per-step random draws (see :func:`draw_u32`).
SLOT_OUTCOME, SLOT_DERAIL, SLOT_LOST, SLOT_FEEDBACK, SLOT_TOKENS = range(5)
SLOT_TASK, SLOT_BUDGET, SLOT_CAP = 13, 14, 15
EPISODE_STEP = 0xFFFF
"""Step index used for the draws made once per episode (task, budget, cap)."""

_MASK32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    """Return a 32-bit integer hash of ``x`` (the "lowbias32" finaliser)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def draw_u32(episode_seed: int, step: int, slot: int) -> int:
    """Return the 32-bit random integer of ``slot`` at ``step`` of an episode."""
    return mix32(episode_seed ^ mix32(step * 16 + slot + 0x9E3779B9))


def to_uniform(bits: int) -> float:
    """Return a uniform number in [0, 1) from 32 random bits (24 of them used)."""
    return (bits >> 8) * (1.0 / 16777216.0)


@dataclass(frozen=True)
class TaskBank:
    """A numbered set of tasks with everything the dynamics need, as numpy arrays.

    Shapes use ``n`` tasks, ``J`` the most subgoals (or items) of any task, ``M`` models,
    ``H`` the step horizon and ``F`` task features. Task ``i`` is named ``ids[i]``.
    """

    ids: tuple[str, ...]
    n_subgoals: np.ndarray
    """(n,) int32: subgoals (synthetic) or items (replay) the task has."""
    p_success: np.ndarray
    """(n, J, M) float32: chance that a call by each model completes each subgoal."""
    p_derail: np.ndarray
    """(n, J) float32: chance that a failed call derails the agent."""
    p_lost: np.ndarray
    """(n, J) float32: chance that a failed call loses the task for good."""
    prompt_tokens: np.ndarray
    """(n, H) int32: prompt tokens of the call at each step (prefix plus history)."""
    completion_lo: np.ndarray
    """(n, J, M) int32: fewest completion tokens of a call at each subgoal."""
    completion_hi: np.ndarray
    """(n, J, M) int32: most completion tokens of a call (used for worst-case cost)."""
    features: np.ndarray
    """(n, F) float32: what the router reads in the task instruction."""
    step_features: np.ndarray
    """(n, J, S) float32: what the router reads in the prompt of the call at each subgoal
    (or item), before the call is made."""
    latent: dict[str, np.ndarray] = field(default_factory=dict)
    """Hidden truth kept for analysis and the oracle (never observed by a router)."""

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise ValueError("a task bank needs at least one task")
        j = self.p_success.shape[1]
        expected = {
            "n_subgoals": (n,),
            "p_success": (n, j, self.p_success.shape[2]),
            "p_derail": (n, j),
            "p_lost": (n, j),
            "completion_lo": self.p_success.shape,
            "completion_hi": self.p_success.shape,
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"task bank field {name} has shape {getattr(self, name).shape}, "
                    f"expected {shape}"
                )
        if self.prompt_tokens.shape[0] != n or self.features.shape[0] != n:
            raise ValueError("task bank prompt_tokens and features need one row a task")
        if self.step_features.ndim != 3 or self.step_features.shape[:2] != (n, j):
            raise ValueError(
                f"task bank field step_features has shape {self.step_features.shape}, "
                f"expected ({n}, {j}, S)"
            )
        if np.any(self.completion_lo > self.completion_hi):
            raise ValueError("task bank completion_lo exceeds completion_hi")

    @property
    def n_tasks(self) -> int:
        """Return the number of tasks."""
        return len(self.ids)

    @property
    def n_models(self) -> int:
        """Return the number of models the bank has outcomes for."""
        return int(self.p_success.shape[2])

    @property
    def horizon(self) -> int:
        """Return the step horizon (columns of ``prompt_tokens``)."""
        return int(self.prompt_tokens.shape[1])

    @property
    def n_features(self) -> int:
        """Return the number of task features."""
        return int(self.features.shape[1])

    @property
    def n_step_features(self) -> int:
        """Return the number of per-step features."""
        return int(self.step_features.shape[2])

    def index_of(self, task: int | str) -> int:
        """Return the index of a task given as an index or an id; raise if unknown."""
        if isinstance(task, (bool, np.bool_)):
            raise TypeError(f"task must be an index or an id, got {task!r}")
        if isinstance(task, (int, np.integer)):
            if not 0 <= int(task) < self.n_tasks:
                raise ValueError(f"task index {int(task)} out of range [0, {self.n_tasks})")
            return int(task)
        if isinstance(task, str):
            try:
                return self._id_index[task]
            except KeyError:
                raise ValueError(f"unknown task id {task!r}") from None
        raise TypeError(f"task must be an index or an id, got {task!r}")

    @property
    def _id_index(self) -> dict[str, int]:
        cache = self.__dict__.get("_ids_cache")
        if cache is None:
            cache = {name: i for i, name in enumerate(self.ids)}
            object.__setattr__(self, "_ids_cache", cache)
        return cache


OBS_SCALARS = (
    "budget_left",
    "budget_fraction",
    "spent",
    "expensive_calls_left",
    "step",
    "steps_left",
    "error_count",
    "progress_count",
    "calls_since_progress",
)
"""Observation keys holding one float each (shape ``(1,)``)."""

LATENT_STATES = ("on_track", "derailed", "lost")
"""The agent's latent state, in the order of the ``latent_state`` one-hot (only observed
with ``privileged_state=True``). Lost wins over derailed: an agent both reads as lost."""
N_LATENT = len(LATENT_STATES)
"""Length of the ``latent_state`` one-hot."""


def observation_space(
    n_models: int,
    n_features: int,
    n_actions: int,
    n_step_features: int,
    privileged_state: bool = False,
) -> gym.spaces.Dict:
    """Return the ``Dict`` observation space of ``BudgetRoute-v0``; with
    ``privileged_state`` it also holds ``latent_state``, the one-hot of
    :data:`LATENT_STATES`."""
    inf = np.float32(np.inf)

    def box(n: int = 1, low: float = 0.0, high: float = inf) -> gym.spaces.Box:
        return gym.spaces.Box(low=np.float32(low), high=high, shape=(n,), dtype=np.float32)

    spaces = {
        "budget_left": box(),
        "budget_fraction": box(high=1.0),
        "spent": box(),
        "expensive_calls_left": box(),
        "step": box(),
        "steps_left": box(),
        "next_call_cost": box(n_models),
        "task_features": box(n_features, low=-inf),
        "step_features": box(n_step_features, low=-inf),
        "feedback": gym.spaces.Discrete(N_FEEDBACK),
        "model_counts": box(n_models),
        "error_count": box(),
        "progress_count": box(),
        "calls_since_progress": box(),
        "action_mask": gym.spaces.MultiBinary(n_actions),
    }
    if privileged_state:
        spaces["latent_state"] = box(N_LATENT, high=1.0)
    return gym.spaces.Dict(spaces)


FLAT_LIMIT = 1e3
"""Unlimited budgets and caps (``inf``) appear as this value in flat observations."""


def flat_size(
    n_models: int,
    n_features: int,
    n_actions: int,
    n_step_features: int,
    privileged_state: bool = False,
) -> int:
    """Return the length of a flat observation vector (with ``latent_state`` when
    ``privileged_state``)."""
    return (
        len(OBS_SCALARS)
        + 2 * n_models
        + n_features
        + n_step_features
        + N_FEEDBACK
        + n_actions
        + N_LATENT * bool(privileged_state)
    )


def flatten_observation(obs, xp=np):
    """Return the observation as one float32 vector (works on numpy or jax arrays).

    Order: the scalar fields of :data:`OBS_SCALARS`, ``next_call_cost``,
    ``task_features``, ``step_features``, ``feedback`` one-hot, ``model_counts``,
    ``action_mask``, then ``latent_state`` when the observation has it. Infinite values
    (no budget, no cap) become :data:`FLAT_LIMIT`. Leading batch axes are kept.
    """
    parts = [obs[k] for k in OBS_SCALARS]
    parts += [obs["next_call_cost"], obs["task_features"], obs["step_features"]]
    fb = xp.asarray(obs["feedback"])[..., None] == xp.arange(N_FEEDBACK)
    parts += [fb.astype(xp.float32), obs["model_counts"]]
    parts += [xp.asarray(obs["action_mask"]).astype(xp.float32)]
    if "latent_state" in obs:
        parts += [obs["latent_state"]]
    flat = xp.concatenate([xp.asarray(p, dtype=xp.float32) for p in parts], axis=-1)
    return xp.minimum(flat, FLAT_LIMIT)
