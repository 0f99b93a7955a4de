"""One router for every budget: a budget-conditioned policy under strict budgets and caps.

On the run folder's boundary rollouts and warm start (built, or reused with
``--resume``) it trains:

- the budget-conditioned router: PPO-Lagrangian from the cloned policy, each training
  episode under a hard budget drawn from ``--train-budgets`` and a cap on expensive
  calls drawn from 1 to the horizon (a cap as large as the horizon never binds), for
  ``--conditioned-updates`` updates (by default ``--updates``);
- with ``--per-budget``, one policy per budget of the sweep, trained only under it.

Then, on held-out tasks, under each strict budget of ``--budgets`` (with the preset's
cap, if any) and under each cap of ``--caps`` (with the loosest training budget), it
runs the budget-conditioned router, the per-budget policies, expensive-first-k (its
best k there), the best heuristic baseline there, and the oracle there (under the cap
alone in the cap sweep: the loose budget seldom binds, and a money grid beside a cap
multiplies the oracle's state space). Every policy
runs with budget-constrained decoding, so none can overspend; the table counts
overspends and bankruptcies anyway. Budgets are given as fractions of always-expensive's
mean cost on the training tasks. Writes ``strict_budget.json`` and ``strict_budget.png``.

    python -m experiments.strict_budget
    python -m experiments.strict_budget --suite apps --caps 5,10,15,20
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from agents import oracle
from agents import ppo_lagrangian as ppo_lag
from agents.baselines import fit_step_router
from agents.evaluate import (
    Episodes,
    baseline_sweeps,
    summarize_rollout,
)
from agents.pipeline import Recipe
from agents.policy import NetworkPolicy
from envs.synthetic import PRESET_TARGETS, PRESETS
from experiments.cli import format_table, option, parse_config, run_main, write_json
from experiments.train import TrainConfig, make_recipe

CONDITIONED = "budget-conditioned"
PER_BUDGET = "trained for this budget"
FIRST_K = "expensive-first-k"


@dataclasses.dataclass(frozen=True)
class StrictBudgetConfig(TrainConfig):
    """One budget-conditioned router under a sweep of strict budgets and caps."""

    out_dir: str = option("runs/strict_budget", "Folder for results and checkpoints.")
    budgets: tuple[float, ...] = option(
        (),
        "Strict budgets, as fractions of always-expensive's mean training cost (empty: "
        "five evenly spaced strictly between the always-cheap and always-expensive "
        "mean costs).",
    )
    caps: tuple[int, ...] = option((5, 10, 15, 20), "Caps on expensive calls swept.")
    train_budgets: tuple[float, ...] = option(
        (0.25, 2.0),
        "Range (low, high) the training budgets are drawn from, as fractions of "
        "always-expensive's mean training cost; the cap sweep runs at the high end.",
    )
    budget_target: float = option(
        1.0, "Mean share of its budget an episode may spend (1: the hard budget alone)."
    )
    per_budget: bool = option(True, "Also train one policy for each budget of the sweep.")
    conditioned_updates: int | None = option(
        None,
        "Updates of the budget-conditioned router (none: --updates, as many as each "
        "per-budget policy gets).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            len(self.train_budgets) != 2
            or not 0 < self.train_budgets[0] < (self.train_budgets[1])
            or not np.isfinite(self.train_budgets[1])
        ):
            raise ValueError(
                f"train_budgets must be (low, high) with 0 < low < high < inf, "
                f"got {self.train_budgets!r}"
            )
        for i, b in enumerate(self.budgets):
            if not np.isfinite(b) or b <= 0:
                raise ValueError(f"budgets[{i}] must be finite and > 0, got {b!r}")
        for i, c in enumerate(self.caps):
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise ValueError(f"caps[{i}] must be an integer >= 0, got {c!r}")
        n = self.conditioned_updates
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"conditioned_updates must be an integer >= 1, got {n!r}")
        if not np.isfinite(self.budget_target) or self.budget_target <= 0:
            raise ValueError(f"budget_target must be > 0, got {self.budget_target!r}")


def budget_sweep(config: StrictBudgetConfig, store) -> tuple[np.ndarray, float]:
    """Return the strict budgets (USD) and the unit they are fractions of (USD)."""
    unit = float(np.mean(store.episodes["expensive"]["cost"]))
    if config.budgets:
        return np.asarray(config.budgets) * unit, unit
    cheap = float(np.mean(store.episodes["cheap"]["cost"]))
    return cheap + (unit - cheap) * np.arange(1, 6) / 6, unit


def _policy(state, network, s: int, i: int) -> NetworkPolicy:
    """Return the greedy router of seed ``s`` and knob index ``i`` of batched states."""
    pick = lambda x: x[s, i]  # noqa: E731
    actor = jax.tree.map(pick, state.params["actor_critic"])
    return NetworkPolicy(actor, jax.tree.map(pick, state.normalizer), network)


def _best(points: list[dict]) -> dict:
    """Return the most successful point (the cheapest among ties)."""
    return max(points, key=lambda p: (p["success"], -p["mean_cost"]))


def evaluate_setting(
    recipe: Recipe,
    network,
    states: dict,
    router,
    budget: float | None,
    cap: int | None,
    per_budget_index: int | None,
    oracle_cap: int | None,
    oracle_budget: float | None,
) -> list[dict]:
    """Return one row per method under one strict budget (USD) and cap; the oracle
    plans under ``oracle_cap`` and ``oracle_budget`` (None: that rule is left out, where
    it cannot bind, or where its money grid would cost more than it tells)."""
    c = recipe.config
    eval_cap = -1 if cap is None else cap
    episodes = Episodes.make(
        recipe.test_params, c.n_test_tasks, c.eval_runs, c.seed + 17, budget, eval_cap
    )
    rows = []

    def add(method, point, seed=None, knob=None):
        rows.append({"method": method, "seed": seed, "knob": knob, **point})

    for s in range(c.seeds):
        out = episodes.run(_policy(states[CONDITIONED], network, s, 0))
        add(CONDITIONED, summarize_rollout(out), seed=s)
        if per_budget_index is not None and PER_BUDGET in states:
            out = episodes.run(_policy(states[PER_BUDGET], network, s, per_budget_index))
            add(PER_BUDGET, summarize_rollout(out), seed=s)

    # Every baseline family at its best knob value under this budget and cap
    sweeps = baseline_sweeps(episodes, router)
    best_name, best_point = None, None
    for name, res in sweeps.items():
        point = _best(res.points)
        if name == FIRST_K:
            add(FIRST_K, point, knob=point.get("knob"))
        if best_point is None or (point["success"], -point["mean_cost"]) > (
            best_point["success"],
            -best_point["mean_cost"],
        ):
            best_name, best_point = name, point
    add(f"best baseline ({best_name})", best_point, knob=best_point.get("knob"))

    # The oracle's most successful plan under the same rules (synthetic suites)
    if c.oracle and c.suite in PRESETS:
        tasks = np.asarray(episodes.tasks[:: c.eval_runs])
        orc = oracle.oracle_points(
            recipe.test_params, tasks, lams=[0.0], cap=oracle_cap, budget=oracle_budget
        )
        point = {
            "success": float(orc["successes"][0]),
            "mean_cost": float(orc["costs"][0]),
            "overspends": 0,
            "bankruptcies": None,
        }
        add("oracle", point)
    for r in rows:
        if r["method"] == "oracle":
            r.update(budget_usd=oracle_budget, cap=oracle_cap)
        else:
            r.update(budget_usd=budget, cap=cap)
    return rows


def run(config: StrictBudgetConfig, log=print) -> dict:
    """Train and evaluate; return ``{"budget_rows", "cap_rows", "checks", "seconds"}``."""
    start = time.perf_counter()
    # Its own settings go to config.json too: a resume under other budgets is refused
    recipe = make_recipe(config, log)
    store = recipe.boundaries()
    bc_state, _ = recipe.warm_start(store)
    budgets, unit = budget_sweep(config, store)
    horizon = int(recipe.train_params.horizon)
    preset_cap = None
    if config.expensive_cap is not None:
        preset_cap = config.expensive_cap
    elif config.suite in PRESET_TARGETS:
        preset_cap = PRESET_TARGETS[config.suite].expensive_cap
    # The budget sweep runs under the preset's cap; without one, a cap as large as the
    # horizon (it never binds) stands for none, as in training
    sweep_cap = horizon if preset_cap is None else preset_cap
    loose = config.train_budgets[1] * unit

    # Train the budget-conditioned router (and a policy per budget)
    low, high = (b * unit for b in config.train_budgets)
    states = {
        CONDITIONED: recipe.train_in_chunks(
            "finetune-budget-conditioned",
            recipe.budget_conditioned_run(
                store,
                bc_state,
                (low, high),
                (1, horizon),
                config.budget_target,
                config.conditioned_updates,
            ),
        )
    }
    if config.per_budget:
        states[PER_BUDGET] = recipe.train_in_chunks(
            "finetune-per-budget",
            recipe.per_budget_run(
                store, bc_state, tuple(budgets), sweep_cap, config.budget_target
            ),
        )

    # Evaluate under each strict budget, then each cap
    network = ppo_lag.make_network(recipe.ppo_config(store), recipe.train_params.n_actions)
    router = None
    if config.router:
        n = min(config.n_train_tasks, recipe.train_params.n_tasks)
        router = fit_step_router(
            recipe.train_params, jnp.arange(n), jax.random.key(config.seed)
        )
    oracle_cap = None if preset_cap is None else sweep_cap
    budget_rows, cap_rows = [], []
    for i, budget in enumerate(tqdm(budgets, desc="budgets", disable=None)):
        rows = evaluate_setting(
            recipe,
            network,
            states,
            router,
            float(budget),
            sweep_cap,
            i,
            oracle_cap,
            float(budget),
        )
        for r in rows:
            r["budget_fraction"] = float(budget / unit)
        budget_rows += rows
    for cap in tqdm(config.caps, desc="caps", disable=None):
        cap = int(cap)
        rows = evaluate_setting(
            recipe, network, states, router, loose, cap, None, cap, None
        )
        for r in rows:
            r["budget_fraction"] = config.train_budgets[1]
        cap_rows += rows
    checks = acceptance(budget_rows, config.seeds)
    seconds = time.perf_counter() - start

    out = Path(config.out_dir)
    write_json(
        out / "strict_budget.json",
        {
            "config": dataclasses.asdict(config),
            "budget_unit_usd": unit,
            "budget_rows": budget_rows,
            "cap_rows": cap_rows,
            "checks": checks,
            "timings": recipe.timings,
            "seconds": seconds,
        },
    )
    plot(budget_rows, cap_rows, out / "strict_budget.png", config.suite)
    columns = [
        "method",
        "seed",
        "budget_usd",
        "cap",
        "success",
        "mean_cost",
        "overspends",
        "bankruptcies",
    ]
    formats = {"budget_usd": ".4f", "success": ".3f", "mean_cost": ".4f"}
    print(format_table(budget_rows, columns, formats))
    print(format_table(cap_rows, columns, formats))
    print(format_table(checks, list(checks[0]), {"gap_to_per_budget": "+.3f"}))
    print(f"results: {out / 'strict_budget.json'}  time: {seconds:.0f} s")
    return {
        "budget_rows": budget_rows,
        "cap_rows": cap_rows,
        "checks": checks,
        "seconds": seconds,
    }


def acceptance(rows: list[dict], seeds: int) -> list[dict]:
    """Return, per budget and seed: the conditioned router's success minus the
    per-budget policy's, whether it is at least expensive-first-k's best, and the
    overspends of every policy run there."""
    checks = []
    for budget in sorted({r["budget_usd"] for r in rows}):
        here = [r for r in rows if r["budget_usd"] == budget]
        first_k = next(r for r in here if r["method"] == FIRST_K)
        for s in range(seeds):
            mine = next(r for r in here if r["method"] == CONDITIONED and r["seed"] == s)
            own = [r for r in here if r["method"] == PER_BUDGET and r["seed"] == s]
            checks.append(
                {
                    "budget_usd": budget,
                    "seed": s,
                    "success": mine["success"],
                    "gap_to_per_budget": mine["success"] - own[0]["success"]
                    if own
                    else None,
                    "at_least_first_k": mine["success"] >= first_k["success"],
                    "overspends": sum(r["overspends"] or 0 for r in here),
                }
            )
    return checks


def plot(budget_rows: list[dict], cap_rows: list[dict], path: Path, suite: str) -> None:
    """Save success against the strict budget and against the cap, one line a method
    (seeds averaged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    # One colour per method in both panels (the cap sweep has no per-budget policies)
    methods = dict.fromkeys(
        r["method"].split(" (")[0]
        for r in budget_rows + cap_rows
        if r["method"] != "oracle"
    )
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    colours["oracle"] = "black"
    for ax, rows, key, label in (
        (axes[0], budget_rows, "budget_usd", "strict budget per task (USD)"),
        (axes[1], cap_rows, "cap", "cap on expensive calls"),
    ):
        for method in colours:
            mine = [r for r in rows if r["method"].split(" (")[0] == method]
            xs = sorted({r[key] for r in mine})
            if not xs:
                continue
            ys = [np.mean([r["success"] for r in mine if r[key] == x]) for x in xs]
            width = 2 if method == "oracle" else 1.5
            ax.plot(xs, ys, marker="o", label=method, color=colours[method], lw=width)
        ax.set_xlabel(label)
        ax.set_ylabel("success rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{suite}: held-out tasks under strict budgets and caps")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    """Parse the flags and run."""
    return run(parse_config(StrictBudgetConfig, argv))


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
