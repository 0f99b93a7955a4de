"""The Gymnasium interface of BudgetRoute-v0: registration, spaces, budgets, bad input."""

import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import core
from envs.gym_env import BudgetRouteEnv
from envs.pricing import ModelPrice, make_pool


def make(**kwargs):
    return BudgetRouteEnv(**kwargs)


def test_make_without_prior_import_in_a_fresh_interpreter():
    code = (
        "import gymnasium as gym; e = gym.make('envs:BudgetRoute-v0'); "
        "o, _ = e.reset(seed=0); print(sorted(o))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "budget_left" in out.stdout


DATA = Path("../shared/data/routellm")


@pytest.mark.parametrize("privileged_state", [False, True])
@pytest.mark.parametrize("env_id", list(envs.ENV_IDS))
def test_registered_ids_pass_the_gymnasium_checker(env_id, privileged_state):
    if envs.ENV_IDS[env_id]["suite"] in ("gsm8k", "mmlu") and not DATA.is_dir():
        pytest.skip("replay data not found at ../shared/data/routellm")
    env = gym.make(
        env_id,
        budget_usd=(0.02, 0.2),
        abort_action=True,
        privileged_state=privileged_state,
    )
    check_env(env.unwrapped, skip_render_check=True)
    assert ("latent_state" in env.observation_space.spaces) == privileged_state


def test_check_env_with_default_options():
    check_env(make(), skip_render_check=True)


def test_make_vec_steps_a_batch():
    vec = gym.make_vec("BudgetRoute-v0", num_envs=3, vectorization_mode="sync")
    obs, _ = vec.reset(seed=0)
    assert obs["budget_left"].shape == (3, 1)
    obs, reward, terminated, truncated, info = vec.step(np.array([0, 1, 0]))
    assert reward.shape == (3,) and info["cost"].shape == (3,)
    vec.close()


def test_apps_id_caps_expensive_calls_at_fifteen():
    env = gym.make("BudgetRoute-Apps-v0")
    _, info = env.reset(seed=0)
    assert info["cap"] == 15


def test_same_seed_same_episode():
    def episode(seed):
        env = make(budget_usd=(0.02, 0.1), expensive_cap=(1, 5))
        obs, info = env.reset(seed=seed)
        out = [info["task_id"], info["budget"]]
        rng = np.random.default_rng(1)
        done = False
        while not done:
            obs, r, te, tr, info = env.step(int(rng.integers(2)))
            out.append((info["cost"], int(obs["feedback"]), r))
            done = te or tr
        return out

    assert episode(5) == episode(5)
    assert episode(5) != episode(6)


def test_observation_holds_the_documented_fields():
    env = make(budget_usd=0.05, expensive_cap=4)
    obs, _ = env.reset(seed=0)
    assert obs["budget_left"][0] == pytest.approx(0.05)
    assert obs["budget_fraction"][0] == 1.0
    assert obs["expensive_calls_left"][0] == 4
    assert obs["steps_left"][0] == env.horizon
    assert obs["feedback"] == core.FEEDBACK_NONE
    obs, _, _, _, info = env.step(1)
    assert obs["spent"][0] == pytest.approx(info["cost"], rel=1e-6)
    assert obs["budget_left"][0] == pytest.approx(0.05 - info["cost"], rel=1e-5)
    assert obs["expensive_calls_left"][0] == 3
    assert obs["model_counts"].tolist() == [0.0, 1.0]
    assert obs["step"][0] == 1


def test_cost_is_tokens_times_list_prices():
    env = make()
    env.reset(seed=3)
    _, _, _, _, info = env.step(0)
    mini = envs.PRICE_TABLE["gpt-4.1-mini"]
    expected = mini.call_cost(info["prompt_tokens"], info["completion_tokens"])
    assert info["cost"] == pytest.approx(expected, rel=1e-12)
    assert info["model"] == 0


def test_prompts_grow_with_history():
    env = make()
    env.reset(seed=0, options={"task": 0})
    prompts = []
    for _ in range(4):
        _, _, te, tr, info = env.step(0)
        prompts.append(info["prompt_tokens"])
        if te or tr:
            break
    assert all(b > a for a, b in zip(prompts[:-1], prompts[1:], strict=True))


def test_reset_options_fix_task_budget_and_cap():
    env = make(budget_usd=(0.01, 0.02), expensive_cap=(1, 3))
    _, info = env.reset(seed=0, options={"task": 7, "budget": 0.5, "cap": 9})
    assert (info["task_index"], info["budget"], info["cap"]) == (7, 0.5, 9)
    _, info = env.reset(options={"task": "household-train-00011", "budget": None})
    assert info["task_index"] == 11 and math.isinf(info["budget"])


def test_budgets_are_sampled_from_the_range():
    env = make(budget_usd=(0.01, 0.02), expensive_cap=(2, 4))
    budgets, caps = set(), set()
    for seed in range(40):
        _, info = env.reset(seed=seed)
        budgets.add(info["budget"])
        caps.add(info["cap"])
    assert all(0.01 <= b <= 0.02 for b in budgets) and len(budgets) > 30
    assert caps == {2, 3, 4}


def test_masked_action_is_downgraded_and_flagged():
    env = make(expensive_cap=0)
    obs, _ = env.reset(seed=0)
    assert obs["action_mask"].tolist() == [1, 0]
    _, _, _, _, info = env.step(1)
    assert info["downgraded"] and info["model"] == 0


def test_strict_mode_raises_on_masked_action_and_keeps_state():
    env = make(expensive_cap=0, strict=True)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="masked out"):
        env.step(1)
    assert env.latent_state()["subgoal"] == 0
    obs2, _, _, _, info = env.step(0)
    assert info["model"] == 0 and obs2["step"][0] == 1


