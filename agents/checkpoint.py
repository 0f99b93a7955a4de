"""Saving and resuming training states with orbax-checkpoint.

A checkpoint holds one training state (any pytree of arrays: parameters, optimizer state,
normaliser, step counters, PRNG keys) in orbax's standard format, and a JSON item with the
config it was trained with (a dataclass) and the path, shape and dtype of every leaf of
the state. :class:`Checkpointer` is a small wrapper around
``orbax.checkpoint.CheckpointManager``::

    ckpt = Checkpointer("runs/bc/checkpoints", max_to_keep=3)
    ckpt.save(epoch, state, config)
    state, epoch = ckpt.restore(template_state, config)  # the latest complete one

Guarantees:

- **Typed restore.** The state is restored into ``template_state`` (built from the current
  config, e.g. by the training code's ``init``); the saved tree structure, shapes and
  dtypes must match it exactly, otherwise :class:`IncompatibleCheckpointError` names the
  leaves that differ (checked from the JSON item, before any array is read). Nothing is
  cast or reshaped silently. Leaves come back as ``jax.Array`` in the template's
  container types, with the template's static fields.
- **PRNG keys.** Typed keys (``jax.random.key``) are stored as their raw key data and
  rewrapped with the template's key implementation; raw ``uint32`` keys are stored as is.
- **Config check.** The saved config must be of the same class; fields that change array
  shapes must be equal, or :class:`IncompatibleCheckpointError` names them. A config class
  declares those fields in a ``SHAPE_FIELDS`` class attribute (a tuple of names); without
  it every field counts. Other differing fields only give a warning (for instance more
  epochs when resuming).
- **Missing directory.** Restoring from a directory that does not exist, or holds no
  complete checkpoint, raises ``FileNotFoundError``: a requested resume never silently
  starts from scratch.
- **Half-written checkpoints.** Orbax writes each step into a temporary directory and
  renames it when complete, so an interrupted save leaves a ``*.orbax-checkpoint-tmp*``
  directory that is never listed as a step (the next save deletes it). A step directory
  that is listed but cannot be read (missing or corrupt files) is, when restoring the
  latest step, moved aside to ``<step>.corrupt`` (kept for inspection, never deleted, and
  no longer in the way of a new save at that step) with a warning, and the previous step
  is tried; if none can be read, :class:`CorruptCheckpointError` is raised. Restoring an
  explicit ``step`` never falls back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

META_ITEM = "meta"
STATE_ITEM = "state"


class IncompatibleCheckpointError(ValueError):
    """The checkpoint does not fit the current config or template state."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint step exists but cannot be read."""


class Checkpointer:
    """Save and restore ``(state, config)`` pairs under one directory, one folder a step.

    ``max_to_keep`` is how many of the latest steps are kept (older ones are deleted after
    each save). See the module docstring for what restore guarantees.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = int(max_to_keep)

    # ------------------------------------------------------------------ public
    def save(self, step: int, state: Any, config: Any) -> None:
        """Save ``state`` and ``config`` as checkpoint ``step`` and wait until it is
        complete on disk. Returns nothing; raises ``ValueError`` if ``step`` is not after
        the latest saved step."""
        storable = jax.tree.map(_to_storable, state)
        meta = {"config": _config_to_json(config), "state": _leaf_specs(storable)}
        os.makedirs(self.directory, exist_ok=True)
        with self._manager(writing=True) as mgr:
            latest = mgr.latest_step()
            if latest is not None and step <= latest:
                raise ValueError(
                    f"cannot save step {step} in {self.directory}: it already holds step "
                    f"{latest}; steps must increase"
                )
            saved = mgr.save(
                int(step),
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardSave(storable),
                        META_ITEM: ocp.args.JsonSave(meta),
                    }
                ),
            )
            mgr.wait_until_finished()
        if not saved:
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")

    def latest_step(self) -> int | None:
        """Return the latest step whose save completed (``None`` if there is none or the
        directory does not exist). Its files are not read, so it may still turn out
        corrupt on restore."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Return the completed steps in the directory, in increasing order."""
        if not os.path.isdir(self.directory):
            return []
        with self._manager() as mgr:
            return sorted(int(s) for s in mgr.all_steps())

    def restore(
        self, template_state: Any, config: Any, step: int | None = None
    ) -> tuple[Any, int]:
        """Return ``(state, step)``: the checkpoint of ``step`` (default: the latest
        readable one) restored into the structure, shapes and dtypes of
        ``template_state``.

        Raises ``FileNotFoundError`` if the directory or any complete step is missing,
        :class:`IncompatibleCheckpointError` if the checkpoint does not fit ``config`` or
        the template, and :class:`CorruptCheckpointError` if no candidate step is
        readable.
        """
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"checkpoint directory {self.directory} does not exist: nothing to resume"
            )
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        if step is not None and int(step) not in steps:
            raise FileNotFoundError(
                f"no complete checkpoint of step {step} in {self.directory} "
                f"(steps: {steps})"
            )
        current = _config_to_json(config)
        target, keys = _restore_target(template_state)
        candidates = [int(step)] if step is not None else steps[::-1]
        failures = []
        for s in candidates:
            try:
                restored = self._restore_step(s, target, current)
            except CorruptCheckpointError as err:
                if step is not None:
                    raise
                failures.append(f"step {s}: {err}")
                moved = self._quarantine(s)
                warnings.warn(
                    f"checkpoint step {s} in {self.directory} is unreadable ({err}); "
                    f"moved to {moved}, falling back to the previous step",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            restored = jax.tree.leaves(restored)
            leaves = [_rewrap_key(x, k) for x, k in zip(restored, keys, strict=True)]
            return jax.tree.unflatten(jax.tree.structure(template_state), leaves), s
        raise CorruptCheckpointError(
            f"no readable checkpoint in {self.directory}: " + "; ".join(failures)
        )

    # ----------------------------------------------------------------- helpers
    def _manager(self, writing: bool = False) -> ocp.CheckpointManager:
        # Only a writer deletes leftovers of interrupted saves (old steps go on save)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep, create=False, cleanup_tmp_directories=writing
        )
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add(STATE_ITEM, ocp.args.StandardSave)
        registry.add(STATE_ITEM, ocp.args.StandardRestore)
        registry.add(META_ITEM, ocp.args.JsonSave)
        registry.add(META_ITEM, ocp.args.JsonRestore)
        return ocp.CheckpointManager(
            self.directory, options=options, handler_registry=registry
        )

    def _restore_step(self, step: int, target: Any, current: dict) -> Any:
        with self._manager() as mgr:
            # Metadata: the saved config and the state's structure, shapes and dtypes
            try:
                meta = mgr.restore(
                    step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
                )[META_ITEM]
                saved_config, saved_specs = _parse_meta(meta)
            except Exception as err:
                raise CorruptCheckpointError(f"metadata unreadable: {err}") from err

            # Same config class and shape fields, same leaves, before any array is read
            _compare_configs(saved_config, current, step)
            _compare_specs(saved_specs, _leaf_specs(target), step)

            # Arrays
            try:
                restored = mgr.restore(
                    step,
                    args=ocp.args.Composite(
                        **{STATE_ITEM: ocp.args.StandardRestore(target)}
                    ),
                )[STATE_ITEM]
            except Exception as err:
                raise CorruptCheckpointError(f"state arrays unreadable: {err}") from err
        return restored

    def _quarantine(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst = src + ".corrupt"
        n = 0
        while os.path.exists(dst):
            n += 1
            dst = f"{src}.corrupt-{n}"
        os.rename(src, dst)
        return dst


# ---------------------------------------------------------------------- config
def _config_to_json(config: Any) -> dict:
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config)!r}")
    cls = type(config)
    fields = json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))
    shape_fields = getattr(cls, "SHAPE_FIELDS", None)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "fields": fields,
        "shape_fields": None if shape_fields is None else list(shape_fields),
    }


