"""The whole recipe as resumable stages: boundaries, warm start, fine-tuning, evaluation.

Each stage writes its result under the run folder; a rerun with ``resume=True`` loads
finished stages instead of running them again, and continues the fine-tuning stage from
its last checkpoint. Every random draw derives from the config's seed, so a resumed run
ends with the same figures as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from agents import bc, networks, oracle
from agents.baselines import fit_step_router
from agents.bopo import BoPOConfig
from agents.bopo import make_train as make_bopo_train
from agents.checkpoint import Checkpointer
from agents.devices import shard_seeds
from agents.evaluate import (
    Episodes,
    MethodResult,
    baseline_sweeps,
    score_methods,
    summarize_rollout,
    sweep,
)
from agents.policy import NetworkPolicy
from agents.rollout import rollout
from agents.warmstart import BoundaryStore, collect_boundaries, synthesize_sft
from envs import jax_env
from envs.suite import make_suite
from envs.synthetic import PRESET_TARGETS, PRESETS


def _field(default, help: str):  # noqa: A002 (the flag's help text)
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RecipeConfig:
    """One run of the recipe: boundaries, warm start, fine-tuning and evaluation."""

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_sizes", "lams", "seeds")

    suite: str = _field("household", "Synthetic preset or replay suite (gsm8k, mmlu).")
    method: str = _field("bopo", "Fine-tuning method (bopo).")
    seed: int = _field(0, "Seed of every random draw of the run.")
    n_train_tasks: int = _field(3000, "Training tasks (boundary rollouts, fine-tuning).")
    n_test_tasks: int = _field(1024, "Held-out tasks the methods are evaluated on.")
    eval_runs: int = _field(2, "Evaluation episodes per held-out task.")
    boundary_runs: int = _field(5, "Runs of each boundary policy per training task.")
    min_successes: int = _field(3, "Successful boundary runs a task needs to count.")
    n_strata: int = _field(10, "Strata of the expensive-call probability in synthesis.")
    rollouts_per_stratum: int = _field(4, "Mixed rollouts per stratum and Hard task.")
    prune: bool = _field(True, "Prune the Hard targets to the expensive calls needed.")
    hidden_sizes: tuple[int, ...] = _field((32, 32), "Hidden widths of each tower.")
    bc_epochs: int = _field(10, "Behaviour-cloning epochs.")
    bc_learning_rate: float = _field(1e-3, "Behaviour-cloning step size.")
    updates: int = _field(200, "Fine-tuning updates.")
    tasks_per_update: int = _field(64, "Training tasks sampled per update.")
    group_size: int = _field(8, "Rollouts per task and update (BoPO's group).")
    learning_rate: float = _field(5e-4, "Fine-tuning step size.")
    lams: tuple[float, ...] = _field(
        (0.0, 0.02, 0.05, 0.15, 0.3, 0.6), "Cost weights swept to trace the frontier."
    )
    seeds: int = _field(1, "Independent fine-tuning seeds (vmapped).")
    chunks: int = _field(4, "Checkpoints taken during fine-tuning.")
    reference_guided: bool = _field(True, "BoPO: boundary references in the baseline.")
    boundary_relative: bool = _field(True, "BoPO: cost and success against boundaries.")
    shared_seeds: bool = _field(True, "BoPO: one episode seed per group (common luck).")
    cost_to_go: bool = _field(True, "BoPO: charge a step only the cost from it on.")
    warm_start: bool = _field(True, "Start fine-tuning from the cloned policy.")
    expensive_cap: int | None = _field(None, "Cap on expensive calls (preset default).")
    budget_usd: float | None = _field(None, "Hard budget per task in USD (none).")
    router: bool = _field(True, "Evaluate the per-step router baseline.")
    oracle: bool = _field(True, "Evaluate the oracle (sets frontier efficiency).")

    def __post_init__(self) -> None:
        from envs.replay import REPLAY_SUITES

        if self.suite not in PRESETS and self.suite not in REPLAY_SUITES:
            known = ", ".join([*PRESETS, *REPLAY_SUITES])
            raise ValueError(f"suite: unknown suite {self.suite!r}; known: {known}")
        if self.method != "bopo":
            raise ValueError(f"method: only 'bopo' is available, got {self.method!r}")
        for name in (
            "n_train_tasks", "n_test_tasks", "eval_runs", "boundary_runs", "n_strata",
            "rollouts_per_stratum", "bc_epochs", "updates", "tasks_per_update", "seeds",
            "chunks",
        ):  # fmt: skip
            _positive_int(name, getattr(self, name))
        _positive_int("group_size", self.group_size, low=2)
        if not 1 <= self.min_successes <= self.boundary_runs:
            raise ValueError(
                f"min_successes must be in [1, boundary_runs={self.boundary_runs}], "
                f"got {self.min_successes}"
            )
        if not self.hidden_sizes:
            raise ValueError("hidden_sizes needs at least one layer")
        for i, width in enumerate(self.hidden_sizes):
            _positive_int(f"hidden_sizes[{i}]", width)
        if not self.lams:
            raise ValueError("lams needs at least one cost weight")
        for i, lam in enumerate(self.lams):
            if not np.isfinite(lam) or lam < 0:
                raise ValueError(f"lams[{i}] must be finite and >= 0, got {lam!r}")
        for name in ("bc_learning_rate", "learning_rate"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        if (self.tasks_per_update * self.group_size) % BoPOConfig.minibatches:
            raise ValueError(
                "tasks_per_update * group_size must be a multiple of "
                f"{BoPOConfig.minibatches} (the minibatches of an update)"
            )
        if self.budget_usd is not None and (
            not np.isfinite(self.budget_usd) or self.budget_usd <= 0
        ):
            raise ValueError(f"budget_usd must be finite and > 0, got {self.budget_usd!r}")
        if self.expensive_cap is not None:
            _positive_int("expensive_cap", self.expensive_cap, low=0)


def _positive_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def env_params(config: RecipeConfig, split: str):
    """Return the twin's parameters of a split under the run's budget rules."""
    suite = make_suite(
        config.suite, n_train=config.n_train_tasks, n_test=config.n_test_tasks
    )
    cap = config.expensive_cap
    if cap is None and config.suite in PRESET_TARGETS:
        cap = PRESET_TARGETS[config.suite].expensive_cap
    return jax_env.params_from_suite(
        suite, split, budget_usd=config.budget_usd, expensive_cap=cap
    ), suite


class Recipe:
    """Run the stages of one configuration in ``out_dir``; see the module docstring."""

    def __init__(
        self,
        config: RecipeConfig,
        out_dir: str | Path,
        resume: bool = False,
        log: Callable[[str], None] = print,
        progress=None,
    ):
        self.config = config
        self.out = Path(out_dir)
        self.resume = resume
        self.log = log
        self.progress = progress
        self.key = jax.random.key(config.seed)
        self.train_params, self.suite = env_params(config, "train")
        self.test_params, _ = env_params(config, "test")
        self.timings: dict[str, float] = {}
        self._check_run_folder()

    def _check_run_folder(self) -> None:
        path = self.out / "config.json"
        current = json.loads(json.dumps(asdict(self.config)))
        if path.exists():
            saved = json.loads(path.read_text())
            if self.resume and saved != current:
                diff = sorted(k for k in current if saved.get(k) != current[k])
                raise ValueError(
                    f"{path} was written by another configuration (fields {diff} "
                    "differ); use another --out-dir or drop --resume"
                )
        if not self.resume and self.out.exists() and any(self.out.iterdir()):
            for name in ("boundaries.npz", "bc", "finetune", "results.json"):
                target = self.out / name
                if target.exists():
                    _remove(target)
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2) + "\n")

    def _stage_key(self, name: str) -> jax.Array:
        return jax.random.fold_in(self.key, sum(name.encode()))

    # ---------------------------------------------------------------- stages
    def boundaries(self) -> BoundaryStore:
        """Return the boundary store (collected, or loaded when resuming)."""
        path = self.out / "boundaries.npz"
        if self.resume and path.exists():
            self.log(f"stage=boundaries status=loaded path={path}")
            store = BoundaryStore.load(path)
            horizon = store.trajectories["cheap"]["valid"].shape[-1]
            if store.tasks.max() >= self.train_params.n_tasks or (
                horizon != self.train_params.horizon
            ):
                raise ValueError(
                    f"boundary store {path} does not belong to suite {self.config.suite!r}"
                    f" (tasks up to {int(store.tasks.max())}, horizon {horizon})"
                )
            return store
        start = time.perf_counter()
        n = min(self.config.n_train_tasks, self.train_params.n_tasks)
        store = collect_boundaries(
            self.train_params,
            np.arange(n),
            self.config.boundary_runs,
            self._stage_key("boundaries"),
        )
        store.save(path)
        self.timings["boundaries"] = time.perf_counter() - start
        return store

    def warm_start(self, store: BoundaryStore):
        """Return ``(bc_state, report)``: the cloned policy (trained or restored)."""
        cfg = self.bc_config()
        ckpt = Checkpointer(self.out / "bc")
        n_actions = self.train_params.n_actions
        start = time.perf_counter()
        dataset, report = synthesize_sft(
            self.train_params,
            store,
            self._stage_key("synthesis"),
            n_strata=self.config.n_strata,
            rollouts_per_stratum=self.config.rollouts_per_stratum,
            prune=self.config.prune,
            min_successes=self.config.min_successes,
        )
        n_features = dataset["features"].shape[1]
        if self.resume and ckpt.latest_step() is not None:
            template = bc.init_state(cfg, n_features, n_actions)
            state, _ = ckpt.restore(template, cfg)
            self.log(f"stage=warm_start status=restored epoch={int(state.epoch)}")
            return state, report
        train = jax.jit(
            bc.make_bc_train(cfg, n_features, n_actions), static_argnames="n_epochs"
        )
        state, metrics = train(self._stage_key("bc"), dataset)
        ckpt.save(int(state.epoch), state, cfg)
        self.timings["warm_start"] = time.perf_counter() - start
        self.log(
            f"stage=warm_start loss={float(metrics['loss'][-1]):.4f} "
            f"accuracy={float(metrics['accuracy'][-1]):.3f} "
            f"decisions={report['decisions']}"
        )
        return state, report

    def bc_config(self) -> bc.BCConfig:
        """Return the behaviour-cloning config of this run."""
        return bc.BCConfig(
            epochs=self.config.bc_epochs,
            hidden_sizes=self.config.hidden_sizes,
            learning_rate=self.config.bc_learning_rate,
            seed=self.config.seed,
        )

    def bopo_config(self) -> BoPOConfig:
        """Return the BoPO config of this run."""
        c = self.config
        return BoPOConfig(
            updates=c.updates,
            tasks_per_update=c.tasks_per_update,
            group_size=c.group_size,
            learning_rate=c.learning_rate,
            reference_guided=c.reference_guided,
            boundary_relative=c.boundary_relative,
            shared_seeds=c.shared_seeds,
            cost_to_go=c.cost_to_go,
            hidden_sizes=c.hidden_sizes,
        )

    def finetune(self, store: BoundaryStore, bc_state):
        """Return the fine-tuned states, batched over (seeds, lams), and the metrics."""
        cfg = self.bopo_config()
        params, normalizer = bc_state.params, bc_state.normalizer
        if not self.config.warm_start:
            fresh = bc.init_state(
                self.bc_config(),
                normalizer.mean.shape[0],
                self.train_params.n_actions,
                self._stage_key("fresh"),
            )
            params = fresh.params
        train = make_bopo_train(
            cfg,
            self.train_params,
            store.tasks,
            store.reference(),
            store.classes(self.config.min_successes),
            params,
            normalizer,
        )
        lams = jnp.asarray(self.config.lams, jnp.float32)
        seeds = jnp.arange(self.config.seeds)
        keys = jax.vmap(lambda s: jax.random.fold_in(self._stage_key("bopo"), s))(seeds)
        chunk = -(-cfg.updates // self.config.chunks)

        def run(keys, states, n):
            def one(key, lam, state):
                return train(key, lam, state, n_updates=n)

            per_lam = jax.vmap(one, in_axes=(None, 0, 0))
            return jax.vmap(per_lam, in_axes=(0, None, 0))(keys, lams, states)

        run = jax.jit(run, static_argnums=2)
        template = jax.vmap(jax.vmap(lambda _l: train.init_state()))(
            jnp.zeros((seeds.shape[0], lams.shape[0]))
        )
        ckpt = Checkpointer(self.out / "finetune")
        states, done, history = template, 0, []
        if self.resume and ckpt.latest_step() is not None:
            states, done = ckpt.restore(template, cfg)
            self.log(f"stage=finetune status=restored updates={done}")
        keys, states = shard_seeds((keys, states))  # seeds split over the devices
        start = time.perf_counter()
        bar = (
            self.progress(total=cfg.updates, initial=done, desc="bopo")
            if (self.progress)
            else None
        )
        while done < cfg.updates:
            n = min(chunk, cfg.updates - done)
            states, metrics = run(keys, states, n)
            done += n
            ckpt.save(done, states, cfg)
            history.append(jax.tree.map(np.asarray, metrics))
            m = jax.tree.map(lambda x: float(np.mean(x[..., -1])), metrics)
            self.log(
                f"stage=finetune updates={done} success={m['success']:.3f} "
                f"cost={m['cost']:.4f} expensive_share={m['expensive_share']:.3f} "
                f"entropy={m['entropy']:.3f}"
            )
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        self.timings["finetune"] = self.timings.get("finetune", 0) + (
            time.perf_counter() - start
        )
        return states

    def evaluate(self, store: BoundaryStore, bc_state, states) -> dict:
        """Return every method's sweep and efficiency on the held-out tasks."""
        start = time.perf_counter()
        c = self.config
        episodes = Episodes.make(self.test_params, c.n_test_tasks, c.eval_runs, c.seed + 17)
        router = None
        if c.router:
            n = min(c.n_train_tasks, self.train_params.n_tasks)
            router = fit_step_router(
                self.train_params, jnp.arange(n), self._stage_key("router")
            )
        results = baseline_sweeps(episodes, router)
        ref = results["always-expensive"].points[0]["mean_cost"]
        network = bc.make_network(self.bc_config(), self.train_params.n_actions)

        # The cloned policy, swept over a threshold on its expensive probability
        results["warm start"] = _threshold_sweep(
            "warm start", bc_state, network, store, episodes, ref
        )

        # The fine-tuned policies: one point per (seed, lam), greedy, and the lam -> inf
        # end of the sweep, where every router falls back to always-cheap
        name = "BoPO"
        tuned = MethodResult(name, "lam")
        cheap_end = dict(results["always-cheap"].points[0], knob=None)
        tuned.points.append(cheap_end)
        for s in range(c.seeds):
            for i, lam in enumerate(c.lams):
                p = jax.tree.map(lambda x, s=s, i=i: x[s, i], states.params)
                out = rollout(
                    NetworkPolicy(p, bc_state.normalizer, network),
                    episodes.params,
                    episodes.tasks,
                    episodes.seeds,
                    episodes.key,
                    episodes.budgets,
                )
                point = summarize_rollout(out, ref)
                point.update(knob=float(lam), seed=s)
                tuned.points.append(point)
        results[name] = tuned

        # The oracle and the plug-in planner (synthetic suites)
        oracle_result = None
        if c.oracle and c.suite in PRESETS:
            tasks = np.asarray(episodes.tasks[:: c.eval_runs])
            orc = oracle.oracle_points(self.test_params, tasks)
            oracle_result = _points_result("oracle", orc)
            plug = oracle.plugin_points(self.suite.bank("train"), self.test_params, tasks)
            results["plug-in planner"] = _points_result("plug-in planner", plug)
        elif c.oracle:
            tasks = np.asarray(episodes.tasks[:: c.eval_runs])
            orc = oracle.replay_oracle_points(self.test_params, tasks)
            oracle_result = _points_result("oracle", orc, n=1)
        scores = score_methods(results, oracle_result)
        if oracle_result is not None and c.seeds > 1:
            # One frontier per fine-tuning seed, each with the cheap end
            for s in range(c.seeds):
                one = MethodResult(
                    f"{name} seed {s}",
                    "lam",
                    [cheap_end] + [p for p in tuned.points if p.get("seed") == s],
                )
                scores[one.name] = score_methods({**results, one.name: one}, oracle_result)[
                    one.name
                ]
        if oracle_result is not None:
            results["oracle"] = oracle_result
        for method, res in results.items():
            for p in res.points:
                self.log(
                    f"eval method={method.replace(' ', '-')} knob={_fmt(p.get('knob'))} "
                    f"success={p['success']:.4f} mean_cost={p['mean_cost']:.5f} "
                    f"expensive_share={_fmt(p.get('expensive_share'))} "
                    f"overspends={p.get('overspends', 0)}"
                )
        self.timings["evaluate"] = time.perf_counter() - start
        return {"results": results, "scores": scores}


