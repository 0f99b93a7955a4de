"""Measure each synthetic preset against its calibration targets.

Runs always-cheap and always-expensive ``runs`` times on each of ``n_tasks`` training
tasks in the JAX twin, plus random per-step mixing at several probabilities, and prints
boundary success rates (with their targets), the Easy / Hard / Intractable shares, mean
steps and mean cost per task. Results go to ``<out_dir>/calibration.json``.

    python -m experiments.calibrate --presets household,science,apps
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from agents.boundary import class_shares, taxonomy
from agents.policy import AlwaysModel, RandomMix
from agents.rollout import episode_seeds, rollout
from envs import jax_env
from envs.suite import synthetic_suite
from envs.synthetic import PRESET_TARGETS, PRESETS
from experiments.cli import format_table, option, parse_config, write_json


@dataclass(frozen=True)
class CalibrateConfig:
    """Measure the synthetic presets against their calibration targets."""

    presets: tuple[str, ...] = option(
        ("household", "science", "apps"), "Presets to measure."
    )
    n_tasks: int = option(2000, "Training tasks per preset.")
    runs: int = option(5, "Runs of each boundary policy per task.")
    min_successes: int = option(3, "Successful runs (of --runs) a boundary needs to count.")
    mix_probs: tuple[float, ...] = option((0.25, 0.5, 0.75), "Random-mix probabilities.")
    seed: int = option(0, "Seed of the episode draws.")
    out_dir: str = option("runs/calibrate", "Folder for calibration.json.")


def measure_preset(name: str, config: CalibrateConfig) -> dict:
    """Return the measured statistics of one preset (rates are fractions, cost USD)."""
    preset, target = PRESETS[name], PRESET_TARGETS[name]
    suite = synthetic_suite(preset, n_train=config.n_tasks, n_test=1)
    params = jax_env.params_from_suite(suite, "train", expensive_cap=target.expensive_cap)
    tasks = jnp.repeat(jnp.arange(config.n_tasks, dtype=jnp.int32), config.runs)
    seeds = episode_seeds(jax.random.key(config.seed), tasks.shape[0])
    key = jax.random.key(config.seed + 1)

    policies = {"always-cheap": AlwaysModel(0), "always-expensive": AlwaysModel(1)}
    policies.update({f"random-mix p={p:g}": RandomMix(p) for p in config.mix_probs})
    rows, outcomes = [], {}
    for label, policy in policies.items():
        out = jax.tree.map(np.asarray, rollout(policy, params, tasks, seeds, key))
        outcomes[label] = out["success"].reshape(config.n_tasks, config.runs)
        rows.append(
            {
                "policy": label,
                "success": float(out["success"].mean()),
                "mean_cost": float(out["cost"].mean()),
                "mean_steps": float(out["steps"].mean()),
                "expensive_share": float(
                    out["model_counts"][:, 1:].sum() / out["steps"].sum()
                ),
            }
        )
    classes = taxonomy(
        outcomes["always-cheap"], outcomes["always-expensive"], config.min_successes
    )
    return {
        "preset": name,
        "targets": {
            "cheap_success": target.cheap_success,
            "expensive_success": target.expensive_success,
            "expensive_cap": target.expensive_cap,
            "horizon": preset.horizon,
            "prefix_tokens": preset.prefix_tokens,
            "step_tokens": preset.step_tokens,
            "sources": target.sources,
        },
        "policies": rows,
        "classes": class_shares(classes),
    }


def main(argv=None) -> dict:
    """Run the calibration and print its tables; return the results."""
    config = parse_config(CalibrateConfig, argv)
    for name in config.presets:
        if name not in PRESETS:
            raise SystemExit(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    results, start = [], time.perf_counter()
    for name in tqdm(config.presets, desc="presets", disable=None):
        results.append(measure_preset(name, config))
    for res in results:
        t, c = res["targets"], res["classes"]
        cap = f", cap {t['expensive_cap']} expensive calls" if t["expensive_cap"] else ""
        print(f"\n{res['preset']}: {config.n_tasks} tasks x {config.runs} runs{cap}")
        print(
            f"targets: always-cheap {t['cheap_success']:.1%}, "
            f"always-expensive {t['expensive_success']:.1%}"
        )
        print(
            format_table(
                res["policies"],
                ["policy", "success", "mean_cost", "mean_steps", "expensive_share"],
                {
                    "success": ".3f",
                    "mean_cost": ".4f",
                    "mean_steps": ".1f",
                    "expensive_share": ".2f",
                },
            )
        )
        print(
            f"classes: easy {c['easy']:.1%}, hard {c['hard']:.1%}, "
            f"intractable {c['intractable']:.1%}"
        )
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.1f} s")
    write_json(
        Path(config.out_dir) / "calibration.json",
        {"config": config, "results": results, "seconds": elapsed},
    )
    return {"results": results}


if __name__ == "__main__":
    main()
