"""BudgetRoute environments: budget-aware routing of LLM agents.

Importing this package registers ``BudgetRoute-v0`` (the household preset), one id per
synthetic preset and one per replay suite with Gymnasium.
"""

from gymnasium.envs.registration import register, registry

from envs.core import TaskBank, flatten_observation
from envs.gym_env import BudgetRouteEnv
from envs.pricing import DEFAULT_POOL, PRICE_TABLE, ModelPrice, make_pool
from envs.suite import Suite, make_suite
from envs.synthetic import PRESETS, SyntheticConfig
from envs.wrappers import FlatObservation

__all__ = [
    "DEFAULT_POOL",
    "PRESETS",
    "PRICE_TABLE",
    "BudgetRouteEnv",
    "FlatObservation",
    "ModelPrice",
    "Suite",
    "SyntheticConfig",
    "TaskBank",
    "flatten_observation",
    "make_pool",
    "make_suite",
]

ENV_IDS = {
    "BudgetRoute-v0": {"suite": "household"},
    "BudgetRoute-Household-v0": {"suite": "household"},
    "BudgetRoute-Science-v0": {"suite": "science"},
    "BudgetRoute-Apps-v0": {"suite": "apps", "expensive_cap": 15},
    "BudgetRoute-GSM8K-v0": {"suite": "gsm8k"},
    "BudgetRoute-MMLU-v0": {"suite": "mmlu"},
}
"""Registered ids and the keyword arguments they preset (all can be overridden)."""

for _env_id, _kwargs in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point="envs.gym_env:BudgetRouteEnv", kwargs=_kwargs)
