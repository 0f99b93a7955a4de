"""What each part of BoPO does: the recipe with one part removed at a time.

On one suite, the boundary rollouts and the warm start are built once; BoPO is then
fine-tuned with its full configuration and with each part turned off in turn:

- ``no reference guidance``: the group baseline without the boundary references (GRPO);
- ``no boundary-relative reward``: raw cost over one global scale, no Hard bonus;
- ``no warm start``: fine-tuning from a fresh network;
- ``no common random numbers``: each rollout of a group with its own episode seed;
- ``no cost to go``: every step charged with the whole trajectory's cost;
- ``no pruning``: the warm start clones the cheapest successful mixed rollouts as they
  are (only this variant clones its own warm start).

Every variant is evaluated on the same held-out episodes against the same baselines and
oracle. The table gives frontier efficiency per seed, the most successful point, and the
variant's cheapest-end behaviour: ``collapsed`` counts the cost weights whose greedy
policy fails more often than always-cheap does while calling the expensive model in
fewer than 5% of its calls (the cheap-failure collapse reference guidance is meant to
prevent). Writes ``ablations.json`` and ``ablations.png``.

    python -m experiments.ablations --suite household
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from tqdm import tqdm

from agents.evaluate import CHEAP, EXPENSIVE, RANDOM, plot_frontiers
from agents.pipeline import Recipe, RecipeConfig, score_all
from experiments.cli import format_table, option, parse_config, run_main, write_json

VARIANTS = {
    "BoPO": {},
    "no reference guidance": {"reference_guided": False},
    "no boundary-relative reward": {"boundary_relative": False},
    "no warm start": {"warm_start": False},
    "no common random numbers": {"shared_seeds": False},
    "no cost to go": {"cost_to_go": False},
    "no pruning": {"prune": False},
}
"""Each variant's changes to the run's configuration."""


@dataclasses.dataclass(frozen=True)
class AblationConfig(RecipeConfig):
    """BoPO with each of its parts removed in turn, on one suite."""

    variants: tuple[str, ...] = option(
        tuple(VARIANTS), f"Variants to run, among: {', '.join(VARIANTS)}."
    )
    out_dir: str = option("runs/ablations", "Folder of the variants' runs and results.")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(
                f"variants: unknown {unknown} (or none given); known: {list(VARIANTS)}"
            )
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants: each variant at most once, got {self.variants!r}")
        if not self.out_dir.strip():
            raise ValueError("out_dir must name a folder, got an empty string")
        if self.method != ("bopo",):
            raise ValueError("method: the ablations are of BoPO alone (--method bopo)")


def collapsed(points: list[dict], cheap: dict) -> int:
    """Return how many fine-tuned points fail more often than ``cheap`` (always-cheap)
    while calling the expensive model in fewer than 5% of their calls."""
    return sum(
        1
        for p in points
        if p.get("seed") is not None
        and p["success"] < cheap["success"]
        and (p.get("expensive_share") or 0.0) < 0.05
    )


def main(argv=None) -> dict:
    """Run every variant; print and return the table rows."""
    config = parse_config(AblationConfig, argv)
    start = time.perf_counter()
    fields = {f.name for f in dataclasses.fields(RecipeConfig)}
    base = RecipeConfig(
        **{k: v for k, v in dataclasses.asdict(config).items() if k in fields}
    )
    out = Path(config.out_dir)
    shared = Recipe(base, out / "shared", log=lambda _: None)
    store = shared.boundaries()
    bc_state, _ = shared.warm_start(store)
    refs = shared.evaluate_references(store, bc_state)
    cheap = refs.results[CHEAP].points[0]

    rows, curves = [], {k: refs.results[k] for k in (CHEAP, EXPENSIVE, RANDOM)}
    for variant in tqdm(config.variants, desc="variants", disable=None):
        cfg = dataclasses.replace(base, **VARIANTS[variant])
        recipe = Recipe(cfg, out / variant.replace(" ", "-"), log=lambda _: None)
        warm = bc_state
        if not cfg.prune:
            warm, _ = recipe.warm_start(store)
        t0 = time.perf_counter()
        states = recipe.finetune(store, warm)
        seconds = time.perf_counter() - t0
        res = recipe.evaluate_tuned(states, refs)["BoPO"]
        res.name = variant
        scores = score_all({**refs.results, variant: res}, refs.oracle, [variant])
        per_seed = [scores.get(f"{variant} seed {s}") for s in range(cfg.seeds)]
        per_seed = [x for x in per_seed if x is not None] or [scores[variant]]
        best = max(res.points, key=lambda p: (p["success"], -p["mean_cost"]))
        rows.append(
            {
                "variant": variant,
                "efficiency": scores[variant],
                "efficiency_per_seed": per_seed,
                "best_success": best["success"],
                "best_relative_cost": best["mean_cost"] / refs.ref_cost,
                "collapsed": collapsed(res.points, cheap),
                "points": len([p for p in res.points if p.get("seed") is not None]),
                "seconds": seconds,
            }
        )
        curves[variant] = res
    if refs.oracle is not None:
        curves["oracle"] = refs.oracle
    plot_frontiers(curves, out / "ablations.png", title=f"{config.suite}: BoPO ablations")
    seconds = time.perf_counter() - start
    write_json(
        out / "ablations.json",
        {
            "config": dataclasses.asdict(config),
            "rows": rows,
            "methods": {k: v.to_json() for k, v in curves.items()},
            "seconds": seconds,
        },
    )
    columns = [
        "variant",
        "efficiency",
        "best_success",
        "best_relative_cost",
        "collapsed",
        "points",
        "seconds",
    ]
    formats = {"efficiency": ".3f", "best_success": ".3f", "best_relative_cost": ".2f"}
    formats["seconds"] = ".0f"
    print(format_table(rows, columns, formats))
    print(f"results: {out / 'ablations.json'}  plot: {out / 'ablations.png'}")
    return {"rows": rows, "seconds": seconds}


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
