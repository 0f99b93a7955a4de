"""Prepare the replay suites (parse, split, featurise, cache) and print their summary.

Run ``python -m experiments.prepare_replay --suite gsm8k`` (or ``mmlu``, or both by
default). Parsing and featurising run once and are cached (see :mod:`envs.replay`); the
summary then gives, per suite, the rows of each split, each model's accuracy and mean
tokens, and the success rate and cost of the two boundary policies (always the cheap
model, always the expensive one) per call (sessions of one item) and per session of
``--session-items`` items, measured by running ``BudgetRoute-v0`` over every task of both
splits.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm import tqdm

from envs import replay
from envs.gym_env import BudgetRouteEnv


def boundary_stats(suite, action: int) -> dict:
    """Return success rate, mean score and mean cost (USD a task) of always ``action``.

    Every task of both splits runs once, with no budget. ``score`` is the share of items
    answered right under the ``"share"`` rule and the success rate under ``"all"``;
    ``calls`` is the number of model calls made in all.
    """
    successes, scores, costs, calls = [], [], [], 0
    for split in ("train", "test"):
        env = BudgetRouteEnv(suite=suite, split=split)
        for task in range(env.bank.n_tasks):
            env.reset(seed=task, options={"task": task})
            cost, done = 0.0, False
            while not done:
                _, _, terminated, truncated, info = env.step(action)
                cost += info["cost"]
                calls += 1
                done = terminated or truncated
            successes.append(info["success"])
            scores.append(info.get("score", float(info["success"])))
            costs.append(cost)
    return {
        "success": float(np.mean(successes)),
        "score": float(np.mean(scores)),
        "cost": float(np.mean(costs)),
        "tasks": len(costs),
        "calls": calls,
    }


def summarize(args, name: str) -> None:
    """Prepare one suite and print its summary."""
    prepared = replay.prepare_replay(
        name,
        data_dir=args.data_dir,
        seed=args.seed,
        test_fraction=args.test_fraction,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        progress=tqdm,
    )
    table = prepared.table
    where = prepared.cache_file if prepared.cache_file else "not cached"
    origin = "loaded from" if prepared.from_cache else "saved to"
    print(f"\n== {name}: {table.n_items} rows from {len(table.files)} file(s)")
    print(f"cache: {origin} {where}" if prepared.cache_file else f"cache: {where}")
    n_test = int(prepared.is_test.sum())
    print(
        f"split (seed {prepared.seed}): train {table.n_items - n_test} rows, "
        f"test {n_test} rows, {len(set(table.sources))} source(s)"
    )
    print(f"item features: {prepared.item_features.shape[1]}")
    print(f"{'model':<32} {'correct':>8} {'prompt tok':>11} {'completion tok':>15}")
    for m, model in enumerate(table.models):
        recorded = table.completion_recorded[:, m].mean()
        print(
            f"{model:<32} {table.correct[:, m].mean():>8.1%} "
            f"{table.prompt_tokens[:, m].mean():>11.1f} "
            f"{table.completion_tokens[:, m].mean():>15.1f}"
            f"  ({recorded:.0%} from answers)"
        )
    if args.no_boundary:
        return
    print(
        f"{'boundary policy':<32} {'K':>3} {'tasks':>6} {'success':>8} {'score':>7} "
        f"{'USD/task':>10}"
    )
    for k in sorted({1, args.session_items}):
        suite = replay.replay_suite(
            name,
            seed=args.seed,
            session_items=k,
            success_rule=args.success_rule,
            history=not args.no_history,
            data_dir=args.data_dir,
            test_fraction=args.test_fraction,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
        )
        for action, model in enumerate(suite.models):
            stats = boundary_stats(suite, action)
            print(
                f"{'always ' + model.name:<32} {k:>3} {stats['tasks']:>6} "
                f"{stats['success']:>8.1%} {stats['score']:>7.1%} {stats['cost']:>10.6f}"
            )


def main(argv=None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.prepare_replay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--suite",
        nargs="+",
        choices=sorted(replay.REPLAY_SUITES),
        default=sorted(replay.REPLAY_SUITES),
        help="replay suite(s) to prepare (default: all)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"RouteLLM data folder (default: ${replay.DATA_ENV} or "
        f"{replay.DEFAULT_DATA_DIR} from the working directory)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"cache folder (default: ${replay.CACHE_ENV} or {replay.DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the train/test split (default 0)"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=replay.DEFAULT_TEST_FRACTION,
        help="share of each source's items held out for testing (default %(default)s)",
    )
    parser.add_argument(
        "--session-items",
        type=int,
        default=replay.DEFAULT_SESSION_ITEMS,
        help="items a session asks, for the per-session costs (default %(default)s)",
    )
    parser.add_argument(
        "--success-rule",
        choices=sorted(replay.SUCCESS_RULES),
        default="all",
        help="'all': a session succeeds when every item is right; 'share': its score is "
        "the share of items right (default %(default)s)",
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="prompts hold only the current item, not the session's earlier ones",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the cache"
    )
    parser.add_argument(
        "--no-boundary",
        action="store_true",
        help="skip running the boundary policies through the environment",
    )
    args = parser.parse_args(argv)
    if args.session_items < 1:
        parser.error("--session-items must be >= 1")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be in (0, 1)")
    try:
        for name in args.suite:
            summarize(args, name)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
