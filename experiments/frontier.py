"""The cost-success frontier of every method on one or more suites, several seeds.

Runs the recipe of :mod:`experiments.train` on each suite with ``--seeds`` fine-tuning
seeds (vmapped) and every method of ``--method`` (both by default), then reports per
suite and method:

- frontier efficiency per seed (mean, spread, lowest) beside the best heuristic
  baseline's and the plug-in planner's;
- the smallest margin of each seed's frontier over every baseline's at matched costs
  between the always-cheap and the always-expensive mean cost (positive: above every
  baseline everywhere), and the baseline where it is smallest;
- the cheapest point within one success point of always-expensive, as a fraction of
  always-expensive's mean cost, beside the oracle's own fraction;
- the least share of expensive calls among the points that reach 95% of
  always-expensive's success (the figure single-turn routing papers report);
- for PPO-Lagrangian, each cost target's held-out mean cost against the target, and the
  success there against BoPO's frontier at that cost.

    python -m experiments.frontier --suites household,science,apps --seeds 3
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from agents import metrics
from agents.evaluate import CHEAP, EXPENSIVE, RANDOM, MethodResult
from agents.pipeline import METHODS, NothingToResume
from envs.replay import REPLAY_SUITES
from envs.synthetic import PRESETS
from experiments.cli import format_table, parse_config, run_main, write_json
from experiments.train import TrainConfig, run

HEURISTICS = ("expensive-first-k", "escalate-on-error", "budget-pacing", "step-router")
BASELINES = (CHEAP, EXPENSIVE, RANDOM, *HEURISTICS)


DEFAULT_SUITES = ("household", "science", "apps")


@dataclasses.dataclass(frozen=True)
class FrontierConfig(TrainConfig):
    """Frontiers of every method on several suites and seeds."""

    suite: str = dataclasses.field(
        default="",
        metadata={"help": "One suite to run: the same as --suites SUITE."},
    )
    suites: tuple[str, ...] | None = dataclasses.field(
        default=None,
        metadata={"help": "Suites to run (default: household, science and apps)."},
    )
    method: tuple[str, ...] = dataclasses.field(
        default=("bopo", "ppo-lagrangian"),
        metadata={"help": "Fine-tuning methods, one or both of bopo and ppo-lagrangian."},
    )
    seeds: int = dataclasses.field(default=3, metadata={"help": "Fine-tuning seeds."})
    out_dir: str = dataclasses.field(
        default="runs/frontier",
        metadata={"help": "Folder holding one sub-folder per suite."},
    )

    def __post_init__(self) -> None:
        if self.suite and self.suites is not None:
            raise ValueError("give --suite or --suites, not both")
        suites = self.suites
        if self.suite or suites is None:
            suites = (self.suite,) if self.suite else DEFAULT_SUITES
        # Checked before the first suite runs, not when its turn comes
        if not suites or len(set(suites)) != len(suites):
            raise ValueError(f"suites needs distinct suites, got {suites!r}")
        known = [*PRESETS, *REPLAY_SUITES]
        for suite in suites:
            if suite not in known:
                raise ValueError(
                    f"suites: unknown suite {suite!r}; known: {', '.join(known)}"
                )
        object.__setattr__(self, "suites", tuple(suites))
        object.__setattr__(self, "suite", suites[0])
        super().__post_init__()


def cheapest_fraction(points: list[dict], target: float, reference_cost: float):
    """Return the least mean cost among points with success >= ``target``, as a fraction
    of ``reference_cost`` (None when no point qualifies)."""
    costs = [p["mean_cost"] for p in points if p["success"] >= target]
    return min(costs) / reference_cost if costs else None


def least_share(points: list[dict], target: float):
    """Return the least share of expensive calls among points with success >=
    ``target`` (None when no point qualifies or none reports a share)."""
    shares = [
        p["expensive_share"]
        for p in points
        if p["success"] >= target and p.get("expensive_share") is not None
    ]
    return min(shares) if shares else None


def seed_points(res: MethodResult, seed: int) -> list[dict]:
    """Return the points of one fine-tuning seed (with the sweep's shared end points)."""
    return [p for p in res.points if p.get("seed") in (seed, None)]


def min_margin(points: list[dict], results: dict, low: float, high: float):
    """Return ``(margin, baseline)``: the smallest lead of a frontier over any
    baseline's at matched costs in ``[low, high]`` (USD), and where it is smallest."""
    own = metrics.frontier_curve(
        [p["mean_cost"] for p in points], [p["success"] for p in points]
    )
    worst = (np.inf, None)
    for name in BASELINES:
        if name not in results:
            continue
        other = results[name].frontier()
        grid = np.concatenate(([low, high], own.costs, other.costs))
        grid = grid[(grid >= low) & (grid <= high)]
        gap = float(np.min(np.asarray(own(grid)) - np.asarray(other(grid))))
        worst = min(worst, (gap, name), key=lambda g: g[0])
    return worst


def method_row(suite: str, name: str, result: dict, seeds: int) -> dict:
    """Return the summary row of one method on one suite."""
    results, scores = result["results"], result["scores"]
    res = results[name]
    cheap = results[CHEAP].points[0]
    expensive = results[EXPENSIVE].points[0]
    low, high = cheap["mean_cost"], expensive["mean_cost"]
    per_seed = [scores.get(f"{name} seed {s}") for s in range(seeds)]
    per_seed = [x for x in per_seed if x is not None] or [scores.get(name)]
    per_seed = [x for x in per_seed if x is not None]
    heuristic = {k: v for k, v in scores.items() if k in HEURISTICS and v is not None}
    best_name = max(heuristic, key=heuristic.get) if heuristic else None
    margins = [min_margin(seed_points(res, s), results, low, high) for s in range(seeds)]
    within = expensive["success"] - 0.01
    fractions = [
        cheapest_fraction(seed_points(res, s), within, expensive["mean_cost"])
        for s in range(seeds)
    ]
    reach = 0.95 * expensive["success"]
    shares = [least_share(seed_points(res, s), reach) for s in range(seeds)]
    oracle = results.get("oracle")
    return {
        "suite": suite,
        "method": name,
        "efficiency": float(np.mean(per_seed)) if per_seed else None,
        "efficiency_sd": float(np.std(per_seed)) if per_seed else None,
        "efficiency_min": float(np.min(per_seed)) if per_seed else None,
        "efficiency_per_seed": per_seed,
        "best_heuristic": best_name,
        "best_heuristic_efficiency": heuristic.get(best_name),
        "plugin_efficiency": scores.get("plug-in planner"),
        "min_margin": min(m[0] for m in margins),
        "min_margin_vs": min(margins)[1],
        "cost_fraction": _mean_known(fractions),
        "cost_fraction_per_seed": fractions,
        "oracle_cost_fraction": cheapest_fraction(
            oracle.points, within, expensive["mean_cost"]
        )
        if oracle is not None
        else None,
        "expensive_share_95": _mean_known(shares),
        "expensive_share_95_per_seed": shares,
        "seconds": result["seconds"],
    }


def _mean_known(values):
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def target_rows(suite: str, result: dict, unit: float, seeds: int) -> list[dict]:
    """Return, per PPO-Lagrangian cost target and seed, the held-out mean cost against
    the target (both USD) and the success there against BoPO's frontier."""
    results = result["results"]
    res = results.get(METHODS["ppo-lagrangian"])
    if res is None:
        return []
    bopo = results.get(METHODS["bopo"])
    bopo_curve = bopo.frontier() if bopo is not None else None
    rows = []
    for p in res.points:
        if p.get("seed") is None:
            continue
        target = p["knob"] * unit
        rows.append(
            {
                "suite": suite,
                "seed": p["seed"],
                "target_fraction": p["knob"],
                "target_usd": target,
                "mean_cost": p["mean_cost"],
                "cost_vs_target": p["mean_cost"] / target - 1.0,
                "success": p["success"],
                "bopo_success_there": float(bopo_curve(p["mean_cost"]))
                if bopo_curve is not None
                else None,
            }
        )
    return rows


def main(argv=None) -> dict:
    """Run every suite; print and return the summary rows."""
    config = parse_config(FrontierConfig, argv)
    rows, targets = [], []
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    folders = {s: Path(config.out_dir) / s for s in config.suites}
    started = {s for s, folder in folders.items() if (folder / "config.json").exists()}
    if config.resume and not started:
        raise NothingToResume(
            f"nothing to resume: no suite of {', '.join(config.suites)} was started in "
            f"{config.out_dir}; check --out-dir, or drop --resume to start a new run"
        )
    for suite in config.suites:
        values = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}
        values.update(suite=suite, out_dir=str(folders[suite]))
        # A resumed sweep starts the suites it had not reached yet
        values.update(resume=config.resume and suite in started)
        result = run(TrainConfig(**values))
        for method in config.method:
            rows.append(method_row(suite, METHODS[method], result, config.seeds))
        targets += target_rows(suite, result, result["cost_unit"], config.seeds)
    columns = [
        "suite",
        "method",
        "efficiency",
        "efficiency_sd",
        "efficiency_min",
        "best_heuristic",
        "best_heuristic_efficiency",
        "plugin_efficiency",
        "min_margin",
        "min_margin_vs",
        "cost_fraction",
        "oracle_cost_fraction",
        "expensive_share_95",
        "seconds",
    ]
    formats = {c: ".3f" for c in columns if c not in ("suite", "method", "min_margin_vs")}
    formats.update(best_heuristic="s", seconds=".0f", min_margin="+.3f")
    print(format_table(rows, columns, formats))
    if targets:
        columns = list(targets[0])
        formats = {c: ".4f" for c in columns if c not in ("suite", "seed")}
        formats.update(cost_vs_target="+.3f", target_fraction=".2f")
        print(format_table(targets, columns, formats))
    write_json(Path(config.out_dir) / "frontier.json", {"rows": rows, "targets": targets})
    return {"rows": rows, "targets": targets}


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