def test_budget_too_small_for_any_call_ends_bankrupt_without_cost():
    env = make(budget_usd=1e-6)
    obs, _ = env.reset(seed=0)
    assert obs["action_mask"].sum() == 0
    _, reward, terminated, truncated, info = env.step(0)
    assert terminated and not truncated
    assert info["bankrupt"] and info["cost"] == 0.0 and reward == 0.0


def test_running_out_of_money_ends_the_episode_bankrupt():
    env = make(budget_usd=0.004)
    env.reset(seed=0, options={"task": 1})
    spent, done, info = 0.0, False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(1)
        spent += info["cost"]
        done = terminated or truncated
    assert info["bankrupt"] and spent <= 0.004


def test_abort_ends_as_failure_at_no_cost():
    env = make(abort_action=True)
    env.reset(seed=0)
    assert env.action_space.n == 3
    _, reward, terminated, _, info = env.step(2)
    assert terminated and info["aborted"] and not info["success"]
    assert reward == 0.0 and info["cost"] == 0.0


def test_cost_penalty_shapes_the_reward():
    env = make(cost_penalty=10.0)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(1)
    assert not terminated
    assert reward == pytest.approx(-10.0 * info["cost"])


def test_success_gives_reward_one_at_the_terminal_step():
    env = make()
    for seed in range(20):
        env.reset(seed=seed)
        done = False
        while not done:
            _, reward, terminated, truncated, info = env.step(1)
            done = terminated or truncated
        if info["success"]:
            assert reward == 1.0
            return
    pytest.fail("no successful episode in 20 seeds")


def test_flat_observation_wrapper_gives_one_finite_box():
    env = envs.FlatObservation(make())
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)


OBS_KEYS = {
    "budget_left", "budget_fraction", "spent", "expensive_calls_left", "step",
    "steps_left", "next_call_cost", "task_features", "step_features", "feedback",
    "model_counts", "error_count", "progress_count", "calls_since_progress",
    "action_mask",
}  # fmt: skip


def test_privileged_state_off_leaves_the_observation_as_it_was():
    env = make(n_train=16, n_test=8)
    assert env.privileged_state is False
    assert set(env.observation_space.spaces) == OBS_KEYS
    obs, _ = env.reset(seed=0)
    assert set(obs) == OBS_KEYS
    obs, *_ = env.step(1)
    assert set(obs) == OBS_KEYS


def test_privileged_state_adds_the_one_hot_latent_state():
    plain = make(suite="science", budget_usd=0.3)
    env = make(suite="science", budget_usd=0.3, privileged_state=True)
    space = env.observation_space["latent_state"]
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
    assert space.shape == (3,) and np.all(space.low == 0) and np.all(space.high == 1)
    seen = np.zeros(3, int)
    for seed in range(20):
        obs_plain, _ = plain.reset(seed=seed)
        obs, _ = env.reset(seed=seed)
        done = False
        while True:
            assert set(obs) == OBS_KEYS | {"latent_state"}
            for k, v in obs_plain.items():  # everything else is unchanged
                np.testing.assert_array_equal(v, obs[k], err_msg=k)
            latent = env.latent_state()
            expected = 2 if latent["lost"] else int(latent["derailed"])
            np.testing.assert_array_equal(obs["latent_state"], np.eye(3)[expected])
            assert obs["latent_state"].dtype == np.float32
            seen[expected] += 1
            if done:
                break
            action = seed % 2
            obs_plain, *_ = plain.step(action)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    assert np.all(seen > 0), seen


