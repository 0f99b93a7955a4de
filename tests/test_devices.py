"""Seeds sharded over several devices give the figures of a single-device run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agents.devices import seed_sharding, shard_seeds

ROOT = Path(__file__).resolve().parents[1]

# Fine-tunes a tiny recipe with two seeds from a fresh network and saves the final
# state's leaves and the logged figures; with two devices it checks the placement
SCRIPT = """
import sys
import jax
import numpy as np
from jax.sharding import PartitionSpec
from agents import bc, networks
from agents.devices import seed_sharding, shard_seeds
from agents.pipeline import Recipe, RecipeConfig

out = sys.argv[1]
config = RecipeConfig(
    n_train_tasks=8, n_test_tasks=4, boundary_runs=1, min_successes=1,
    hidden_sizes=(8,), updates=2, chunks=1, tasks_per_update=2, group_size=2,
    lams=(0.1, 0.6), seeds=2, router=False, oracle=False,
)
lines = []
recipe = Recipe(config, out + "-run", log=lines.append)
p = recipe.train_params
n = networks.n_policy_features(
    p.n_models, p.features.shape[-1], p.step_features.shape[-1], p.privileged_state
)
store, bc_state = recipe.boundaries(), bc.init_state(recipe.bc_config(), n, 2)
states = recipe.finetune(store, bc_state)
leaves = jax.tree.leaves(states)
# Resuming the finished run restores the checkpoint and places it the same way
restored = Recipe(config, out + "-run", resume=True, log=print).finetune(store, bc_state)
for a, b in zip(leaves, jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
if jax.device_count() == 2:
    for x in leaves + jax.tree.leaves(restored):
        assert len(x.sharding.device_set) == 2
        assert x.sharding.spec == PartitionSpec("seeds")
    assert seed_sharding(3).spec == PartitionSpec()
    odd = shard_seeds(np.zeros((3, 4)))
    assert odd.sharding.is_fully_replicated and len(odd.sharding.device_set) == 2
    try:
        shard_seeds({"a": np.zeros(2), "b": np.zeros(3)})
        raise AssertionError("leading axes of different sizes were accepted")
    except ValueError as err:
        assert "one leading seed axis" in str(err)
np.savez(out, *[np.asarray(x) for x in leaves])
with open(out + ".log", "w") as f:
    f.write("\\n".join(x for x in lines if x.startswith("stage=finetune updates")))
"""


def _start(out: Path, devices: int) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_finetune_shards_seeds_over_two_devices_with_unchanged_figures(tmp_path):
    # Both runs at once: each is mostly compilation, on one core
    runs = {d: _start(tmp_path / f"devices{d}", d) for d in (2, 1)}
    for d, proc in runs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{d} device(s):\n{output[-3000:]}"
    sharded = np.load(tmp_path / "devices2.npz")
    single = np.load(tmp_path / "devices1.npz")
    assert len(sharded.files) == len(single.files) > 10
    for name in single.files:
        assert sharded[name].shape == single[name].shape
        assert sharded[name].shape[:2] == (2, 2)  # (seeds, lams)
        np.testing.assert_allclose(sharded[name], single[name], rtol=1e-5, atol=1e-6)
    log = (tmp_path / "devices2.log").read_text()
    assert log.startswith("stage=finetune updates=2 success=")

    # Every figure but the throughput, which is wall-clock timing
    def figures(text):
        return re.sub(r" steps_per_s=\S+", "", text)

    assert " steps_per_s=" in log
    assert figures(log) == figures((tmp_path / "devices1.log").read_text())


def test_one_device_leaves_the_arrays_alone():
    tree = {"a": jnp.arange(4.0), "b": jnp.zeros((4, 2))}
    assert shard_seeds(tree, jax.devices()[:1]) is tree
    sharding = seed_sharding(4, jax.devices()[:1])
    assert sharding.spec == jax.sharding.PartitionSpec("seeds")
    assert sharding.mesh.shape == {"seeds": 1}
