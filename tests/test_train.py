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


# The run folder's rules, checked when the recipe is made (before any stage runs)
SMALL = pipeline.RecipeConfig(
    n_train_tasks=8, n_test_tasks=4, boundary_runs=1, min_successes=1
)


@pytest.mark.parametrize("folder", ["absent", "empty"])
def test_resume_of_a_folder_without_a_run_is_refused(tmp_path, folder):
    out = tmp_path / folder
    if folder == "empty":
        out.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train.main([*TINY, "--out-dir", str(out), "--resume", "true"])
    assert not (out / "config.json").exists()


def test_resume_names_an_unreadable_run_config(tmp_path):
    pipeline.Recipe(SMALL, tmp_path)
    (tmp_path / "config.json").write_text('{"suite": "house')
    with pytest.raises(ValueError, match=r"config\.json is unreadable"):
        pipeline.Recipe(SMALL, tmp_path, resume=True)
    pipeline.Recipe(SMALL, tmp_path)  # a fresh run just writes it again
    assert json.loads((tmp_path / "config.json").read_text())["suite"] == "household"


def test_a_fresh_run_clears_every_finetuning_folder(tmp_path):
    # strict_budget's checkpoints too: left there, a fresh run's first save would fail
    for name in ("finetune", "finetune-budget-conditioned", "finetune-per-budget"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / f"{name}.jsonl").write_text('{"update": 1}\n')
    (tmp_path / "bc" / "1").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    pipeline.Recipe(SMALL, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "notes.txt"]


def test_resume_refuses_other_settings_of_the_calling_script(tmp_path):
    pipeline.Recipe(SMALL, tmp_path, settings={"train_budgets": [0.25, 2.0]})
    pipeline.Recipe(SMALL, tmp_path, resume=True, settings={"train_budgets": [0.25, 2.0]})
    with pytest.raises(ValueError, match=r"another configuration.*\['train_budgets'\]"):
        pipeline.Recipe(SMALL, tmp_path, resume=True, settings={"train_budgets": [0.5, 2]})
    # A script without those settings resumes, and they stay recorded for the next one
    pipeline.Recipe(SMALL, tmp_path, resume=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train_budgets"] == [0.25, 2.0]
    # A folder of a script that never recorded them (experiments.train) can be reused
    other = tmp_path / "train-run"
    pipeline.Recipe(SMALL, other)
    pipeline.Recipe(SMALL, other, resume=True, settings={"train_budgets": [0.5, 2.0]})


def test_resume_reads_a_field_the_folder_did_not_record_as_its_default(tmp_path):
    # A folder written before a config field existed ran at that field's default
    pipeline.Recipe(SMALL, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["privileged_state"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    pipeline.Recipe(SMALL, tmp_path, resume=True)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    other = pipeline.RecipeConfig(**{**vars(SMALL), "privileged_state": True})
    with pytest.raises(ValueError, match=r"another configuration.*\['privileged_state'\]"):
        pipeline.Recipe(other, tmp_path, resume=True)


def test_privileged_state_reaches_the_twin_of_both_splits(tmp_path):
    recipe = pipeline.Recipe(SMALL, tmp_path / "plain")
    assert not recipe.train_params.privileged_state
    assert not recipe.test_params.privileged_state
    config = train.TrainConfig(
        **{**vars(SMALL), "privileged_state": True, "out_dir": str(tmp_path)}
    )
    recipe = train.make_recipe(config, log=lambda line: None)
    assert recipe.train_params.privileged_state and recipe.test_params.privileged_state
    assert json.loads((tmp_path / "config.json").read_text())["privileged_state"] is True
