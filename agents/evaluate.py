"""Evaluate routers the same way: knob sweeps, summaries, frontiers, efficiency, plots.

Every method is a family of policies indexed by a knob (a mixing probability, a number of
steps, a threshold, a trade-off weight). :func:`sweep` runs each setting on the same
held-out episodes (same tasks, same episode seeds: common random numbers) in the JAX twin
and summarises it with :func:`agents.metrics.summarize`. :func:`score_methods` turns the
sweeps into frontiers and frontier efficiencies (see :mod:`agents.metrics` for the exact
conventions), and :func:`plot_frontiers` draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agents import metrics
from agents.policy import (
    AlwaysModel,
    BudgetPacing,
    EscalateOnError,
    ExpensiveFirst,
    RandomMix,
)
from agents.rollout import episode_seeds, rollout

CHEAP, EXPENSIVE, RANDOM = "always-cheap", "always-expensive", "random-mix"


@dataclass(frozen=True)
class Episodes:
    """The held-out episodes every method is evaluated on."""

    params: object
    """:class:`envs.jax_env.EnvParams` of the held-out split."""
    tasks: jax.Array
    """(B,) task indices."""
    seeds: jax.Array
    """(B,) uint32 episode seeds."""
    key: jax.Array
    """Key of the policies' own random choices."""
    budgets: jax.Array | None = None
    """(B,) hard budgets in USD (``nan``: sample from ``params``), or None."""
    caps: jax.Array | None = None
    """(B,) caps on expensive calls (``-1``: sample from ``params``), or None."""

    @classmethod
    def make(
        cls, params, n_tasks: int, runs: int, seed: int, budgets=None, caps=None
    ) -> Episodes:
        """Return ``runs`` episodes of each of the first ``n_tasks`` tasks (under the
        given budget and cap, each a scalar or one value per episode)."""
        n_tasks = min(n_tasks, params.n_tasks)
        tasks = jnp.repeat(jnp.arange(n_tasks, dtype=jnp.int32), runs)
        seeds = episode_seeds(jax.random.key(seed), tasks.shape[0])
        if budgets is not None:
            budgets = jnp.broadcast_to(jnp.asarray(budgets, jnp.float32), tasks.shape)
        if caps is not None:
            caps = jnp.broadcast_to(jnp.asarray(caps, jnp.int32), tasks.shape)
        return cls(params, tasks, seeds, jax.random.key(seed + 1), budgets, caps)

    def run(self, policy, record: bool = False) -> dict:
        """Return :func:`agents.rollout.rollout` of ``policy`` on these episodes."""
        return rollout(
            policy,
            self.params,
            self.tasks,
            self.seeds,
            self.key,
            self.budgets,
            self.caps,
            record=record,
        )


@dataclass
class MethodResult:
    """One method's sweep: a summary per knob value, and its frontier."""

    name: str
    knob: str
    points: list[dict] = field(default_factory=list)
    """One :func:`agents.metrics.summarize` dict per setting, plus ``"knob"``."""
    efficiency: float | None = None

    @property
    def costs(self) -> np.ndarray:
        """Return the mean cost (USD) of each setting."""
        return np.array([p["mean_cost"] for p in self.points])

    @property
    def successes(self) -> np.ndarray:
        """Return the success rate of each setting."""
        return np.array([p["success"] for p in self.points])

    def frontier(self) -> metrics.Frontier:
        """Return the method's frontier curve."""
        return metrics.frontier_curve(self.costs, self.successes)

    def to_json(self) -> dict:
        """Return the result as plain JSON data."""
        front_c, front_s = metrics.pareto_frontier(self.costs, self.successes)
        return {
            "name": self.name,
            "knob": self.knob,
            "points": self.points,
            "pareto": {"cost": front_c.tolist(), "success": front_s.tolist()},
            "efficiency": self.efficiency,
        }


def summarize_rollout(out: dict, expensive_cost_ref: float | None = None) -> dict:
    """Return the summary of one rollout (see :func:`agents.metrics.summarize`)."""
    out = jax.tree.map(np.asarray, out)
    counts = out["model_counts"]
    return metrics.summarize(
        success=out["success"],
        cost=out["cost"],
        expensive_calls=counts[:, 1:].sum(axis=1),
        calls=counts.sum(axis=1),
        overspent=out["overspent"],
        bankrupt=out["bankrupt"],
        steps=out["steps"],
        expensive_cost_ref=expensive_cost_ref,
    )


def sweep(
    name: str,
    knob: str,
    make_policy: Callable,
    values: Iterable,
    episodes: Episodes,
    expensive_cost_ref: float | None = None,
) -> MethodResult:
    """Run ``make_policy(value)`` on the episodes for each knob value; return the sweep."""
    result = MethodResult(name, knob)
    for value in values:
        out = episodes.run(make_policy(value))
        point = summarize_rollout(out, expensive_cost_ref)
        point["knob"] = float(value)
        result.points.append(point)
    return result


