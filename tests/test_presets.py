"""The synthetic presets hit their calibration targets; the generator is deterministic."""

import numpy as np
import pytest

from envs.suite import make_suite
from envs.synthetic import PRESET_TARGETS, PRESETS, SyntheticConfig, generate_tasks
from experiments.calibrate import CalibrateConfig, measure_preset


@pytest.fixture(scope="module")
def measured():
    config = CalibrateConfig(n_tasks=2000, runs=5)
    return {name: measure_preset(name, config) for name in PRESETS}


@pytest.mark.parametrize("name", list(PRESETS))
def test_boundary_success_within_three_points_of_target(measured, name):
    rows = {r["policy"]: r for r in measured[name]["policies"]}
    target = PRESET_TARGETS[name]
    assert abs(rows["always-cheap"]["success"] - target.cheap_success) <= 0.03
    assert abs(rows["always-expensive"]["success"] - target.expensive_success) <= 0.03


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_difficulty_class_holds_a_tenth_of_tasks(measured, name):
    assert min(measured[name]["classes"].values()) >= 0.10


@pytest.mark.parametrize("name", list(PRESETS))
def test_random_mixing_lies_between_the_boundaries_in_success(measured, name):
    rows = {r["policy"]: r for r in measured[name]["policies"]}
    cheap = rows["always-cheap"]["success"]
    expensive = rows["always-expensive"]["success"]
    mixes = [rows[f"random-mix p={p:g}"]["success"] for p in (0.25, 0.5, 0.75)]
    assert cheap < mixes[0] < mixes[1] < mixes[2] < expensive


def test_generator_is_a_pure_function_of_its_arguments():
    a = generate_tasks(PRESETS["household"], 2, 50, seed=3, split="train")
    b = generate_tasks(PRESETS["household"], 2, 50, seed=3, split="train")
    c = generate_tasks(PRESETS["household"], 2, 50, seed=4, split="train")
    np.testing.assert_array_equal(a.p_success, b.p_success)
    np.testing.assert_array_equal(a.features, b.features)
    assert not np.array_equal(a.features, c.features)


def test_train_and_test_tasks_differ():
    suite = make_suite("household", n_train=200, n_test=200)
    train, test = suite.bank("train"), suite.bank("test")
    assert not set(train.ids) & set(test.ids)
    assert not np.array_equal(train.features, test.features)


def test_most_steps_are_routine_and_bottlenecks_hurt_the_cheap_model():
    bank = generate_tasks(PRESETS["household"], 2, 1000, seed=0, split="train")
    level = bank.latent["level"]
    valid = np.arange(level.shape[1])[None, :] < bank.n_subgoals[:, None]
    routine_share = np.mean(level[valid] <= 1)
    assert routine_share > 0.75
    bottleneck = valid & (level == 2)
    cheap, expensive = bank.p_success[bottleneck][:, 0], bank.p_success[bottleneck][:, 1]
    assert cheap.max() < 0.3 and expensive.min() > 0.5


def test_features_hint_at_bottleneck_count_but_are_noisy():
    bank = generate_tasks(PRESETS["household"], 2, 4000, seed=0, split="train")
    level = bank.latent["level"]
    n_hard = (level >= 2).sum(1)
    hint = bank.features[:, 1]
    corr = np.corrcoef(hint, n_hard)[0, 1]
    assert 0.5 < corr < 0.99


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"horizon": 0}, "horizon must be an integer >= 1"),
        ({"min_subgoals": 9, "max_subgoals": 4}, "min_subgoals .9. exceeds max_subgoals"),
        ({"bottleneck_rate": 1.5}, r"bottleneck_rate must be a probability"),
        ({"derail_prob": (0.1, 0.2, 0.3)}, "derail_prob needs 4 values"),
        ({"completion_tokens": ((10, 5), (1, 2))}, "completion_tokens needs two"),
    ],
)
def test_bad_generator_settings_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"prefix_tokens": 10**10}, "above 10000000"),
        ({"cheap_skill": float("nan")}, "cheap_skill must be finite"),
        ({"level_difficulty": (0.0, float("inf"), 0.0, 0.0)}, r"level_difficulty\[1\]"),
        ({"max_subgoals": 60}, r"max_subgoals \(60\) exceeds horizon \(50\)"),
        ({"expensive_skill": "2"}, "expensive_skill must be a number"),
    ],
)
def test_generator_rejects_values_that_would_break_the_dynamics(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SyntheticConfig(**changes)
