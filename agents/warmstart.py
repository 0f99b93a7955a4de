"""Boundary-guided warm start: boundary rollouts, the taxonomy, stratified SFT data.

1. **Boundary rollouts.** Every training task is run ``K`` times with always-cheap and
   with always-expensive in the JAX twin. The trajectories and outcomes are kept in a
   :class:`BoundaryStore` that can be saved and reloaded, so later stages train on the
   replayed boundary data instead of running it again.
2. **Taxonomy.** Easy / Hard / Intractable per task (:mod:`agents.boundary`).
3. **Stratified synthesis.** For each Hard task, ``R`` mixed rollouts in each of ``N``
   strata whose per-step probability of leaving the cheapest model sweeps
   ``p = k / N`` (``k = 1..N``; the mixed policy calls the most expensive model with
   probability ``p``). The cheapest successful one among them and the task's successful
   always-expensive runs becomes the target: with more candidates, the cheapest success
   tends to be one whose expensive calls fell where they mattered. Easy and
   Intractable tasks get an all-cheap trajectory (a successful one for Easy tasks
   when there is one).
4. **Balance.** Each class (Easy, Hard, Intractable) gets the same total weight, and
   within the Hard class each stratum does (the always-expensive fallback counts as
   stratum ``N``); a trajectory's weight is spread evenly over its steps. The weights
   are ``class_weight / n_trajectories_in_class`` for Easy and Intractable, and
   ``class_weight / n_strata_present / n_trajectories_in_stratum`` for Hard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agents.boundary import EASY, HARD, INTRACTABLE, class_shares, taxonomy
from agents.networks import policy_features
from agents.policy import AlwaysModel, RandomMix
from agents.rollout import episode_seeds, rollout

STORE_FORMAT = 1
_EPISODE_KEYS = ("task", "seed", "success", "cost", "steps")
_STEP_KEYS = ("model", "cost", "valid")


@dataclass(frozen=True)
class BoundaryStore:
    """Replayed boundary rollouts: ``runs`` episodes of each boundary per task.

    Per-episode arrays have shape (n_tasks, runs); per-step arrays (n_tasks, runs, H);
    observations are the twin's observation dicts with those leading axes. Boundary
    ``0`` is always-cheap and ``1`` always-expensive (the pool's most expensive model).
    """

    tasks: np.ndarray
    """(n_tasks,) task indices of the training split."""
    episodes: dict
    """Boundary name (``"cheap"``, ``"expensive"``) to per-episode arrays: ``seed``,
    ``success``, ``cost`` (USD), ``steps``."""
    trajectories: dict
    """Boundary name to per-step arrays: ``obs`` (dict), ``model``, ``cost``, ``valid``."""

    @property
    def runs(self) -> int:
        """Return the runs per task and boundary."""
        return int(self.episodes["cheap"]["success"].shape[1])

    def classes(self, min_successes: int = 3) -> np.ndarray:
        """Return each task's class (see :func:`agents.boundary.taxonomy`)."""
        return taxonomy(
            self.episodes["cheap"]["success"],
            self.episodes["expensive"]["success"],
            min_successes,
        )

    def reference(self) -> dict:
        """Return per-task boundary references: mean success and mean cost (USD) of
        each boundary, arrays of shape (n_tasks,)."""
        return {
            f"{name}_{field}": self.episodes[name][field].mean(axis=1).astype(np.float32)
            for name in ("cheap", "expensive")
            for field in ("success", "cost")
        }

    def save(self, path: str | Path) -> None:
        """Write the store to ``path`` (a ``.npz`` file, written atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"tasks": self.tasks}
        for name in ("cheap", "expensive"):
            for k, v in self.episodes[name].items():
                arrays[f"{name}/episodes/{k}"] = v
            traj = self.trajectories[name]
            for k in _STEP_KEYS:
                arrays[f"{name}/steps/{k}"] = traj[k]
            for k, v in traj["obs"].items():
                arrays[f"{name}/obs/{k}"] = v
        arrays["format"] = np.array(STORE_FORMAT)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> BoundaryStore:
        """Read a store written by :meth:`save`; raise ``ValueError`` naming the file
        and the problem when it is missing parts, inconsistent or unreadable."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"boundary store {path} does not exist")
        try:
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as err:  # zip or pickle errors of a damaged file
            raise ValueError(f"boundary store {path} is unreadable: {err}") from err
        if int(arrays.get("format", -1)) != STORE_FORMAT:
            raise ValueError(f"boundary store {path} has no format {STORE_FORMAT} marker")
        required = ["tasks"] + [
            f"{name}/{part}/{k}"
            for name in ("cheap", "expensive")
            for part, keys in (("episodes", _EPISODE_KEYS[1:]), ("steps", _STEP_KEYS))
            for k in keys
        ]
        missing = [k for k in required if k not in arrays]
        if missing:
            raise ValueError(f"boundary store {path} lacks arrays {missing}")
        tasks = arrays["tasks"]
        if tasks.ndim != 1 or tasks.size == 0:
            raise ValueError(f"boundary store {path} holds no tasks")
        episodes, trajectories = {}, {}
        for name in ("cheap", "expensive"):
            episodes[name] = {k: arrays[f"{name}/episodes/{k}"] for k in _EPISODE_KEYS[1:]}
            obs = {
                k.split("/", 2)[2]: v
                for k, v in arrays.items()
                if k.startswith(f"{name}/obs/")
            }
            if not obs:
                raise ValueError(f"boundary store {path} lacks {name} observations")
            trajectories[name] = {k: arrays[f"{name}/steps/{k}"] for k in _STEP_KEYS}
            trajectories[name]["obs"] = obs
        # Every array must line up: (tasks, runs) per episode, (tasks, runs, H) per step
        n, runs = (
            tasks.shape[0],
            episodes["cheap"]["success"].ndim > 1
            and (episodes["cheap"]["success"].shape[1]),
        )
        horizon = trajectories["cheap"]["valid"].shape[-1]
        for name in ("cheap", "expensive"):
            arrays = [(f"{name}/episodes/{k}", v, 2) for k, v in episodes[name].items()]
            arrays += [(f"{name}/steps/{k}", trajectories[name][k], 3) for k in _STEP_KEYS]
            arrays += [
                (f"{name}/obs/{k}", v, 3) for k, v in trajectories[name]["obs"].items()
            ]
            for label, v, lead in arrays:
                want = (n, runs, horizon)[:lead]
                if v.ndim < lead or v.shape[:lead] != want:
                    raise ValueError(
                        f"boundary store {path}: {label} has shape {v.shape}, expected "
                        f"{want} first ({n} tasks, {runs} runs, horizon {horizon})"
                    )
        return cls(tasks, episodes, trajectories)


def collect_boundaries(
    params, tasks: np.ndarray, runs: int, key: jax.Array
) -> BoundaryStore:
    """Return a :class:`BoundaryStore` of ``runs`` episodes of each boundary per task."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    tasks = np.asarray(tasks, np.int32)
    n = tasks.shape[0]
    flat_tasks = jnp.repeat(jnp.asarray(tasks), runs)
    k_seed, k_roll = jax.random.split(key)
    seeds = episode_seeds(k_seed, flat_tasks.shape[0])
    episodes, trajectories = {}, {}
    for name, model in (("cheap", 0), ("expensive", params.n_models - 1)):
        out = rollout(AlwaysModel(model), params, flat_tasks, seeds, k_roll, record=True)
        out = jax.tree.map(np.asarray, out)
        shape = lambda x: x.reshape((n, runs) + x.shape[1:])  # noqa: E731
        episodes[name] = {
            "seed": shape(np.asarray(seeds)),
            "success": shape(out["success"]),
            "cost": shape(out["cost"]),
            "steps": shape(out["steps"]),
        }
        traj = out["trajectory"]
        trajectories[name] = {k: shape(traj[k]) for k in _STEP_KEYS}
        trajectories[name]["obs"] = jax.tree.map(shape, traj["obs"])
    return BoundaryStore(tasks, episodes, trajectories)


def synthesize_sft(
    params,
    store: BoundaryStore,
    key: jax.Array,
    n_strata: int = 10,
    min_successes: int = 3,
    rollouts_per_stratum: int = 4,
    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[dict, dict]:
    """Return ``(dataset, report)``: the behaviour-cloning dataset (see
    :mod:`agents.bc`) and a report of the class shares and chosen strata."""
    if n_strata < 1 or rollouts_per_stratum < 1:
        raise ValueError(
            f"n_strata and rollouts_per_stratum must be >= 1, got {n_strata}, "
            f"{rollouts_per_stratum}"
        )
    per_task = n_strata * rollouts_per_stratum
    classes = store.classes(min_successes)
    n = store.tasks.shape[0]
    hard = np.flatnonzero(classes == HARD)

    # Mixed rollouts of the Hard tasks, one per stratum
    chosen_stratum = np.full(n, -1)
    mixed = None
    if hard.size:
        probs = np.repeat(np.arange(1, n_strata + 1) / n_strata, rollouts_per_stratum)
        tasks = jnp.asarray(np.repeat(store.tasks[hard], per_task))
        k_seed, k_roll = jax.random.split(key)
        seeds = episode_seeds(k_seed, tasks.shape[0])
        policy = RandomMix(jnp.asarray(np.tile(probs, hard.size), jnp.float32))
        mixed = _rollout_per_episode_policy(policy, params, tasks, seeds, k_roll)
        mixed = jax.tree.map(
            lambda x: np.asarray(x).reshape((hard.size, per_task) + x.shape[1:]), mixed
        )

    # Pick one target trajectory per task
    picks = []  # (source, task row, index within source, stratum)
    exp_cost = store.episodes["expensive"]["cost"]
    exp_success = store.episodes["expensive"]["success"]
    cheap_success = store.episodes["cheap"]["success"]
    for row in range(n):
        if classes[row] == HARD:
            h = np.searchsorted(hard, row)
            costs = np.where(mixed["success"][h], mixed["cost"][h], np.inf)
            best = int(np.argmin(costs))
            fallback = np.where(exp_success[row], exp_cost[row], np.inf)
            if np.isfinite(costs[best]) and costs[best] <= fallback.min():
                picks.append(("mixed", h, best, best // rollouts_per_stratum))
                chosen_stratum[row] = best // rollouts_per_stratum
            else:
                picks.append(("expensive", row, int(np.argmin(fallback)), n_strata - 1))
                chosen_stratum[row] = n_strata - 1
        else:
            run = int(np.argmax(cheap_success[row])) if classes[row] == EASY else 0
            picks.append(("cheap", row, run, -1))

    # Balanced weights over classes and strata
    weights = np.zeros(n)
    for cls_id in (EASY, INTRACTABLE):
        members = classes == cls_id
        if members.any():
            weights[members] = class_weights[cls_id] / members.sum()
    if hard.size:
        strata = chosen_stratum[hard]
        present = np.unique(strata)
        for s in present:
            rows = hard[strata == s]
            weights[rows] = class_weights[HARD] / present.size / rows.size

    # Gather the chosen trajectories (one per task) and flatten them into decisions
    def gather(source, rows, runs):
        t = mixed["trajectory"] if source == "mixed" else store.trajectories[source]
        t = {k: t[k] for k in ("obs", "model", "valid")}
        return jax.tree.map(lambda x: np.asarray(x)[rows, runs], t)

    parts = []
    for source in ("cheap", "expensive", "mixed"):
        sel = [(row, i, j) for row, (src, i, j, _) in enumerate(picks) if src == source]
        if sel:
            rows, i, j = (np.array(v) for v in zip(*sel, strict=True))
            parts.append((rows, gather(source, i, j)))
    rows = np.concatenate([r for r, _ in parts])
    traj = jax.tree.map(lambda *xs: np.concatenate(xs), *[t for _, t in parts])
    keep = traj["valid"] & (traj["model"] >= 0)
    n_kept = keep.sum(axis=1)
    if not n_kept.any():
        raise ValueError("no decisions to clone: every chosen trajectory is empty")
    step_weight = np.where(n_kept > 0, weights[rows] / np.maximum(n_kept, 1), 0.0)
    obs = jax.tree.map(lambda x: x[keep], traj["obs"])
    dataset = {
        "features": np.asarray(policy_features(obs), np.float32),
        "mask": np.asarray(obs["action_mask"]).astype(bool),
        "action": traj["model"][keep].astype(np.int32),
        "weight": (np.broadcast_to(step_weight[:, None], keep.shape)[keep] * n).astype(
            np.float32
        ),
    }
    counts = np.bincount(chosen_stratum[hard], minlength=n_strata) if hard.size else []
    report = {
        "classes": class_shares(classes),
        "hard_tasks": int(hard.size),
        "chosen_strata": {
            f"{(s + 1) / n_strata:.2f}": int(c) for s, c in enumerate(counts)
        },
        "decisions": int(dataset["action"].shape[0]),
        "expensive_share": float(np.mean(dataset["action"] > 0)),
    }
    return dataset, report


@jax.jit
def _rollout_per_episode_policy(policy, params, tasks, seeds, key):
    """Run a policy whose knob differs per episode (a batched pytree) with recording."""
    keys = jax.random.split(key, tasks.shape[0])

    def one(pol, task, seed, k):
        return rollout(pol, params, task[None], seed[None], k, record=True)

    out = jax.vmap(one)(policy, tasks, seeds, keys)
    return jax.tree.map(lambda x: x[:, 0], out)


def report_json(report: dict) -> str:
    """Return a synthesis report as one line of JSON."""
    return json.dumps(report, sort_keys=True)
