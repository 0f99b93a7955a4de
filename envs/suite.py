"""Task suites: a model pool, step dynamics and banks of training and held-out tasks."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs import core
from envs.pricing import ModelPrice, make_pool
from envs.synthetic import PRESETS, SyntheticConfig, generate_tasks

SPLITS = ("train", "test")
DEFAULT_TRAIN_TASKS = 4096
DEFAULT_TEST_TASKS = 2048
TEST_SEED_OFFSET = 7919
"""Held-out tasks are drawn with ``seed + TEST_SEED_OFFSET`` under their own split name,
so no test task is a training task."""


@dataclass(frozen=True)
class Dynamics:
    """Suite-wide parameters of the step dynamics (the per-task ones live in the bank)."""

    p_recover: tuple[float, ...]
    """Chance a call by each model recovers a derailed agent."""
    lost_prob_derailed: float = 0.0
    """Chance a call that does not recover loses the task for good."""
    feedback_progress_seen: float = 1.0
    """Chance that progress shows as ``PROGRESS``."""
    feedback_error_on_failure: float = 1.0
    """Chance that an on-track failure shows as ``ERROR``."""
    feedback_error_derailed: float = 1.0
    """Chance that a call while derailed or lost shows as ``ERROR``."""
    feedback_false_progress: float = 0.0
    """Chance that a call without progress shows as ``PROGRESS``."""
    advance_on_failure: bool = False
    """Move to the next subgoal even when a call fails (replayed question sessions)."""
    end_on_lost: bool = False
    """End the episode as soon as the task is lost."""
    success_rule: int = core.SUCCESS_ALL
    """:data:`envs.core.SUCCESS_ALL` or :data:`envs.core.SUCCESS_SHARE`."""

    def __post_init__(self) -> None:
        # Probabilities are rounded to float32 so both implementations compare the
        # same numbers against the same random draws.
        f32 = lambda x: float(np.float32(x))  # noqa: E731
        object.__setattr__(self, "p_recover", tuple(f32(p) for p in self.p_recover))
        for name in (
            "lost_prob_derailed",
            "feedback_progress_seen",
            "feedback_error_on_failure",
            "feedback_error_derailed",
            "feedback_false_progress",
        ):
            object.__setattr__(self, name, f32(getattr(self, name)))


@dataclass(frozen=True)
class Suite:
    """A named task suite: models (cheapest first), dynamics and task banks per split."""

    name: str
    models: tuple[ModelPrice, ...]
    dynamics: Dynamics
    banks: dict
    """Split name (``"train"``, ``"test"``) to :class:`envs.core.TaskBank`."""
    config: object = None
    """The generator configuration the suite came from, if any."""

    @property
    def n_models(self) -> int:
        """Return the number of models in the pool."""
        return len(self.models)

    def bank(self, split: str) -> core.TaskBank:
        """Return the task bank of a split; raise on an unknown split."""
        if not isinstance(split, str) or split not in self.banks:
            raise ValueError(f"split must be one of {sorted(self.banks)}, got {split!r}")
        return self.banks[split]


def synthetic_suite(
    config: SyntheticConfig,
    models: Sequence | None = None,
    n_train: int = DEFAULT_TRAIN_TASKS,
    n_test: int = DEFAULT_TEST_TASKS,
    seed: int = 0,
) -> Suite:
    """Return a synthetic suite from a generator configuration."""
    pool = make_pool(models)
    m = len(pool)
    dynamics = Dynamics(
        p_recover=tuple(float(p) for p in config.recover_prob(m)),
        lost_prob_derailed=config.lost_prob_derailed,
        feedback_progress_seen=config.feedback_progress_seen,
        feedback_error_on_failure=config.feedback_error_on_failure,
        feedback_error_derailed=config.feedback_error_derailed,
        feedback_false_progress=config.feedback_false_progress,
        end_on_lost=config.end_on_lost,
    )
    banks = {
        "train": generate_tasks(config, m, n_train, seed, "train"),
        "test": generate_tasks(config, m, n_test, seed + TEST_SEED_OFFSET, "test"),
    }
    return Suite(config.name, pool, dynamics, banks, config)


@functools.lru_cache(maxsize=16)
def _cached_preset(name, models, n_train, n_test, seed):
    return synthetic_suite(PRESETS[name], models, n_train, n_test, seed)


def make_suite(
    suite: str | Suite | SyntheticConfig = "household",
    models: Sequence | None = None,
    n_train: int = DEFAULT_TRAIN_TASKS,
    n_test: int = DEFAULT_TEST_TASKS,
    seed: int = 0,
    suite_kwargs: dict | None = None,
) -> Suite:
    """Return a suite given as a preset name, a generator config or a ready suite.

    ``suite_kwargs`` go to :func:`envs.replay.replay_suite` for replay suites (session
    length, success rule, data folder...); synthetic suites take none.
    """
    if isinstance(suite, Suite):
        if suite_kwargs or models is not None:
            raise ValueError(
                "models and suite_kwargs apply to suites given by name or config; a ready "
                "Suite already has them"
            )
        return suite
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n_train, n_test = int(n_train), int(n_test)
    seed = check_seed(seed, "suite_seed")
    if suite_kwargs is not None and not isinstance(suite_kwargs, dict):
        raise TypeError(f"suite_kwargs must be a dict, got {suite_kwargs!r}")
    if isinstance(suite, SyntheticConfig):
        if suite_kwargs:
            raise ValueError("suite_kwargs apply to replay suites only")
        return synthetic_suite(suite, models, n_train, n_test, seed)
    if isinstance(suite, str):
        if suite in PRESETS:
            if suite_kwargs:
                raise ValueError(
                    f"suite_kwargs {sorted(suite_kwargs)} apply to replay suites only"
                )
            return _cached_preset(suite, make_pool(models), n_train, n_test, seed)
        from envs import replay  # noqa: PLC0415 (optional data-backed suites)

        if suite in replay.REPLAY_SUITES:
            _check_replay_kwargs(suite_kwargs or {}, replay.replay_suite)
            return replay.replay_suite(
                suite, models=models, seed=seed, **(suite_kwargs or {})
            )
        known = sorted(PRESETS) + sorted(replay.REPLAY_SUITES)
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(known)}")
    raise TypeError(f"suite must be a name, SyntheticConfig or Suite, got {suite!r}")


SEED_LIMIT = 2**32
"""Seeds are integers in ``[0, SEED_LIMIT)`` (larger ones would alias smaller ones)."""


def check_seed(value, name: str = "seed") -> int:
    """Return ``value`` as a seed: an integer in ``[0, 2**32)``; raise naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**32), got {value!r}")
    return int(value)