def _json_default(x):
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"config value {x!r} of type {type(x).__name__} is not JSON-able")


def _parse_meta(meta: Any) -> tuple[dict, dict]:
    config, specs = meta["config"], meta["state"]
    if not isinstance(config, dict) or not {"class", "fields"} <= set(config):
        raise ValueError(f"not a saved config: {config!r}")
    specs = {name: (tuple(shape), str(dtype)) for name, (shape, dtype) in specs.items()}
    return config, specs


def _compare_configs(saved: dict, current: dict, step: int) -> None:
    if saved["class"] != current["class"]:
        raise IncompatibleCheckpointError(
            f"checkpoint step {step} was saved with config class {saved['class']}, "
            f"not {current['class']}"
        )
    old, new = saved["fields"], current["fields"]
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not differing:
        return
    shape_fields = current["shape_fields"]
    if shape_fields is None:
        shape_fields = sorted(set(old) | set(new))
    blocking = [k for k in differing if k in shape_fields]
    detail = lambda ks: ", ".join(  # noqa: E731
        f"{k}: saved {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}" for k in ks
    )
    if blocking:
        raise IncompatibleCheckpointError(
            f"checkpoint step {step} was saved with a config that differs in fields that "
            f"change array shapes: {detail(blocking)}"
        )
    warnings.warn(
        f"resuming checkpoint step {step} with a config that differs in "
        f"{detail(differing)}",
        UserWarning,
        stacklevel=4,
    )


# ----------------------------------------------------------------------- state
def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _to_storable(x: Any) -> jax.Array:
    if _is_key(x):
        return jax.random.key_data(x)
    return jnp.asarray(x)


def _restore_target(template: Any) -> tuple[Any, Any]:
    """Return the abstract target to restore into and the list, leaf by leaf, of key
    implementations to rewrap with (``None`` for ordinary arrays)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(x):
        if _is_key(x):
            spec = jax.eval_shape(jax.random.key_data, x)
        elif isinstance(x, jax.ShapeDtypeStruct):
            spec = x
        else:
            spec = jnp.asarray(x)
        sharding = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)

    def key_impl(x):
        if not _is_key(x):
            return None
        if isinstance(x, jax.Array):
            return jax.random.key_impl(x)
        return x.dtype._impl

    return jax.tree.map(target, template), [key_impl(x) for x in jax.tree.leaves(template)]


def _rewrap_key(x: jax.Array, impl: Any) -> jax.Array:
    return x if impl is None else jax.random.wrap_key_data(x, impl=impl)


def _path_name(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    specs = {}
    for path, leaf in leaves:
        shape = tuple(int(d) for d in getattr(leaf, "shape", ()))
        dtype = getattr(leaf, "dtype", None)
        specs[_path_name(path)] = (shape, str(np.dtype(dtype)) if dtype else "?")
    return specs


def _compare_specs(saved: dict, wanted: dict, step: int) -> None:
    problems = []
    for name in sorted(set(saved) | set(wanted)):
        if name not in saved:
            problems.append(f"{name}: not in the checkpoint")
        elif name not in wanted:
            problems.append(f"{name}: not in the template")
        elif saved[name] != wanted[name]:
            (s_shape, s_dtype), (w_shape, w_dtype) = saved[name], wanted[name]
            problems.append(
                f"{name}: saved {s_dtype}{list(s_shape)}, template {w_dtype}{list(w_shape)}"
            )
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise IncompatibleCheckpointError(
            f"checkpoint step {step} does not match the template state: {shown}{more}"
        )
