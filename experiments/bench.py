"""Throughput of the environment and of training, against Gymnasium's CartPole-v1.

Measures in one run, on one machine, with ``--rounds`` rounds interleaved (the median
of each figure is reported, with its ratio to CartPole-v1's steps per second):

1. ``CartPole-v1`` from ``gym.make``, random actions (the reference);
2. ``BudgetRoute-v0`` from ``gym.make``, one env, random actions;
3. the JAX twin, ``--n-envs`` environments vmapped under ``lax.scan``, random actions
   (these three are :mod:`experiments.bench_env`'s measurements);
4. BoPO training and 5. PPO-Lagrangian training, each built and batched by the recipe
   (vmapped over ``--seeds`` and over BoPO's cost weights ``--lams`` or
   PPO-Lagrangian's ``--cost-targets``), from one fresh network, with the boundary
   rollouts of ``--n-train-tasks`` training tasks.

A training figure is environment steps per second of training: the valid steps of the
rollouts (the ``steps`` metric of both methods: steps that happened, not the padding to
the horizon) divided by the wall time of whole updates (rollouts, advantages, epochs of
minibatch updates), each round ``--train-updates`` updates in one jitted call that
continues from the previous call's state. Compilation is excluded: every workload runs
once before the timed rounds.

    python -m experiments.bench
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import envs  # noqa: F401 (registers BudgetRoute-v0)
from agents import bc, networks
from agents.pipeline import FinetuneRun, Recipe, RecipeConfig
from envs import jax_env
from experiments import bench_env
from experiments.bench_env import gym_steps_per_second, make_twin_runner
from experiments.cli import option, parse_config, write_json

CARTPOLE, GYM, TWIN, BOPO, PPO = (
    "CartPole-v1",
    "BudgetRoute-v0",
    "twin",
    "BoPO",
    "PPO-Lagrangian",
)
"""Keys of the figures, in the order they are measured and printed."""


@dataclass(frozen=True)
class BenchConfig(bench_env.BenchConfig):
    """Environment and training throughput against CartPole-v1."""

    train_updates: int = option(10, "Training updates timed per round (each method).")
    n_train_tasks: int = option(300, "Training tasks (boundary references, task pool).")
    boundary_runs: int = option(
        RecipeConfig.boundary_runs, "Runs of each boundary policy per training task."
    )
    min_successes: int = option(
        RecipeConfig.min_successes, "Successful boundary runs a task needs to count."
    )
    hidden_sizes: tuple[int, ...] = option(
        RecipeConfig.hidden_sizes, "Hidden widths of each tower (both methods)."
    )
    seeds: int = option(RecipeConfig.seeds, "Training seeds (vmapped, both methods).")
    tasks_per_update: int = option(
        RecipeConfig.tasks_per_update, "BoPO: training tasks sampled per update."
    )
    group_size: int = option(RecipeConfig.group_size, "BoPO: rollouts per task.")
    lams: tuple[float, ...] = option(RecipeConfig.lams, "BoPO: cost weights (vmapped).")
    ppo_episodes: int = option(
        RecipeConfig.ppo_episodes, "PPO-Lagrangian: episodes per update."
    )
    cost_targets: tuple[float, ...] = option(
        RecipeConfig.cost_targets,
        "PPO-Lagrangian: cost targets (vmapped), fractions of always-expensive's cost.",
    )
    out_dir: str = option("runs/bench", "Folder for bench.json.")

    def __post_init__(self):
        for name in ("gym_steps", "n_envs", "scan_steps", "rounds", "train_updates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        recipe_config(self)  # the recipe checks the rest


def recipe_config(config: BenchConfig) -> RecipeConfig:
    """Return the recipe configuration both methods are built from (its defaults but
    the fields of ``config``)."""
    return RecipeConfig(
        suite=config.suite,
        method=("bopo", "ppo-lagrangian"),
        n_train_tasks=config.n_train_tasks,
        n_test_tasks=1,  # no evaluation here
        boundary_runs=config.boundary_runs,
        min_successes=config.min_successes,
        hidden_sizes=config.hidden_sizes,
        # Every update the benchmark runs (the step-size schedules span them)
        updates=config.train_updates * (config.rounds + 1),
        tasks_per_update=config.tasks_per_update,
        group_size=config.group_size,
        lams=config.lams,
        ppo_episodes=config.ppo_episodes,
        cost_targets=config.cost_targets,
        seeds=config.seeds,
        warm_start=False,
    )


def training_jobs(config: BenchConfig, folder: Path) -> dict[str, FinetuneRun]:
    """Return BoPO's and PPO-Lagrangian's sweeps as the recipe builds them
    (:meth:`Recipe.bopo_run`, :meth:`Recipe.ppo_lagrangian_run`), from one fresh
    network whose normaliser is fitted on the boundary rollouts' observations; the
    recipe keeps its boundary store in ``folder``."""
    recipe = Recipe(recipe_config(config), folder, log=lambda _: None)
    store = recipe.boundaries()
    features = []
    for traj in store.trajectories.values():
        valid = np.asarray(traj["valid"])
        obs = jax.tree.map(lambda x, v=valid: x[v], traj["obs"])
        features.append(np.asarray(networks.policy_features(obs)))
    features = jnp.asarray(np.concatenate(features))
    n_actions = recipe.train_params.n_actions
    fresh = bc.init_state(recipe.bc_config(), features.shape[1], n_actions, None, features)
    return {
        BOPO: recipe.bopo_run(store, fresh.params, fresh.normalizer),
        PPO: recipe.ppo_lagrangian_run(store, fresh.params, fresh.normalizer),
    }


def chunk_runner(job: FinetuneRun, n: int) -> Callable[[], int]:
    """Return ``run()``: ``n`` updates of ``job`` in one jitted call, continuing from
    the states of its previous call; it returns the environment steps the updates took
    (the sum of their ``steps`` metric)."""
    jitted = jax.jit(job.run, static_argnums=2)
    box = {"states": job.template}

    def run() -> int:
        states, metrics = jitted(job.keys, box["states"], n)
        steps = int(jax.block_until_ready(metrics["steps"]).sum())
        box["states"] = jax.block_until_ready(states)
        return steps

    return run


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    """Return ``(fn(), seconds it took)``."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def labels(config: BenchConfig, info: dict) -> dict:
    """Return the table's label of each figure."""
    b, p = info[BOPO], info[PPO]
    return {
        CARTPOLE: "CartPole-v1 (gym.make)",
        GYM: "BudgetRoute-v0 (gym.make)",
        TWIN: f"JAX twin ({config.n_envs} envs, scan)",
        BOPO: f"BoPO training ({_runs(b['runs'])} x {b['batch']})",
        PPO: f"PPO-Lagrangian training ({_runs(p['runs'])} x {p['batch']})",
    }


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def format_table(result: dict, names: dict) -> str:
    """Return the printed table of a result (steps per second and ratios)."""
    width = max(len("environment / workload"), *map(len, names.values())) + 2
    lines = [f"{'environment / workload':<{width}}{'steps/s':>14}{'x CartPole':>12}"]
    for key, name in names.items():
        rate, ratio = result["steps_per_second"][key], result["x_cartpole"][key]
        lines.append(f"{name:<{width}}{rate:>14,.0f}{ratio:>12.2f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the benchmark, print the table and return the figures."""
    config = parse_config(BenchConfig, argv)
    k_twin = jax.random.key(0)

    # Build and compile every JAX workload: one untimed call each
    compile_s, info = {}, {}
    params = jax_env.make_params(config.suite)
    keys = jax.random.split(k_twin, config.n_envs)
    _, states = jax.vmap(jax_env.reset, in_axes=(0, None))(keys, params)
    twin = make_twin_runner(params, config.n_envs, config.scan_steps)
    box = {"states": states, "calls": 1}

    def run_twin() -> int:
        key = jax.random.key(box["calls"])
        box["states"] = jax.block_until_ready(twin(key, box["states"]))
        box["calls"] += 1
        return config.n_envs * config.scan_steps

    start = time.perf_counter()
    jobs = training_jobs(config, Path(config.out_dir) / "recipe")
    setup_s = time.perf_counter() - start
    workloads = {TWIN: run_twin}
    for name, job in jobs.items():
        workloads[name] = chunk_runner(job, config.train_updates)
        runs = int(np.prod(np.shape(job.keys))) * len(job.values)
        info[name] = {"runs": runs}
    info[BOPO]["batch"] = f"{config.tasks_per_update * config.group_size} rollouts"
    info[PPO]["batch"] = f"{config.ppo_episodes} episodes"
    for name, run in workloads.items():
        compile_s[name] = timed(run)[1]

    rates = {k: [] for k in (CARTPOLE, GYM, TWIN, BOPO, PPO)}
    steps = {k: [] for k in (BOPO, PPO)}
    for _ in range(config.rounds):
        rates[CARTPOLE].append(gym_steps_per_second(CARTPOLE, config.gym_steps))
        rates[GYM].append(gym_steps_per_second(GYM, config.gym_steps, suite=config.suite))
        for name, run in workloads.items():
            n, seconds = timed(run)
            rates[name].append(n / seconds)
            if name in steps:
                steps[name].append(n)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "steps_per_second": med,
        "x_cartpole": {k: v / med[CARTPOLE] for k, v in med.items()},
        "rounds": rates,
        "train_steps_per_round": steps,
        "workloads": info,
        "first_call_seconds": compile_s,
        "setup_seconds": setup_s,
        "device": str(jax.devices()[0]),
        "config": config,
    }
    print(format_table(result, labels(config, info)))
    write_json(Path(config.out_dir) / "bench.json", result)
    return result


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
