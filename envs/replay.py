"""Replay suites: sessions of real questions with the recorded outcome of each model.

A replay suite turns a table of logged outcomes (which model answered which question
correctly, and with how many tokens) into task banks for ``BudgetRoute-v0``. A task is a
*session* of ``K`` items (questions) from one source; each step of an episode asks the
next item, the chosen model's recorded correctness decides the step, and the call costs
the item's tokens at the model's list prices.

**Outcome table format** (CSV with a header row, or JSON Lines with one object a line;
the reader picks the format from the suffix ``.csv``, ``.jsonl`` or ``.ndjson``):

======================== ======== =====================================================
column                   required meaning
======================== ======== =====================================================
``item_id``              yes      unique id of the item (non-empty text)
``text``                 yes      the question as the model saw it
``source``               no       where the item comes from (e.g. a subject); a session
                                  draws all its items from one source; default: the
                                  file name without its suffix
``M:correct``            yes      whether model ``M`` answered correctly: ``true``,
                                  ``false``, ``True``, ``False``, ``1`` or ``0`` (JSON:
                                  also ``true``/``false``/``1``/``0`` literals)
``M:prompt_tokens``      no       prompt tokens of ``M``'s call (integer >= 0)
``M:completion_tokens``  no       completion tokens of ``M``'s answer (integer >= 0)
``M:response``           no       ``M``'s answer text (counts its completion tokens
                                  when ``M:completion_tokens`` is empty)
``meta:...``             no       ignored (room for your own notes)
======================== ======== =====================================================

``M`` is the model's name as in :data:`envs.pricing.PRICE_TABLE` (or a name you price
yourself); the field is the part after the last colon, so names may contain colons.
Optional values may be empty (CSV) or ``null``/absent (JSON). Any other column is an
error (this catches misspellings). Models appear in the order of their first column.

**Tokens.** No tokenizer ships with the project, so token counts that the table does not
record are estimated as ``ceil(len(text) / 4)`` characters per token
(:data:`CHARS_PER_TOKEN`), the usual rule of thumb for English text with GPT-style
tokenizers. A prompt is the item's ``text`` only: any few-shot preamble or system prompt
the answers were recorded with is not counted. A completion comes, in order of
preference, from ``M:completion_tokens``, from the length of ``M:response``, from ``M``'s
mean over the items of the table that have one of these, and finally from the constant
:data:`DEFAULT_COMPLETION_TOKENS` (32 tokens: an answer letter with a one-sentence
explanation). The environment has one prompt count per step for every model, so where a
table records different prompt counts per model the bank uses their rounded mean.

**RouteLLM tables.** :func:`load_routellm_gsm8k` and :func:`load_routellm_mmlu` read the
published outcome tables of Mixtral-8x7B-Instruct and GPT-4-1106-preview
(``gsm8k_responses.csv`` with answer texts; ``mmlu/mmlu_<subject>.csv`` without, so MMLU
completions are :data:`DEFAULT_COMPLETION_TOKENS`). Item ids are ``gsm8k-0001`` and
``mmlu-<subject>-0001`` in file order (1-based); the model names are
``mixtral-8x7b-instruct`` (cheap) and ``gpt-4-1106-preview`` (expensive).

**Features** (what the router reads, computed from the text before the call, never from
correctness), one row an item (:func:`featurize`):

* ``text_00`` .. ``text_15``: word unigrams and bigrams of the lower-cased text hashed
  (CRC-32) into :data:`HASH_BUCKETS` buckets, weighted by TF-IDF (``1 + log(count)``
  times a smoothed IDF fitted on the training items only), L2-normalised, projected to
  :data:`PROJECTION_DIMS` dimensions by a fixed-seed sparse random projection, then to
  :data:`TEXT_FEATURES` principal components fitted on the training items and scaled to
  unit variance on them;
* ``log_prompt_tokens``: ``log(1 + prompt tokens)`` of the item;
* ``source=<name>``: one-hot of the item's source (sources sorted by name).

A task's ``features`` (fixed for the episode) are its first item's features followed by
the session's mean of the ``text_*`` components and of ``log_prompt_tokens``. The
router sees the current item's own features before each call as ``step_features``
(``bank.step_features``, shape ``(n, K, F_item)``, zeros after the session's last
item); the table row of each item is in ``bank.latent["item_index"]`` (``-1`` after the
last item).

**Split and sessions.** Items are split into training and test items once, by a
fixed seed and within each source (default 80/20; a source of two items or more has at
least one of each). Each split's items of one source are shuffled and cut into sessions
of ``K`` consecutive items; the last session of a source is filled up from the start of
the same shuffled order, so every item appears once (or twice, when filling) per pass
and never twice in a session. With ``K = 1`` every item is exactly one task, whose id is
the item id; otherwise task ids read ``<suite>-<split>-<index>``. A source with fewer
than ``K`` items in a split gives one shorter session of all of them.

**Banks and dynamics.** ``p_success`` is 1 or 0 from the recorded correctness,
``p_derail`` is 0, and a wrong answer loses the task (``p_lost = 1``) under the ``"all"``
rule (success means every item right) or not (``p_lost = 0``) under the ``"share"`` rule
(the reward is the share of items answered right). The agent moves to the next item after
every call, right or wrong. The prompt of step ``t`` holds the item's text plus, with
``history`` on, every earlier question and answer of the session; an earlier answer
counts the mean completion tokens of the pool's models for that item, so the prompt does
not depend on which models answered. ``completion_lo = completion_hi`` are the recorded
(or estimated) completion tokens, so the worst-case cost the mask uses is the exact cost.
By default the router gets no correctness feedback (every call shows ``NOTHING``), as a
router serving users who do not grade the answers; ``feedback=True`` shows ``PROGRESS``
after a right answer and ``ERROR`` after a wrong one (under the ``"all"`` rule, after
the first wrong answer every call shows ``ERROR``: the session has failed). A failed
session runs on to its last item and keeps costing, as a router that is not told.

**Cache.** Parsing and featurising a registered suite is cached on disk under
``$BUDGETROUTE_CACHE`` (default ``~/.cache/budgetroute``) as an ``.npz`` and a ``.json``
named by a hash of the input files' contents and the settings (split seed, test share,
feature constants); the split and the features are part of what is saved.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from envs import core
from envs.pricing import ModelPrice, make_pool
from envs.suite import SPLITS, Dynamics, Suite, check_seed

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_COMPLETION_TOKENS",
    "REPLAY_SUITES",
    "OutcomeTable",
    "PreparedReplay",
    "ReplayConfig",
    "ReplaySource",
    "build_banks",
    "cache_dir_path",
    "data_dir_path",
    "estimate_tokens",
    "featurize",
    "load_routellm_gsm8k",
    "load_routellm_mmlu",
    "load_table",
    "prepare_replay",
    "prepare_table",
    "replay_suite",
    "session_feature_names",
    "split_items",
    "table_suite",
]

CHARS_PER_TOKEN = 4
"""Characters per token of the token estimate (:func:`estimate_tokens`)."""
DEFAULT_COMPLETION_TOKENS = 32
"""Completion tokens of a model no item of the table records an answer for."""
TEXT_FEATURES = 16
"""Principal components of the hashed TF-IDF text vector in the features."""
HASH_BUCKETS = 1 << 18
"""Buckets word n-grams are hashed into (the IDF is kept per bucket)."""
PROJECTION_DIMS = 512
"""Dimensions of the fixed-seed random projection before the principal components."""
FEATURE_SEED = 0x5EED
"""Seed of the random projection (fixed: it defines the features, not the split)."""
DEFAULT_SESSION_ITEMS = 10
"""Items of a session (``K``) by default."""
DEFAULT_TEST_FRACTION = 0.2
"""Share of each source's items held out for the test split by default."""
SUCCESS_RULES = {"all": core.SUCCESS_ALL, "share": core.SUCCESS_SHARE}
"""Success rule names: every item right, or the share of items right."""
DATA_ENV = "BUDGETROUTE_DATA"
"""Environment variable naming the RouteLLM data folder."""
CACHE_ENV = "BUDGETROUTE_CACHE"
"""Environment variable naming the cache folder."""
DEFAULT_DATA_DIR = os.path.join("..", "shared", "data", "routellm")
"""RouteLLM data folder, relative to the working directory, when none is given."""
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "budgetroute")
"""Cache folder when none is given."""
CACHE_VERSION = 1
"""Bumped whenever the prepared data would change for the same inputs."""

