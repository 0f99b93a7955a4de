"""The main job on a tiny configuration: outputs, and resuming after an interruption."""

import json
import os

import pytest

from agents import pipeline
from experiments import train

TINY = [
    "--n-train-tasks", "48",
    "--n-test-tasks", "16",
    "--eval-runs", "1",
    "--boundary-runs", "2",
    "--min-successes", "1",
    "--n-strata", "3",
    "--hidden-sizes", "16,16",
    "--bc-epochs", "2",
    "--updates", "4",
    "--chunks", "2",
    "--tasks-per-update", "4",
    "--group-size", "4",
    "--lams", "0.1,0.6",
    "--method", "bopo,ppo-lagrangian",
    "--cost-targets", "0.5,0.8",
    "--ppo-episodes", "8",
]  # fmt: skip


def _points(path):
    data = json.loads((path / "results.json").read_text())
    return {name: m["points"] for name, m in data["methods"].items()}, data["scores"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    result = train.main([*TINY, "--out-dir", str(out)])
    return out, result


def test_main_job_writes_results_plot_and_summary(uninterrupted, capsys):
    out, result = uninterrupted
    assert (out / "results.json").is_file() and (out / "frontier.png").is_file()
    points, scores = _points(out)
    for method in (
        "always-cheap",
        "always-expensive",
        "random-mix",
        "step-router",
        "warm start",
        "BoPO",
        "PPO-Lagrangian",
        "oracle",
        "plug-in planner",
    ):
        assert points[method], method
    assert scores["random-mix"] == 0.0 and scores["oracle"] == 1.0
    assert all(p["overspends"] == 0 for pts in points.values() for p in pts)
    assert {r["method"] for r in result["rows"]} >= {"BoPO", "oracle"}


def test_killed_mid_stage_and_resumed_gives_the_same_figures(
    uninterrupted, tmp_path, monkeypatch
):
    whole, _ = uninterrupted
    out = tmp_path / "resumed"

    class Interrupted(Exception):
        pass

    class DiesAfterFirstPPOLagrangianSave(pipeline.Checkpointer):
        # BoPO has finished by then: the rerun restores it whole and resumes the other
        def save(self, step, state, config):
            super().save(step, state, config)
            if os.path.basename(self.directory) == "finetune-ppo-lagrangian":
                raise Interrupted

    monkeypatch.setattr(pipeline, "Checkpointer", DiesAfterFirstPPOLagrangianSave)
    with pytest.raises(Interrupted):
        train.main([*TINY, "--out-dir", str(out)])
    assert not (out / "results.json").exists()
    monkeypatch.undo()

    history = out / "finetune-ppo-lagrangian.jsonl"
    assert {json.loads(line)["update"] for line in history.read_text().splitlines()} == {
        1,
        2,
    }
    train.main([*TINY, "--out-dir", str(out), "--resume", "true"])
    assert _points(out) == _points(whole)
    for name in ("finetune.jsonl", "finetune-ppo-lagrangian.jsonl"):
        assert (out / name).read_text() == (whole / name).read_text(), name


def test_resume_refuses_a_folder_of_another_configuration(uninterrupted):
    out, _ = uninterrupted
    with pytest.raises(ValueError, match="another configuration"):
        train.main([*TINY[:-2], "--lams", "0.2", "--out-dir", str(out), "--resume", "true"])
