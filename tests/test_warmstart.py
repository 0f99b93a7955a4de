"""The boundary-guided warm start: the taxonomy, the boundary store on disk, and the
stratified behaviour-cloning data synthesised from it."""

import dataclasses
import functools
import json
import re

import jax
import numpy as np
import pytest

from agents import warmstart
from agents.boundary import CLASS_NAMES, EASY, HARD, INTRACTABLE, class_shares, taxonomy
from agents.networks import policy_features
from envs import jax_env
from envs.suite import synthetic_suite
from envs.synthetic import PRESETS

N_TASKS, RUNS, MIN_SUCCESSES = 16, 4, 2

# ---------------------------------------------------------------- the taxonomy
# Six tasks, K = 4 boundary runs each: successes of always-cheap and always-expensive.
CHEAP = np.array(
    [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
    bool,
)
EXPENSIVE = np.array(
    [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]],
    bool,
)
E, H, I = EASY, HARD, INTRACTABLE


@pytest.mark.parametrize(
    "min_successes, expected",
    [
        (1, [E, E, H, E, H, E]),
        (2, [E, H, H, E, I, E]),
        (3, [E, H, I, H, I, E]),
        (4, [I, H, I, I, I, E]),
    ],
)
def test_taxonomy_of_a_hand_made_outcome_table(min_successes, expected):
    classes = taxonomy(CHEAP, EXPENSIVE, min_successes)
    assert classes.dtype == np.int8
    np.testing.assert_array_equal(classes, expected)


def test_taxonomy_counts_successes_not_their_order():
    perm = [3, 1, 0, 2]
    np.testing.assert_array_equal(
        taxonomy(CHEAP[:, perm], EXPENSIVE[:, ::-1], 3), taxonomy(CHEAP, EXPENSIVE, 3)
    )
    np.testing.assert_array_equal(  # 0/1 integers count like booleans
        taxonomy(CHEAP.astype(int), EXPENSIVE.astype(np.float32), 3),
        taxonomy(CHEAP, EXPENSIVE, 3),
    )


@pytest.mark.parametrize("min_successes", [0, 5, -1])
def test_taxonomy_rejects_min_successes_out_of_range(min_successes):
    with pytest.raises(ValueError, match=r"min_successes must be in \[1, 4\]"):
        taxonomy(CHEAP, EXPENSIVE, min_successes)


def test_class_shares():
    assert CLASS_NAMES == ("easy", "hard", "intractable")
    shares = class_shares(taxonomy(CHEAP, EXPENSIVE, 2))
    assert shares == {"easy": 3 / 6, "hard": 2 / 6, "intractable": 1 / 6}
    assert class_shares(taxonomy(CHEAP, EXPENSIVE, 4)) == {
        "easy": 1 / 6,
        "hard": 1 / 6,
        "intractable": 4 / 6,
    }
    assert class_shares(np.array([H, H])) == {"easy": 0.0, "hard": 1.0, "intractable": 0.0}


# ---------------------------------------------------------------- boundary rollouts
@functools.lru_cache(maxsize=1)
def _params():
    suite = synthetic_suite(PRESETS["household"], n_train=N_TASKS, n_test=4)
    return jax_env.params_from_suite(suite)


@functools.lru_cache(maxsize=1)
def _store() -> warmstart.BoundaryStore:
    return warmstart.collect_boundaries(
        _params(), np.arange(N_TASKS), RUNS, jax.random.key(0)
    )


def test_collect_boundaries_records_both_boundaries():
    store = _store()
    params = _params()
    n, horizon = N_TASKS, params.horizon
    assert store.runs == RUNS
    np.testing.assert_array_equal(store.tasks, np.arange(n))
    np.testing.assert_array_equal(
        store.episodes["cheap"]["seed"], store.episodes["expensive"]["seed"]
    )
    assert np.unique(store.episodes["cheap"]["seed"]).size == n * RUNS
    for name, model in (("cheap", 0), ("expensive", params.n_models - 1)):
        ep, traj = store.episodes[name], store.trajectories[name]
        assert set(ep) == {"seed", "success", "cost", "steps"}
        for v in ep.values():
            assert v.shape == (n, RUNS)
        for k in ("model", "cost", "valid"):
            assert traj[k].shape == (n, RUNS, horizon)
        assert traj["obs"]["step"].shape == (n, RUNS, horizon, 1)
        valid = traj["valid"]
        np.testing.assert_array_equal(valid.sum(-1), ep["steps"])
        assert np.all(traj["model"][valid] == model) and np.all(traj["model"][~valid] == -1)
        np.testing.assert_allclose(traj["cost"].sum(-1), ep["cost"], rtol=1e-5)
    np.testing.assert_array_equal(
        store.classes(),
        taxonomy(
            store.episodes["cheap"]["success"], store.episodes["expensive"]["success"], 3
        ),
    )
    ref = store.reference()
    assert set(ref) == {
        "cheap_success",
        "cheap_cost",
        "expensive_success",
        "expensive_cost",
    }
    np.testing.assert_allclose(
        ref["cheap_success"], store.episodes["cheap"]["success"].mean(1)
    )
    np.testing.assert_allclose(
        ref["expensive_cost"], store.episodes["expensive"]["cost"].mean(1)
    )
    assert ref["expensive_success"].mean() > ref["cheap_success"].mean()


