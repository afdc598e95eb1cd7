"""Build dataclasses from untyped input (TOML, YAML, JSON, command-line flags), checking
every value against the field's type annotation, and read each field's docstring so
that help texts and documentation come from the one place that defines the field."""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, Union


class ConfigValueError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the string literal written right below it in the class body}."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def from_dict(cls: type, data: dict[str, Any], *, where: str) -> Any:
    """cls(**data) with unknown fields and wrongly typed values reported by name
    (``where`` says where the values came from, e.g. "run.toml [train]")."""
    if not isinstance(data, dict):
        raise ConfigValueError(f"{where}: expected a table of fields, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigValueError(f"{where}: unknown field(s) {unknown}; the fields are {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            values[name] = from_dict(hints[name], value, where=f"{where} [{name}]")
        else:
            values[name] = coerce(value, hints[name], f"{where}: {name}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        message = str(error)
        raise ConfigValueError(message if message.startswith(where) else f"{where}: {message}") from None


def coerce(value: Any, annotation: Any, label: str) -> Any:
    """Return value if it fits annotation (ints are accepted for floats, lists for tuples)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return coerce(value, option, label)
            except ConfigValueError as error:
                errors.append(str(error))
        raise ConfigValueError(f"{label} must be {describe(annotation)}, got {value!r}.")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigValueError(f"{label} must be null, got {value!r}.")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigValueError(f"{label} must be one of {list(args)}, got {value!r}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise ConfigValueError(f"{label} must have {len(args)} items, got {len(value)}.")
                return tuple(coerce(v, a, label) for v, a in zip(value, args))
            item = args[0] if args else Any
            return origin(coerce(v, item, label) for v in value)
    elif origin is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigValueError(f"{label} must be {describe(annotation)}, got {value!r} ({type(value).__name__}).")


def describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin in (tuple, list):
        return f"a list of {describe(args[0]) if args else 'values'}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(annotation, str(annotation))
