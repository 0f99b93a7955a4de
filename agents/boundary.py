"""Boundary policies and the difficulty taxonomy they define.

Every router lies between two fixed policies: always-cheap and always-expensive. Each is
run ``K`` times on every task; a task is

* **Easy** when always-cheap succeeds in at least ``min_successes`` of its runs,
* **Hard** when it is not Easy and always-expensive succeeds in at least
  ``min_successes`` of its runs (mixing in the expensive model can pay),
* **Intractable** otherwise (neither succeeds: the right behaviour is to fail cheaply).
"""

from __future__ import annotations

import numpy as np

EASY, HARD, INTRACTABLE = 0, 1, 2
CLASS_NAMES = ("easy", "hard", "intractable")


def taxonomy(
    cheap_success: np.ndarray, expensive_success: np.ndarray, min_successes: int = 3
) -> np.ndarray:
    """Return the class of each task (``EASY``, ``HARD``, ``INTRACTABLE``), shape (n,).

    ``cheap_success`` and ``expensive_success`` are (n, K) boolean outcomes of the
    boundary runs; ``min_successes`` of the ``K`` runs must succeed to count.
    """
    cheap = np.asarray(cheap_success).sum(axis=1)
    expensive = np.asarray(expensive_success).sum(axis=1)
    k = np.asarray(cheap_success).shape[1]
    if not 1 <= min_successes <= k:
        raise ValueError(f"min_successes must be in [1, {k}], got {min_successes}")
    return np.where(
        cheap >= min_successes,
        EASY,
        np.where(expensive >= min_successes, HARD, INTRACTABLE),
    ).astype(np.int8)


def class_shares(classes: np.ndarray) -> dict[str, float]:
    """Return the share of tasks in each class, keyed by class name."""
    classes = np.asarray(classes)
    return {name: float(np.mean(classes == i)) for i, name in enumerate(CLASS_NAMES)}