def test_collect_boundaries_needs_a_run():
    with pytest.raises(ValueError, match="runs must be >= 1"):
        warmstart.collect_boundaries(_params(), np.arange(4), 0, jax.random.key(0))


def _assert_stores_equal(a: warmstart.BoundaryStore, b: warmstart.BoundaryStore) -> None:
    def check(x, y, what):
        assert x.dtype == y.dtype, what
        np.testing.assert_array_equal(x, y, err_msg=what)

    check(a.tasks, b.tasks, "tasks")
    for name in ("cheap", "expensive"):
        assert set(a.episodes[name]) == set(b.episodes[name])
        for k in a.episodes[name]:
            check(a.episodes[name][k], b.episodes[name][k], f"{name} {k}")
        assert set(a.trajectories[name]) == set(b.trajectories[name])
        for k in ("model", "cost", "valid"):
            check(a.trajectories[name][k], b.trajectories[name][k], f"{name} {k}")
        assert set(a.trajectories[name]["obs"]) == set(b.trajectories[name]["obs"])
        for k, v in a.trajectories[name]["obs"].items():
            check(v, b.trajectories[name]["obs"][k], f"{name} obs {k}")


def test_store_save_load_round_trip(tmp_path):
    store = _store()
    path = tmp_path / "sub" / "boundaries.npz"
    store.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["boundaries.npz"]
    loaded = warmstart.BoundaryStore.load(path)
    _assert_stores_equal(store, loaded)
    assert loaded.runs == RUNS
    np.testing.assert_array_equal(
        loaded.classes(MIN_SUCCESSES), store.classes(MIN_SUCCESSES)
    )
    store.save(path)  # overwriting is fine
    _assert_stores_equal(store, warmstart.BoundaryStore.load(str(path)))


# ---------------------------------------------------------------- damaged stores
def _small_store(n=3, runs=2, horizon=4) -> warmstart.BoundaryStore:
    """A hand-made store with the layout of :func:`warmstart.collect_boundaries`."""
    rng = np.random.default_rng(0)
    episodes, trajectories = {}, {}
    for name in ("cheap", "expensive"):
        episodes[name] = {
            "seed": rng.integers(0, 2**32, (n, runs), dtype=np.uint32),
            "success": rng.random((n, runs)) < 0.5,
            "cost": rng.random((n, runs)).astype(np.float32),
            "steps": rng.integers(1, horizon + 1, (n, runs)).astype(np.int32),
        }
        valid = np.arange(horizon) < episodes[name]["steps"][..., None]
        trajectories[name] = {
            "model": np.where(valid, int(name == "expensive"), -1).astype(np.int32),
            "cost": np.where(valid, 0.01, 0.0).astype(np.float32),
            "valid": valid,
            "obs": {
                "step": rng.random((n, runs, horizon, 1)).astype(np.float32),
                "feedback": rng.integers(0, 4, (n, runs, horizon)).astype(np.int32),
            },
        }
    return warmstart.BoundaryStore(np.arange(n, dtype=np.int32), episodes, trajectories)


def _saved_small_store(tmp_path, change=None):
    """Save the small store; apply ``change`` to its dict of arrays and write it again."""
    path = tmp_path / "store.npz"
    _small_store().save(path)
    if change is not None:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        change(arrays)
        np.savez(path, **arrays)
    return path


def _raises_naming(path, *parts):
    pattern = ".*".join(re.escape(str(p)) for p in (path, *parts))
    return pytest.raises(ValueError, match=pattern)


