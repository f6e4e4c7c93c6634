"""One schema for command-line flags and recipe fields: typed dataclass fields with their checks.

A field declared with `option` carries its help text, its allowed values or range, and whether
it is a flag. `check_fields` validates an instance (types first, then values) and raises
`OptionError` naming the field; `add_flags` turns the same fields into argparse flags and
`from_namespace` reads them back, so the CLI and a YAML recipe share one validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Sequence

from sparsify.errors import SparsifyError


class OptionError(SparsifyError):
    """A field of an options object (a flag, or a recipe field) has a wrong type or value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = message


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A numeric range with open or closed ends, printed like ``[0, 1)``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if isinstance(v, float) and math.isnan(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, bounds: Bounds | None = None,
           flag: bool = True, metavar: str | None = None) -> Any:
    """A dataclass field with the metadata `check_fields` and `add_flags` read."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "bounds": bounds, "flag": flag,
            "metavar": metavar}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(tp: Any) -> tuple[tuple[type, ...], bool]:
    """(accepted Python types, whether None is accepted) for an annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        accepted: tuple[type, ...] = ()
        for a in inner:
            accepted += _allowed(a)[0]
        return accepted, type(None) in args
    if origin is not None:
        return (origin,), False
    return (tp,), False


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
               list: "a list"}


def check_type(name: str, value: Any, tp: Any) -> Any:
    """``value`` if it has the annotated type (an int is accepted as a float; a bool is not a number)."""
    accepted, nullable = _allowed(tp)
    if value is None:
        if nullable:
            return None
        raise OptionError(name, f"{name} should be {_TYPE_NAMES.get(accepted[0], accepted[0].__name__)}, not empty")
    if isinstance(value, bool) and bool not in accepted:
        ok = False
    elif float in accepted and isinstance(value, int):
        return float(value)
    else:
        ok = isinstance(value, accepted)
    if not ok:
        want = " or ".join(_TYPE_NAMES.get(a, a.__name__) for a in accepted)
        raise OptionError(name, f"{name} should be {want}{' (or empty)' if nullable else ''}; got {value!r} "
                                f"({type(value).__name__})")
    return value


def check_fields(obj: Any) -> None:
    """Check every field's type, choices and range; raise `OptionError` naming the first bad one."""
    hints = _types(type(obj))
    for f in dataclasses.fields(obj):
        value = check_type(f.name, getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)
        if value is None:
            continue
        choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
        if choices and value not in choices:
            raise OptionError(f.name, f"{f.name}={value!r} should be one of {', '.join(map(str, choices))}")
        if bounds is not None and value not in bounds:
            kind = "a float" if isinstance(value, float) else "an integer"
            raise OptionError(f.name, f"{f.name}={value!r} should be {kind} {bounds}")


def build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """An instance of ``cls`` from a mapping; unknown keys are errors that list the known ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise OptionError(unknown[0], f"unknown field {unknown[0]!r}{where}; expected one of {', '.join(names)}")
    return cls(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (),
              defaults: dict[str, Any] | None = None, rename: dict[str, str] | None = None) -> None:
    """One argparse flag per flag field of ``cls`` (``--round-to`` for ``round_to``).

    Flags parse to None when absent, so `from_namespace` can tell a given flag from the
    dataclass default; the default is shown in the help.
    """
    hints = _types(cls)
    rename = rename or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        accepted, _ = _allowed(hints[f.name])
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default is not None and default is not False else "")
        flag = rename.get(f.name, _flag(f.name))
        if accepted[0] is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
            continue
        parser.add_argument(flag, dest=f.name, type=accepted[0], default=None, help=help_text,
                            choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"))


def from_namespace(cls: type, args: argparse.Namespace, defaults: dict[str, Any] | None = None,
                   **extra: Any) -> Any:
    """An instance of ``cls`` from parsed flags (absent flags take ``defaults`` or the field default)."""
    values: dict[str, Any] = dict(defaults or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update(extra)
    return cls(**values)


def given(obj: Any) -> dict[str, Any]:
    """The fields of ``obj`` that differ from their defaults (what a user set)."""
    out = {}
    for f in dataclasses.fields(obj):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if getattr(obj, f.name) != default:
            out[f.name] = getattr(obj, f.name)
    return out

