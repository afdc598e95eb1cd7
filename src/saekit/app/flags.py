"""Command-line flags made from the configuration dataclasses: one flag per field, parsed
to the field's declared type when argparse reads it (1e-3 is a float, 0.9,0.999 a pair),
its help the field's own documentation; and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from .._runtime.errors import ConfigValueError
from .._runtime.parsing import coerce, describe, example, field_docs, field_types, format_value


# ---- a parser whose errors are one line ---------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def value_type(annotation: Any, flag: str, default: Any = None):
    """An argparse ``type=``: text parsed to ``annotation``, or a message naming what is
    allowed with an example."""

    def parse(text: str) -> Any:
        try:
            return coerce(text, annotation, flag)
        except ConfigValueError:
            raise argparse.ArgumentTypeError(
                f"must be {describe(annotation)}, got {text!r} (for example {flag} {example(annotation, default)})"
            ) from None

    parse.__name__ = describe(annotation)  # argparse names the type in some messages
    return parse


def add_dataclass_flags(
    parser, cls: type, *, prefix: str = "", skip: Sequence[str] = (), flags: dict | None = None
) -> None:
    """One flag per field of ``cls``: ``--prefix.field`` with a prefix, else ``--field-name``."""
    docs, types = field_docs(cls), field_types(cls)
    defaults = (
        cls()
        if all(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            for f in dataclasses.fields(cls)
        )
        else None
    )
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f"--{prefix}{f.name}" if prefix else f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name) if defaults is not None else None
        help_text = docs.get(f.name, "")
        if defaults is not None:
            help_text += f" (default: {format_value(default) if not isinstance(default, dict) else default})"
        extra: dict[str, Any] = {}
        if types[f.name] is bool:
            extra = {"nargs": "?", "const": True}  # --fit-scale alone means true
        parser.add_argument(
            flag,
            dest=f"{prefix}{f.name}",
            type=value_type(types[f.name], flag, default),
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=help_text.replace("%", "%%"),
            **extra,
        )
        if flags is not None:
            flags[f"{prefix}{f.name}"] = flag


def collected(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {
        key[len(prefix) :]: value
        for key, value in vars(args).items()
        if key.startswith(prefix) and key[len(prefix) :] in names
    }


# ---- reading what the user typed ----------------------------------------------------------
_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--lr -1e-3`` as ``--lr=-1e-3``: argparse would read -1e-3 as a flag and say only
    "expected one argument"; joined, the flag's own check says what is wrong with it."""
    out: list[str] = []
    for token in argv:
        if out and _NEGATIVE_NUMBER.fullmatch(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def flag_message(args: argparse.Namespace, error: ConfigValueError) -> str:
    """An error about a config field, named as the flag the user typed where there is one."""
    flags = getattr(args, "_flags", {}) or {}
    field = error.field or ""
    for candidate in (field, field.split(": ")[-1], field.removeprefix("sae.")):
        if candidate in flags:
            message = str(error)
            return f"{flags[candidate]}: {message}"
    return str(error)