def test_flat_observation_ends_with_the_latent_state():
    plain = envs.FlatObservation(make(n_train=16, n_test=8))
    env = envs.FlatObservation(make(n_train=16, n_test=8, privileged_state=True))
    assert env.observation_space.shape == (plain.observation_space.shape[0] + 3,)
    flat_plain, _ = plain.reset(seed=0)
    flat, _ = env.reset(seed=0)
    assert env.observation_space.contains(flat)
    np.testing.assert_array_equal(flat[:-3], flat_plain)
    np.testing.assert_array_equal(flat[-3:], [1.0, 0.0, 0.0])  # on track at the start


def test_four_model_pool_orders_actions_by_price():
    pool = ("gpt-4.1-nano", "gpt-4.1-mini", "gpt-4.1", "claude-opus-4")
    env = make(models=pool, budget_usd=0.02)
    obs, _ = env.reset(seed=0)
    assert env.action_space.n == 4
    assert np.all(np.diff(obs["next_call_cost"]) > 0)


def test_custom_prices_are_accepted():
    pool = [
        {"name": "small", "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
        ModelPrice("large", 1.0, 3.0),
    ]
    env = make(models=pool)
    env.reset(seed=0)
    _, _, _, _, info = env.step(1)
    assert info["cost"] == pytest.approx(
        (info["prompt_tokens"] * 1.0 + info["completion_tokens"] * 3.0) / 1e6
    )


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (2, ValueError, r"action must be in \[0, 2\), got 2"),
        (-1, ValueError, "got -1"),
        (0.5, TypeError, "action must be an integer"),
        (True, TypeError, "action must be an integer"),
        ("1", TypeError, "action must be an integer"),
    ],
)
def test_bad_actions_raise_and_leave_state_unchanged(action, error, match):
    env = make()
    obs, _ = env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)
    assert env.latent_state()["subgoal"] == 0 and env._ep.t == 0
    obs2, *_ = env.step(np.int64(0))
    assert obs2["step"][0] == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"budget": -1.0}, r"options\['budget'\] must be finite and >= 0, got -1.0"),
        ({"budget": float("nan")}, r"options\['budget'\] must be finite"),
        ({"budget": float("inf")}, r"options\['budget'\] must be finite"),
        ({"cap": -2}, r"options\['cap'\] must be >= 0, got -2"),
        ({"cap": 1.5}, r"options\['cap'\] must be an integer"),
        ({"task": 10**9}, "task index 1000000000 out of range"),
        ({"task": "no-such-task"}, "unknown task id 'no-such-task'"),
        ({"budgte": 1.0}, r"unknown reset option\(s\) \['budgte'\]"),
    ],
)
def test_bad_reset_options_raise_and_leave_the_episode_unchanged(options, match):
    env = make()
    env.reset(seed=0)
    env.step(0)
    before = (env._ep.t, env._ep.spent, env._ep.task)
    with pytest.raises((ValueError, TypeError), match=match):
        env.reset(options=options)
    assert (env._ep.t, env._ep.spent, env._ep.task) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"suite": "kitchen"}, "unknown suite 'kitchen'"),
        ({"models": ("gpt-4.1-mini", "gpt-9")}, r"models\[1\]: unknown model 'gpt-9'"),
        ({"models": ("gpt-4.1",)}, "a pool holds 2 to 4 models, got 1"),
        ({"models": ("gpt-4.1", "gpt-4.1-mini")}, "ordered cheapest first"),
        ({"budget_usd": -0.1}, "budget_usd must be finite and >= 0, got -0.1"),
        ({"budget_usd": (0.2, 0.1)}, "low 0.2 above high 0.1"),
        ({"expensive_cap": -1}, "expensive_cap must be >= 0, got -1"),
        ({"cost_penalty": float("nan")}, "cost_penalty must be finite"),
        ({"split": "validation"}, "split must be one of"),
        ({"capped_models": [5]}, "capped_models index 5 out of range"),
    ],
)
def test_bad_constructor_arguments_name_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(**kwargs)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "x", "input_usd_per_mtok": 1.0}, r"misses field\(s\) \['output_usd"),
        (
            {"name": "x", "input_usd_per_mtok": -1.0, "output_usd_per_mtok": 1.0},
            "input_usd_per_mtok of model 'x' must be finite and >= 0, got -1.0",
        ),
        (
            {"name": "x", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": "a"},
            "output_usd_per_mtok of model 'x' must be a number",
        ),
    ],
)
def test_bad_price_tables_name_the_model_and_field(entry, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_pool(["gpt-4.1-nano", entry])


def test_step_before_reset_and_after_the_end_raise():
    env = make(abort_action=True)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    env.step(2)
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step(0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"budget": (0.01, 0.02)}, r"options\['budget'\] fixes one episode's value"),
        ({"cap": [1, 3]}, r"options\['cap'\] fixes one episode's value"),
    ],
)
def test_reset_options_take_one_value_not_a_range(options, match):
    env = make()
    with pytest.raises(TypeError, match=match):
        env.reset(seed=0, options=options)


