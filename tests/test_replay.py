"""Replay suites: the outcome table reader, the RouteLLM adapter, splits, sessions,
features, the cache, and boundary policies replaying the recorded accuracies."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401 (registers the environment ids)
from envs import core, replay
from envs.suite import SPLITS, make_suite

FIXTURE = Path(__file__).parent / "data" / "routellm"
FULL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routellm"
CHEAP, EXPENSIVE = "mixtral-8x7b-instruct", "gpt-4-1106-preview"
MIXTRAL_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"

needs_full_data = pytest.mark.skipif(
    not (FULL_DATA / "gsm8k_responses.csv").is_file(),
    reason="the full RouteLLM tables are not in ../shared/data/routellm",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("replay-cache")


@pytest.fixture(scope="module")
def fixture_suite(cache_dir):
    """Return a function building a replay suite from the fixture tables."""

    def build(name="gsm8k", **kwargs):
        kwargs.setdefault("data_dir", FIXTURE)
        return replay.replay_suite(name, cache_dir=cache_dir, **kwargs)

    return build


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


HEADER = ["item_id", "text", "source", "a:correct", "a:prompt_tokens", "b:correct"]


def small_rows():
    return [
        list(HEADER),
        ["q1", "What is 2+2?", "maths", "True", "7", "1"],
        ["q2", "Name a colour,\nany colour.", "art", "false", "", "True"],
        ["q3", "Why?", "art", "0", "3", "false"],
    ]


def run_boundary(suite, action: int) -> tuple[float, float]:
    """Return success rate and mean cost (USD) of always ``action`` over both splits."""
    wins, costs = [], []
    for split in SPLITS:
        env = gym.make("BudgetRoute-v0", suite=suite, split=split)
        for task in range(env.unwrapped.bank.n_tasks):
            env.reset(seed=task, options={"task": task})
            done, cost = False, 0.0
            while not done:
                _, _, terminated, truncated, info = env.step(action)
                cost += info["cost"]
                done = terminated or truncated
            wins.append(info["success"])
            costs.append(cost)
    return float(np.mean(wins)), float(np.mean(costs))


# ------------------------------------------------------------------ table format
def test_csv_table_reads_every_column(tmp_path):
    rows = small_rows()
    rows[0] += ["b:completion_tokens", "a:response", "meta:note"]
    rows[1] += ["11", "four.", "x"]
    rows[2] += ["", "", ""]
    rows[3] += ["5", "because it is", ""]
    table = replay.load_table(write_csv(tmp_path / "t.csv", rows))
    assert table.item_ids == ("q1", "q2", "q3")
    assert table.texts[1] == "Name a colour,\nany colour."
    assert table.sources == ("maths", "art", "art")
    assert table.models == ("a", "b")
    np.testing.assert_array_equal(table.correct, [[1, 1], [0, 1], [0, 0]])
    # prompt: recorded for a where given, else ceil(len(text) / 4)
    np.testing.assert_array_equal(table.prompt_tokens, [[7, 3], [7, 7], [3, 1]])
    # completion of a: from the answer text, else the mean of a's recorded ones
    # completion of b: recorded, else the mean of b's recorded ones (8)
    np.testing.assert_array_equal(table.completion_tokens, [[2, 11], [3, 8], [4, 5]])
    np.testing.assert_array_equal(table.completion_recorded, [[1, 1], [0, 0], [1, 1]])
    np.testing.assert_allclose(table.accuracy(), [1 / 3, 2 / 3])
    assert table.where(2) == f"{tmp_path / 't.csv'}, line 5"


def test_jsonl_table_matches_csv(tmp_path):
    rows = small_rows()
    csv_table = replay.load_table(write_csv(tmp_path / "t.csv", rows))
    path = tmp_path / "t.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows[1:]:
            record = dict(zip(HEADER, row, strict=True))
            record["a:correct"] = record["a:correct"].lower() == "true"
            record["b:correct"] = record["b:correct"] in ("1", "True")
            tokens = record.pop("a:prompt_tokens")
            if tokens:
                record["a:prompt_tokens"] = int(tokens)
            handle.write(json.dumps(record) + "\n")
    table = replay.load_table(path)
    for name in ("correct", "prompt_tokens", "completion_tokens"):
        np.testing.assert_array_equal(getattr(table, name), getattr(csv_table, name))
    assert table.item_ids == csv_table.item_ids
    assert table.texts == csv_table.texts


def test_completion_without_any_record_is_the_documented_constant(tmp_path):
    table = replay.load_table(write_csv(tmp_path / "t.csv", small_rows()))
    assert (table.completion_tokens == replay.DEFAULT_COMPLETION_TOKENS).all()
    assert not table.completion_recorded.any()


def test_source_defaults_to_the_file_name(tmp_path):
    rows = [[c for i, c in enumerate(r) if i != 2] for r in small_rows()]
    table = replay.load_table(write_csv(tmp_path / "quiz.csv", rows))
    assert table.sources == ("quiz",) * 3


def test_models_argument_selects_and_orders_the_models(tmp_path):
    path = write_csv(tmp_path / "t.csv", small_rows())
    table = replay.load_table(path, models=["b", "a"])
    assert table.models == ("b", "a")
    np.testing.assert_array_equal(table.correct[:, 0], [1, 1, 0])


# ------------------------------------------------------------------- bad input
def _bad(rows, tmp_path, name="t.csv"):
    return write_csv(tmp_path / name, rows)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        replay.load_table(tmp_path / "nope.csv")


def test_missing_column_names_file_line_and_field(tmp_path):
    rows = [[c for i, c in enumerate(r) if i != 1] for r in small_rows()]
    path = _bad(rows, tmp_path)
    with pytest.raises(ValueError, match=r"t\.csv, line 1, field 'text': missing column"):
        replay.load_table(path)


def test_misspelled_model_column_is_reported_with_a_suggestion(tmp_path):
    rows = small_rows()
    rows[0][3] = "a:corect"
    with pytest.raises(ValueError, match=r"line 1, field 'a:corect'.*'a:correct'\?"):
        replay.load_table(_bad(rows, tmp_path))


def test_misspelled_item_column_is_reported_with_a_suggestion(tmp_path):
    rows = small_rows()
    rows[0][1] = "txt"
    with pytest.raises(ValueError, match=r"line 1, field 'txt': unknown column.*'text'"):
        replay.load_table(_bad(rows, tmp_path))


def test_non_boolean_correctness_names_its_line(tmp_path):
    rows = small_rows()
    rows[3][3] = "maybe"  # third item, after a two-line text: line 5
    with pytest.raises(ValueError, match=r"t\.csv, line 5, field 'a:correct': .*'maybe'"):
        replay.load_table(_bad(rows, tmp_path))


def test_field_after_a_line_break_names_its_own_line(tmp_path):
    rows = small_rows()
    rows[2][3] = "maybe"  # the second item's text spans lines 3 and 4
    with pytest.raises(ValueError, match=r"t\.csv, line 4, field 'a:correct'"):
        replay.load_table(_bad(rows, tmp_path))


def test_missing_correctness_value_is_an_error(tmp_path):
    rows = small_rows()
    rows[1][5] = ""
    with pytest.raises(ValueError, match=r"line 2, field 'b:correct': missing value"):
        replay.load_table(_bad(rows, tmp_path))


@pytest.mark.parametrize("value", ["-3", "2.5", "many"])
def test_bad_token_count_is_an_error(tmp_path, value):
    rows = small_rows()
    rows[1][4] = value
    with pytest.raises(ValueError, match=r"line 2, field 'a:prompt_tokens': .*integer"):
        replay.load_table(_bad(rows, tmp_path))


def test_empty_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"t\.csv, line 2: the table has no rows"):
        replay.load_table(_bad(small_rows()[:1], tmp_path))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match=r"e\.csv, line 1: empty file"):
        replay.load_table(tmp_path / "e.csv")


def test_model_absent_from_the_table_is_an_error(tmp_path):
    path = _bad(small_rows(), tmp_path)
    with pytest.raises(ValueError, match=r"t\.csv, line 1, field 'c:correct': model 'c'"):
        replay.load_table(path, models=["a", "c"])


def test_duplicate_item_ids_name_both_lines(tmp_path):
    rows = small_rows()
    rows[3][0] = "q1"
    with pytest.raises(
        ValueError, match=r"line 5, field 'item_id': duplicate item id 'q1'.*line 2\)"
    ):
        replay.load_table(_bad(rows, tmp_path))


def test_ragged_csv_row_is_an_error(tmp_path):
    rows = small_rows()
    rows[2] = rows[2][:-1]
    with pytest.raises(ValueError, match=r"line 3: expected 6 fields"):
        replay.load_table(_bad(rows, tmp_path))


def test_jsonl_errors_name_their_line(tmp_path):
    path = tmp_path / "t.jsonl"
    good = {"item_id": "q1", "text": "x", "a:correct": True}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "a:corect": 1}))
    with pytest.raises(ValueError, match=r"t\.jsonl, line 3, field 'a:corect'"):
        replay.load_table(path)
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"t\.jsonl, line 2: invalid JSON"):
        replay.load_table(path)
    path.write_text(json.dumps({**good, "a:correct": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1, field 'a:correct'.*'yes'"):
        replay.load_table(path)


def test_unknown_suffix_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown outcome table format"):
        replay.load_table(tmp_path / "t.xlsx")


# ------------------------------------------------------------- RouteLLM adapter
def test_routellm_tables_read_ids_sources_and_tokens():
    gsm = replay.load_routellm_gsm8k(FIXTURE / "gsm8k_responses.csv")
    assert gsm.models == (CHEAP, EXPENSIVE)
    assert gsm.item_ids[:2] == ("gsm8k-0001", "gsm8k-0002")
    assert gsm.n_items == 40 and set(gsm.sources) == {"gsm8k"}
    np.testing.assert_array_equal(gsm.correct.sum(axis=0), [20, 30])
    with open(FIXTURE / "gsm8k_responses.csv", newline="", encoding="utf-8") as handle:
        first = next(iter(csv.DictReader(handle)))
    answer = first["gpt-4-1106-preview_response"]
    assert gsm.completion_tokens[0, 1] == -(-len(answer) // 4)
    assert gsm.prompt_tokens[0, 0] == -(-len(first["prompt"]) // 4)
    assert gsm.completion_recorded.all()

    mmlu = replay.load_routellm_mmlu(FIXTURE / "mmlu")
    assert mmlu.n_items == 60
    assert mmlu.item_ids[0] == "mmlu-anatomy-0001"
    assert mmlu.item_ids[-1] == "mmlu-astronomy-0030"
    assert sorted(set(mmlu.sources)) == ["anatomy", "astronomy"]
    np.testing.assert_array_equal(mmlu.correct.sum(axis=0), [45, 52])
    assert (mmlu.completion_tokens == replay.DEFAULT_COMPLETION_TOKENS).all()
    assert mmlu.where(30) == f"{FIXTURE / 'mmlu' / 'mmlu_astronomy.csv'}, line 2"


def _copy_fixture(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "routellm"))


def _edit_csv(path: Path, edit) -> None:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    write_csv(path, rows)


def test_routellm_missing_column_names_file_and_column(tmp_path):
    data = _copy_fixture(tmp_path)
    _edit_csv(data / "gsm8k_responses.csv", lambda rows: [r.pop(2) for r in rows])
    with pytest.raises(
        ValueError, match=r"gsm8k_responses\.csv, line 1, field 'gpt-4-1106-preview'"
    ):
        replay.replay_suite("gsm8k", data_dir=data, use_cache=False)


def test_routellm_non_boolean_names_file_line_and_column(tmp_path):
    data = _copy_fixture(tmp_path)

    def edit(rows):
        rows[3][1] = "Maybe"

    _edit_csv(data / "mmlu" / "mmlu_astronomy.csv", edit)
    with open(data / "mmlu" / "mmlu_astronomy.csv", encoding="utf-8") as handle:
        line = 1 + next(i for i, text in enumerate(handle) if "Maybe" in text)
    pattern = rf"mmlu_astronomy\.csv, line {line}, field '{MIXTRAL_COLUMN}'.*'Maybe'"
    with pytest.raises(ValueError, match=pattern):
        replay.replay_suite("mmlu", data_dir=data, use_cache=False)


def test_routellm_empty_subject_file_is_an_error(tmp_path):
    data = _copy_fixture(tmp_path)
    _edit_csv(
        data / "mmlu" / "mmlu_anatomy.csv", lambda rows: rows.__delitem__(slice(1, None))
    )
    with pytest.raises(ValueError, match=r"mmlu_anatomy\.csv, line 2: the table has no"):
        replay.replay_suite("mmlu", data_dir=data, use_cache=False)


def test_missing_data_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="BUDGETROUTE_DATA"):
        replay.replay_suite("gsm8k", data_dir=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="gsm8k_responses.csv"):
        replay.replay_suite("gsm8k", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="mmlu"):
        replay.replay_suite("mmlu", data_dir=tmp_path)


def test_pool_model_absent_from_the_table_is_an_error(fixture_suite):
    with pytest.raises(
        ValueError, match=r"gsm8k_responses\.csv, line 1, field 'gpt-4.1-mini:correct'"
    ):
        fixture_suite("gsm8k", models=["gpt-4.1-mini", EXPENSIVE])


def test_bad_settings_are_errors(fixture_suite):
    with pytest.raises(ValueError, match="success_rule"):
        fixture_suite(success_rule="most")
    with pytest.raises(ValueError, match="session_items"):
        fixture_suite(session_items=0)
    with pytest.raises(ValueError, match="test_fraction"):
        fixture_suite(test_fraction=1.0)
    with pytest.raises(ValueError, match="unknown replay suite"):
        replay.replay_suite("gsm9k", data_dir=FIXTURE)


# ---------------------------------------------------------- split and sessions
def test_split_is_disjoint_stratified_and_seeded(fixture_suite):
    suite = fixture_suite("mmlu", session_items=1)
    train = set(suite.bank("train").ids)
    test = set(suite.bank("test").ids)
    assert not train & test
    assert len(train | test) == 60
    assert {i for i in test if "anatomy" in i} and {i for i in test if "astronomy" in i}
    assert len(test) == 12  # round(0.2 * 30) from each subject
    same = fixture_suite("mmlu", session_items=1)
    assert set(same.bank("test").ids) == test
    other = fixture_suite("mmlu", session_items=1, seed=1)
    assert set(other.bank("test").ids) != test


def test_one_item_sessions_cover_every_item_once(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=1)
    ids = [i for split in SPLITS for i in suite.bank(split).ids]
    assert sorted(ids) == [f"gsm8k-{n:04d}" for n in range(1, 41)]
    for split in SPLITS:
        bank = suite.bank(split)
        assert bank.horizon == 1 and (bank.n_subgoals == 1).all()


def test_sessions_draw_from_one_source_without_repeats(fixture_suite):
    suite = fixture_suite("mmlu", session_items=4)
    table = replay.load_routellm_mmlu(FIXTURE / "mmlu")
    for split in SPLITS:
        index = suite.bank(split).latent["item_index"]
        assert index.shape[1] == 4 and (index >= 0).all()
        for session in index:
            assert len(set(session.tolist())) == 4
            assert len({table.sources[i] for i in session}) == 1
        counts = np.bincount(index.ravel(), minlength=table.n_items)
        in_split = counts > 0
        assert set(counts[in_split].tolist()) <= {1, 2}
    covered = [set(suite.bank(s).latent["item_index"].ravel().tolist()) for s in SPLITS]
    assert not covered[0] & covered[1]
    assert len(covered[0] | covered[1]) == 60


def test_short_source_gives_one_shorter_session(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=10)
    test = suite.bank("test")  # 8 test items
    assert test.n_tasks == 1 and test.n_subgoals.tolist() == [8]
    assert test.latent["item_index"][0, 8:].tolist() == [-1, -1]
    assert test.ids == ("gsm8k-test-00000",)


def test_passes_make_more_sessions(fixture_suite):
    one = fixture_suite("gsm8k", session_items=4)
    three = fixture_suite("gsm8k", session_items=4, passes=3)
    assert three.bank("train").n_tasks == 3 * one.bank("train").n_tasks


# ------------------------------------------------------------------------ banks
def test_bank_replays_the_recorded_outcomes(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=5)
    table = replay.load_routellm_gsm8k(FIXTURE / "gsm8k_responses.csv")
    bank = suite.bank("train")
    index = bank.latent["item_index"]
    np.testing.assert_array_equal(bank.p_success, table.correct[index].astype(np.float32))
    assert (bank.p_lost == 1).all() and (bank.p_derail == 0).all()
    np.testing.assert_array_equal(bank.completion_lo, table.completion_tokens[index])
    np.testing.assert_array_equal(bank.completion_hi, bank.completion_lo)
    # history: step t sees the earlier questions with each one's mean answer
    prompt = table.prompt_tokens[:, 0]
    answer = np.rint(table.completion_tokens.mean(axis=1)).astype(int)
    t = 3
    expected = prompt[index[:, t]] + (prompt[index[:, :t]] + answer[index[:, :t]]).sum(1)
    np.testing.assert_array_equal(bank.prompt_tokens[:, t], expected)
    flat = fixture_suite("gsm8k", session_items=5, history=False).bank("train")
    np.testing.assert_array_equal(flat.prompt_tokens, prompt[index])
    share = fixture_suite("gsm8k", session_items=5, success_rule="share").bank("train")
    assert (share.p_lost == 0).all()
    assert suite.dynamics.advance_on_failure and suite.dynamics.p_recover == (0.0, 0.0)
    assert [m.name for m in suite.models] == [CHEAP, EXPENSIVE]


def test_features_hold_first_item_and_session_means(fixture_suite, cache_dir):
    suite = fixture_suite("mmlu", session_items=3)
    prepared = replay.prepare_replay("mmlu", FIXTURE, cache_dir=cache_dir)
    bank = suite.bank("test")
    index = bank.latent["item_index"]
    items = prepared.item_features
    f_item = items.shape[1]
    assert f_item == replay.TEXT_FEATURES + 1 + 2
    assert prepared.feature_names[-2:] == ("source=anatomy", "source=astronomy")
    np.testing.assert_allclose(bank.step_features, items[index])
    np.testing.assert_allclose(bank.features[:, :f_item], items[index[:, 0]])
    means = items[index][..., : replay.TEXT_FEATURES + 1].mean(axis=1)
    np.testing.assert_allclose(bank.features[:, f_item:], means, rtol=1e-5, atol=1e-6)
    names = replay.session_feature_names(prepared.feature_names)
    assert len(names) == bank.n_features


def test_features_ignore_correctness_and_test_texts():
    table = replay.load_routellm_mmlu(FIXTURE / "mmlu")
    base = replay.prepare_table(table, "mmlu")
    flipped = replay.OutcomeTable(**{**vars(table), "correct": ~table.correct})
    np.testing.assert_array_equal(
        replay.prepare_table(flipped, "mmlu").item_features, base.item_features
    )
    texts = list(table.texts)
    for i in np.flatnonzero(base.is_test):
        texts[i] = "an entirely different question about volcanoes"
    changed = replay.prepare_table(
        replay.OutcomeTable(**{**vars(table), "texts": tuple(texts)}), "mmlu"
    )
    train = ~base.is_test
    np.testing.assert_array_equal(changed.item_features[train], base.item_features[train])
    assert np.isfinite(base.item_features).all()
    np.testing.assert_allclose(base.item_features[train, :16].std(axis=0), 1, atol=1e-4)


def test_same_settings_give_identical_banks(fixture_suite):
    a = fixture_suite("mmlu", session_items=3, seed=4)
    b = fixture_suite("mmlu", session_items=3, seed=4, use_cache=False)
    for split in SPLITS:
        x, y = a.bank(split), b.bank(split)
        assert x.ids == y.ids
        for name in ("p_success", "prompt_tokens", "completion_hi", "features"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


def test_custom_table_suite(tmp_path):
    rows = [["item_id", "text", f"{CHEAP}:correct", f"{EXPENSIVE}:correct"]]
    rows += [[f"q{i}", f"question {i} " * (i + 1), str(i % 2), "1"] for i in range(20)]
    table = replay.load_table(write_csv(tmp_path / "mine.csv", rows))
    suite = replay.table_suite(table, "mine", session_items=2, success_rule="share")
    assert suite.name == "mine" and suite.bank("train").n_subgoals.max() == 2
    assert isinstance(suite.config, replay.ReplayConfig)


# ------------------------------------------------------------------------ cache
def test_cache_saves_then_loads_the_same_data(tmp_path):
    first = replay.prepare_replay("gsm8k", FIXTURE, cache_dir=tmp_path)
    assert not first.from_cache and Path(first.cache_file).is_file()
    assert Path(first.cache_file).with_suffix(".json").is_file()
    replay._MEMO.clear()
    second = replay.prepare_replay("gsm8k", FIXTURE, cache_dir=tmp_path)
    assert second.from_cache and second.key == first.key
    np.testing.assert_array_equal(second.item_features, first.item_features)
    np.testing.assert_array_equal(second.is_test, first.is_test)
    assert second.table.texts == first.table.texts
    other = replay.prepare_replay("gsm8k", FIXTURE, seed=1, cache_dir=tmp_path)
    assert other.key != first.key


def test_preparation_reports_progress(tmp_path):
    class Bar:
        def __init__(self, total, desc):
            self.total, self.done, self.closed = total, 0, False

        def update(self, k):
            self.done += k

        def close(self):
            self.closed = True

    bars = []

    def progress(total, desc):
        bars.append(Bar(total, desc))
        return bars[-1]

    replay.prepare_replay("mmlu", FIXTURE, cache_dir=tmp_path, progress=progress)
    assert [(b.total, b.done, b.closed) for b in bars] == [(60, 60, True)]


def test_changed_input_file_changes_the_cache_key(tmp_path):
    data = _copy_fixture(tmp_path)
    before = replay.prepare_replay("gsm8k", data, cache_dir=tmp_path / "c")
    _edit_csv(data / "gsm8k_responses.csv", lambda rows: rows.pop())
    after = replay.prepare_replay("gsm8k", data, cache_dir=tmp_path / "c")
    assert after.key != before.key and after.table.n_items == 39


# ---------------------------------------------------------- the environment
def test_make_suite_finds_replay_suites_through_the_environment(monkeypatch, cache_dir):
    monkeypatch.setenv(replay.DATA_ENV, str(FIXTURE))
    monkeypatch.setenv(replay.CACHE_ENV, str(cache_dir))
    suite = make_suite("gsm8k")
    assert suite.name == "gsm8k" and suite.bank("train").horizon == 10
    env = gym.make("BudgetRoute-v0", suite="mmlu")
    obs, _ = env.reset(seed=0)
    assert obs["task_features"].shape == (env.unwrapped.bank.n_features,)


@pytest.mark.parametrize("name", ["gsm8k", "mmlu"])
def test_boundary_policies_replay_the_table_accuracy(fixture_suite, name):
    suite = fixture_suite(name, session_items=1)
    table = (
        replay.load_routellm_gsm8k(FIXTURE / "gsm8k_responses.csv")
        if name == "gsm8k"
        else replay.load_routellm_mmlu(FIXTURE / "mmlu")
    )
    for action in (0, 1):
        success, cost = run_boundary(suite, action)
        assert success == pytest.approx(table.accuracy()[action], abs=1e-12)
        assert cost > 0


def test_cost_is_tokens_times_list_prices(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=1)
    env = gym.make("BudgetRoute-v0", suite=suite, split="train")
    bank = env.unwrapped.bank
    env.reset(seed=0, options={"task": 0})
    _, _, terminated, _, info = env.step(1)
    prompt, completion = bank.prompt_tokens[0, 0], bank.completion_hi[0, 0, 1]
    assert terminated and info["completion_tokens"] == completion
    assert info["cost"] == pytest.approx((prompt * 10.0 + completion * 30.0) / 1e6)


def test_share_rule_rewards_the_share_of_right_answers(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=5, success_rule="share")
    env = gym.make("BudgetRoute-v0", suite=suite, split="train")
    bank = env.unwrapped.bank
    for task in range(bank.n_tasks):
        env.reset(seed=task, options={"task": task})
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(0)
            total += reward
            done = terminated or truncated
        assert total == pytest.approx(bank.p_success[task, :, 0].mean())


def test_all_rule_needs_every_item_and_feedback_stays_silent(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=5)
    env = gym.make("BudgetRoute-v0", suite=suite, split="train")
    bank = env.unwrapped.bank
    for task in range(bank.n_tasks):
        env.reset(seed=task, options={"task": task})
        done, steps = False, 0
        while not done:
            obs, reward, terminated, truncated, info = env.step(1)
            assert obs["feedback"] == core.FEEDBACK_NOTHING
            done, steps = terminated or truncated, steps + 1
        assert steps == 5 and terminated
        assert info["success"] == bool(bank.p_success[task, :, 1].all())


def test_feedback_flag_shows_right_and_wrong_answers(fixture_suite):
    suite = fixture_suite("gsm8k", session_items=1, feedback=True)
    env = gym.make("BudgetRoute-v0", suite=suite, split="train")
    bank = env.unwrapped.bank
    for task in range(bank.n_tasks):
        env.reset(seed=task, options={"task": task})
        obs, *_ = env.step(0)
        right = bank.p_success[task, 0, 0] == 1
        assert obs["feedback"] == (core.FEEDBACK_PROGRESS if right else core.FEEDBACK_ERROR)


def test_privileged_state_reads_lost_after_a_wrong_answer(fixture_suite):
    # Replay sessions never derail; under the "all" rule a wrong answer loses the task
    suite = fixture_suite("gsm8k", session_items=5)
    env = gym.make("BudgetRoute-v0", suite=suite, split="train", privileged_state=True)
    bank = env.unwrapped.bank
    lost_seen = False
    for task in range(bank.n_tasks):
        obs, _ = env.reset(seed=task, options={"task": task})
        np.testing.assert_array_equal(obs["latent_state"], [1.0, 0.0, 0.0])
        for item in range(5):
            obs, *_ = env.step(0)
            wrong = not bank.p_success[task, : item + 1, 0].all()
            expected = [0.0, 0.0, 1.0] if wrong else [1.0, 0.0, 0.0]
            np.testing.assert_array_equal(obs["latent_state"], expected)
            lost_seen |= wrong
    assert lost_seen
    # Under the "share" rule a wrong answer loses nothing: always on track
    suite = fixture_suite("gsm8k", session_items=5, success_rule="share")
    env = gym.make("BudgetRoute-v0", suite=suite, split="train", privileged_state=True)
    env.reset(seed=0, options={"task": 0})
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(0)
        np.testing.assert_array_equal(obs["latent_state"], [1.0, 0.0, 0.0])
        done = terminated or truncated


# ------------------------------------------------------------------ full data
@needs_full_data
def test_fixture_is_a_cut_of_the_shared_data():
    for name in ("gsm8k_responses.csv", "mmlu/mmlu_anatomy.csv", "mmlu/mmlu_astronomy.csv"):
        cut = (FIXTURE / name).read_bytes()
        assert (FULL_DATA / name).read_bytes().startswith(cut)


@needs_full_data
@pytest.mark.parametrize(
    ("name", "cheap", "expensive", "rows"),
    [("gsm8k", 63.8, 85.7, 1319), ("mmlu", 68.3, 81.2, 12371)],
)
def test_boundary_policies_replay_the_published_accuracy(
    cache_dir, name, cheap, expensive, rows
):
    suite = replay.replay_suite(
        name, session_items=1, data_dir=FULL_DATA, cache_dir=cache_dir
    )
    assert sum(suite.bank(s).n_tasks for s in SPLITS) == rows
    for action, target in ((0, cheap), (1, expensive)):
        success, _ = run_boundary(suite, action)
        assert abs(100 * success - target) <= 0.5


# ------------------------------------------------------------------ the script
def test_prepare_script_prints_the_summary(tmp_path, capsys):
    from experiments import prepare_replay  # noqa: PLC0415

    argv = ["--suite", "mmlu", "--data-dir", str(FIXTURE), "--cache-dir", str(tmp_path)]
    assert prepare_replay.main([*argv, "--session-items", "3"]) == 0
    out = capsys.readouterr().out
    assert "== mmlu: 60 rows from 2 file(s)" in out
    assert "train 48 rows, test 12 rows, 2 source(s)" in out
    assert f"always {EXPENSIVE}" in out and "86.7%" in out  # 52 of 60 right
    assert prepare_replay.main(["--data-dir", str(tmp_path / "absent")]) == 1


# ------------------------------------------------------------- more bad input
@pytest.mark.parametrize(("name", "line"), [("t.csv", 3), ("t.jsonl", 2)])
def test_a_file_that_is_not_utf8_names_its_line(tmp_path, name, line):
    path = tmp_path / name
    good = {"item_id": "q1", "text": "x", "a:correct": True}
    if name.endswith(".csv"):
        path.write_bytes(b"item_id,text,a:correct\nq1,x,true\nq2,caf\xe9,true\n")
    else:
        bad = json.dumps({**good, "item_id": "q2", "text": "caf#"}).encode()
        path.write_bytes(json.dumps(good).encode() + b"\n" + bad.replace(b"#", b"\xe9"))
    with pytest.raises(ValueError, match=rf"{name}, line {line}: not UTF-8 text"):
        replay.load_table(path)


def test_a_token_count_of_non_decimal_digits_names_its_field(tmp_path):
    rows = small_rows()
    rows[1][4] = "\u00b2"  # a superscript two: str.isdigit() but not a number
    with pytest.raises(ValueError, match=r"line 2, field 'a:prompt_tokens': .*integer"):
        replay.load_table(_bad(rows, tmp_path))


def test_a_json_line_with_a_key_twice_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"item_id": "q1", "text": "x", "a:correct": true, "a:correct": 0}\n')
    with pytest.raises(ValueError, match=r"line 1, field 'a:correct': duplicate key"):
        replay.load_table(path)


def test_a_model_column_without_a_model_name_is_an_error(tmp_path):
    rows = small_rows()
    rows[0][5] = ":correct"
    with pytest.raises(ValueError, match=r"line 1, field ':correct': empty model name"):
        replay.load_table(_bad(rows, tmp_path))


@pytest.mark.parametrize(
    ("models", "error", "match"),
    [
        ([], ValueError, "models must name at least one model"),
        ("ab", TypeError, "models must be a sequence of model names, got 'ab'"),
        ([0], TypeError, r"models\[0\] must be a model name, got 0"),
    ],
)
def test_load_table_models_must_be_model_names(tmp_path, models, error, match):
    with pytest.raises(error, match=match):
        replay.load_table(_bad(small_rows(), tmp_path), models=models)


@pytest.mark.parametrize(
    ("tokens", "error"), [(-1, ValueError), (2.5, TypeError), ("32", TypeError)]
)
def test_fallback_completion_tokens_must_be_a_token_count(tmp_path, tokens, error):
    with pytest.raises(error, match="fallback_completion_tokens must be"):
        replay.load_table(_bad(small_rows(), tmp_path), fallback_completion_tokens=tokens)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"history": "no"}, TypeError, "history must be True or False, got 'no'"),
        ({"feedback": "false"}, TypeError, "feedback must be True or False"),
        ({"seed": 1.5}, TypeError, "seed must be an integer, got 1.5"),
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*32\)"),
        ({"success_rule": ["all"]}, ValueError, "success_rule must be one of"),
    ],
)
def test_replay_settings_are_not_coerced(tmp_path, kwargs, error, match):
    rows = [["item_id", "text", f"{CHEAP}:correct", f"{EXPENSIVE}:correct"]]
    rows += [[f"q{i}", f"question {i}", str(i % 2), "1"] for i in range(6)]
    table = replay.load_table(write_csv(tmp_path / "mine.csv", rows))
    with pytest.raises(error, match=match):
        replay.table_suite(table, "mine", **kwargs)