def _check_replay_kwargs(suite_kwargs: dict, replay_suite) -> None:
    """Raise on a key of ``suite_kwargs`` that :func:`envs.replay.replay_suite` does not
    take, or that has an argument of its own (``models``, ``suite_seed``)."""
    own = {"name": "suite", "models": "models", "seed": "suite_seed"}
    known = [k for k in inspect.signature(replay_suite).parameters if k not in own]
    for key in suite_kwargs:
        if key in own:
            raise ValueError(
                f"suite_kwargs[{key!r}]: give it as the argument {own[key]}=..., not in "
                "suite_kwargs"
            )
        if key not in known:
            raise ValueError(
                f"suite_kwargs[{key!r}]: unknown replay option; known: {', '.join(known)}"
            )


def parse_budget(value, name: str = "budget_usd"):
    """Return ``(low, high)`` USD from None (no budget), a number or a range."""
    return _parse_range(value, name, integer=False)


def parse_cap(value, name: str = "expensive_cap"):
    """Return ``(low, high)`` calls from None (no cap), an integer or a range."""
    return _parse_range(value, name, integer=True)


def _parse_range(value, name, integer):
    if value is None:
        return (math.inf, math.inf)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} range must be (low, high), got {value!r}")
        low, high = (_check_number(v, f"{name}[{i}]", integer) for i, v in enumerate(value))
        if low > high:
            raise ValueError(f"{name} range has low {low!r} above high {high!r}")
        return (low, high)
    v = _check_number(value, name, integer)
    return (v, v)


def _check_number(value, name, integer):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if integer:
        if not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        return int(value)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)