@pytest.mark.parametrize("flag", ["abort_action", "strict", "privileged_state"])
def test_flags_must_be_booleans(flag):
    with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'no'"):
        make(**{flag: "no"})


def test_price_entry_with_a_misspelled_field_is_refused():
    entry = {"name": "x", "input_usd_per_mtok": 1.0, "ouput_usd_per_mtok": 2.0}
    with pytest.raises(ValueError, match=r"misses field\(s\) \['output_usd_per_mtok'\]"):
        make_pool(["gpt-4.1-nano", entry])
    entry = {**entry, "output_usd_per_mtok": 2.0}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['ouput_usd_per_mtok'\]"):
        make_pool(["gpt-4.1-nano", entry])


def test_a_ready_suite_refuses_a_second_model_pool():
    suite = envs.make_suite("household", n_train=8, n_test=4)
    with pytest.raises(ValueError, match="a ready Suite already has them"):
        make(suite=suite, models=("gpt-4o-mini", "gpt-4o"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": ["train"]}, ValueError, r"split must be one of .*got \['train'\]"),
        ({"capped_models": 1}, TypeError, "capped_models must be a sequence of model"),
        ({"suite_seed": 1.5}, TypeError, "suite_seed must be an integer, got 1.5"),
        ({"suite_seed": True}, TypeError, "suite_seed must be an integer, got True"),
        ({"suite_seed": -1}, ValueError, r"suite_seed must be in \[0, 2\*\*32\), got -1"),
        ({"suite_seed": 2**32}, ValueError, r"suite_seed must be in \[0, 2\*\*32\)"),
        ({"suite_kwargs": [1]}, TypeError, r"suite_kwargs must be a dict, got \[1\]"),
    ],
)
def test_bad_split_cap_models_seed_and_suite_kwargs_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(n_train=8, n_test=4, **kwargs)


def test_numpy_scalars_are_accepted_where_python_numbers_are():
    env = make(
        n_train=np.int64(8), n_test=np.int32(4), suite_seed=np.int64(3),
        cost_penalty=np.float32(0.5),
    )  # fmt: skip
    assert (env.bank.n_tasks, env.cost_penalty) == (8, 0.5)
    reference = make(n_train=8, n_test=4, suite_seed=3)
    assert env.bank.ids == reference.bank.ids
    np.testing.assert_array_equal(env.bank.p_success, reference.bank.p_success)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ("seed", r"suite_kwargs\['seed'\]: give it as the argument suite_seed="),
        ("models", r"suite_kwargs\['models'\]: give it as the argument models="),
        ("sesion_items", r"suite_kwargs\['sesion_items'\]: unknown replay option.*"),
    ],
)
def test_replay_suite_kwargs_refuse_own_arguments_and_unknown_options(key, match):
    # Checked before any data is read, so no data folder is needed
    with pytest.raises(ValueError, match=match):
        envs.make_suite("gsm8k", suite_kwargs={key: 1})


def test_flat_observation_refuses_an_env_that_is_not_budget_route():
    with pytest.raises(TypeError, match="FlatObservation wraps a BudgetRoute env"):
        envs.FlatObservation(gym.make("CartPole-v1"))
    flat = envs.FlatObservation(gym.make("BudgetRoute-v0", n_train=8, n_test=4))
    with pytest.raises(TypeError, match="FlatObservation wraps a BudgetRoute env"):
        envs.FlatObservation(flat)
