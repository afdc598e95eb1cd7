"""Typed configuration at the boundary: every value that enters saekit from a config
file, a command-line flag or a keyword argument is parsed to its dataclass field's
declared type and checked against the constraints the annotation carries, and each
field's docstring is read from the source so that help texts come from one place.

    lr: PositiveFloat = 4e-4            # Annotated[float, Range(gt=0)]
    \"\"\"Peak Adam learning rate.\"\"\"

Text is accepted for every non-string type, so "1e-3" and "-1e-3" are floats, "0.9,0.999"
is a pair and "none" is None, whether it came from a flag or from YAML (which reads
``1e-3`` as a string). A value that does not fit raises :class:`ConfigValueError` naming
the field, what it got and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from .errors import ConfigValueError

# ---- constraints carried by annotations ----------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A numeric bound: ge/gt below, le/lt above (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}"
        if high:
            return f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}"
        return ""


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")


@dataclass(frozen=True)
class DeviceName:
    """A torch device string: cpu, cuda, cuda:N, mps, xpu (or "auto" where allowed)."""

    allow_auto: bool = False

    def holds(self, value: str) -> bool:
        return (self.allow_auto and value == "auto") or _DEVICE.fullmatch(value) is not None

    def describe(self) -> str:
        return "cpu, cuda, cuda:N or mps" + (" (or auto)" if self.allow_auto else "")


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, lt=1)]
"""A share in [0, 1)."""
OpenFraction = Annotated[float, Range(gt=0, lt=1)]
UnitInterval = Annotated[float, Range(ge=0, le=1)]
Device = Annotated[str, DeviceName()]
DeviceOrAuto = Annotated[str, DeviceName(allow_auto=True)]
Betas = tuple[Annotated[float, Range(ge=0, lt=1)], Annotated[float, Range(ge=0, lt=1)]]


# ---- field documentation -------------------------------------------------------------------


@functools.cache
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


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: its annotation, with Annotated metadata kept}."""
    return typing.get_type_hints(cls, include_extras=True)


# ---- building dataclasses ------------------------------------------------------------------


def from_dict(cls: type, data: Any, *, where: str) -> Any:
    """cls(**data) with unknown fields and wrongly typed values reported by name; nested
    dataclass fields are built from nested tables. ``where`` says where the values came
    from, e.g. "run.toml" (messages then read "run.toml [train] lr must be ...")."""
    if not isinstance(data, dict):
        raise ConfigValueError(f"{where}: expected a table of fields, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = {name: _closest(name, fields) for name in unknown}
        hints = "; ".join(f"{name!r} (did you mean {match!r}?)" for name, match in close.items() if match)
        raise ConfigValueError(
            f"{where}: unknown field(s) {unknown}"
            + (f": {hints}" if hints else "")
            + f"; the fields are {sorted(fields)}.",
            field=unknown[0],
        )
    types_ = field_types(cls)
    values = {}
    for name, value in data.items():
        kind = _strip(types_[name])
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            values[name] = from_dict(kind, value if value is not None else {}, where=f"{where} [{name}]")
        else:
            values[name] = coerce(value, types_[name], f"{where}: {name}" if where else name)
    try:
        return cls(**values)
    except ConfigValueError as error:
        message = str(error)
        raise ConfigValueError(
            message if message.startswith(where) else f"{where}: {message}",
            field=error.field,
            value=error.value,
            requirement=error.requirement,
        ) from None


def validate_fields(instance: Any) -> None:
    """Parse every field of a dataclass instance to its declared type in place (so that
    keyword arguments from Python get the same checks as config files)."""
    for name, annotation in field_types(type(instance)).items():
        if name.startswith("_") or name not in {f.name for f in dataclasses.fields(instance)}:
            continue
        kind = _strip(annotation)
        value = getattr(instance, name)
        if dataclasses.is_dataclass(kind) and isinstance(kind, type) and dataclasses.is_dataclass(value):
            continue
        object.__setattr__(instance, name, coerce(value, annotation, name))


def _closest(name: str, options) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.7)
    return match[0] if match else None