def test_small_store_round_trip(tmp_path):
    path = _saved_small_store(tmp_path)
    _assert_stores_equal(_small_store(), warmstart.BoundaryStore.load(path))
    other = tmp_path / "store.bin"  # any file name will do
    _small_store().save(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.bin", "store.npz"]
    _assert_stores_equal(_small_store(), warmstart.BoundaryStore.load(other))


def test_load_of_a_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        warmstart.BoundaryStore.load(path)
    with pytest.raises(FileNotFoundError):
        warmstart.BoundaryStore.load(tmp_path)  # a folder is no store either


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage \x00\x01\x02 not a store" * 10, "truncated", "npy"],
    ids=["empty", "garbage", "truncated", "npy"],
)
def test_load_of_an_unreadable_file(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content == "truncated":
        _small_store().save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    else:
        path.write_bytes(content)
    with _raises_naming(path):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize(
    "key",
    [
        "tasks",
        "cheap/episodes/seed",
        "cheap/episodes/success",
        "expensive/episodes/cost",
        "expensive/episodes/steps",
        "cheap/steps/model",
        "expensive/steps/cost",
        "expensive/steps/valid",
    ],
)
def test_load_names_a_missing_array(tmp_path, key):
    path = _saved_small_store(tmp_path, lambda a: a.pop(key))
    with _raises_naming(path, key):
        warmstart.BoundaryStore.load(path)


def test_load_without_observations(tmp_path):
    def drop(arrays):
        for k in [k for k in arrays if k.startswith("expensive/obs/")]:
            del arrays[k]

    with _raises_naming(_saved_small_store(tmp_path, drop), "expensive observations"):
        warmstart.BoundaryStore.load(tmp_path / "store.npz")


@pytest.mark.parametrize("marker", [None, 0, 2])
def test_load_checks_the_format_marker(tmp_path, marker):
    def change(arrays):
        if marker is None:
            del arrays["format"]
        else:
            arrays["format"] = np.array(marker)

    path = _saved_small_store(tmp_path, change)
    with _raises_naming(path, "format"):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize("tasks", [np.zeros(0, np.int32), np.zeros((3, 1), np.int32)])
def test_load_needs_a_list_of_tasks(tmp_path, tasks):
    path = _saved_small_store(tmp_path, lambda a: a.update(tasks=tasks))
    with _raises_naming(path, "no tasks"):
        warmstart.BoundaryStore.load(path)


def _drop_last_row(key):
    return lambda arrays: arrays.update({key: arrays[key][:-1]})


@pytest.mark.parametrize(
    "key",
    [
        "cheap/episodes/seed",
        "cheap/episodes/success",
        "expensive/episodes/cost",
        "expensive/episodes/steps",
        "expensive/steps/valid",
        "cheap/steps/model",
        "expensive/steps/cost",
        "cheap/obs/step",
        "expensive/obs/feedback",
    ],
)
def test_load_rejects_inconsistent_row_counts(tmp_path, key):
    path = _saved_small_store(tmp_path, _drop_last_row(key))
    with _raises_naming(path, key, "expected"):
        warmstart.BoundaryStore.load(path)


def test_load_rejects_an_extra_task(tmp_path):
    path = _saved_small_store(
        tmp_path, lambda a: a.update(tasks=np.arange(4, dtype=np.int32))
    )
    with _raises_naming(path, "4 tasks"):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize("key", ["expensive/episodes/success", "cheap/steps/valid"])
def test_load_rejects_inconsistent_run_counts(tmp_path, key):
    path = _saved_small_store(tmp_path, lambda a: a.update({key: a[key][:, :-1]}))
    with _raises_naming(path, "expected"):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize(
    "marker",
    [np.array("1"), np.array([1, 1]), np.array(1.7)],
    ids=["text", "vector", "float"],
)
def test_load_wants_the_format_marker_as_one_integer(tmp_path, marker):
    path = _saved_small_store(tmp_path, lambda a: a.update(format=marker))
    with _raises_naming(path, "format"):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize(
    ("tasks", "problem"),
    [
        (np.array([-1, 0, 1], np.int32), "task indices >= 0, got -1"),
        (np.array([0.0, 1.0, 2.0]), "tasks has dtype float64, expected integers"),
        (np.array(["a", "b", "c"]), "expected integers"),
        (np.array([0, 0, 1], np.int32), "more than once"),
    ],
    ids=["negative", "float", "text", "repeated"],
)
def test_load_wants_distinct_task_indices(tmp_path, tasks, problem):
    path = _saved_small_store(tmp_path, lambda a: a.update(tasks=tasks))
    with _raises_naming(path, problem):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("cheap/episodes/success", np.full((3, 2), 0.5), "dtype float64, expected bool"),
        ("expensive/steps/model", np.zeros((3, 2, 4)), "expected integers"),
        ("cheap/episodes/cost", np.full((3, 2), "x"), "expected floats"),
        ("cheap/episodes/cost", np.full((3, 2), np.nan, np.float32), "non-finite"),
        ("expensive/obs/step", np.full((3, 2, 4, 1), "x"), "expected numbers"),
    ],
    ids=["success", "model", "cost-text", "cost-nan", "obs"],
)
def test_load_checks_each_array_dtype(tmp_path, key, value, problem):
    path = _saved_small_store(tmp_path, lambda a: a.update({key: value}))
    with _raises_naming(path, key, problem):
        warmstart.BoundaryStore.load(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cheap/episodes/success", np.zeros(3, bool)),
        ("cheap/steps/valid", np.array(True)),
    ],
    ids=["flat-success", "scalar-valid"],
)
def test_load_names_an_array_of_the_wrong_rank(tmp_path, key, value):
    path = _saved_small_store(tmp_path, lambda a: a.update({key: value}))
    with _raises_naming(path, key, "expected (tasks, runs)"):
        warmstart.BoundaryStore.load(path)


