"""The whole recipe as resumable stages: boundaries, warm start, fine-tuning, evaluation.

Each stage writes its result under the run folder; a rerun with ``resume=True`` loads
finished stages instead of running them again, and continues the fine-tuning stage from
its last checkpoint. Every random draw derives from the config's seed, so a resumed run
ends with the same figures as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from agents import bc, networks, oracle
from agents import ppo_lagrangian as ppo_lag
from agents.baselines import fit_step_router
from agents.bopo import BoPOConfig
from agents.bopo import make_train as make_bopo_train
from agents.checkpoint import Checkpointer
from agents.devices import shard_seeds
from agents.evaluate import (
    CHEAP,
    Episodes,
    MethodResult,
    baseline_sweeps,
    score_methods,
    summarize_rollout,
    sweep,
)
from agents.policy import NetworkPolicy
from agents.warmstart import BoundaryStore, collect_boundaries, synthesize_sft
from envs import jax_env
from envs.suite import make_suite
from envs.synthetic import PRESET_TARGETS, PRESETS


def _field(default, help: str):  # noqa: A002 (the flag's help text)
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RecipeConfig:
    """One run of the recipe: boundaries, warm start, fine-tuning and evaluation."""

    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = (
        "hidden_sizes", "lams", "cost_targets", "seeds",
    )  # fmt: skip

    suite: str = _field("household", "Synthetic preset or replay suite (gsm8k, mmlu).")
    method: tuple[str, ...] = _field(
        ("bopo",), "Fine-tuning methods, one or both of bopo and ppo-lagrangian."
    )
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
        (0.0, 0.02, 0.05, 0.15, 0.3, 0.6, 1.2), "Cost weights swept to trace the frontier."
    )
    cost_targets: tuple[float, ...] = _field(
        (0.3, 0.4, 0.5, 0.6, 0.75, 0.9),
        "PPO-Lagrangian: cost targets swept to trace its frontier, as fractions of "
        "always-expensive's mean cost on the training tasks.",
    )
    ppo_episodes: int = _field(256, "PPO-Lagrangian: episodes per update.")
    ppo_learning_rate: float = _field(6e-4, "PPO-Lagrangian: step size (annealed to 0).")
    multiplier_lr: float = _field(
        0.5, "PPO-Lagrangian: dual ascent step of the multiplier, per unit of violation."
    )
    seeds: int = _field(1, "Independent fine-tuning seeds (vmapped).")
    chunks: int = _field(4, "Checkpoints taken during fine-tuning.")
    reference_guided: bool = _field(True, "BoPO: boundary references in the baseline.")
    boundary_relative: bool = _field(True, "BoPO: cost and success against boundaries.")
    shared_seeds: bool = _field(True, "BoPO: one episode seed per group (common luck).")
    cost_to_go: bool = _field(True, "BoPO: charge a step only the cost from it on.")
    warm_start: bool = _field(True, "Start fine-tuning from the cloned policy.")
    expensive_cap: int | None = _field(None, "Cap on expensive calls (preset default).")
    budget_usd: float | None = _field(
        None, "Hard budget per task in USD, or none for no budget."
    )
    router: bool = _field(True, "Evaluate the per-step router baseline.")
    oracle: bool = _field(True, "Evaluate the oracle (sets frontier efficiency).")
    privileged_state: bool = _field(
        False,
        "Diagnostic: routers also observe the true latent state (on track, derailed, "
        "lost), which a real router cannot see; measures the cost of partial "
        "observability.",
    )

    def __post_init__(self) -> None:
        from envs.replay import REPLAY_SUITES

        if self.suite not in PRESETS and self.suite not in REPLAY_SUITES:
            known = ", ".join([*PRESETS, *REPLAY_SUITES])
            raise ValueError(f"suite: unknown suite {self.suite!r}; known: {known}")
        if not self.method or len(set(self.method)) != len(self.method):
            raise ValueError(f"method needs distinct methods, got {self.method!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed!r}")
        for m in self.method:
            if m not in METHODS:
                raise ValueError(
                    f"method: unknown method {m!r}; known: {', '.join(METHODS)}"
                )
        if not self.cost_targets:
            raise ValueError("cost_targets needs at least one target")
        for i, f in enumerate(self.cost_targets):
            if not np.isfinite(f) or f <= 0:
                raise ValueError(f"cost_targets[{i}] must be finite and > 0, got {f!r}")
        for name in (
            "n_train_tasks", "n_test_tasks", "eval_runs", "boundary_runs", "n_strata",
            "rollouts_per_stratum", "bc_epochs", "updates", "tasks_per_update", "seeds",
            "chunks", "ppo_episodes",
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
        if self.ppo_episodes % ppo_lag.PPOLagConfig.minibatches:
            raise ValueError(
                f"ppo_episodes must be a multiple of {ppo_lag.PPOLagConfig.minibatches} "
                "(the minibatches of an update)"
            )
        for name in (
            "bc_learning_rate",
            "learning_rate",
            "ppo_learning_rate",
            "multiplier_lr",
        ):
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


METHODS = {"bopo": "BoPO", "ppo-lagrangian": "PPO-Lagrangian"}
"""Fine-tuning methods (flag value: name in the results)."""


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
        suite,
        split,
        budget_usd=config.budget_usd,
        expensive_cap=cap,
        privileged_state=config.privileged_state,
    ), suite


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning sweep, as :meth:`Recipe.train_in_chunks` runs it."""

    config: Any
    """The algorithm's config (saved with each checkpoint); ``updates`` is the total."""
    run: Callable
    """Jittable ``run(keys, states, n) -> (states, metrics)``: ``n`` (static) more updates
    of states batched over (seeds, knob values); metrics of shape (seeds, knobs, n),
    ``steps`` among them."""
    keys: jax.Array
    """(seeds,) keys of the run."""
    template: Any
    """Fresh states, batched over (seeds, knob values): the start, and the restore
    target of a checkpoint."""
    knob: str
    """Name of the swept knob."""
    values: tuple
    """The knob's values."""
    line: Callable[[dict], str]
    """Returns the log line's metrics part from scalar metrics."""


