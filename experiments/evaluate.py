"""Evaluate the baselines, the plug-in planner and the oracle on held-out tasks.

Every heuristic baseline is swept over its knob on the same held-out episodes; the
per-step router is trained on always-cheap rollouts of the training tasks; the oracle
(and on synthetic suites the plug-in planner) gives the upper reference. Prints a table
with each method's frontier efficiency, and writes ``evaluation.json`` and
``frontier.png`` to ``--out-dir``.

    python -m experiments.evaluate --suite science
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agents import oracle
from agents.baselines import fit_step_router
from agents.evaluate import (
    Episodes,
    MethodResult,
    baseline_sweeps,
    plot_frontiers,
    score_methods,
    summary_rows,
)
from agents.pipeline import RecipeConfig, env_params
from envs.synthetic import PRESETS
from experiments.cli import format_table, option, parse_config, run_main, write_json


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Baselines, plug-in planner and oracle on a suite's held-out tasks."""

    suite: str = option("household", "Synthetic preset or replay suite.")
    n_train_tasks: int = option(3000, "Training tasks (for the per-step router).")
    n_test_tasks: int = option(1024, "Held-out tasks.")
    eval_runs: int = option(2, "Episodes per held-out task.")
    expensive_cap: int | None = option(None, "Cap on expensive calls (preset default).")
    budget_usd: float | None = option(
        None, "Hard budget per task in USD, or none for no budget."
    )
    seed: int = option(0, "Seed of the episodes and of the router's training.")
    out_dir: str = option("runs/evaluate", "Folder for evaluation.json and frontier.png.")


def _as_result(name: str, pts: dict) -> MethodResult:
    res = MethodResult(name, "lam")
    for lam, cost, success in zip(pts["lams"], pts["costs"], pts["successes"], strict=True):
        res.points.append(
            {"knob": float(lam), "mean_cost": float(cost), "success": float(success)}
        )
    return res


def main(argv=None) -> dict:
    """Run the evaluation; print the table and return the results."""
    config = parse_config(EvaluateConfig, argv)
    start = time.perf_counter()
    recipe = RecipeConfig(
        suite=config.suite,
        n_train_tasks=config.n_train_tasks,
        n_test_tasks=config.n_test_tasks,
        expensive_cap=config.expensive_cap,
        budget_usd=config.budget_usd,
    )
    train_params, suite = env_params(recipe, "train")
    test_params, _ = env_params(recipe, "test")
    episodes = Episodes.make(
        test_params, config.n_test_tasks, config.eval_runs, config.seed
    )
    n = min(config.n_train_tasks, train_params.n_tasks)
    router = fit_step_router(train_params, jnp.arange(n), jax.random.key(config.seed))
    results = baseline_sweeps(episodes, router)
    tasks = np.asarray(episodes.tasks[:: config.eval_runs])
    if config.suite in PRESETS:
        best = _as_result("oracle", oracle.oracle_points(test_params, tasks))
        results["plug-in planner"] = _as_result(
            "plug-in planner", oracle.plugin_points(suite.bank("train"), test_params, tasks)
        )
    else:
        pts = oracle.replay_oracle_points(test_params, tasks)
        best = MethodResult(
            "oracle",
            "budget",
            [
                {
                    "knob": 0.0,
                    "mean_cost": float(np.mean(pts["costs"])),
                    "success": float(np.mean(pts["successes"])),
                }
            ],
        )
    scores = score_methods(results, best)
    results["oracle"] = best
    out = Path(config.out_dir)
    plot_frontiers(results, out / "frontier.png", title=f"{config.suite}: held-out tasks")
    rows = summary_rows(results)
    seconds = time.perf_counter() - start
    write_json(
        out / "evaluation.json",
        {
            "config": config,
            "methods": {k: v.to_json() for k, v in results.items()},
            "scores": scores,
            "seconds": seconds,
        },
    )
    print(
        format_table(
            rows,
            ["method", "success", "mean_cost", "expensive_share", "efficiency"],
            {
                "success": ".3f",
                "mean_cost": ".4f",
                "expensive_share": ".2f",
                "efficiency": ".3f",
            },
        )
    )
    print(
        f"results: {out / 'evaluation.json'}  plot: {out / 'frontier.png'}  "
        f"time: {seconds:.0f} s"
    )
    return {"results": results, "scores": scores}


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
