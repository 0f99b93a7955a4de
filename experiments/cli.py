"""Command-line flags from typed config dataclasses: one flag per field, with its help."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path


def option(default, help: str, **kwargs):  # noqa: A002 (mirrors argparse)
    """Return a dataclass field with a default and the help text of its flag."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _parser_for(tp):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        base = _parser_for(inner[0])
        return lambda s: None if s.lower() in ("none", "") else base(s)
    if origin in (tuple, list):
        base = _parser_for(args[0]) if args else str
        return lambda s: tuple(base(x) for x in s.split(",") if x.strip())
    if tp is bool:
        return _parse_bool
    return tp


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


def parse_config(config_cls, argv=None, description: str | None = None):
    """Return an instance of ``config_cls`` built from command-line flags.

    Every field becomes ``--field-name``; tuples are given comma-separated, booleans as
    ``true``/``false``, optional values as ``none``.
    """
    parser = argparse.ArgumentParser(
        description=description or config_cls.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "") + _format_hint(hints[f.name])
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parser_for(hints[f.name]),
            default=default,
            help=help_text,
            metavar=f.name.upper(),
        )
    ns = parser.parse_args(argv)
    try:
        return config_cls(**vars(ns))
    except (TypeError, ValueError) as err:
        parser.error(str(err))


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