class Recipe:
    """Run the stages of one configuration in ``out_dir``; see the module docstring."""

    def __init__(
        self,
        config: RecipeConfig,
        out_dir: str | Path,
        resume: bool = False,
        log: Callable[[str], None] = print,
        progress=None,
        settings: dict | None = None,
    ):
        self.config = config
        self.out = Path(out_dir)
        self.resume = resume
        self.settings = dict(settings or {})
        """Settings of the calling script its stages depend on besides the config:
        recorded in ``config.json`` with it, and checked when resuming."""
        self.log = log
        self.progress = progress
        self.key = jax.random.key(config.seed)
        self.train_params, self.suite = env_params(config, "train")
        self.test_params, _ = env_params(config, "test")
        self.timings: dict[str, float] = {}
        self._check_run_folder()

    def _check_run_folder(self) -> None:
        path = self.out / "config.json"
        config = json.loads(json.dumps(asdict(self.config)))
        settings = json.loads(json.dumps(self.settings))
        current = {**config, **settings}
        if self.resume:
            saved = _read_run_config(path)
            # A field the folder did not record is newer than its run, which therefore
            # ran at the field's default; a setting it did not record was never used
            # there (another script)
            defaults = {
                f.name: f.default
                for f in dataclasses.fields(self.config)
                if f.default is not dataclasses.MISSING
            }
            defaults = json.loads(json.dumps(defaults))
            diff = sorted(
                [k for k in config if saved.get(k, defaults.get(k)) != config[k]]
                + [k for k in settings if k in saved and saved[k] != settings[k]]
            )
            if diff:
                raise RunFolderMismatch(
                    f"{path} was written by another configuration (fields {diff} "
                    "differ); use another --out-dir or drop --resume"
                )
            current = {**saved, **current}  # keep what other scripts recorded
        elif self.out.exists() and any(self.out.iterdir()):
            # Every fine-tuning folder, also those of other scripts (strict_budget)
            stale = ["boundaries.npz", "bc", "results.json"]
            stale += sorted(p.name for p in self.out.glob("finetune*"))
            for name in stale:
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

    def ppo_config(self, store: BoundaryStore) -> ppo_lag.PPOLagConfig:
        """Return the PPO-Lagrangian config of this run: costs in units of
        always-expensive's mean cost on the training tasks (``cost_scale``), so a
        target of 0.6 asks for 60% of what always-expensive spends."""
        c = self.config
        scale = float(np.mean(store.episodes["expensive"]["cost"]))
        return ppo_lag.PPOLagConfig(
            updates=c.updates,
            episodes=c.ppo_episodes,
            learning_rate=c.ppo_learning_rate,
            multiplier_lr=c.multiplier_lr,
            cost_mode="usd",
            cost_target=c.cost_targets[0] * scale,
            cost_scale=scale,
            hidden_sizes=c.hidden_sizes,
        )

    def finetune(self, store: BoundaryStore, bc_state) -> dict:
        """Return each method's fine-tuned states (trained, or restored when resuming),
        keyed by method, each batched over (seeds, knob values): BoPO's cost weights
        ``lams``, PPO-Lagrangian's ``cost_targets``."""
        params, normalizer = bc_state.params, bc_state.normalizer
        if not self.config.warm_start:
            fresh = bc.init_state(
                self.bc_config(),
                normalizer.mean.shape[0],
                self.train_params.n_actions,
                self._stage_key("fresh"),
            )
            params = fresh.params
        tuned = {}
        for method in self.config.method:
            make = self.bopo_run if method == "bopo" else self.ppo_lagrangian_run
            run = make(store, params, normalizer)
            tuned[method] = self.train_in_chunks(_finetune_folder(method), run)
        return tuned

    def seed_keys(self, name: str) -> jax.Array:
        """Return the (seeds,) keys of a fine-tuning run, drawn from the stage ``name``."""
        seeds = jnp.arange(self.config.seeds)
        return jax.vmap(lambda s: jax.random.fold_in(self._stage_key(name), s))(seeds)

    def bopo_run(self, store, params, normalizer) -> FinetuneRun:
        """Return BoPO's sweep over the cost weights ``lams`` from the network
        ``params`` and its ``normalizer`` (the warm start, or a fresh network)."""
        cfg = self.bopo_config()
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

        def run(keys, states, n):
            def one(key, lam, state):
                return train(key, lam, state, n_updates=n)

            per_lam = jax.vmap(one, in_axes=(None, 0, 0))
            return jax.vmap(per_lam, in_axes=(0, None, 0))(keys, lams, states)

        template = jax.vmap(jax.vmap(lambda _l: train.init_state()))(
            jnp.zeros((self.config.seeds, lams.shape[0]))
        )

        def line(m):
            return (
                f"success={m['success']:.3f} cost={m['cost']:.4f} "
                f"expensive_share={m['expensive_share']:.3f} entropy={m['entropy']:.3f}"
            )

        keys = self.seed_keys("bopo")
        return FinetuneRun(cfg, run, keys, template, "lam", self.config.lams, line)

    def ppo_lagrangian_run(self, store, params, normalizer) -> FinetuneRun:
        """Return PPO-Lagrangian's sweep over the ``cost_targets`` from the network
        ``params`` and its ``normalizer`` (the warm start, or a fresh network)."""
        cfg = self.ppo_config(store)
        tasks = jnp.asarray(store.tasks, jnp.int32)
        train = ppo_lag.make_train(cfg, self.train_params, params, normalizer, tasks)
        targets = jnp.asarray(self.config.cost_targets, jnp.float32) * cfg.cost_scale

        def init(key, target):
            init_key = jax.random.split(key)[0]
            return ppo_lag.init_state(
                cfg, self.train_params, init_key, params, normalizer, tasks, target
            )

        def run(keys, states, n):
            def one(key, state):
                return train(key, state, n_updates=n)

            return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(keys, states)

        keys = self.seed_keys("ppo-lagrangian")
        template = jax.jit(jax.vmap(jax.vmap(init, in_axes=(None, 0)), in_axes=(0, None)))(
            keys, targets
        )

        values = self.config.cost_targets
        return FinetuneRun(cfg, run, keys, template, "cost_target", values, lagrangian_line)

    def budget_conditioned_run(
        self,
        store: BoundaryStore,
        bc_state,
        budgets: tuple[float, float],
        caps: tuple[int, int],
        budget_target: float = 1.0,
        updates: int | None = None,
    ) -> FinetuneRun:
        """Return the training of one router for every budget: PPO-Lagrangian from the
        cloned policy, every training episode under a hard budget drawn uniformly from
        ``budgets`` (USD) and a cap on expensive calls drawn from ``caps``, for
        ``updates`` updates (None: the config's ``updates``).

        The constraint bounds the mean share of each episode's budget that is spent
        (``budget_target``; at 1 the hard budget alone binds, through budget-constrained
        decoding, and the multiplier stays at 0). The policy reads the money and calls
        it has left, so one policy serves every budget in the range.
        """
        params = self.train_params.replace(
            budget_low=jnp.float32(budgets[0]),
            budget_high=jnp.float32(budgets[1]),
            cap_low=jnp.int32(caps[0]),
            cap_high=jnp.int32(caps[1]),
        )
        return self._budget_run(
            store,
            bc_state,
            budget_target,
            "budget_target",
            (budget_target,),
            [params],
            updates,
        )

    def per_budget_run(
        self,
        store: BoundaryStore,
        bc_state,
        budgets: tuple[float, ...],
        cap: int | None,
        budget_target: float = 1.0,
    ) -> FinetuneRun:
        """Return the training of one policy per budget of ``budgets`` (USD), each only
        ever under that budget (and ``cap``), as :meth:`budget_conditioned_run` trains."""
        cap = jax_env.NO_CAP if cap is None else cap
        variants = [
            self.train_params.replace(
                budget_low=jnp.float32(b),
                budget_high=jnp.float32(b),
                cap_low=jnp.int32(cap),
                cap_high=jnp.int32(cap),
            )
            for b in budgets
        ]
        return self._budget_run(
            store, bc_state, budget_target, "budget", tuple(budgets), variants
        )

    def _budget_run(self, store, bc_state, target, knob, values, variants, updates=None):
        """Return PPO-Lagrangian in budget-fraction mode, batched over (seeds,
        ``variants``: the twin's parameters of each knob value), for ``updates`` updates
        (None: the config's)."""
        cfg = dataclasses.replace(
            self.ppo_config(store),
            cost_mode="budget_fraction",
            cost_target=float(target),
            cost_scale=0.0,
            updates=self.config.updates if updates is None else updates,
        )
        tasks = jnp.asarray(store.tasks, jnp.int32)
        # The warm start never saw a budget: make it read the budgets it will train under
        params, normalizer = ppo_lag.adapt_warm_start(
            cfg,
            bc_state.params,
            bc_state.normalizer,
            variants,
            tasks,
            self._stage_key(f"budgets-{knob}-features"),
        )
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *variants)

        def run(keys, states, n):
            def one(key, env, state):
                train = ppo_lag.make_train(cfg, env, params, normalizer, tasks)
                return train(key, state, n_updates=n)

            per_variant = jax.vmap(one, in_axes=(None, 0, 0))
            return jax.vmap(per_variant, in_axes=(0, None, 0))(keys, stacked, states)

        def init(key, env):
            init_key = jax.random.split(key)[0]
            return ppo_lag.init_state(cfg, env, init_key, params, normalizer, tasks)

        keys = self.seed_keys(f"budgets-{knob}")
        template = jax.jit(jax.vmap(jax.vmap(init, in_axes=(None, 0)), in_axes=(0, None)))(
            keys, stacked
        )
        return FinetuneRun(cfg, run, keys, template, knob, values, lagrangian_line)

    def train_in_chunks(self, name: str, job: FinetuneRun):
        """Return the states of ``job`` after ``job.config.updates`` updates, run in
        ``chunks`` pieces, each checkpointed in the folder ``name`` of the run folder
        (resuming from its latest checkpoint when asked). Logs one line per piece and
        writes every update's metrics for every (seed, knob value) to ``name.jsonl``."""
        cfg = job.config
        ckpt = Checkpointer(self.out / name)
        history = self.out / f"{name}.jsonl"
        run = jax.jit(job.run, static_argnums=2)
        chunk = -(-cfg.updates // self.config.chunks)
        states, done = job.template, 0
        if self.resume and ckpt.latest_step() is not None:
            states, done = ckpt.restore(job.template, cfg)
            self.log(f"stage={name} status=restored updates={done}")
        keys, states = shard_seeds((job.keys, states))  # seeds split over the devices
        start = time.perf_counter()
        bar = None
        if self.progress is not None:
            bar = self.progress(total=cfg.updates, initial=done, desc=name)
        while done < cfg.updates:
            n = min(chunk, cfg.updates - done)
            t0 = time.perf_counter()
            states, metrics = run(keys, states, n)
            metrics = jax.tree.map(np.asarray, metrics)
            rate = float(np.sum(metrics["steps"])) / (time.perf_counter() - t0)
            _append_history(history, metrics, done, job.knob, job.values)
            done += n
            ckpt.save(done, states, cfg)
            last = jax.tree.map(lambda x: float(np.mean(x[..., -1])), metrics)
            self.log(f"stage={name} updates={done} {job.line(last)} steps_per_s={rate:.0f}")
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        self.timings[name] = self.timings.get(name, 0.0) + (time.perf_counter() - start)
        return states

    def evaluate(self, store: BoundaryStore, bc_state, states) -> dict:
        """Return every method's sweep and efficiency on the held-out tasks:
        ``{"results", "scores", "cost_unit"}``, the last always-expensive's mean cost on
        the training tasks (USD; PPO-Lagrangian's cost targets are fractions of it)."""
        start = time.perf_counter()
        refs = self.evaluate_references(store, bc_state)
        tuned = self.evaluate_tuned(states, refs)
        results = {**refs.results, **tuned}
        scores = score_all(results, refs.oracle, per_seed=list(tuned))
        if refs.oracle is not None:
            results["oracle"] = refs.oracle
        for method, res in results.items():
            for p in res.points:
                self.log(
                    f"eval method={method.replace(' ', '-')} knob={_fmt(p.get('knob'))} "
                    f"success={p['success']:.4f} mean_cost={p['mean_cost']:.5f} "
                    f"expensive_share={_fmt(p.get('expensive_share'))} "
                    f"overspends={p.get('overspends', 0)}"
                )
        self.timings["evaluate"] = time.perf_counter() - start
        unit = float(np.mean(store.episodes["expensive"]["cost"]))
        return {"results": results, "scores": scores, "cost_unit": unit}

    def evaluate_references(self, store: BoundaryStore, bc_state) -> References:
        """Return what every fine-tuned method is measured against on the held-out
        tasks: the baselines, the warm start, the plug-in planner and the oracle."""
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

        # The oracle and the plug-in planner (synthetic suites)
        oracle_result = None
        tasks = np.asarray(episodes.tasks[:: c.eval_runs])
        if c.oracle and c.suite in PRESETS:
            orc = oracle.oracle_points(self.test_params, tasks)
            oracle_result = _points_result("oracle", orc)
            plug = oracle.plugin_points(self.suite.bank("train"), self.test_params, tasks)
            results["plug-in planner"] = _points_result("plug-in planner", plug)
        elif c.oracle:
            orc = oracle.replay_oracle_points(self.test_params, tasks)
            oracle_result = _points_result("oracle", orc)
            models = orc["models"]
            called = (models >= 0).sum(axis=(0, 2))
            share = (models >= 1).sum(axis=(0, 2)) / np.maximum(called, 1)
            for p, x in zip(oracle_result.points, share, strict=True):
                p["expensive_share"] = float(x)
        return References(episodes, results, oracle_result, ref, network)

    def evaluate_tuned(self, states: dict, refs: References) -> dict[str, MethodResult]:
        """Return each fine-tuned method's sweep on the held-out episodes of ``refs``:
        greedy, one point per (seed, knob value), and the cheap end of the sweep
        (lam -> inf, target -> 0), where a router falls back to always-cheap."""
        c = self.config
        cheap_end = dict(refs.results[CHEAP].points[0], knob=None)
        out = {}
        for method, tuned in states.items():
            if method == "bopo":
                knob, values = "lam", c.lams
                actor = tuned.params
            else:
                knob, values = "cost_target", c.cost_targets
                actor = tuned.params["actor_critic"]
            res = MethodResult(METHODS[method], knob, [cheap_end])
            for s in range(c.seeds):
                for i, value in enumerate(values):
                    pick = lambda x, s=s, i=i: x[s, i]  # noqa: E731
                    policy = NetworkPolicy(
                        jax.tree.map(pick, actor),
                        jax.tree.map(pick, tuned.normalizer),
                        refs.network,
                    )
                    point = summarize_rollout(refs.episodes.run(policy), refs.ref_cost)
                    point.update(knob=float(value), seed=s)
                    res.points.append(point)
            out[res.name] = res
        return out


@dataclass(frozen=True)
class References:
    """The held-out episodes and what fine-tuned methods are measured against."""

    episodes: Episodes
    """The held-out episodes every method runs on."""
    results: dict[str, MethodResult]
    """Baselines (boundaries, random mix, heuristics, per-step router), the warm start
    and, on synthetic suites, the plug-in planner."""
    oracle: MethodResult | None
    """The oracle's points (None without ``oracle``)."""
    ref_cost: float
    """Always-expensive's mean cost on the episodes, USD."""
    network: Any
    """The policy network module every fine-tuned router uses."""


def score_all(
    results: dict[str, MethodResult], oracle_result, per_seed: list[str] = ()
) -> dict[str, float | None]:
    """Return every method's frontier efficiency and, for the methods named in
    ``per_seed``, one per fine-tuning seed (``"<name> seed <s>"``: that seed's points
    with the sweep's shared end points)."""
    scores = score_methods(results, oracle_result)
    if oracle_result is None:
        return scores
    for name in per_seed:
        res = results[name]
        seeds = sorted({p["seed"] for p in res.points if p.get("seed") is not None})
        if len(seeds) < 2:
            continue
        for s in seeds:
            one = MethodResult(
                f"{name} seed {s}",
                res.knob,
                [p for p in res.points if p.get("seed") in (s, None)],
            )
            scores[one.name] = score_methods({**results, one.name: one}, oracle_result)[
                one.name
            ]
    return scores


def lagrangian_line(m: dict) -> str:
    """Return the log line's metrics of a PPO-Lagrangian update (scalar metrics)."""
    return (
        f"return={m['return']:.3f} success={m['success']:.3f} cost={m['cost']:.4f} "
        f"lagrange_multiplier={m['lagrange_multiplier']:.3f} "
        f"violation={m['violation']:.3f} expensive_share={m['expensive_share']:.3f} "
        f"entropy={m['entropy']:.3f} kl={m['kl']:.4f}"
    )


class RunFolderError(Exception):
    """A run folder that cannot be resumed as asked (the scripts report it as an error
    message, not a traceback)."""


class NothingToResume(RunFolderError, FileNotFoundError):
    """``resume`` was asked for, and the folder holds no run."""


class RunFolderMismatch(RunFolderError, ValueError):
    """The folder's run was written under another configuration, or is unreadable."""


def _read_run_config(path: Path) -> dict:
    """Return the configuration a run folder's ``config.json`` records; raise when
    there is none to resume from or it cannot be read."""
    if not path.is_file():
        raise NothingToResume(
            f"nothing to resume: {path} does not exist, so no run was started in "
            f"{path.parent}; check --out-dir, or drop --resume to start a new run"
        )
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunFolderMismatch(
            f"{path} is unreadable ({err}); cannot tell which configuration wrote the "
            "folder: use another --out-dir or drop --resume"
        ) from None
    if not isinstance(saved, dict):
        raise RunFolderMismatch(f"{path} does not hold a configuration (a JSON object)")
    return saved


def _finetune_folder(method: str) -> str:
    """Return the name of a method's fine-tuning checkpoint folder."""
    return "finetune" if method == "bopo" else f"finetune-{method}"


def _append_history(path: Path, metrics: dict, done: int, knob: str, values) -> None:
    """Append one JSON line per update and (seed, knob value) of a chunk's metrics
    (arrays of shape (seeds, knobs, updates)), numbered from ``done + 1``; lines of
    later updates left by an interrupted run are dropped first."""
    kept = []
    if path.exists():
        kept = [
            ln for ln in path.read_text().splitlines() if json.loads(ln)["update"] <= done
        ]
    seeds, knobs, n = np.shape(metrics["success"])
    for u in range(n):
        for s in range(seeds):
            for k in range(knobs):
                row = {"update": done + u + 1, "seed": s, knob: float(values[k])}
                row.update({m: float(v[s, k, u]) for m, v in metrics.items()})
                kept.append(json.dumps(row))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    tmp.replace(path)


def _fmt(x):
    return "none" if x is None else f"{x:.4g}"


def _points_result(name: str, pts: dict) -> MethodResult:
    """Return the oracle's (or plug-in planner's) exact points as a method's sweep."""
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
