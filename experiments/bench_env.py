"""Steps per second of the environment, against Gymnasium's CartPole-v1 in the same run.

Measures, with random actions: one Gymnasium ``BudgetRoute-v0`` and one ``CartPole-v1``
(both from ``gym.make``, resetting when an episode ends), and the JAX twin with
``--n-envs`` environments vmapped under ``jax.lax.scan`` (auto-reset on). Each is timed
``--rounds`` times, interleaved; the median is reported with the ratios.

    python -m experiments.bench_env
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp

import envs  # noqa: F401 (registers BudgetRoute-v0)
from envs import jax_env
from experiments.cli import option, parse_config, write_json


@dataclass(frozen=True)
class BenchConfig:
    """Environment throughput against CartPole-v1."""

    gym_steps: int = option(100_000, "Steps timed per round for each Gymnasium env.")
    n_envs: int = option(4096, "Environments vmapped in the JAX twin.")
    scan_steps: int = option(500, "Scan length per call of the JAX twin.")
    rounds: int = option(3, "Timed rounds (interleaved); the median is reported.")
    suite: str = option("household", "Suite of BudgetRoute-v0.")
    out_dir: str = option("runs/bench_env", "Folder for bench_env.json.")


def gym_steps_per_second(env_id: str, n_steps: int, **kwargs) -> float:
    """Return steps per second of one Gymnasium env under random actions."""
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(n_steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - start)


def make_twin_runner(params, n_envs: int, scan_steps: int):
    """Return a jitted ``run(key, states) -> states`` of random-action steps."""
    n_actions = params.n_actions
    # One key per step for the whole batch: the twin mixes it with each env's own seed
    vstep = jax.vmap(jax_env.step, in_axes=(None, 0, 0, None))

    @jax.jit
    def run(key, states):
        def body(states, k):
            k_act, k_step = jax.random.split(k)
            actions = jax.random.randint(k_act, (n_envs,), 0, n_actions)
            _, states, *_ = vstep(k_step, states, actions, params)
            return states, None

        return jax.lax.scan(body, states, jax.random.split(key, scan_steps))[0]

    return run


def main(argv=None) -> dict:
    """Run the benchmark, print the table and return the figures."""
    config = parse_config(BenchConfig, argv)
    params = jax_env.make_params(config.suite)
    keys = jax.random.split(jax.random.key(0), config.n_envs)
    _, states = jax.vmap(jax_env.reset, in_axes=(0, None))(keys, params)
    run = make_twin_runner(params, config.n_envs, config.scan_steps)
    states = jax.block_until_ready(run(jax.random.key(1), states))  # compile

    figures = {"CartPole-v1": [], "BudgetRoute-v0": [], "twin": []}
    for r in range(config.rounds):
        figures["CartPole-v1"].append(gym_steps_per_second("CartPole-v1", config.gym_steps))
        figures["BudgetRoute-v0"].append(
            gym_steps_per_second("BudgetRoute-v0", config.gym_steps, suite=config.suite)
        )
        start = time.perf_counter()
        states = jax.block_until_ready(run(jax.random.key(2 + r), states))
        elapsed = time.perf_counter() - start
        figures["twin"].append(config.n_envs * config.scan_steps / elapsed)
    med = {k: statistics.median(v) for k, v in figures.items()}
    cart = med["CartPole-v1"]
    result = {
        "steps_per_second": med,
        "gym_vs_cartpole": med["BudgetRoute-v0"] / cart,
        "twin_vs_cartpole": med["twin"] / cart,
        "rounds": figures,
        "device": str(jax.devices()[0]),
        "config": config,
    }
    print(f"{'environment':<34}{'steps/s':>14}{'x CartPole':>12}")
    print(f"{'CartPole-v1 (gym.make)':<34}{cart:>14,.0f}{1.0:>12.2f}")
    print(
        f"{'BudgetRoute-v0 (gym.make)':<34}{med['BudgetRoute-v0']:>14,.0f}"
        f"{result['gym_vs_cartpole']:>12.2f}"
    )
    label = f"JAX twin ({config.n_envs} envs, scan)"
    print(f"{label:<34}{med['twin']:>14,.0f}{result['twin_vs_cartpole']:>12.1f}")
    write_json(Path(config.out_dir) / "bench_env.json", result)
    return result


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
