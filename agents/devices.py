"""Spread seed-batched arrays over the devices: a 1-D mesh along the leading (seed) axis.

Training vmaps over seeds, so every array of a batched run has the seeds as its leading
axis. With several devices (GPUs, TPU cores, or host devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and a seed count that is a
multiple of the device count, :func:`shard_seeds` splits that axis over the devices and
``jax.jit`` runs each device's seeds there; otherwise the arrays are replicated on every
device. With one device nothing moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seeds"
"""Name of the mesh axis the seeds are split along."""


def seed_sharding(n_seeds: int, devices: Sequence | None = None) -> NamedSharding:
    """Return the sharding of arrays whose leading axis holds ``n_seeds`` seeds.

    The mesh is 1-D over ``devices`` (default ``jax.devices()``); the leading axis is
    split along it when ``n_seeds`` is a multiple of the device count, and the arrays
    are replicated otherwise.
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), (SEED_AXIS,))
    split = n_seeds % len(devices) == 0
    return NamedSharding(mesh, PartitionSpec(SEED_AXIS) if split else PartitionSpec())


def shard_seeds(tree, devices: Sequence | None = None):
    """Return ``tree`` with its arrays placed by :func:`seed_sharding`.

    Every leaf must have the same leading (seed) axis. With a single device ``tree`` is
    returned unchanged, so single-device runs keep their uncommitted arrays.
    """
    devices = list(jax.devices() if devices is None else devices)
    leaves = jax.tree.leaves(tree)
    if len(devices) < 2 or not leaves:
        return tree
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"shard_seeds needs one leading seed axis on every leaf, got sizes {sizes}"
        )
    return jax.device_put(tree, seed_sharding(sizes.pop(), devices))
