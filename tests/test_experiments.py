"""Every experiment script runs end to end on a tiny configuration."""

import json
from pathlib import Path

import pytest

from experiments import bench_env, calibrate, evaluate, frontier

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
            str(tmp_path),
        ]
    )
    assert (tmp_path / "frontier.png").is_file()
    scores = json.loads((tmp_path / "evaluation.json").read_text())["scores"]
    assert scores["random-mix"] == 0.0
    assert all(p["overspends"] == 0 for p in out["results"]["random-mix"].points)


def test_frontier_summarises_a_suite(tmp_path):
    rows = frontier.main([
        "--suites", "household", "--seeds", "2", "--n-train-tasks", "32",
        "--n-test-tasks", "16", "--eval-runs", "1", "--boundary-runs", "2",
        "--min-successes", "1", "--n-strata", "2", "--rollouts-per-stratum", "1",
        "--hidden-sizes", "8", "--bc-epochs", "1", "--updates", "2", "--chunks", "1",
        "--tasks-per-update", "4", "--group-size", "2", "--lams", "0.3",
        "--router", "false", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert rows[0]["suite"] == "household"
    assert 0.0 <= rows[0]["oracle_cost_fraction"] <= 1.5
    assert (tmp_path / "frontier.json").is_file()