def baseline_sweeps(
    episodes: Episodes, router=None, grid: int = 11
) -> dict[str, MethodResult]:
    """Return the boundaries, random mixing and every heuristic baseline, swept.

    ``router`` is a fitted :class:`agents.baselines.StepRouter`, swept over thresholds at
    evenly spaced quantiles of its predictions on these episodes' first observations,
    or None to leave it out.
    """
    params = episodes.params
    m = params.n_models
    cheap = sweep(CHEAP, "model", lambda v: AlwaysModel(int(v)), [0], episodes)
    expensive = sweep(EXPENSIVE, "model", lambda v: AlwaysModel(int(v)), [m - 1], episodes)
    ref = expensive.points[0]["mean_cost"]
    for r in (cheap, expensive):
        for p in r.points:
            p["relative_cost"] = p["mean_cost"] / ref
    horizon = params.horizon
    probs = np.linspace(0.0, 1.0, grid)
    results = {
        CHEAP: cheap,
        EXPENSIVE: expensive,
        RANDOM: sweep(
            RANDOM, "p", lambda v: RandomMix(jnp.float32(v)), probs, episodes, ref
        ),
        "expensive-first-k": sweep(
            "expensive-first-k",
            "k",
            lambda v: ExpensiveFirst(jnp.int32(v)),
            sorted({int(round(x)) for x in np.geomspace(1, horizon, grid)} | {0}),
            episodes,
            ref,
        ),
        "escalate-on-error": sweep(
            "escalate-on-error",
            "m",
            lambda v: EscalateOnError(jnp.int32(v)),
            range(0, 9),
            episodes,
            ref,
        ),
        "budget-pacing": sweep(
            "budget-pacing",
            "reference_budget",
            lambda v: BudgetPacing(jnp.float32(1.0), jnp.float32(v)),
            np.linspace(0.0, 1.5 * ref, grid),
            episodes,
            ref,
        ),
    }
    if router is not None:
        thresholds = router_thresholds(router, episodes, grid * 2)
        results["step-router"] = sweep(
            "step-router",
            "threshold",
            lambda v: router.replace(threshold=jnp.float32(v)),
            thresholds,
            episodes,
            ref,
        )
    return results


def router_thresholds(router, episodes: Episodes, n: int) -> np.ndarray:
    """Return ``n`` thresholds at evenly spaced quantiles of the router's predictions
    on always-cheap trajectories of the episodes (plus 0 and above 1)."""
    out = episodes.run(AlwaysModel(0), record=True)
    traj = out["trajectory"]
    probs = np.asarray(jax.vmap(jax.vmap(router.cheap_success_prob))(traj["obs"]))
    probs = probs[np.asarray(traj["valid"])]
    inner = np.quantile(probs, np.linspace(0.0, 1.0, n))
    return np.unique(np.concatenate([[0.0], inner + 1e-6, [1.01]]))


def score_methods(
    results: dict[str, MethodResult], oracle: MethodResult | None = None
) -> dict[str, float | None]:
    """Set and return each method's frontier efficiency (None without an oracle).

    The range is ``[always-cheap cost, always-expensive cost]``; the random-mix frontier
    is 0 and ``oracle``'s is 1.
    """
    if oracle is None:
        return {name: None for name in results}
    low = results[CHEAP].points[0]["mean_cost"]
    high = results[EXPENSIVE].points[0]["mean_cost"]
    random_pts = _with_boundaries(results[RANDOM], results)
    oracle_pts = (oracle.costs, oracle.successes)
    scores = {}
    for name, res in list(results.items()) + [(oracle.name, oracle)]:
        if name in (CHEAP, EXPENSIVE) or not res.points:
            continue
        res.efficiency = metrics.frontier_efficiency(
            (res.costs, res.successes), random_pts, oracle_pts, low, high
        )
        scores[name] = res.efficiency
    return scores


def _with_boundaries(res: MethodResult, results: dict) -> tuple[np.ndarray, np.ndarray]:
    costs = np.concatenate([res.costs, results[CHEAP].costs, results[EXPENSIVE].costs])
    succ = np.concatenate(
        [res.successes, results[CHEAP].successes, results[EXPENSIVE].successes]
    )
    return costs, succ


def best_baseline(scores: dict[str, float | None], exclude=(RANDOM,)) -> tuple[str, float]:
    """Return the name and efficiency of the best-scoring method not excluded."""
    candidates = {k: v for k, v in scores.items() if v is not None and k not in exclude}
    name = max(candidates, key=candidates.get)
    return name, candidates[name]


def summary_rows(results: dict[str, MethodResult]) -> list[dict]:
    """Return one table row per method: its best-success point and its efficiency."""
    rows = []
    for name, res in results.items():
        if not res.points:
            continue
        best = max(res.points, key=lambda p: (p["success"], -p["mean_cost"]))
        rows.append(
            {
                "method": name,
                "success": best["success"],
                "mean_cost": best["mean_cost"],
                "relative_cost": best.get("relative_cost"),
                "expensive_share": best.get("expensive_share"),
                "efficiency": res.efficiency,
                "overspends": sum(p.get("overspends", 0) for p in res.points),
            }
        )
    return rows


def plot_frontiers(results: dict[str, MethodResult], path, title: str = "") -> None:
    """Save a PNG: cost (USD) on x, success on y, one frontier line per method, the
    boundary policies marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, res in results.items():
        if name in (CHEAP, EXPENSIVE) or not res.points:
            continue
        curve = res.frontier()
        vc, vs = curve.costs, curve.successes
        style = {"linestyle": "--"} if name in (RANDOM, "plug-in planner") else {}
        if name == "oracle":
            style = {"color": "black", "linewidth": 2}
        label = name if res.efficiency is None else f"{name} ({res.efficiency:.2f})"
        (line,) = ax.plot(vc, vs, marker=".", label=label, **style)
        ax.scatter(res.costs, res.successes, s=8, alpha=0.35, color=line.get_color())
    for name, marker in ((CHEAP, "v"), (EXPENSIVE, "^")):
        if name in results:
            p = results[name].points[0]
            ax.scatter(
                p["mean_cost"],
                p["success"],
                marker=marker,
                s=90,
                color="red",
                zorder=5,
                label=name,
            )
    ax.set_xlabel("mean cost per task (USD)")
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