def _fmt(x):
    return "none" if x is None else f"{x:.4g}"


def _points_result(name: str, pts: dict, n: int | None = None) -> MethodResult:
    res = MethodResult(name, "lam")
    succ = pts.get("successes")
    for i, (cost, s) in enumerate(zip(pts["costs"], succ, strict=True)):
        res.points.append(
            {
                "knob": float(pts["lams"][i]) if "lams" in pts else float(i),
                "mean_cost": float(cost),
                "success": float(s),
                "overspends": 0,
            }
        )
    return res


def _threshold_sweep(name, bc_state, network, store, episodes, ref, n: int = 16):
    """Sweep a threshold on the policy's probability of leaving the cheapest model.

    The thresholds are upper quantiles of that probability over (a sample of) the
    decisions of the training tasks' boundary runs (40% to 99.9% quantiles, denser towards
    the top), so the sweep follows the policy's own scale: a cloned policy that gives
    the expensive model a few percent where it matters and far less elsewhere is swept
    where its ranking of decisions changes.
    """
    obs = [
        jax.tree.map(lambda x, v=v: x[v], t["obs"])
        for t in store.trajectories.values()
        for v in [np.asarray(t["valid"])]
    ]
    obs = jax.tree.map(lambda *x: np.concatenate(x), *obs)
    stride = max(1, len(obs["step"]) // 50_000)  # a sample of at most 50k decisions
    obs = jax.tree.map(lambda x: x[::stride], obs)
    policy = _ThresholdPolicy(bc_state.params, bc_state.normalizer, network, 0.0)
    probs = np.asarray(_expensive_prob(policy, obs))
    thresholds = np.unique(np.quantile(probs, 1.0 - np.geomspace(0.6, 0.001, n)))
    return sweep(
        name,
        "threshold",
        lambda th: _ThresholdPolicy(
            bc_state.params, bc_state.normalizer, network, jnp.float32(th)
        ),
        thresholds,
        episodes,
        ref,
    )


@jax.jit
def _expensive_prob(policy, obs):
    return jax.vmap(policy.expensive_prob)(obs)


@jax.tree_util.register_pytree_node_class
class _ThresholdPolicy:
    """Call the most expensive allowed model when the policy gives more than
    ``threshold`` probability to leaving the cheapest model."""

    def __init__(self, params, normalizer, network, threshold):
        self.params, self.normalizer, self.network = params, normalizer, network
        self.threshold = threshold

    def tree_flatten(self):
        return (self.params, self.normalizer, self.threshold), self.network

    @classmethod
    def tree_unflatten(cls, network, children):
        params, normalizer, threshold = children
        return cls(params, normalizer, network, threshold)

    def init_carry(self, obs):
        return ()

    def expensive_prob(self, obs):
        """Return the policy's probability of leaving the cheapest model."""
        x = networks.normalize(self.normalizer, networks.policy_features(obs))
        logits, _, _ = self.network.apply(self.params, x, obs["action_mask"].astype(bool))
        return 1.0 - jax.nn.softmax(logits)[0]

    def act(self, key, obs, carry):
        expensive = self.expensive_prob(obs) > self.threshold
        n_models = obs["next_call_cost"].shape[-1]
        return jnp.where(expensive, n_models - 1, 0).astype(jnp.int32), carry


def _remove(path: Path) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink()