def test_load_rejects_a_store_without_runs(tmp_path):
    def no_runs(arrays):
        for k in [k for k in arrays if "/" in k]:
            arrays[k] = arrays[k][:, :0]

    with _raises_naming(_saved_small_store(tmp_path, no_runs), "0 runs"):
        warmstart.BoundaryStore.load(tmp_path / "store.npz")


# ---------------------------------------------------------------- stratified synthesis
# A store with designed boundary outcomes (K = 4 runs; the class at MIN_SUCCESSES = 2)
# and made-up observations of the twin's layout, for the synthesis to pick from.
DESIGN = [
    ([0, 1, 1, 0], [1, 1, 1, 1], E),  # the first successful cheap run is run 1
    ([0, 0, 0, 1], [0, 1, 1, 0], H),
    ([0, 0, 0, 0], [0, 0, 0, 1], I),
    ([1, 1, 1, 1], [1, 0, 1, 1], E),
    ([1, 0, 0, 0], [1, 1, 0, 1], H),
    ([0, 0, 0, 0], [1, 1, 1, 1], H),
    ([0, 0, 1, 1], [0, 0, 0, 0], E),
    ([0, 1, 0, 0], [1, 0, 0, 0], I),
    ([0, 0, 0, 0], [0, 0, 1, 1], H),
    ([1, 1, 0, 1], [1, 1, 1, 1], E),
]


@functools.lru_cache(maxsize=1)
def _designed_store() -> warmstart.BoundaryStore:
    params = _params()
    n, runs, horizon = len(DESIGN), 4, params.horizon
    spec = jax.eval_shape(lambda: jax_env.reset_from_seed(np.uint32(0), params)[0])
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, 2**32, (n, runs), dtype=np.uint32)
    episodes, trajectories = {}, {}
    for i, (name, model) in enumerate((("cheap", 0), ("expensive", params.n_models - 1))):
        steps = rng.integers(3, horizon + 1, (n, runs)).astype(np.int32)
        valid = np.arange(horizon) < steps[..., None]
        step_cost = rng.uniform(0.0005, 0.001 + 0.003 * i, valid.shape)
        step_cost = np.where(valid, step_cost, 0.0).astype(np.float32)
        episodes[name] = {
            "seed": seeds,
            "success": np.array([d[i] for d in DESIGN], bool),
            "cost": step_cost.sum(-1),
            "steps": steps,
        }
        obs = {}
        for k, v in spec.items():
            shape = (n, runs, horizon, *v.shape)
            if k == "action_mask":
                obs[k] = np.ones(shape, v.dtype)
            elif np.issubdtype(v.dtype, np.integer):
                obs[k] = rng.integers(0, 4, shape).astype(v.dtype)
            else:
                obs[k] = rng.random(shape).astype(v.dtype)
        trajectories[name] = {
            "model": np.where(valid, model, -1).astype(np.int32),
            "cost": step_cost,
            "valid": valid,
            "obs": obs,
        }
    store = warmstart.BoundaryStore(np.arange(n, dtype=np.int32), episodes, trajectories)
    np.testing.assert_array_equal(store.classes(MIN_SUCCESSES), [d[2] for d in DESIGN])
    return store


