"""Command-line flags from typed config dataclasses: one flag per field, with its help."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import types
import typing
from pathlib import Path

from agents.checkpoint import CorruptCheckpointError, IncompatibleCheckpointError
from agents.pipeline import RunFolderError


def option(default, help: str, **kwargs):  # noqa: A002 (mirrors argparse)
    """Return a dataclass field with a default and the help text of its flag."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _named(parse, name: str):
    """Give a flag's parser the name argparse shows in "invalid <name> value"."""
    parse.__name__ = name
    return parse


def _parser_for(tp):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        base = _parser_for(inner[0])
        parse = lambda s: None if s.lower() in ("none", "") else base(s)  # noqa: E731
        return _named(parse, f"{base.__name__} or none")
    if origin in (tuple, list):
        base = _parser_for(args[0]) if args else str
        parse = lambda s: tuple(base(x) for x in s.split(",") if x.strip())  # noqa: E731
        return _named(parse, f"comma-separated {base.__name__}")
    if tp is bool:
        return _parse_bool
    return tp


def _as_flag(value) -> str:
    """Write a default the way it is given on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(_as_flag(v) for v in value)
    return str(value)


def _format_hint(tp) -> str:
    text = str(tp)
    if tp is bool or "bool" in text and "tuple" not in text:
        return " (true or false)"
    if "tuple" in text or "list" in text:
        return " (comma-separated)"
    if "None" in text:
        return " (or none)"
    return ""


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _prog() -> str:
    """Return the command the script was run as (``python -m experiments.<name>``)."""
    script = Path(sys.argv[0])
    if script.parent.name == "experiments":
        return f"python -m experiments.{script.stem}"
    return script.name


def run_main(main, argv=None) -> int:
    """Run a script's ``main(argv)``; return its exit status. A run folder or checkpoint
    that cannot be used as asked is reported in one line (status 2), as a bad flag is."""
    try:
        main(argv)
    except (RunFolderError, IncompatibleCheckpointError, CorruptCheckpointError) as err:
        print(f"{_prog()}: error: {err}", file=sys.stderr)
        return 2
    return 0


def parse_config(config_cls, argv=None, description: str | None = None):
    """Return an instance of ``config_cls`` built from command-line flags.

    Every field becomes ``--field-name``; tuples are given comma-separated, booleans as
    ``true``/``false``, optional values as ``none``. ``--config PATH`` reads field
    values from a JSON object first (see :func:`load_config_file`); flags given on the
    command line override them.
    """
    # No abbreviations: the pre-parser below must see --config as this parser does, and
    # a shortened or mistyped flag is an error, never another flag
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=description or config_cls.__doc__,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        dest=_CONFIG_DEST,
        default=None,
        metavar="PATH",
        help="JSON file of field values (an object keyed by field name); flags given "
        "on the command line override it.",
    )
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "") + _format_hint(hints[f.name])
        help_text += f" (default: {_as_flag(default)})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parser_for(hints[f.name]),
            default=default,
            help=help_text,
            metavar=f.name.upper(),
        )
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", dest=_CONFIG_DEST, default=None)
    path = getattr(pre.parse_known_args(argv)[0], _CONFIG_DEST)
    if path is not None:
        try:
            parser.set_defaults(**load_config_file(config_cls, path))
        except ValueError as err:
            parser.error(str(err))
    values = vars(parser.parse_args(argv))
    values.pop(_CONFIG_DEST)
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))


_CONFIG_DEST = "_config_file"


def load_config_file(config_cls, path: str | Path) -> dict:
    """Return the field values of ``config_cls`` stored in the JSON file ``path``.

    The file holds one object keyed by field name (``-`` may stand for ``_``); lists
    give tuple fields, ``null`` an optional value, and a string is read as the flag
    would read it. Raises ``ValueError`` naming the file for an unreadable file, bad
    JSON (with its line and column), an unknown key or a value of the wrong type.
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"config file {path}: cannot read it ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"config file {path}, line {err.lineno}, column {err.colno}: "
            f"invalid JSON ({err.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a JSON object of field values")
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"config file {path}: unknown key {key!r} "
                f"(not a field of {config_cls.__name__}){hint}"
            )
        try:
            values[name] = _from_json(hints[name], value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"config file {path}: key {key!r}: {err}") from None
    return values


def _from_json(tp, value):
    """Return a JSON ``value`` as the field type ``tp`` wants it."""
    if isinstance(value, str) and tp is not str:
        return _parser_for(tp)(value)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _from_json(next(a for a in args if a is not type(None)), value)
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(_from_json(args[0], v) if args else v for v in value)
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise TypeError(f"expected {tp.__name__}, got {value!r}")
        return value
    if tp is int or tp is float:
        ok = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            raise TypeError(f"expected {tp.__name__}, got {value!r}")
        return tp(value)
    return value


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def format_table(rows: list[dict], columns: list[str], formats: dict | None = None) -> str:
    """Return rows as an aligned text table (a Markdown pipe table)."""
    formats = formats or {}
    cells = [[_fmt(r.get(c), formats.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(vals):
        padded = (v.ljust(w) for v, w in zip(vals, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    out = [line(columns), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _fmt(v, spec):
    if v is None:
        return "-"
    if spec:
        return format(v, spec)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
