"""The main job: the whole recipe on one suite, from boundaries to the frontier.

Stages: boundary rollouts of the training tasks, taxonomy and stratified synthesis,
behaviour cloning (the warm start), fine-tuning (``--method``: BoPO over a sweep of cost
weights, PPO-Lagrangian over a sweep of cost targets, or both), then evaluation on
held-out tasks against the baselines, the plug-in planner and the oracle. Prints a line
per evaluation and a summary table; writes ``results.json`` and ``frontier.png`` to
``--out-dir``; checkpoints every stage (``--resume`` continues).

    python -m experiments.train
    python -m experiments.train --suite science --out-dir runs/science
    python -m experiments.train --method ppo-lagrangian --out-dir runs/lagrangian
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from tqdm import tqdm

from agents.evaluate import plot_frontiers, summary_rows
from agents.pipeline import Recipe, RecipeConfig
from experiments.cli import format_table, parse_config, run_main, write_json


@dataclasses.dataclass(frozen=True)
class TrainConfig(RecipeConfig):
    """Train a budget-aware router and measure its cost-success frontier."""

    out_dir: str = dataclasses.field(
        default="runs/train", metadata={"help": "Folder for results and checkpoints."}
    )
    resume: bool = dataclasses.field(
        default=False, metadata={"help": "Continue from the checkpoints in --out-dir."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.out_dir.strip():
            raise ValueError("out_dir must name a folder, got an empty string")


def make_recipe(config: TrainConfig, log=print) -> Recipe:
    """Return the recipe of a script's config, with progress bars: its
    :class:`RecipeConfig` fields configure the run, and the fields it adds beyond
    :class:`TrainConfig` are recorded in the run folder too (a resume that changes
    them is refused)."""
    values = dataclasses.asdict(config)
    recipe_fields = {f.name for f in dataclasses.fields(RecipeConfig)}
    script_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return Recipe(
        RecipeConfig(**{k: v for k, v in values.items() if k in recipe_fields}),
        config.out_dir,
        resume=config.resume,
        log=log,
        progress=lambda **kw: tqdm(disable=None, **kw),
        settings={k: v for k, v in values.items() if k not in script_fields},
    )


def run(config: TrainConfig, log=print) -> dict:
    """Run the recipe; return ``{"results", "scores", "cost_unit", "rows", "seconds"}``."""
    start = time.perf_counter()
    recipe = make_recipe(config, log)
    stages = tqdm(total=4, desc="stages", disable=None)
    store = recipe.boundaries()
    stages.update()
    bc_state, report = recipe.warm_start(store)
    stages.update()
    states = recipe.finetune(store, bc_state)
    stages.update()
    evaluation = recipe.evaluate(store, bc_state, states)
    stages.update()
    stages.close()
    seconds = time.perf_counter() - start

    results = evaluation["results"]
    rows = summary_rows(results)
    out = Path(config.out_dir)
    plot_frontiers(
        results,
        out / "frontier.png",
        title=f"{config.suite}: held-out tasks (frontier efficiency)",
    )
    write_json(
        out / "results.json",
        {
            "config": dataclasses.asdict(config),
            "synthesis": report,
            "methods": {k: v.to_json() for k, v in results.items()},
            "scores": evaluation["scores"],
            "cost_unit": evaluation["cost_unit"],
            "timings": recipe.timings,
            "seconds": seconds,
        },
    )
    print(
        format_table(
            rows,
            [
                "method",
                "success",
                "mean_cost",
                "relative_cost",
                "expensive_share",
                "efficiency",
            ],
            {
                "success": ".3f",
                "mean_cost": ".4f",
                "relative_cost": ".2f",
                "expensive_share": ".2f",
                "efficiency": ".3f",
            },
        )
    )
    print("(each method's most successful point; efficiency over its whole sweep)")
    print(
        f"results: {out / 'results.json'}  plot: {out / 'frontier.png'}  "
        f"time: {seconds:.0f} s"
    )
    return {**evaluation, "rows": rows, "seconds": seconds}


def main(argv=None) -> dict:
    """Parse the flags and run."""
    return run(parse_config(TrainConfig, argv))


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