ROUTELLM_MODELS = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct",
    "gpt-4-1106-preview": "gpt-4-1106-preview",
}
"""RouteLLM column name to pool model name, cheapest first."""
_ROUTELLM_LABELS = {
    "text": "prompt",
    **{f"{model}:correct": raw for raw, model in ROUTELLM_MODELS.items()},
    **{f"{model}:response": f"{raw}_response" for raw, model in ROUTELLM_MODELS.items()},
}

MODEL_FIELDS = ("correct", "prompt_tokens", "completion_tokens", "response")
"""Per-model fields of the outcome table format (``<model>:<field>`` columns)."""
ITEM_COLUMNS = ("item_id", "text", "source")
"""Per-item columns of the outcome table format."""
IGNORED_PREFIX = "meta:"
"""Columns starting with this prefix are ignored."""

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_WORD_RE = re.compile(r"\w+")
_PROGRESS_STEP = 1000
_MASK32 = 0xFFFFFFFF


# --------------------------------------------------------------------------- tables
@dataclasses.dataclass(frozen=True, eq=False)
class OutcomeTable:
    """Logged outcomes: one row an item, one column a model (``N`` items, ``M`` models).

    Token counts are per call; missing ones are already filled in (see the module
    docstring), and ``completion_recorded`` says which came from the table itself.
    """

    item_ids: tuple[str, ...]
    texts: tuple[str, ...]
    sources: tuple[str, ...]
    """Source of each item (e.g. ``"gsm8k"`` or an MMLU subject)."""
    models: tuple[str, ...]
    correct: np.ndarray
    """(N, M) bool: whether each model answered each item correctly."""
    prompt_tokens: np.ndarray
    """(N, M) int32: prompt tokens of each model's call (recorded or estimated)."""
    completion_tokens: np.ndarray
    """(N, M) int32: completion tokens of each model's answer (recorded or estimated)."""
    completion_recorded: np.ndarray
    """(N, M) bool: the completion came from a count or an answer text in the table."""
    files: tuple[str, ...] = ()
    """Files the rows were read from."""
    origin: np.ndarray | None = None
    """(N, 2) int32: index into ``files`` and first line of each item's row."""

    def __post_init__(self) -> None:
        n, m = len(self.item_ids), len(self.models)
        if n == 0 or m == 0:
            raise ValueError("an outcome table needs at least one item and one model")
        if len(self.texts) != n or len(self.sources) != n:
            raise ValueError("outcome table texts and sources need one entry an item")
        for name in (
            "correct",
            "prompt_tokens",
            "completion_tokens",
            "completion_recorded",
        ):
            if getattr(self, name).shape != (n, m):
                raise ValueError(
                    f"outcome table field {name} has shape {getattr(self, name).shape}, "
                    f"expected {(n, m)}"
                )
        if self.origin is None:
            object.__setattr__(self, "origin", np.zeros((n, 2), np.int32))
        elif self.origin.shape != (n, 2):
            raise ValueError(f"outcome table origin has shape {self.origin.shape}")

    @property
    def n_items(self) -> int:
        """Return the number of items (rows)."""
        return len(self.item_ids)

    def accuracy(self) -> np.ndarray:
        """Return each model's share of items answered correctly, shape (M,)."""
        return self.correct.mean(axis=0)

    def where(self, item: int) -> str:
        """Return ``"<file>, line <n>"`` of an item's row (``"<table>"`` if unknown)."""
        f, line = (int(v) for v in self.origin[item])
        path = self.files[f] if f < len(self.files) else "<table>"
        return f"{path}, line {line}"

    def select_models(self, models: Sequence[str]) -> OutcomeTable:
        """Return the table restricted to ``models``, in that order; raise if absent."""
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
            raise TypeError(f"models must be a sequence of model names, got {models!r}")
        if not models:
            raise ValueError("models must name at least one model of the table")
        for i, name in enumerate(models):
            if not isinstance(name, str):
                raise TypeError(f"models[{i}] must be a model name, got {name!r}")
        index = []
        for name in models:
            if name not in self.models:
                where = self.files[0] if self.files else "<table>"
                if len(self.files) > 1:
                    where += f" (and {len(self.files) - 1} more files)"
                raise ValueError(
                    f"{where}, line 1, field '{name}:correct': model "
                    f"{name!r} is not in the table; its models are {list(self.models)}"
                )
            index.append(self.models.index(name))
        if len(set(index)) != len(index):
            raise ValueError(f"duplicate model names in {list(models)}")
        pick = np.asarray(index)
        return OutcomeTable(
            item_ids=self.item_ids,
            texts=self.texts,
            sources=self.sources,
            models=tuple(models),
            correct=self.correct[:, pick],
            prompt_tokens=self.prompt_tokens[:, pick],
            completion_tokens=self.completion_tokens[:, pick],
            completion_recorded=self.completion_recorded[:, pick],
            files=self.files,
            origin=self.origin,
        )


