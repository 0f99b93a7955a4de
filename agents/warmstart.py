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
4. **Hindsight pruning** (``prune``, on by default). The twin draws its random numbers
   from the episode seed and the step, so a Hard task's candidate can be replayed with
   the same luck. The ``prune_candidates`` cheapest successful candidates are replayed
   with each expensive call made cheap in turn, the latest first, and the call stays
   cheap when the episode still succeeds for less (:func:`prune_expensive_calls`); the
   cheapest pruned candidate becomes the target. What is left are the expensive calls
   that made the difference with that luck, so the cloned policy's probability of the
   expensive model ranks decisions by how often such a call is needed there. Its
   probabilities are small (a few percent where it matters): a threshold on them, not
   the most likely action, is how the cloned policy is deployed on its own.
5. **Balance.** Each class (Easy, Hard, Intractable) gets the same total weight, and
   within the Hard class each stratum does (the always-expensive fallback counts as
   stratum ``N``); a trajectory's weight is spread evenly over its steps. The weights
   are ``class_weight / n_trajectories_in_class`` for Easy and Intractable, and
   ``class_weight / n_strata_present / n_trajectories_in_stratum`` for Hard.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.boundary import EASY, HARD, INTRACTABLE, class_shares, taxonomy
from agents.networks import policy_features
from agents.policy import AlwaysModel, RandomMix
from agents.rollout import episode_seeds, rollout

STORE_FORMAT = 1
_EPISODE_KEYS = ("task", "seed", "success", "cost", "steps")
_STEP_KEYS = ("model", "cost", "valid")
_KINDS = {
    "episodes/seed": "iu",
    "episodes/success": "b",
    "episodes/cost": "f",
    "episodes/steps": "iu",
    "steps/model": "iu",
    "steps/cost": "f",
    "steps/valid": "b",
}
"""The dtype kinds (numpy ``dtype.kind``) each stored array may have."""
_KIND_NAMES = {"iu": "integers", "b": "booleans", "f": "floats"}


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
        marker = arrays.get("format")
        if (
            marker is None
            or marker.shape != ()
            or marker.dtype.kind not in "iu"
            or int(marker) != STORE_FORMAT
        ):
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
        if tasks.dtype.kind not in "iu":
            raise ValueError(
                f"boundary store {path}: tasks has dtype {tasks.dtype}, expected integers"
            )
        if tasks.min() < 0:
            raise ValueError(
                f"boundary store {path}: tasks must be task indices >= 0, got "
                f"{int(tasks.min())}"
            )
        if np.unique(tasks).size != tasks.size:
            raise ValueError(f"boundary store {path}: tasks holds a task more than once")
        for key in required[1:]:
            kinds = _KINDS[key.split("/", 1)[1]]
            value = arrays[key]
            if value.dtype.kind not in kinds:
                raise ValueError(
                    f"boundary store {path}: {key} has dtype {value.dtype}, expected "
                    f"{_KIND_NAMES[kinds]}"
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"boundary store {path}: {key} holds non-finite values")
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
            for k, v in obs.items():
                if v.dtype.kind not in "biuf":
                    raise ValueError(
                        f"boundary store {path}: {name}/obs/{k} has dtype {v.dtype}, "
                        "expected numbers"
                    )
            trajectories[name] = {k: arrays[f"{name}/steps/{k}"] for k in _STEP_KEYS}
            trajectories[name]["obs"] = obs
        # Every array must line up: (tasks, runs) per episode, (tasks, runs, H) per step
        success, valid = episodes["cheap"]["success"], trajectories["cheap"]["valid"]
        if success.ndim != 2 or valid.ndim != 3:
            raise ValueError(
                f"boundary store {path}: cheap/episodes/success has shape "
                f"{success.shape} and cheap/steps/valid {valid.shape}, expected "
                "(tasks, runs) and (tasks, runs, horizon)"
            )
        n, runs, horizon = tasks.shape[0], success.shape[1], valid.shape[2]
        if runs == 0 or horizon == 0:
            raise ValueError(
                f"boundary store {path} holds {runs} runs of horizon {horizon}; "
                "expected at least one step of one run"
            )
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
    prune: bool = True,
    prune_candidates: int = 4,
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
        mixed["seed"] = seeds
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

    # Prune the Hard targets down to the expensive calls that made the difference: the
    # ``prune_candidates`` cheapest successful candidates of each task are pruned and the
    # cheapest result becomes the target
    pruned, n_pruned, n_expensive = None, 0, 0
    hard_rows = [row for row, p in enumerate(picks) if p[0] != "cheap"]
    if prune and hard_rows:
        script, seeds, tasks, owner, stratum = [], [], [], [], []
        for row in hard_rows:
            h = np.searchsorted(hard, row)
            cands = [
                (mixed["cost"][h, j], "mixed", j, j // rollouts_per_stratum)
                for j in np.flatnonzero(mixed["success"][h])
            ] + [
                (exp_cost[row, j], "expensive", j, n_strata - 1)
                for j in np.flatnonzero(exp_success[row])
            ]
            for _, source, j, st in sorted(cands, key=lambda c: c[0])[:prune_candidates]:
                if source == "mixed":
                    script.append(mixed["trajectory"]["model"][h, j])
                    seeds.append(mixed["seed"][h, j])
                else:
                    script.append(store.trajectories["expensive"]["model"][row, j])
                    seeds.append(store.episodes["expensive"]["seed"][row, j])
                tasks.append(store.tasks[row])
                owner.append(row)
                stratum.append(st)
        script, changed, cost = prune_expensive_calls(
            params, tasks, seeds, np.stack(script)
        )
        owner = np.array(owner)
        best = [
            np.flatnonzero(owner == row)[np.argmin(cost[owner == row])] for row in hard_rows
        ]
        n_pruned = int(changed[best].sum())
        n_expensive = int((script[best] > 0).sum())
        pruned = _rollout_per_episode_policy(
            Scripted(jnp.asarray(script[best])),
            params,
            jnp.asarray(np.array(tasks)[best], jnp.int32),
            jnp.asarray(np.array(seeds)[best], jnp.uint32),
            jax.random.key(0),
        )
        pruned = jax.tree.map(np.asarray, pruned)
        for k, row in enumerate(hard_rows):
            picks[row] = ("pruned", k, None, stratum[best[k]])
            chosen_stratum[row] = stratum[best[k]]

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
        if source == "pruned":
            t = {k: pruned["trajectory"][k] for k in ("obs", "model", "valid")}
            return jax.tree.map(lambda x: np.asarray(x)[rows], t)
        t = mixed["trajectory"] if source == "mixed" else store.trajectories[source]
        t = {k: t[k] for k in ("obs", "model", "valid")}
        return jax.tree.map(lambda x: np.asarray(x)[rows, runs], t)

    parts = []
    for source in ("cheap", "expensive", "mixed", "pruned"):
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
        "pruned_calls": n_pruned,
        "pruned_share": n_pruned / max(n_expensive + n_pruned, 1),
        "decisions": int(dataset["action"].shape[0]),
        "expensive_share": float(np.mean(dataset["action"] > 0)),
    }
    return dataset, report