def _strip(annotation: Any) -> Any:
    """The annotation without Annotated metadata or Optional."""
    if typing.get_origin(annotation) is Annotated:
        return _strip(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _strip(options[0])
    return annotation


def _fail(label: str, annotation: Any, value: Any) -> ConfigValueError:
    requirement = describe(annotation)
    shown = repr(value) if not isinstance(value, str) else repr(value)
    return ConfigValueError(
        f"{label} must be {requirement}, got {shown}.", field=label, value=value, requirement=requirement
    )


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_NONE = {"none", "null", ""}


def coerce(value: Any, annotation: Any, label: str) -> Any:
    """``value`` parsed to ``annotation`` (text is parsed for every non-string type),
    constraints checked; raises ConfigValueError naming ``label``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:
        base, *constraints = args
        try:
            parsed = coerce(value, base, label)
        except ConfigValueError:
            raise _fail(label, annotation, value) from None
        for constraint in constraints:
            if hasattr(constraint, "holds") and parsed is not None and not constraint.holds(parsed):
                raise _fail(label, annotation, value)
        return parsed
    if origin in (Union, types.UnionType):
        if value is None or (
            isinstance(value, str) and value.strip().lower() in _NONE and type(None) in args and str not in args
        ):
            if type(None) in args:
                return None
        for option in args:
            if option is type(None):
                continue
            try:
                return coerce(value, option, label)
            except ConfigValueError:
                pass
        raise _fail(label, annotation, value)
    if annotation is type(None):
        if value is None:
            return None
        raise _fail(label, annotation, value)
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, str):
            for option in args:
                if not isinstance(option, str) and _text_equals(value, option):
                    return option
        raise _fail(label, annotation, value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _fail(label, annotation, value)
    if annotation is int:
        number = _as_number(value)
        if isinstance(number, int) and not isinstance(number, bool):
            return number
        if isinstance(number, float) and math.isfinite(number) and number.is_integer() and not isinstance(value, bool):
            return int(number)
        raise _fail(label, annotation, value)
    if annotation is float:
        number = _as_number(value)
        if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
            return float(number)
        raise _fail(label, annotation, value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _fail(label, annotation, value)
    if origin in (tuple, list):
        items = value
        if isinstance(value, str):
            items = [part for part in re.split(r"[,\s]+", value.strip().strip("[]()")) if part]
        if not isinstance(items, (list, tuple)):
            raise _fail(label, annotation, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise _fail(label, annotation, value)
            try:
                return tuple(coerce(v, a, label) for v, a in zip(items, args))
            except ConfigValueError:
                raise _fail(label, annotation, value) from None
        item = args[0] if args else Any
        try:
            return origin(coerce(v, item, label) for v in items)
        except ConfigValueError:
            raise _fail(label, annotation, value) from None
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            return _parse_table(value, label, annotation)
        raise _fail(label, annotation, value)
    return value


def _text_equals(text: str, option: Any) -> bool:
    try:
        return _as_number(text) == option
    except ConfigValueError:
        return False


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        try:
            number = float(text)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _parse_table(text: str, label: str, annotation: Any) -> dict[str, Any]:
    """A dict from text: a JSON object, or key=value pairs separated by commas."""
    text = text.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise _fail(label, annotation, text) from None
        if isinstance(parsed, dict):
            return parsed
        raise _fail(label, annotation, text)
    table: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise _fail(label, annotation, text)
        table[key.strip()] = raw.strip()
    return table


def describe(annotation: Any) -> str:
    """What a value of this type looks like, in words: "a number > 0", "one of 'a', 'b'"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base, *constraints = args
        words = [c.describe() for c in constraints if hasattr(c, "describe") and c.describe()]
        if any(isinstance(c, DeviceName) for c in constraints):
            return "a device: " + words[0]
        return describe(base) + (" " + " and ".join(words) if words else "")
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        text = " or ".join(describe(a) for a in options)
        return text + (" (or none)" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None):
        return "none"
    if origin is tuple and args and args[-1] is not Ellipsis:
        inner = {describe(a) for a in args}
        what = inner.pop() if len(inner) == 1 else " , ".join(describe(a) for a in args)
        return f"{len(args)} values separated by a comma, each {what.removeprefix('a ').removeprefix('an ')}"
    if origin in (tuple, list):
        return f"a comma-separated list of {describe(args[0]) if args else 'values'}"
    if origin is dict or annotation is dict:
        return "a table (key=value,key=value or a JSON object)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, str(annotation)
    )


def example(annotation: Any, default: Any) -> str:
    """A value of this type as it would be typed on the command line (for messages)."""
    if default is not None and default is not dataclasses.MISSING and not isinstance(default, dict):
        return format_value(default)
    kind = _strip(annotation)
    if typing.get_origin(kind) is Literal:
        return str(typing.get_args(kind)[0])
    return {int: "100", float: "0.001", str: "text", bool: "true"}.get(kind, "...")


def format_value(value: Any) -> str:
    """A value as command-line text: 0.9,0.999 for a pair, true/false, 0.0004."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    return str(value)