def estimate_tokens(text: str) -> int:
    """Return the estimated token count of a text: ``ceil(len(text) / 4)`` tokens."""
    return -(-len(text) // CHARS_PER_TOKEN)


def load_table(
    path: str | os.PathLike,
    models: Sequence[str] | None = None,
    fallback_completion_tokens: int = DEFAULT_COMPLETION_TOKENS,
) -> OutcomeTable:
    """Return the outcome table in a CSV or JSON Lines file (format: module docstring).

    ``models`` keeps only those models, in that order. Raises ``FileNotFoundError`` for
    a missing file and ``ValueError``, naming the file, the line and the field, for any
    malformed content.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        header, rows = _read_jsonl(path)
    else:
        raise ValueError(
            f"{path}: unknown outcome table format {suffix!r}; use .csv, .jsonl or .ndjson"
        )
    models_found = _check_header(header, str(path))
    records = ((0, line, values, offsets) for line, values, offsets in rows)
    table = _build_table(
        records,
        files=(str(path),),
        models=tuple(models_found),
        default_source=path.stem,
        fallback_completion_tokens=fallback_completion_tokens,
    )
    return table if models is None else table.select_models(models)


def _open_text(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such outcome table file")
    return open(path, newline="", encoding="utf-8-sig")


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Return the header of a CSV file and its rows as ``(first line, fields)``.

    Every row must have as many fields as the header; blank lines are skipped.
    """
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}, line 1: empty file; expected a header row") from None
        except csv.Error as err:
            raise ValueError(f"{path}, line 1: malformed CSV: {err}") from None
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        _check_unique_columns(header, str(path))
        rows = []
        end = reader.line_num
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise ValueError(f"{path}, line {start}: malformed CSV: {err}") from None
            except UnicodeDecodeError:
                raise _not_utf8(path) from None
            end = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}, line {start}: expected {len(header)} fields as in the "
                    f"header, got {len(row)}"
                )
            rows.append((start, row))
    return header, rows


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict, dict]]]:
    header, rows = _csv_rows(path)
    return header, [
        (line, dict(zip(header, row, strict=True)), _field_offsets(header, row))
        for line, row in rows
    ]


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict, dict]]]:
    out = []
    header: list[str] = []
    with _open_text(path) as handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        for line, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                values = json.loads(raw, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line}: invalid JSON: {err.msg}") from None
            except _DuplicateKey as err:
                raise ValueError(
                    f"{path}, line {line}, field {err.key!r}: duplicate key"
                ) from None
            if not isinstance(values, dict):
                raise ValueError(f"{path}, line {line}: expected a JSON object a line")
            for name in values:
                if name not in header:
                    _check_column(name, f"{path}, line {line}", header)
                    header.append(name)
            out.append((line, values, {}))
    if not out:
        raise ValueError(f"{path}, line 1: empty file; expected one JSON object a line")
    return header, out


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """Return a JSON object's pairs as a dict; raise on a key given twice."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _not_utf8(path: Path) -> ValueError:
    """Return the error of a file that is not UTF-8, naming its first bad line."""
    for line, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return ValueError(
                f"{path}, line {line}: not UTF-8 text (byte {raw[err.start]:#04x} at "
                f"column {err.start + 1})"
            )
    return ValueError(f"{path}: not UTF-8 text")


def _check_unique_columns(header: Sequence[str], where: str) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise ValueError(f"{where}, line 1, field {name!r}: duplicate column")
        seen.add(name)


def _check_column(name: str, where: str, known: Sequence[str]) -> tuple[str, str] | None:
    """Return ``(model, field)`` of a model column, None for an item or ignored column.

    Raises for an unknown column, suggesting the closest known name (``known`` holds the
    columns seen so far).
    """
    if name.startswith(IGNORED_PREFIX) or name in ITEM_COLUMNS:
        return None
    model, colon, field = name.rpartition(":")
    if colon and not model.strip():
        raise ValueError(f"{where}, field {name!r}: empty model name before ':'")
    if not colon or not model:
        models = {c.rpartition(":")[0] for c in known if ":" in c}
        hint = _did_you_mean(name, [*ITEM_COLUMNS, *(f"{m}:correct" for m in models)])
        raise ValueError(f"{where}, field {name!r}: unknown column{hint}")
    if field not in MODEL_FIELDS:
        hint = _did_you_mean(name, [f"{model}:{f}" for f in MODEL_FIELDS])
        raise ValueError(
            f"{where}, field {name!r}: unknown model field {field!r}; known fields: "
            f"{', '.join(MODEL_FIELDS)}{hint}"
        )
    return model, field


def _check_header(header: Sequence[str], path: str) -> list[str]:
    """Return the models a header names; raise on a missing or unknown column."""
    where = f"{path}, line 1"
    fields: dict[str, set[str]] = {}
    for name in header:
        parsed = _check_column(name, where, header)
        if parsed is not None:
            fields.setdefault(parsed[0], set()).add(parsed[1])
    for name in ("item_id", "text"):
        if name not in header:
            hint = _did_you_mean(name, [h for h in header if ":" not in h])
            raise ValueError(f"{where}, field {name!r}: missing column{hint}")
    for model, have in fields.items():
        if "correct" not in have:
            raise ValueError(
                f"{where}, field '{model}:correct': missing column (model {model!r} has "
                "other columns)"
            )
    if not fields:
        raise ValueError(
            f"{where}, field '<model>:correct': no model column; expected at least one "
            "'<model>:correct' column"
        )
    return list(fields)


def _did_you_mean(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build_table(
    records: Iterable[tuple[int, int, dict, dict]],
    files: tuple[str, ...],
    models: tuple[str, ...],
    default_source: str | Sequence[str],
    fallback_completion_tokens: int,
    labels: dict[str, str] | None = None,
) -> OutcomeTable:
    """Return a table from raw records ``(file index, line, {column: value}, offsets)``.

    ``default_source`` is the source of rows without a ``source`` value, one a file when
    a sequence. Every value is checked; an error names the file, the field's line (the
    record's first line plus the ``offsets`` of :func:`_field_offsets`) and the field
    (by its name in ``labels`` if there, for tables read through an adapter).
    """
    labels = labels or {}
    fallback = fallback_completion_tokens
    if isinstance(fallback, bool) or not isinstance(fallback, (int, np.integer)):
        raise TypeError(f"fallback_completion_tokens must be an integer, got {fallback!r}")
    if not 0 <= fallback <= MAX_TOKENS:
        raise ValueError(
            f"fallback_completion_tokens must be in [0, {MAX_TOKENS}], got {fallback!r}"
        )
    ids, texts, sources, origin = [], [], [], []
    correct, prompt, completion = [], [], []
    first_seen: dict[str, str] = {}
    m = len(models)
    for f, line, values, offsets in records:
        place = _Place(files[f], line, offsets, labels)
        item_id = _text_field(values, "item_id", place, required=True, nonempty=True)
        if item_id in first_seen:
            raise ValueError(
                f"{place('item_id')}: duplicate item id {item_id!r} (first at "
                f"{first_seen[item_id]})"
            )
        first_seen[item_id] = place("item_id").rsplit(", field", 1)[0]
        text = _text_field(values, "text", place, required=True)
        if "source" in values:
            source = _text_field(values, "source", place, required=True, nonempty=True)
        else:
            source = (
                default_source if isinstance(default_source, str) else (default_source[f])
            )
        row_ok, row_prompt, row_completion = [], [], []
        estimate = estimate_tokens(text)
        for model in models:
            row_ok.append(_bool_field(values, f"{model}:correct", place))
            p = _int_field(values, f"{model}:prompt_tokens", place)
            row_prompt.append(estimate if p is None else p)
            c = _int_field(values, f"{model}:completion_tokens", place)
            if c is None:
                response = _text_field(values, f"{model}:response", place, False)
                c = estimate_tokens(response) if response else None
            row_completion.append(-1 if c is None else c)
        ids.append(item_id)
        texts.append(text)
        sources.append(source)
        origin.append((f, line))
        correct.append(row_ok)
        prompt.append(row_prompt)
        completion.append(row_completion)
    if not ids:
        raise ValueError(f"{', '.join(files)}, line 2: the table has no rows")

    completion_arr = np.asarray(completion, dtype=np.int64).reshape(len(ids), m)
    recorded = completion_arr >= 0
    for j in range(m):
        have = recorded[:, j]
        fill = (
            round(float(completion_arr[have, j].mean()))
            if have.any()
            else fallback_completion_tokens
        )
        completion_arr[~have, j] = fill
    return OutcomeTable(
        item_ids=tuple(ids),
        texts=tuple(texts),
        sources=tuple(sources),
        models=tuple(models),
        correct=np.asarray(correct, dtype=bool).reshape(len(ids), m),
        prompt_tokens=np.asarray(prompt, dtype=np.int32).reshape(len(ids), m),
        completion_tokens=completion_arr.astype(np.int32),
        completion_recorded=recorded,
        files=files,
        origin=np.asarray(origin, dtype=np.int32),
    )


class _Place:
    """Where a record lies; ``place(column)`` returns ``"<file>, line <n>, field <name>"``.

    ``offsets`` holds, per column of a CSV record over several lines, the line breaks
    before that field, so the line named is the field's own.
    """

    __slots__ = ("path", "line", "offsets", "labels")

    def __init__(self, path: str, line: int, offsets: dict, labels: dict):
        self.path, self.line, self.offsets, self.labels = path, line, offsets, labels

    def __call__(self, column: str) -> str:
        line = self.line + self.offsets.get(column, 0)
        return f"{self.path}, line {line}, field {self.labels.get(column, column)!r}"


def _field_offsets(header: Sequence[str], row: Sequence[str]) -> dict[str, int]:
    """Return the line breaks before each field of a CSV record (empty if none)."""
    if not any("\n" in value for value in row):
        return {}
    offsets, before = {}, 0
    for name, value in zip(header, row, strict=True):
        offsets[name] = before
        before += value.count("\n")
    return offsets


def _text_field(values, name, place, required, nonempty=False):
    value = values.get(name)
    if value is None:
        if required:
            raise ValueError(f"{place(name)}: missing value")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{place(name)}: expected text, got {value!r}")
    if nonempty and not value.strip():
        raise ValueError(f"{place(name)}: empty value")
    return value.strip() if nonempty else value


def _bool_field(values, name, place) -> bool:
    value = values.get(name)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{place(name)}: missing value; expected true or false")
    raise ValueError(f"{place(name)}: expected true/false/True/False/1/0, got {value!r}")


MAX_TOKENS = 10_000_000
"""Largest token count a table may record for one call (prompts of a session, history
included, must also stay below 2**31)."""


def _int_field(values, name, place) -> int | None:
    value = values.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    raise ValueError(
        f"{place(name)}: expected an integer in [0, {MAX_TOKENS}], got {value!r}"
    )


# ------------------------------------------------------------------ RouteLLM tables
def load_routellm_gsm8k(
    path: str | os.PathLike, fallback_completion_tokens: int = DEFAULT_COMPLETION_TOKENS
) -> OutcomeTable:
    """Return the RouteLLM GSM8K table (``gsm8k_responses.csv``), source ``"gsm8k"``.

    Completion tokens are estimated from each model's ``<model>_response`` answer text.
    """
    path = Path(path)
    return _build_table(
        _routellm_records(path, 0, "gsm8k-{:04d}"),
        files=(str(path),),
        models=tuple(ROUTELLM_MODELS.values()),
        default_source="gsm8k",
        fallback_completion_tokens=fallback_completion_tokens,
        labels=_ROUTELLM_LABELS,
    )


def load_routellm_mmlu(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    fallback_completion_tokens: int = DEFAULT_COMPLETION_TOKENS,
) -> OutcomeTable:
    """Return the RouteLLM MMLU tables (``mmlu/mmlu_<subject>.csv``) as one table.

    ``paths`` is the ``mmlu`` folder (every ``mmlu_*.csv`` in it, sorted) or a list of
    files. Each item's source is its subject; the files record no answer texts, so
    completions are ``fallback_completion_tokens``.
    """
    if isinstance(paths, (str, os.PathLike)):
        folder = Path(paths)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such MMLU folder")
        files = sorted(folder.glob("mmlu_*.csv"))
        if not files:
            raise FileNotFoundError(f"{folder}: no mmlu_<subject>.csv files")
    else:
        files = [Path(p) for p in paths]
    subjects = [_mmlu_subject(p) for p in files]

    def records():
        for f, (path, subject) in enumerate(zip(files, subjects, strict=True)):
            yield from _routellm_records(path, f, f"mmlu-{subject}-{{:04d}}")

    return _build_table(
        records(),
        files=tuple(str(p) for p in files),
        models=tuple(ROUTELLM_MODELS.values()),
        default_source=subjects,
        fallback_completion_tokens=fallback_completion_tokens,
        labels=_ROUTELLM_LABELS,
    )


def _mmlu_subject(path: Path) -> str:
    stem = path.stem
    if not stem.startswith("mmlu_") or len(stem) <= len("mmlu_"):
        raise ValueError(f"{path}: expected a file named mmlu_<subject>.csv")
    return stem[len("mmlu_") :]


def _routellm_records(path: Path, f: int, id_format: str):
    """Yield ``(file index, line, generic columns, offsets)`` of one RouteLLM CSV file."""
    header, rows = _csv_rows(path)
    for name in ("prompt", *ROUTELLM_MODELS):
        if name not in header:
            hint = _did_you_mean(name, header)
            raise ValueError(f"{path}, line 1, field {name!r}: missing column{hint}")
    col = {name: header.index(name) for name in header}
    n = 0
    for n, (line, row) in enumerate(rows, start=1):
        values = {"item_id": id_format.format(n), "text": row[col["prompt"]]}
        for raw, model in ROUTELLM_MODELS.items():
            values[f"{model}:correct"] = row[col[raw]]
            if f"{raw}_response" in col:
                values[f"{model}:response"] = row[col[f"{raw}_response"]]
        raw = _field_offsets(header, row)
        yield f, line, values, {k: raw[v] for k, v in _ROUTELLM_LABELS.items() if v in raw}
    if n == 0:
        raise ValueError(f"{path}, line 2: the table has no rows")


# ---------------------------------------------------------------------- features
def _mix32(x: np.ndarray) -> np.ndarray:
    """Return the 32-bit "lowbias32" hash of each entry of a uint64 array."""
    x = x & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _ngram_counts(texts: Sequence[str], progress=None):
    """Return ``(doc, bucket, count)`` arrays of the hashed n-grams of each text."""
    vocab: dict[str, int] = {}
    hashes: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _WORD_RE.findall(text.lower())
        for w in words:
            h = vocab.get(w)
            if h is None:
                h = vocab[w] = zlib.crc32(w.encode("utf-8"))
            hashes.append(h)
        lengths[i] = len(words)
        if progress is not None and (i + 1) % _PROGRESS_STEP == 0:
            progress.update(_PROGRESS_STEP)
    h = np.asarray(hashes, dtype=np.uint64)
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    same = doc[:-1] == doc[1:]
    bigram = _mix32((h[:-1][same] * np.uint64(0x9E3779B1) + h[1:][same]) ^ np.uint64(0xB1))
    keys = np.concatenate([h, bigram]) % np.uint64(HASH_BUCKETS)
    docs = np.concatenate([doc, doc[:-1][same]])
    combined = docs * HASH_BUCKETS + keys.astype(np.int64)
    unique, counts = np.unique(combined, return_counts=True)
    return unique // HASH_BUCKETS, unique % HASH_BUCKETS, counts


@functools.cache
def _projection() -> tuple[np.ndarray, np.ndarray]:
    """Return the output dimension and the sign of each hash bucket in the projection."""
    rng = np.random.default_rng(FEATURE_SEED)
    dim = rng.integers(0, PROJECTION_DIMS, HASH_BUCKETS)
    sign = rng.choice(np.array([-1.0, 1.0]), HASH_BUCKETS)
    dim.flags.writeable = sign.flags.writeable = False
    return dim, sign


def featurize(
    texts: Sequence[str],
    prompt_tokens: np.ndarray,
    sources: Sequence[str],
    is_train: np.ndarray,
    progress=None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Return item features ``(N, F)`` float32 and their names (see the module docstring).

    The IDF weights and the principal components are fitted on the rows where
    ``is_train`` is true; no other row changes them. ``prompt_tokens`` is (N,) tokens.
    ``progress``, if given, gets ``update(k)`` calls as items are read.
    """
    n = len(texts)
    is_train = np.asarray(is_train, dtype=bool)
    n_train = int(is_train.sum())
    if n_train == 0:
        raise ValueError("featurize needs at least one training item")

    # TF-IDF of hashed word n-grams, IDF from the training items
    doc, bucket, counts = _ngram_counts(texts, progress)
    df = np.bincount(bucket[is_train[doc]], minlength=HASH_BUCKETS)
    idf = np.log((1.0 + n_train) / (1.0 + df)) + 1.0
    weight = (1.0 + np.log(counts)) * idf[bucket]
    norm = np.sqrt(np.bincount(doc, weights=weight**2, minlength=n))
    weight = weight / np.where(norm > 0, norm, 1.0)[doc]

    # Fixed-seed sparse random projection, then principal components of the train rows
    dim, sign = _projection()
    projected = np.bincount(
        doc * PROJECTION_DIMS + dim[bucket],
        weights=weight * sign[bucket],
        minlength=n * PROJECTION_DIMS,
    ).reshape(n, PROJECTION_DIMS)
    train = projected[is_train]
    mean = train.mean(axis=0)
    centred = train - mean
    if n_train < PROJECTION_DIMS:  # same components, cheaper for small tables
        _, singular, rows = np.linalg.svd(centred, full_matrices=False)
        variance, vectors = singular**2 / n_train, rows.T
    else:
        variance, vectors = np.linalg.eigh(centred.T @ centred / n_train)
    top = np.argsort(variance)[::-1][:TEXT_FEATURES]
    variance, vectors = variance[top], vectors[:, top]
    flip = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(len(top))])
    vectors = vectors * np.where(flip == 0, 1.0, flip)
    scale = np.where(variance > 1e-12, 1.0 / np.sqrt(np.maximum(variance, 1e-12)), 0.0)
    text = np.zeros((n, TEXT_FEATURES))
    text[:, : len(top)] = (projected - mean) @ vectors * scale

    # Prompt length and source
    names = sorted(set(sources))
    onehot = np.zeros((n, len(names)))
    index = {s: i for i, s in enumerate(names)}
    onehot[np.arange(n), [index[s] for s in sources]] = 1.0
    log_tokens = np.log1p(np.asarray(prompt_tokens, dtype=np.float64))[:, None]
    features = np.concatenate([text, log_tokens, onehot], axis=1).astype(np.float32)
    if progress is not None:
        progress.update(n % _PROGRESS_STEP)
    feature_names = (
        *(f"text_{i:02d}" for i in range(TEXT_FEATURES)),
        "log_prompt_tokens",
        *(f"source={s}" for s in names),
    )
    return features, feature_names