N_STRATA, PER_STRATUM = 3, 2
# Outcomes of the mixed rollouts of the Hard tasks, one case per Hard task in turn: per
# candidate (stratum-major: candidate c is rollout c % R of stratum c // R), success and
# cost as a multiple of the task's cheapest successful always-expensive run, and the
# expected pick (a candidate, or None for that always-expensive run).
CASES = [
    ([0, 1, 0, 1, 1, 0], [0.01, 0.8, 0.01, 0.5, 0.6, 0.01], 3),  # cheapest success
    ([0, 0, 0, 0, 0, 0], [0.1] * 6, None),  # no success: the fallback
    ([1, 0, 1, 0, 0, 0], [1.5, 0.1, 2.0, 0.1, 0.1, 0.1], None),  # dearer than fallback
    ([1, 1, 1, 1, 1, 1], [0.2, 0.3, 0.7, 0.4, 0.95, 0.25], 0),  # the first candidate
]


_features = jax.jit(policy_features)


def _fallback_costs(store, row):
    exp = store.episodes["expensive"]
    return np.where(exp["success"][row], exp["cost"][row], np.inf)


def _mixed_models(candidates, valid):
    """A distinct 0/1 model sequence per candidate (-1 after the episode ends)."""
    t = np.arange(valid.shape[-1])[None, :]
    c = candidates[:, None]
    return np.where(valid, ((t * (c + 1) + c) % 3 == 0).astype(np.int32), -1)


def _fake_mixed_rollouts(store, hard, calls):
    """Return a stand-in for ``warmstart._rollout_per_episode_policy``: the mixed
    rollouts of the Hard tasks get the outcomes of :data:`CASES` and trajectories built
    from the store's always-expensive observations with :func:`_mixed_models`."""
    per_task = N_STRATA * PER_STRATUM

    def fake(policy, params, tasks, seeds, key, record=True):
        calls.append((np.asarray(policy.p), np.asarray(tasks), np.asarray(seeds)))
        rows = np.repeat(hard, per_task)
        candidates = np.tile(np.arange(per_task), hard.size)
        runs = candidates % store.runs
        exp = store.trajectories["expensive"]
        valid = exp["valid"][rows, runs]
        success, cost = [], []
        for h, row in enumerate(hard):
            ok, scale, _ = CASES[h % len(CASES)]
            success.append(np.asarray(ok, bool))
            cost.append(np.asarray(scale) * _fallback_costs(store, row).min())
        return {
            "success": np.concatenate(success),
            "cost": np.concatenate(cost).astype(np.float32),
            "trajectory": {
                "obs": jax.tree.map(lambda x: x[rows, runs], exp["obs"]),
                "model": _mixed_models(candidates, valid),
                "valid": valid,
            },
        }

    return fake


def _pick(traj, row, run, model=None):
    obs = jax.tree.map(lambda x: x[row, run], traj["obs"])
    model = traj["model"][row, run] if model is None else model
    return obs, model, traj["valid"][row, run]


def _expected_picks(store, classes, hard):
    """Return, per task in the dataset's order (always-cheap picks, then always-expensive,
    then mixed), ``(row, stratum, obs, model, valid)`` of its chosen trajectory."""
    picks = {"cheap": [], "expensive": [], "mixed": []}
    exp = store.trajectories["expensive"]
    for row in range(store.tasks.size):
        if classes[row] == HARD:
            candidate = CASES[int(np.searchsorted(hard, row)) % len(CASES)][2]
            if candidate is None:
                run = int(np.argmin(_fallback_costs(store, row)))
                picks["expensive"].append((row, N_STRATA - 1, *_pick(exp, row, run)))
            else:
                run = candidate % store.runs
                valid = exp["valid"][row, run]
                model = _mixed_models(np.array([candidate]), valid[None])[0]
                stratum = candidate // PER_STRATUM
                picks["mixed"].append((row, stratum, *_pick(exp, row, run, model)))
        else:
            success = store.episodes["cheap"]["success"][row]
            run = int(np.argmax(success)) if classes[row] == EASY else 0
            if classes[row] == EASY:
                assert success[run]  # a successful cheap run
            picks["cheap"].append((row, -1, *_pick(store.trajectories["cheap"], row, run)))
    return picks["cheap"] + picks["expensive"] + picks["mixed"]


