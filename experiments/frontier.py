"""The cost-success frontier of every method on one or more suites, several seeds.

Runs the recipe of :mod:`experiments.train` on each suite with ``--seeds`` fine-tuning
seeds (vmapped) and reports, per suite: the frontier efficiency of BoPO per seed (mean
and spread), of the best heuristic baseline, of the plug-in planner; and the cheapest
BoPO point within one success point of always-expensive, as a fraction of
always-expensive's mean cost, beside the oracle's own fraction.

    python -m experiments.frontier --suites household,science,apps --seeds 3
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from agents.evaluate import best_baseline
from experiments.cli import format_table, parse_config, write_json
from experiments.train import TrainConfig, run

HEURISTICS = ("expensive-first-k", "escalate-on-error", "budget-pacing", "step-router")


@dataclasses.dataclass(frozen=True)
class FrontierConfig(TrainConfig):
    """Frontiers of every method on several suites and seeds."""

    suites: tuple[str, ...] = dataclasses.field(
        default=("household", "science", "apps"),
        metadata={"help": "Suites to run (this replaces --suite)."},
    )
    seeds: int = dataclasses.field(default=3, metadata={"help": "Fine-tuning seeds."})
    out_dir: str = dataclasses.field(
        default="runs/frontier",
        metadata={"help": "Folder holding one sub-folder per suite."},
    )


def cheapest_fraction(points: list[dict], target: float, reference_cost: float):
    """Return the least mean cost among points with success >= ``target``, as a fraction
    of ``reference_cost`` (None when no point qualifies)."""
    costs = [p["mean_cost"] for p in points if p["success"] >= target]
    return min(costs) / reference_cost if costs else None


def suite_row(suite: str, result: dict, seeds: int) -> dict:
    """Return the summary row of one suite's run."""
    results, scores = result["results"], result["scores"]
    expensive = results["always-expensive"].points[0]
    target = expensive["success"] - 0.01
    per_seed = [scores.get(f"BoPO seed {s}") for s in range(seeds)]
    per_seed = [x for x in per_seed if x is not None] or [scores.get("BoPO")]
    heuristic = {k: v for k, v in scores.items() if k in HEURISTICS}
    best_name, best = best_baseline(heuristic, exclude=()) if heuristic else (None, None)
    bopo_fraction = [
        cheapest_fraction(
            [p for p in results["BoPO"].points if p.get("seed") in (s, None)],
            target,
            expensive["mean_cost"],
        )
        for s in range(seeds)
    ]
    known = [f for f in bopo_fraction if f is not None]
    return {
        "suite": suite,
        "bopo_efficiency": float(np.mean(per_seed)),
        "bopo_efficiency_sd": float(np.std(per_seed)),
        "best_heuristic": best_name,
        "best_heuristic_efficiency": best,
        "plugin_efficiency": scores.get("plug-in planner"),
        "bopo_cost_fraction": float(np.mean(known)) if known else None,
        "oracle_cost_fraction": cheapest_fraction(
            results["oracle"].points, target, expensive["mean_cost"]
        )
        if "oracle" in results
        else None,
        "seconds": result["seconds"],
    }


def main(argv=None) -> list[dict]:
    """Run every suite; print and return the summary rows."""
    config = parse_config(FrontierConfig, argv)
    rows = []
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for suite in config.suites:
        values = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}
        values.update(suite=suite, out_dir=str(Path(config.out_dir) / suite))
        result = run(TrainConfig(**values))
        rows.append(suite_row(suite, result, config.seeds))
    print(
        format_table(
            rows,
            [
                "suite",
                "bopo_efficiency",
                "bopo_efficiency_sd",
                "best_heuristic",
                "best_heuristic_efficiency",
                "plugin_efficiency",
                "bopo_cost_fraction",
                "oracle_cost_fraction",
                "seconds",
            ],
            {
                "bopo_efficiency": ".3f",
                "bopo_efficiency_sd": ".3f",
                "best_heuristic_efficiency": ".3f",
                "plugin_efficiency": ".3f",
                "bopo_cost_fraction": ".3f",
                "oracle_cost_fraction": ".3f",
                "seconds": ".0f",
            },
        )
    )
    write_json(Path(config.out_dir) / "frontier.json", {"rows": rows})
    print(json.dumps({"rows": len(rows)}))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