# ------------------------------------------------------------------------- split
def split_items(
    sources: Sequence[str], test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> np.ndarray:
    """Return an (N,) bool array marking test items, drawn within each source.

    Each source holds out ``round(test_fraction * n)`` of its ``n`` items, at least one
    and at most ``n - 1`` when ``n >= 2`` (a single item stays in training).
    """
    _check_fraction(test_fraction)
    sources = np.asarray(sources, dtype=object)
    is_test = np.zeros(len(sources), dtype=bool)
    rng = np.random.default_rng([int(seed) & _MASK32, 0x5B17])
    for source in sorted(set(sources.tolist())):
        items = np.flatnonzero(sources == source)
        n = len(items)
        n_test = min(max(round(test_fraction * n), 1), n - 1) if n >= 2 else 0
        is_test[items[rng.permutation(n)[:n_test]]] = True
    return is_test


def _check_fraction(test_fraction) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a number, got {test_fraction!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


# ----------------------------------------------------------------- prepared data
@dataclasses.dataclass(frozen=True, eq=False)
class PreparedReplay:
    """A parsed table with its train/test split and item features, ready for banks."""

    name: str
    table: OutcomeTable
    is_test: np.ndarray
    """(N,) bool: the item belongs to the test split."""
    item_features: np.ndarray
    """(N, F) float32: features of each item (see :func:`featurize`)."""
    feature_names: tuple[str, ...]
    seed: int
    test_fraction: float
    key: str = ""
    """Hash of the inputs and settings (names the cache files)."""
    cache_file: str = ""
    """The ``.npz`` file the data was saved to or loaded from (empty if not cached)."""
    from_cache: bool = False
    """Whether the data was loaded from the cache."""

    def split_items(self, split: str) -> np.ndarray:
        """Return the table rows of a split, ascending."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.is_test == (split == "test"))


def prepare_table(
    table: OutcomeTable,
    name: str = "custom",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    progress=None,
) -> PreparedReplay:
    """Return a table split into train and test items and featurised (not cached)."""
    is_test = split_items(table.sources, test_fraction, seed)
    features, names = featurize(
        table.texts, _item_prompt(table.prompt_tokens), table.sources, ~is_test, progress
    )
    return PreparedReplay(name, table, is_test, features, names, int(seed), test_fraction)


def _item_prompt(prompt_tokens: np.ndarray) -> np.ndarray:
    """Return one prompt count an item: the rounded mean over models, (N,) int64."""
    return np.rint(prompt_tokens.mean(axis=1)).astype(np.int64)


# ------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class ReplaySource:
    """A registered replay suite: where its files lie and how to read them."""

    name: str
    description: str
    models: tuple[str, ...]
    """Default pool, cheapest first (names of :data:`envs.pricing.PRICE_TABLE`)."""
    files: Callable[[Path], list[Path]]
    """Return the input files under a data folder (raise if missing)."""
    load: Callable[[list[Path]], OutcomeTable]
    """Return the table of those files."""


def _gsm8k_files(data_dir: Path) -> list[Path]:
    path = data_dir / "gsm8k_responses.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such outcome table file")
    return [path]


def _mmlu_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "mmlu"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such MMLU folder")
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no mmlu_<subject>.csv files")
    return files


REPLAY_SUITES: dict[str, ReplaySource] = {
    "gsm8k": ReplaySource(
        "gsm8k",
        "GSM8K grade-school maths, 1,319 questions with answer texts (RouteLLM)",
        tuple(ROUTELLM_MODELS.values()),
        _gsm8k_files,
        lambda files: load_routellm_gsm8k(files[0]),
    ),
    "mmlu": ReplaySource(
        "mmlu",
        "MMLU multiple choice, 12,371 questions over 47 subjects (RouteLLM)",
        tuple(ROUTELLM_MODELS.values()),
        _mmlu_files,
        load_routellm_mmlu,
    ),
}
"""Replay suites by name; their data lie in the RouteLLM data folder."""


def data_dir_path(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the RouteLLM data folder: the argument, ``$BUDGETROUTE_DATA`` or default."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"replay data folder {path} not found (from the working directory "
            f"{Path.cwd().name!r}); pass data_dir=... or set ${DATA_ENV}"
        )
    return path


def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache folder: the argument, ``$BUDGETROUTE_CACHE`` or the default."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser()


def prepare_replay(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress=None,
) -> PreparedReplay:
    """Return a registered suite's table, split and features, from the cache if there.

    ``progress``, if given, is called like ``tqdm(total=..., desc=...)`` and must return
    an object with ``update(k)`` and ``close()``; it only runs when nothing is cached.
    """
    if name not in REPLAY_SUITES:
        raise ValueError(f"unknown replay suite {name!r}; known: {sorted(REPLAY_SUITES)}")
    _check_fraction(test_fraction)
    spec = REPLAY_SUITES[name]
    files = spec.files(data_dir_path(data_dir))
    key = _cache_key(name, files, seed, test_fraction)
    folder = cache_dir_path(cache_dir)
    memo_key = (key, str(folder))
    if use_cache and memo_key in _MEMO:
        return _MEMO[memo_key]
    npz = folder / f"replay-{name}-{key[:20]}.npz"
    prepared = _load_cache(npz, key, files) if use_cache else None
    if prepared is None:
        table = spec.load(files)
        bar = progress(total=table.n_items, desc=f"featurise {name}") if progress else None
        try:
            prepared = prepare_table(table, name, seed, test_fraction, bar)
        finally:
            if bar is not None:
                bar.close()
        prepared = dataclasses.replace(prepared, key=key)
        if use_cache:
            _save_cache(prepared, npz)
            prepared = dataclasses.replace(prepared, cache_file=str(npz))
    if use_cache:
        if len(_MEMO) >= 8:
            _MEMO.clear()
        _MEMO[memo_key] = prepared
    return prepared


_MEMO: dict[tuple[str, str], PreparedReplay] = {}
"""Prepared data already loaded in this process, by cache key and cache folder."""


def _cache_key(name: str, files: list[Path], seed: int, test_fraction: float) -> str:
    digest = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "name": name,
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "chars_per_token": CHARS_PER_TOKEN,
        "default_completion_tokens": DEFAULT_COMPLETION_TOKENS,
        "text_features": TEXT_FEATURES,
        "hash_buckets": HASH_BUCKETS,
        "projection_dims": PROJECTION_DIMS,
        "feature_seed": FEATURE_SEED,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


_CACHE_ARRAYS = ("correct", "prompt_tokens", "completion_tokens", "completion_recorded")


def _save_cache(prepared: PreparedReplay, npz: Path) -> None:
    """Write the prepared data atomically as ``<stem>.npz`` and ``<stem>.json``."""
    npz.parent.mkdir(parents=True, exist_ok=True)
    table = prepared.table
    arrays = {k: getattr(table, k) for k in _CACHE_ARRAYS}
    arrays.update(
        origin=table.origin, is_test=prepared.is_test, item_features=prepared.item_features
    )
    meta = {
        "key": prepared.key,
        "name": prepared.name,
        "seed": prepared.seed,
        "test_fraction": prepared.test_fraction,
        "feature_names": list(prepared.feature_names),
        "item_ids": list(table.item_ids),
        "texts": list(table.texts),
        "sources": list(table.sources),
        "models": list(table.models),
    }
    tag = f".{os.getpid()}.tmp"
    tmp_npz, tmp_json = Path(str(npz) + tag), Path(str(npz.with_suffix(".json")) + tag)
    with open(tmp_npz, "wb") as handle:
        np.savez(handle, **arrays)
    tmp_json.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp_json, npz.with_suffix(".json"))
    os.replace(tmp_npz, npz)


def _load_cache(npz: Path, key: str, files: list[Path]) -> PreparedReplay | None:
    """Return the cached data under ``npz`` if it matches ``key``, else None."""
    meta_path = npz.with_suffix(".json")
    if not (npz.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key:
            return None
        with np.load(npz) as data:
            arrays = {k: data[k] for k in data.files}
        table = OutcomeTable(
            item_ids=tuple(meta["item_ids"]),
            texts=tuple(meta["texts"]),
            sources=tuple(meta["sources"]),
            models=tuple(meta["models"]),
            files=tuple(str(p) for p in files),
            origin=arrays["origin"],
            **{k: arrays[k] for k in _CACHE_ARRAYS},
        )
        return PreparedReplay(
            name=meta["name"],
            table=table,
            is_test=arrays["is_test"],
            item_features=arrays["item_features"],
            feature_names=tuple(meta["feature_names"]),
            seed=int(meta["seed"]),
            test_fraction=float(meta["test_fraction"]),
            key=key,
            cache_file=str(npz),
            from_cache=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------ banks
@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """Settings a replay suite was built with (``Suite.config`` of replay suites)."""

    name: str
    """Suite name (a key of :data:`REPLAY_SUITES`, or the name of a custom table)."""
    session_items: int = DEFAULT_SESSION_ITEMS
    """Items a session (task) asks, ``K``."""
    success_rule: str = "all"
    """``"all"``: success needs every item right; ``"share"``: reward is the share."""
    history: bool = True
    """Prompts carry the session's earlier questions and answers."""
    seed: int = 0
    """Seed of the train/test split and of the sessions."""
    test_fraction: float = DEFAULT_TEST_FRACTION
    """Share of each source's items in the test split."""
    passes: int = 1
    """Shuffled passes over each split's items (each makes its own sessions)."""
    feedback: bool = False
    """Show ``PROGRESS`` after right and ``ERROR`` after wrong answers (under the
    ``"all"`` rule every call after the first wrong answer shows ``ERROR``)."""

    def __post_init__(self) -> None:
        for name in ("session_items", "passes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("history", "feedback"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(
                    f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        object.__setattr__(self, "history", bool(self.history))
        object.__setattr__(self, "feedback", bool(self.feedback))
        object.__setattr__(self, "seed", check_seed(self.seed))
        if not isinstance(self.success_rule, str) or self.success_rule not in SUCCESS_RULES:
            raise ValueError(
                f"success_rule must be one of {sorted(SUCCESS_RULES)}, "
                f"got {self.success_rule!r}"
            )
        _check_fraction(self.test_fraction)


def build_banks(
    prepared: PreparedReplay, model_index: Sequence[int], config: ReplayConfig
) -> dict[str, core.TaskBank]:
    """Return the task bank of each split for the table columns ``model_index``."""
    table = prepared.table
    pick = np.asarray(model_index)
    correct = table.correct[:, pick]
    prompt = _item_prompt(table.prompt_tokens[:, pick])
    completion = table.completion_tokens[:, pick].astype(np.int64)
    answer = np.rint(completion.mean(axis=1)).astype(np.int64)
    banks = {}
    for s, split in enumerate(SPLITS):
        index = _sessions(prepared, split, config, s)
        banks[split] = _bank(
            prepared, config, split, index, correct, prompt, completion, answer
        )
    return banks


def _sessions(prepared: PreparedReplay, split: str, config: ReplayConfig, code: int):
    """Return (n, K) table rows of each session of a split, ``-1`` after the last item."""
    k_max = config.session_items
    rng = np.random.default_rng([int(config.seed) & _MASK32, code, 0x5E55])
    sources = np.asarray(prepared.table.sources, dtype=object)
    rows = prepared.split_items(split)
    sessions = []
    for source in sorted(set(sources[rows].tolist())):
        items = rows[sources[rows] == source]
        n = len(items)
        k = min(k_max, n)
        for _ in range(config.passes):
            order = items[rng.permutation(n)]
            for start in range(0, n, k):
                session = np.full(k_max, -1, dtype=np.int64)
                session[:k] = order[(start + np.arange(k)) % n]
                sessions.append(session)
    if not sessions:
        raise ValueError(f"replay suite {prepared.name!r}: the {split} split has no items")
    return np.stack(sessions)


def _bank(prepared, config, split, index, correct, prompt, completion, answer):
    n, k = index.shape
    valid = index >= 0
    length = valid.sum(axis=1)
    last = index[np.arange(n), length - 1]
    safe = np.where(valid, index, last[:, None])

    p_success = np.where(valid[..., None], correct[safe], True).astype(np.float32)
    lost = 1.0 if config.success_rule == "all" else 0.0
    p_lost = np.where(valid, lost, 0.0).astype(np.float32)
    step_prompt = prompt[safe]
    if config.history:
        earlier = np.where(valid, prompt[safe] + answer[safe], 0)
        step_prompt = step_prompt + np.cumsum(earlier, axis=1) - earlier
        step_prompt = np.where(
            valid, step_prompt, step_prompt[np.arange(n), length - 1][:, None]
        )
    if step_prompt.max(initial=0) >= 2**31:
        raise ValueError(
            f"replay suite {config.name!r}: a session's prompt reaches "
            f"{int(step_prompt.max())} tokens with its history; use shorter sessions or "
            "history=False"
        )
    comp = completion[safe].astype(np.int32)

    item_features = prepared.item_features[safe] * valid[..., None]
    n_text = TEXT_FEATURES + 1
    mean_text = item_features[..., :n_text].sum(axis=1) / length[:, None]
    features = np.concatenate([item_features[:, 0], mean_text], axis=1)

    if k == 1 and config.passes == 1:
        ids = tuple(prepared.table.item_ids[i] for i in index[:, 0])
    else:
        ids = tuple(f"{config.name}-{split}-{i:05d}" for i in range(n))
    return core.TaskBank(
        ids=ids,
        n_subgoals=length.astype(np.int32),
        p_success=p_success,
        p_derail=np.zeros((n, k), np.float32),
        p_lost=p_lost,
        prompt_tokens=step_prompt.astype(np.int32),
        completion_lo=comp,
        completion_hi=comp.copy(),
        features=features.astype(np.float32),
        step_features=item_features.astype(np.float32),
        latent={"item_index": index.astype(np.int32)},
    )


def session_feature_names(item_feature_names: Sequence[str]) -> tuple[str, ...]:
    """Return the names of a replay bank's ``features`` columns."""
    mean = [f"mean_{n}" for n in item_feature_names[: TEXT_FEATURES + 1]]
    return (*(f"first_{n}" for n in item_feature_names), *mean)


# ------------------------------------------------------------------------ suites
def replay_suite(
    name: str,
    models: Sequence | None = None,
    seed: int = 0,
    session_items: int = DEFAULT_SESSION_ITEMS,
    success_rule: str = "all",
    history: bool = True,
    data_dir: str | os.PathLike | None = None,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    passes: int = 1,
    feedback: bool = False,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Suite:
    """Return a registered replay suite (``"gsm8k"`` or ``"mmlu"``) as a :class:`Suite`.

    Args:
        name: a key of :data:`REPLAY_SUITES`.
        models: the pool, cheapest first, as for :func:`envs.pricing.make_pool`; every
            name must be a model of the table. Default: the table's models.
        seed: seed of the train/test split and of the sessions.
        session_items: items a task asks (``K``).
        success_rule: ``"all"`` (every item right) or ``"share"`` (share of items right).
        history: prompts carry the session's earlier questions and answers.
        data_dir: the RouteLLM data folder; default ``$BUDGETROUTE_DATA`` or
            ``../shared/data/routellm`` from the working directory.
        test_fraction: share of each source's items held out for the test split.
        passes: shuffled passes over each split (more, different sessions).
        feedback: show ``PROGRESS``/``ERROR`` after right/wrong answers (default none).
        cache_dir: cache folder; default ``$BUDGETROUTE_CACHE`` or ``~/.cache/budgetroute``.
        use_cache: read and write the cache.
    """
    config = ReplayConfig(
        name=name,
        session_items=session_items,
        success_rule=success_rule,
        history=history,
        seed=seed,
        test_fraction=test_fraction,
        passes=passes,
        feedback=feedback,
    )
    prepared = prepare_replay(name, data_dir, seed, test_fraction, cache_dir, use_cache)
    default = REPLAY_SUITES[name].models
    return _suite(prepared, default if models is None else models, config)


def table_suite(
    table: OutcomeTable,
    name: str = "custom",
    models: Sequence | None = None,
    seed: int = 0,
    session_items: int = DEFAULT_SESSION_ITEMS,
    success_rule: str = "all",
    history: bool = True,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    passes: int = 1,
    feedback: bool = False,
) -> Suite:
    """Return a replay suite of your own outcome table (see :func:`replay_suite`).

    ``models`` defaults to the table's models, which must then be priced in
    :data:`envs.pricing.PRICE_TABLE`; pass :class:`envs.pricing.ModelPrice` entries (or
    mappings) named as in the table to price others.
    """
    config = ReplayConfig(
        name=name,
        session_items=session_items,
        success_rule=success_rule,
        history=history,
        seed=seed,
        test_fraction=test_fraction,
        passes=passes,
        feedback=feedback,
    )
    prepared = prepare_table(table, name, seed, test_fraction)
    return _suite(prepared, table.models if models is None else models, config)


def _suite(prepared: PreparedReplay, models: Sequence, config: ReplayConfig) -> Suite:
    table = prepared.table
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise TypeError(f"models must be a sequence of models, got {models!r}")
    names = [_model_name(m) for m in models]
    for model in names:
        if model is not None and model not in table.models:
            table.select_models([model])  # raises, naming the file and the field
    pool = make_pool(models)
    index = [table.models.index(p.name) for p in pool]
    m = len(pool)
    shown = 1.0 if config.feedback else 0.0
    dynamics = Dynamics(
        p_recover=(0.0,) * m,
        feedback_progress_seen=shown,
        feedback_error_on_failure=shown,
        feedback_error_derailed=shown,
        feedback_false_progress=0.0,
        advance_on_failure=True,
        success_rule=SUCCESS_RULES[config.success_rule],
    )
    banks = build_banks(prepared, index, config)
    return Suite(config.name, pool, dynamics, banks, config)


def _model_name(entry) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, ModelPrice):
        return entry.name
    if isinstance(entry, dict):
        return entry.get("name")
    return None
