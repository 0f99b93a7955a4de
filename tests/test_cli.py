"""Flags and JSON config files of the experiment scripts."""

import json
from pathlib import Path

import pytest

from experiments.ablations import AblationConfig
from experiments.cli import load_config_file, parse_config, run_main
from experiments.frontier import FrontierConfig
from experiments.strict_budget import StrictBudgetConfig
from experiments.train import TrainConfig
from experiments.train import main as train_main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))


def test_the_shipped_configs_exist():
    assert [p.name for p in CONFIGS] == [
        "accelerator.json",
        "cpu-full.json",
        "cpu-quick.json",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("config_cls", [TrainConfig, FrontierConfig, StrictBudgetConfig])
def test_every_shipped_config_parses_for_every_script(path, config_cls):
    config = parse_config(config_cls, ["--config", str(path)])
    for key, value in json.loads(path.read_text()).items():
        got = getattr(config, key)
        assert got == (tuple(value) if isinstance(value, list) else value), key


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"updates": 7, "lams": [0.1, 0.2], "router": False}))
    config = parse_config(TrainConfig, ["--config", str(path), "--updates", "9"])
    assert (config.updates, config.lams, config.router) == (9, (0.1, 0.2), False)


def test_a_string_value_is_read_as_the_flag_reads_it(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lams": "0.1,0.3", "budget-usd": "none"}))
    values = load_config_file(TrainConfig, path)
    assert values == {"lams": (0.1, 0.3), "budget_usd": None}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"updates": 7,\n "lams": [0.1,]}', r"c\.json, line 2, column .*invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"update": 7}', "unknown key 'update'.*did you mean 'updates'"),
        ('{"updates": "many"}', "key 'updates'"),
        ('{"updates": 7.5}', "key 'updates': expected int"),
        ('{"router": 1}', "key 'router': expected bool"),
        ('{"lams": 0.1}', "key 'lams': expected a list"),
    ],
)
def test_a_bad_config_file_is_named_with_its_problem(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config_file(TrainConfig, path)


def test_a_missing_config_file_stops_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--config", str(tmp_path / "nope.json")])
    assert "nope.json: cannot read it" in capsys.readouterr().err


def test_a_config_value_the_dataclass_refuses_stops_the_parser(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"min_successes": 9}))
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--config", str(path)])
    assert "min_successes must be in [1, boundary_runs=5]" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--conf", "--upd"])
def test_a_shortened_flag_is_refused_never_read_as_another(tmp_path, capsys, flag):
    # argparse would read --conf as --config, but not load the file: silently ignored
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"updates": 7}))
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, [flag, str(path)])
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config_cls", "argv", "message"),
    [
        (TrainConfig, ["--seed", "-1"], r"seed must be in [0, 2**31), got -1"),
        (TrainConfig, ["--seed", str(2**40)], "seed must be in [0, 2**31)"),
        (TrainConfig, ["--out-dir", ""], "out_dir must name a folder"),
        (FrontierConfig, ["--suites", ","], "suites needs distinct suites, got ()"),
        (FrontierConfig, ["--suite", "apps", "--suites", "apps"], "not both"),
        (
            FrontierConfig,
            ["--suites", "household,kitchen"],
            "suites: unknown suite 'kitchen'",
        ),
        (FrontierConfig, ["--suites", "apps,apps"], "suites needs distinct suites"),
        (AblationConfig, ["--variants", "BoPO,BoPO"], "each variant at most once"),
        (StrictBudgetConfig, ["--train-budgets", "0.25,inf"], "0 < low < high < inf"),
        (StrictBudgetConfig, ["--conditioned-updates", "0"], "conditioned_updates must"),
        # A value of the wrong type is named with the type the flag reads
        (
            StrictBudgetConfig,
            ["--conditioned-updates", "abc"],
            "--conditioned-updates: invalid int or none value: 'abc'",
        ),
        (TrainConfig, ["--lams", "0.1,x"], "invalid comma-separated float value"),
    ],
)
def test_nonsense_values_stop_the_parser_before_any_run(capsys, config_cls, argv, message):
    with pytest.raises(SystemExit):
        parse_config(config_cls, argv)
    assert message in capsys.readouterr().err


def test_run_main_reports_a_run_folder_problem_in_one_line(tmp_path, capsys):
    # A resume into a folder with no run: a one-line error and status 2, no traceback
    assert run_main(train_main, ["--resume", "true", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: nothing to resume:" in err
    assert run_main(lambda argv: None) == 0

    def broken(argv):
        raise ValueError("a bug, not a bad run folder")

    with pytest.raises(ValueError, match="a bug"):
        run_main(broken)


def test_the_privileged_state_flag_is_off_unless_asked_for():
    assert parse_config(TrainConfig, []).privileged_state is False
    config = parse_config(TrainConfig, ["--privileged-state", "true"])
    assert config.privileged_state is True
