"""Typed configs: a plain mapping (or an OmegaConf/Hydra container) -> a (nested) dataclass.

Every config group of the project maps onto a dataclass (DESIGN.md); this is the one loader
that builds them, so a YAML file and its dataclass match field for field:

* a key the dataclass does not have is an error that names its full dotted path, the dataclass
  and the keys it knows (`unknown key 'policy.mlp.widht' for MLPDenoiserConfig; known: ...`);
* a key left out takes the field's default (an error if the field has none);
* nested dataclasses are built from nested mappings, `Optional[...]` / `X | None` take None,
  lists become tuples where the field is a tuple (by its type or its default) and tuples
  become lists where it is a list; `Literal[...]` values are checked;
* scalar values are checked against `bool` / `int` / `float` / `str` annotations (an int is
  accepted for a float and converted), so `steps: "1e4"` is an error rather than a string
  that fails much later; fields of other types are passed through for the dataclass itself
  (its `__post_init__`) to judge;
* OmegaConf interpolations are resolved first (`${obs.cameras}` refers to the root config).

    >>> cfg = from_mapping(PolicyConfig, hydra_cfg.policy, where="policy")

Nothing of the project is imported here (data/ is the bottom layer); OmegaConf is optional.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

__all__ = ["ConfigKeyError", "ConfigTypeError", "from_mapping", "to_plain"]

_MISSING = dataclasses.MISSING


class ConfigKeyError(KeyError):
    """An unknown (typo'd) or missing config key."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(TypeError, ValueError):
    """A config value of the wrong type, or not among a Literal's choices (a ValueError too, for
    callers that catch bad values as such)."""


def to_plain(x: Any) -> Any:
    """OmegaConf containers (interpolations resolved) and nested mappings/lists -> plain python
    dicts/lists; anything else (dataclass instances included) is returned as is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - the loader works on plain mappings without it
        DictConfig = ListConfig = ()  # type: ignore[assignment]
    if DictConfig and isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, Mapping):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_plain(v) for v in x)
    return x


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_hints(cls) -> dict[str, Any]:
    """The resolved field types of a dataclass, or {} when they cannot be resolved (then only
    the defaults guide the conversion)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - NameError/TypeError from unresolvable annotations
        return {}


def _type_name(tp: Any) -> str:
    """`bool or 'auto'`, `str or None`, `tuple[int, int]`: a type as an error message says it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if _is_union(origin):
        return " or ".join(_type_name(a) for a in args)
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str = ""):
    """Build dataclass `cls` from `mapping` (see the module docstring). `where` is the dotted
    path of `mapping` inside the whole config, used in error messages ("" for the root)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_mapping needs a dataclass type, got {cls!r}")
    data = to_plain(mapping) if mapping is not None else {}
    if not isinstance(data, Mapping):
        raise ConfigTypeError(f"{where or cls.__name__}: expected a mapping for {cls.__name__}, "
                              f"got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        keys = ", ".join(f"'{_join(where, k)}'" for k in unknown)
        raise ConfigKeyError(f"unknown key{'s' if len(unknown) > 1 else ''} {keys} for {cls.__name__}; "
                             f"known: {', '.join(sorted(fields))}")
    hints = _type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise ConfigKeyError(f"missing key '{path}' for {cls.__name__} (it has no default)")
            continue
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else _MISSING)
        kwargs[name] = _convert(hints.get(name, Any), data[name], default, path)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, default: Any, path: str) -> Any:
    out = _convert_type(tp, value, path)
    if isinstance(default, tuple) and isinstance(out, list):
        out = tuple(out)
    elif dataclasses.is_dataclass(default) and not isinstance(default, type) and isinstance(out, Mapping):
        out = from_mapping(type(default), out, path)
    return out


def _is_union(origin) -> bool:
    return origin is Union or origin is types.UnionType


def _convert_type(tp: Any, value: Any, path: str) -> Any:
    """`value` as type `tp`, or ConfigTypeError naming `path`."""
    if tp is Any or isinstance(tp, (typing.TypeVar, str)):
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(origin):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigTypeError(f"{path}: None is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert_type(arg, value, path)
            except (ConfigTypeError, ConfigKeyError) as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own message is the clearest
            raise errors[0]
        raise ConfigTypeError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigTypeError(f"{path}: {value!r} is not one of {list(args)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigTypeError(f"{path}: expected None, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_mapping(tp, value, path)
        raise ConfigTypeError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _convert_sequence(tp, origin or tp, args, value, path)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigTypeError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert_type(vt, v, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigTypeError(f"{path}: expected bool, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigTypeError(f"{path}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigTypeError(f"{path}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigTypeError(f"{path}: expected str, got {type(value).__name__} {value!r}")
    return value  # other types: the dataclass judges them


def _convert_sequence(tp: Any, origin: Any, args: tuple, value: Any, path: str) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigTypeError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigTypeError(f"{path}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}: "
                                  f"{list(value)!r}")
        return tuple(_convert_type(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    items = [_convert_type(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        return tuple(items)
    if origin is list:
        return items
    return type(value)(items)  # Sequence[...]: keep what was given
