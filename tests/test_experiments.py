"""Every experiment script runs end to end on a tiny configuration."""

import json
import math
from pathlib import Path

import pytest

from experiments import (
    ablations,
    bench,
    bench_env,
    calibrate,
    evaluate,
    frontier,
    strict_budget,
)

DATA = Path("../shared/data/routellm")


def test_calibrate_reports_every_preset(tmp_path, capsys):
    calibrate.main(
        [
            "--n-tasks",
            "40",
            "--runs",
            "2",
            "--min-successes",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    data = json.loads((tmp_path / "calibration.json").read_text())
    assert [r["preset"] for r in data["results"]] == ["household", "science", "apps"]
    assert "always-expensive" in capsys.readouterr().out


def test_bench_env_prints_the_ratios(tmp_path, capsys):
    result = bench_env.main(
        [
            "--gym-steps",
            "500",
            "--n-envs",
            "64",
            "--scan-steps",
            "20",
            "--rounds",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert result["twin_vs_cartpole"] > 0 and result["gym_vs_cartpole"] > 0
    assert "CartPole-v1" in capsys.readouterr().out


def test_bench_prints_every_ratio(tmp_path, capsys):
    result = bench.main([
        "--gym-steps", "300", "--n-envs", "32", "--scan-steps", "10", "--rounds", "1",
        "--train-updates", "1", "--n-train-tasks", "16", "--boundary-runs", "1",
        "--min-successes", "1", "--hidden-sizes", "8", "--tasks-per-update", "4",
        "--group-size", "2", "--lams", "0.3", "--ppo-episodes", "8", "--cost-targets",
        "0.6", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    names = ["CartPole-v1", "BudgetRoute-v0", "twin", "BoPO", "PPO-Lagrangian"]
    data = json.loads((tmp_path / "bench.json").read_text())
    for figures in (result, data):
        for table in ("steps_per_second", "x_cartpole"):
            assert sorted(figures[table]) == sorted(names)
            assert all(math.isfinite(v) and v > 0 for v in figures[table].values())
        assert all(len(figures["rounds"][k]) == 1 for k in names)
    assert data["x_cartpole"]["CartPole-v1"] == 1.0
    assert all(
        n > 0 for k in ("BoPO", "PPO-Lagrangian") for n in data["train_steps_per_round"][k]
    )
    assert data["config"]["out_dir"] == str(tmp_path) and data["device"]
    out = capsys.readouterr().out
    assert "x CartPole" in out and "BoPO training" in out and "PPO-Lagrangian" in out


def test_evaluate_writes_json_and_plot_for_a_replay_suite(tmp_path):
    # The synthetic path (oracle, plug-in planner) runs in tests/test_train.py
    if not DATA.is_dir():
        pytest.skip("replay data not found at ../shared/data/routellm")
    out = evaluate.main(
        [
            "--suite",
            "gsm8k",
            "--n-train-tasks",
            "32",
            "--n-test-tasks",
            "16",
            "--eval-runs",
            "1",
            "--out-dir",
            str(tmp_path / "new"),  # a folder that does not exist yet
        ]
    )
    assert (tmp_path / "new" / "frontier.png").is_file()
    scores = json.loads((tmp_path / "new" / "evaluation.json").read_text())["scores"]
    assert scores["random-mix"] == 0.0
    assert all(p["overspends"] == 0 for p in out["results"]["random-mix"].points)


def test_frontier_summarises_a_suite(tmp_path):
    out = frontier.main([
        "--suites", "household", "--seeds", "2", "--n-train-tasks", "32",
        "--n-test-tasks", "16", "--eval-runs", "1", "--boundary-runs", "2",
        "--min-successes", "1", "--n-strata", "2", "--rollouts-per-stratum", "1",
        "--hidden-sizes", "8", "--bc-epochs", "1", "--updates", "2", "--chunks", "1",
        "--tasks-per-update", "4", "--group-size", "2", "--lams", "0.3",
        "--cost-targets", "0.6", "--ppo-episodes", "8",
        "--router", "false", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    rows, targets = out["rows"], out["targets"]
    assert [(r["suite"], r["method"]) for r in rows] == [
        ("household", "BoPO"),
        ("household", "PPO-Lagrangian"),
    ]
    for r in rows:
        assert len(r["efficiency_per_seed"]) == 2
        assert r["efficiency_min"] <= r["efficiency"]
        assert 0.0 <= r["oracle_cost_fraction"] <= 1.5
        assert r["min_margin_vs"] in frontier.BASELINES
    # One row per seed and target; the cost against the target, both in USD
    assert [(t["seed"], t["target_fraction"]) for t in targets] == [(0, 0.6), (1, 0.6)]
    for t in targets:
        assert t["cost_vs_target"] == pytest.approx(t["mean_cost"] / t["target_usd"] - 1)
    saved = json.loads((tmp_path / "frontier.json").read_text())
    assert saved == json.loads(json.dumps(out))


TINY_RECIPE = [
    "--n-train-tasks", "32", "--n-test-tasks", "16", "--eval-runs", "1",
    "--boundary-runs", "2", "--min-successes", "1", "--n-strata", "2",
    "--rollouts-per-stratum", "1", "--hidden-sizes", "8", "--bc-epochs", "1",
    "--updates", "2", "--chunks", "1", "--tasks-per-update", "4", "--group-size", "2",
    "--lams", "0.3", "--ppo-episodes", "8", "--router", "false",
]  # fmt: skip


def test_a_resumed_frontier_starts_the_suites_it_had_not_reached(tmp_path, monkeypatch):
    flags = ["--seeds", "1", "--out-dir", str(tmp_path), "--resume", "true"]
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        frontier.main([*flags, "--suites", "household,apps"])
    # household was started, apps not: only household resumes
    (tmp_path / "household").mkdir()
    (tmp_path / "household" / "config.json").write_text("{}")
    calls = []

    def run(config):
        calls.append((config.suite, config.resume, config.out_dir))
        return {"cost_unit": 1.0}

    monkeypatch.setattr(frontier, "run", run)
    monkeypatch.setattr(frontier, "method_row", lambda suite, *_: {"suite": suite})
    monkeypatch.setattr(frontier, "target_rows", lambda *_: [])
    frontier.main([*flags, "--suites", "household,apps"])
    assert calls == [
        ("household", True, str(tmp_path / "household")),
        ("apps", False, str(tmp_path / "apps")),
    ]


def test_strict_budget_never_overspends_and_checks_every_budget(tmp_path):
    flags = ["--budgets", "0.5,0.9", "--caps", "3", "--conditioned-updates", "6"]
    out = strict_budget.main([*TINY_RECIPE, *flags, "--out-dir", str(tmp_path)])
    rows, checks = out["budget_rows"], out["checks"]
    methods = {r["method"].split(" (")[0] for r in rows}
    assert methods == {
        strict_budget.CONDITIONED,
        strict_budget.PER_BUDGET,
        strict_budget.FIRST_K,
        "best baseline",
        "oracle",
    }
    assert sorted({r["budget_usd"] for r in rows}) == sorted(
        c["budget_usd"] for c in checks
    )
    assert all(r["overspends"] == 0 for r in rows + out["cap_rows"])
    assert {r["cap"] for r in out["cap_rows"]} == {3}
    saved = json.loads((tmp_path / "strict_budget.json").read_text())
    assert saved["budget_rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "strict_budget.png").is_file()
    # The conditioned router trains for its own number of updates, the others for --updates
    for name, updates in (("budget-conditioned", 6), ("per-budget", 2)):
        lines = (tmp_path / f"finetune-{name}.jsonl").read_text().splitlines()
        assert max(json.loads(line)["update"] for line in lines) == updates


def test_ablations_run_each_variant_on_shared_references(tmp_path):
    out = ablations.main(
        [
            *TINY_RECIPE,
            "--variants",
            "BoPO,no reference guidance",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert [r["variant"] for r in out["rows"]] == ["BoPO", "no reference guidance"]
    assert all(r["points"] == 1 and r["collapsed"] in (0, 1) for r in out["rows"])
    assert (tmp_path / "ablations.png").is_file()
    assert json.loads((tmp_path / "ablations.json").read_text())["rows"][1]["variant"] == (
        "no reference guidance"
    )
