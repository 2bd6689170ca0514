"""Typed dataclass trees from plain values (YAML, dotted overrides), with one-line errors.

The schema is the dataclass tree itself: each leaf value is checked against (and
coerced to) its field's annotation, so config types owned by other packages need no
extra declarations. `ConfigError` is the one error type of configuration.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

from deqdist.errors import UserError

INT_LIMIT = 2**31


class ConfigError(UserError):
    """A bad configuration value, key, file or combination."""


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def plain(x):
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def _type_name(t) -> str:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        return "a list"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(t, str(t))


def coerce(value: Any, t: Any, key: str) -> Any:
    origin = typing.get_origin(t)
    if t is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, t, key)
    if origin is tuple or t is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, t)
        args = typing.get_args(t)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key} must be a list of {len(args)} items, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if t is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, t)
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:  # counters and sizes end up in int32 arrays
                raise ConfigError(f"{key} must fit in 32 bits (|value| < {INT_LIMIT}), got {value}")
            return value
        raise _type_error(key, value, t)
    if t is float:
        return _coerce_float(value, key)
    if t is str:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"{key} is not valid UTF-8 text: {value!r}") from None
            return value
        raise _type_error(key, value, t)
    return value


def _coerce_union(value: Any, t: Any, key: str) -> Any:
    """The first member of the union `t` that takes value (None for an Optional's None)."""
    args = typing.get_args(t)
    if value is None and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, key)
        except ConfigError:
            pass
    raise _type_error(key, value, t)


def _coerce_float(value: Any, key: str) -> float:
    f = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            f = float(value)
        except OverflowError:
            f = math.inf
    elif isinstance(value, str):
        # PyYAML reads 3e-4 (no dot) as a string.
        try:
            f = float(value)
        except ValueError:
            pass
    if f is None:
        raise _type_error(key, value, float)
    if not math.isfinite(f):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return f


def _type_error(key: str, value: Any, t: Any) -> ConfigError:
    return ConfigError(f"{key} must be {_type_name(t)}, got {value!r} ({type(value).__name__})")


def build(cls, values: Mapping[str, Any], prefix: str):
    """Instantiate `cls` from {dotted key: value}, coercing leaves to their field types."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        t = hints(cls)[f.name]
        if is_dataclass_type(t):
            kwargs[f.name] = build(t, values, key)
        elif key in values:
            kwargs[f.name] = coerce(values[key], t, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None