@pytest.mark.parametrize("class_weights", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5)])
def test_synthesis_picks_the_cheapest_success_and_balances_weights(
    monkeypatch, class_weights
):
    store = _designed_store()
    classes = store.classes(MIN_SUCCESSES)
    hard = np.flatnonzero(classes == HARD)
    n = store.tasks.size
    calls = []
    monkeypatch.setattr(
        warmstart, "_rollout_per_episode_policy", _fake_mixed_rollouts(store, hard, calls)
    )
    dataset, report = warmstart.synthesize_sft(
        _params(),
        store,
        jax.random.key(1),
        n_strata=N_STRATA,
        min_successes=MIN_SUCCESSES,
        rollouts_per_stratum=PER_STRATUM,
        class_weights=class_weights,
        prune=False,
    )

    # R mixed rollouts per Hard task and stratum p = k / N, k = 1..N
    ((p, tasks, seeds),) = calls
    probs = np.repeat(np.arange(1, N_STRATA + 1) / N_STRATA, PER_STRATUM)
    np.testing.assert_allclose(p, np.tile(probs, hard.size), rtol=1e-6)
    np.testing.assert_array_equal(tasks, np.repeat(store.tasks[hard], probs.size))
    assert seeds.shape == tasks.shape and np.unique(seeds).size == seeds.size

    # The dataset is the chosen trajectories' decisions, in order
    picks = _expected_picks(store, classes, hard)
    keeps = [valid & (model >= 0) for *_, model, valid in picks]
    action = np.concatenate([pk[3][k] for pk, k in zip(picks, keeps, strict=True)])
    assert dataset["action"].dtype == np.int32
    np.testing.assert_array_equal(dataset["action"], action)
    features = np.concatenate(
        [np.asarray(_features(pk[2]))[k] for pk, k in zip(picks, keeps, strict=True)]
    )
    assert dataset["features"].dtype == np.float32
    np.testing.assert_array_equal(dataset["features"], features)
    mask = [pk[2]["action_mask"][k] for pk, k in zip(picks, keeps, strict=True)]
    assert dataset["mask"].dtype == bool
    np.testing.assert_array_equal(dataset["mask"], np.concatenate(mask).astype(bool))

    # Easy and Intractable tasks clone all-cheap trajectories
    rows = np.array([pk[0] for pk in picks])
    sizes = np.array([k.sum() for k in keeps])
    assert np.all(sizes > 0)
    owner = np.repeat(rows, sizes)
    assert np.all(dataset["action"][classes[owner] != HARD] == 0)
    assert np.any(dataset["action"][classes[owner] == HARD] == 1)

    # Weights: constant along a trajectory; each class's total is n times its class
    # weight, spread evenly over its tasks (Easy, Intractable) or over the chosen strata
    # (Hard, the always-expensive fallback counting as the last stratum).
    weight = dataset["weight"]
    assert weight.dtype == np.float32 and np.all(weight > 0)
    per_task = np.bincount(owner, weights=weight, minlength=n)
    for row, size in zip(rows, sizes, strict=True):
        np.testing.assert_allclose(weight[owner == row], per_task[row] / size, rtol=1e-5)
    for c in (EASY, HARD, INTRACTABLE):
        members = per_task[classes == c]
        np.testing.assert_allclose(members.sum(), n * class_weights[c], rtol=1e-5)
        if c != HARD:
            np.testing.assert_allclose(members, members[0], rtol=1e-5)
    stratum = {pk[0]: pk[1] for pk in picks}
    chosen = np.array([stratum[row] for row in hard])
    want = [CASES[h % len(CASES)][2] for h in range(hard.size)]
    want = [N_STRATA - 1 if c is None else c // PER_STRATUM for c in want]
    np.testing.assert_array_equal(chosen, want)
    totals = [per_task[hard[chosen == s]].sum() for s in np.unique(chosen)]
    np.testing.assert_allclose(totals, n * class_weights[HARD] / len(totals), rtol=1e-5)

    # The report
    assert report["classes"] == class_shares(classes)
    assert report["hard_tasks"] == hard.size
    assert report["chosen_strata"] == {
        f"{(s + 1) / N_STRATA:.2f}": int(np.sum(chosen == s)) for s in range(N_STRATA)
    }
    assert report["decisions"] == action.size
    assert report["expensive_share"] == pytest.approx(np.mean(action > 0))
    assert json.loads(warmstart.report_json(report)) == report


def test_synthesis_without_hard_tasks_clones_cheap_runs_only(monkeypatch):
    store = _designed_store()
    cheap = dict(store.episodes["cheap"])
    cheap["success"] = np.ones_like(cheap["success"])
    easy = dataclasses.replace(store, episodes=dict(store.episodes, cheap=cheap))

    def no_mixed_rollouts(*args):
        raise AssertionError("no Hard task, no mixed rollout")

    monkeypatch.setattr(warmstart, "_rollout_per_episode_policy", no_mixed_rollouts)
    dataset, report = warmstart.synthesize_sft(_params(), easy, jax.random.key(0))
    valid = store.trajectories["cheap"]["valid"][:, 0]
    assert dataset["action"].size == valid.sum()
    assert np.all(dataset["action"] == 0)
    assert report["hard_tasks"] == 0 and report["chosen_strata"] == {}
    assert report["classes"] == {"easy": 1.0, "hard": 0.0, "intractable": 0.0}
    assert report["expensive_share"] == 0.0
    np.testing.assert_allclose(dataset["weight"].sum(), len(DESIGN), rtol=1e-5)


@pytest.mark.parametrize("n_strata, per_stratum", [(0, 1), (-2, 1), (3, 0)])
def test_synthesis_needs_strata_and_rollouts(n_strata, per_stratum):
    with pytest.raises(ValueError, match="must be >= 1"):
        warmstart.synthesize_sft(
            _params(),
            _small_store(),
            jax.random.key(0),
            n_strata=n_strata,
            rollouts_per_stratum=per_stratum,
        )


def test_synthesis_on_real_mixed_rollouts_is_reproducible_from_its_key(monkeypatch):
    store = _designed_store()
    classes = store.classes(MIN_SUCCESSES)
    hard = np.flatnonzero(classes == HARD)
    real = warmstart._rollout_per_episode_policy
    calls = []  # (inputs, outputs) of each call of the mixed rollouts

    def spy(policy, params, tasks, seeds, key):
        inputs = [policy.p, tasks, seeds, jax.random.key_data(key)]
        inputs = [np.asarray(x) for x in inputs]
        same = [o for i, o in calls if all(map(np.array_equal, i, inputs))]
        if same:  # a jitted pure function of its inputs: replay it (saves a compile)
            out = same[0]
        else:
            out = jax.tree.map(np.asarray, real(policy, params, tasks, seeds, key))
        calls.append((inputs, out))
        return out

    monkeypatch.setattr(warmstart, "_rollout_per_episode_policy", spy)
    n_strata, per_stratum = 4, 2

    def synthesize(seed):
        return warmstart.synthesize_sft(
            _params(),
            store,
            jax.random.key(seed),
            n_strata=n_strata,
            min_successes=MIN_SUCCESSES,
            rollouts_per_stratum=per_stratum,
            prune=False,
        )

    a, report_a = synthesize(7)
    c, _ = synthesize(8)
    b, report_b = synthesize(7)
    (in_a, mixed_a), (in_c, mixed_c), (in_b, mixed_b) = calls
    # The same key asks for the same mixed rollouts, and gives the same dataset
    assert mixed_b is mixed_a
    assert set(a) == {"features", "mask", "action", "weight"}
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert report_a == report_b
    # Another key: other seeds and keys for the same tasks and strata, other rollouts
    np.testing.assert_array_equal(in_a[0], in_c[0])
    np.testing.assert_array_equal(in_a[1], in_c[1])
    assert not np.any(in_a[2] == in_c[2]) and not np.array_equal(in_a[3], in_c[3])
    assert not np.array_equal(
        mixed_a["trajectory"]["model"], mixed_c["trajectory"]["model"]
    )
    # ... which change the Hard tasks' decisions (last in the dataset) only
    cheap_valid = store.trajectories["cheap"]["valid"]
    success = store.episodes["cheap"]["success"]
    n_cheap = 0
    for r in np.flatnonzero(classes != HARD):
        run = int(np.argmax(success[r])) if classes[r] == EASY else 0
        n_cheap += cheap_valid[r, run].sum()
    for k in a:
        np.testing.assert_array_equal(a[k][:n_cheap], c[k][:n_cheap], err_msg=k)
    hard_a, hard_c = a["action"][n_cheap:], c["action"][n_cheap:]
    assert hard_a.shape != hard_c.shape or not np.array_equal(hard_a, hard_c)

    # The real mixed rollouts: the p = 1 stratum always calls the expensive model, the
    # p = 1/4 one mostly the cheap one; the report counts the cheapest successful pick.
    per_task = n_strata * per_stratum
    out = jax.tree.map(lambda x: x.reshape((hard.size, per_task) + x.shape[1:]), mixed_a)
    model, valid = out["trajectory"]["model"], out["trajectory"]["valid"]
    last, first = slice(per_task - per_stratum, None), slice(0, per_stratum)
    assert np.all(model[:, last][valid[:, last]] == 1)
    assert np.mean(model[:, first][valid[:, first]] == 1) < 0.6
    np.testing.assert_allclose(out["cost"], out["trajectory"]["cost"].sum(-1), rtol=1e-5)
    chosen = []
    for h, row in enumerate(hard):
        costs = np.where(out["success"][h], out["cost"][h], np.inf)
        best = int(np.argmin(costs))
        fallback = _fallback_costs(store, row).min()
        chosen.append(best // per_stratum if costs[best] <= fallback else n_strata - 1)
    counts = np.bincount(chosen, minlength=n_strata)
    assert report_a["chosen_strata"] == {
        f"{(s + 1) / n_strata:.2f}": int(counts[s]) for s in range(n_strata)
    }


# ---------------------------------------------------------------- hindsight pruning
def _one_bottleneck_params(n_tasks=3, bottleneck=4):
    """Return household params where every call succeeds, except that at subgoal
    ``bottleneck`` of every task only the expensive model does (and a cheap failure
    there loses nothing: it is simply retried)."""
    params = _params()
    p = np.ones(params.p_success.shape, np.float32)[:n_tasks]
    p[:, bottleneck, 0] = 0.0
    zeros = np.zeros(params.p_derail.shape, np.float32)[:n_tasks]
    n_sub = np.full(n_tasks, 8, np.int32)
    return params.replace(
        p_success=jax.numpy.asarray(p),
        p_derail=jax.numpy.asarray(zeros),
        p_lost=jax.numpy.asarray(zeros),
        n_subgoals=jax.numpy.asarray(n_sub),
        **{
            k: getattr(params, k)[:n_tasks]
            for k in (
                "prompt_tokens",
                "completion_lo",
                "completion_hi",
                "features",
                "step_features",
            )
        },  # fmt: skip
    )


def test_pruning_keeps_only_the_expensive_calls_that_made_the_difference():
    params = _one_bottleneck_params()
    horizon = params.horizon
    scripts = np.zeros((3, horizon), np.int32)
    scripts[0, :8] = 1  # all expensive: only the bottleneck call is needed
    scripts[1, [1, 4, 6]] = 1  # the bottleneck plus two calls it can do without
    scripts[2, 1] = 1  # misses the bottleneck: fails, and is left alone
    seeds = np.array([11, 12, 13], np.uint32)
    pruned, changed, cost = warmstart.prune_expensive_calls(
        params, np.arange(3), seeds, scripts
    )
    expected = np.zeros_like(scripts)
    expected[:2, 4] = 1
    expected[2] = scripts[2]
    np.testing.assert_array_equal(pruned[:, :8], expected[:, :8])
    np.testing.assert_array_equal(changed, [7, 2, 0])
    assert np.isinf(cost[2]) and np.all(np.isfinite(cost[:2]))
    # The pruned scripts succeed, and cost what one expensive call among cheap ones does
    play = warmstart._rollout_per_episode_policy(
        warmstart.Scripted(jax.numpy.asarray(pruned)),
        params,
        jax.numpy.arange(3),
        jax.numpy.asarray(seeds),
        jax.random.key(0),
        record=False,
    )
    np.testing.assert_array_equal(np.asarray(play["success"]), [True, True, False])
    np.testing.assert_allclose(np.asarray(play["cost"])[:2], cost[:2], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(play["expensive_calls"]), [1, 1, 1])


def test_pruned_synthesis_is_reproducible_and_clones_fewer_expensive_calls():
    store = _designed_store()

    def synthesize(seed, prune):
        return warmstart.synthesize_sft(
            _params(),
            store,
            jax.random.key(seed),
            n_strata=4,
            min_successes=MIN_SUCCESSES,
            rollouts_per_stratum=2,
            prune=prune,
        )

    a, report_a = synthesize(3, True)
    b, report_b = synthesize(3, True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert report_a == report_b
    unpruned, report = synthesize(3, False)
    assert report["pruned_calls"] == 0 and report_a["pruned_calls"] > 0
    assert np.sum(a["action"] > 0) < np.sum(unpruned["action"] > 0)
    # Pruning changes the targets of Hard tasks, never the all-cheap ones
    assert np.sum(a["action"] == 0) > np.sum(unpruned["action"] == 0)
