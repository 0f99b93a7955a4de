"""Wrappers for libraries that want one flat observation vector."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs import core


class FlatObservation(gym.ObservationWrapper):
    """Return observations as one ``float32`` vector (see
    :func:`envs.core.flatten_observation` for the order; ``inf`` becomes
    :data:`envs.core.FLAT_LIMIT`; ``latent_state`` comes last when the env has it)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        needed = ("model_counts", "task_features", "action_mask", "step_features")
        if not isinstance(space, gym.spaces.Dict) or any(
            k not in space.spaces for k in needed
        ):
            raise TypeError(
                "FlatObservation wraps a BudgetRoute env (a Dict observation space with "
                f"the keys of envs.core.observation_space), got observation space {space}"
            )
        n_models = space["model_counts"].shape[0]
        n_features = space["task_features"].shape[0]
        n_actions = space["action_mask"].n
        n_step = space["step_features"].shape[0]
        privileged = "latent_state" in space.spaces
        size = core.flat_size(n_models, n_features, n_actions, n_step, privileged)
        self.observation_space = gym.spaces.Box(
            -core.FLAT_LIMIT, core.FLAT_LIMIT, shape=(size,), dtype=np.float32
        )

    def observation(self, observation):
        """Return the flat vector of one observation."""
        return core.flatten_observation(observation)