@struct.dataclass
class Scripted:
    """Play a fixed action sequence (one per episode, indexed by the step), falling
    back to the cheapest model where the scripted action is masked out."""

    actions: jax.Array
    """(H,) actions; steps past the end repeat the last one."""

    def init_carry(self, obs):
        """Return the step counter."""
        return jnp.int32(0)

    def act(self, key, obs, carry):
        """Return the scripted action of this step, or the cheapest model."""
        a = self.actions[jnp.minimum(carry, self.actions.shape[0] - 1)]
        a = jnp.where(obs["action_mask"][a].astype(bool), a, 0)
        return a.astype(jnp.int32), carry + 1


def prune_expensive_calls(
    params, tasks: np.ndarray, seeds: np.ndarray, actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(actions, changed, cost)``: each successful scripted episode with every
    expensive call that it can do without replaced by the cheapest model.

    The twin's random draws are indexed by the episode seed and the step, so replaying
    an action sequence with the same seed replays the same luck. The expensive calls are
    tried one at a time, the latest first, so that each is judged with every call before
    it as it was: a call becomes cheap when the episode still succeeds and costs less
    without it. What remains are the calls that made the difference for that episode.
    ``actions`` is (B, H) with ``-1`` or any model index after the episode's end;
    ``changed`` (B,) counts the calls made cheap and ``cost``
    (B,) is the cost of the returned sequence (``inf`` where it fails).
    """
    actions = np.where(np.asarray(actions) < 0, 0, np.asarray(actions)).astype(np.int32)
    tasks = jnp.asarray(tasks, jnp.int32)
    seeds = jnp.asarray(seeds, jnp.uint32)
    key = jax.random.key(0)  # scripted policies draw nothing

    def play(acts):
        out = _rollout_per_episode_policy(
            Scripted(jnp.asarray(acts)), params, tasks, seeds, key, record=False
        )
        return np.array(out["success"]), np.array(out["cost"])

    success, cost = play(actions)
    order = [np.flatnonzero(row > 0)[::-1] for row in actions]
    changed = np.zeros(len(actions), np.int64)
    for j in range(max((len(o) for o in order), default=0)):
        rows = np.array([i for i, o in enumerate(order) if len(o) > j and success[i]])
        if rows.size == 0:
            continue
        trial = actions.copy()
        trial[rows, [order[i][j] for i in rows]] = 0
        s, c = play(trial)
        better = np.zeros(len(actions), bool)
        better[rows] = s[rows] & (c[rows] < cost[rows])
        actions[better] = trial[better]
        cost[better] = c[better]
        changed += better
    return actions, changed, np.where(success, cost, np.inf)


@functools.partial(jax.jit, static_argnames="record")
def _rollout_per_episode_policy(policy, params, tasks, seeds, key, record=True):
    """Run a policy whose knob differs per episode (a batched pytree)."""
    keys = jax.random.split(key, tasks.shape[0])

    def one(pol, task, seed, k):
        return rollout(pol, params, task[None], seed[None], k, record=record)

    out = jax.vmap(one)(policy, tasks, seeds, keys)
    return jax.tree.map(lambda x: x[:, 0], out)


def report_json(report: dict) -> str:
    """Return a synthesis report as one line of JSON."""
    return json.dumps(report, sort_keys=True)
