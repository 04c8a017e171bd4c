"""Typed configs: dataclasses loaded from YAML recipes and overridden from the command line.

Recipes under ``adapters/`` are plain YAML mapped onto dataclasses, so a typo or a wrong type is
caught before a model is built, with every problem reported at once::

    cfg = load_config(TrainConfig, "adapters/wavlm_tiny.yaml", ["optim.lr=3e-4", "train.max_steps=50"])

Overrides are ``dotted.key=value`` with the value parsed as YAML (``true``, ``3e-4``, ``[q_proj,v_proj]``).
The resolved config is saved beside the weights (``save_config``) so a run can be rebuilt from its
output folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit its dataclass; the message lists every problem."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML file (optional) plus ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; recipes live under adapters/ (e.g. adapters/*.yaml)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values, not a {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, source=source)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    """Instantiate a (nested) dataclass from a mapping, checking keys and types; raises ConfigError."""
    issues: list[str] = []
    obj = _build(cls, data, prefix="", issues=issues)
    if issues:
        raise ConfigError(f"{source}: {len(issues)} problem(s) in the config:\n  - " + "\n  - ".join(issues))
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict of YAML/JSON-serialisable values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from llmser.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# internals


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _build(cls: type, data: Any, prefix: str, issues: list[str]) -> Any:
    where = prefix or "<root>"
    if not isinstance(data, dict):
        issues.append(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
        return None
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            # the whole dotted key in one quote ('optim.lr'), so it can be pasted back as an override
            hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            issues.append(f"unknown key {prefix + str(key)!r}{hint}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                issues.append(f"missing required key {prefix + name!r}; add it to the recipe or pass "
                              f"{prefix + name}=VALUE")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}", issues)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        if not issues:
            issues.append(f"{where}: {exc}")
        return None
    except ValueError as exc:  # __post_init__ validation
        issues.append(f"{where}: {exc}")
        return None


def _coerce(tp: Any, value: Any, key: str, issues: list[str]) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            trial: list[str] = []
            result = _coerce(option, value, key, trial)
            if not trial:
                return result
        issues.append(f"{key}: {value!r} is not a valid {_type_name(tp)}")
        return value
    if origin is typing.Literal:
        if value not in args:
            issues.append(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, f"{key}.", issues)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            issues.append(f"{key}: expected a list, got {value!r}")
            return value
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]", issues) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            issues.append(f"{key}: expected a mapping, got {value!r}")
            return value
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner, v, f"{key}.{k}", issues) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        issues.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        issues.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-4" (no dot) as a string
            except ValueError:
                pass
        issues.append(f"{key}: expected a number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        issues.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        issues.append(f"{key}: expected a path, got {value!r}")
        return value
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def save_branch_config(obj: Any, path: str | Path, branch: str) -> None:
    """Write a branch's model config as JSON tagged with its branch name (atomically)."""
    from llmser.utils.io import atomic_write_json

    atomic_write_json(path, {"branch": branch, **to_dict(obj)})


def load_branch_config(cls: type[T], path: str | Path, branch: str, saved_by: str, kind: str) -> T:
    """Read a config written by :func:`save_branch_config`, refusing another branch's folder.

    ``saved_by`` completes "is <folder> a folder saved by ...?"; ``kind`` completes "not ...".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; is {path.parent} a folder saved by {saved_by}?")
    data = json.loads(path.read_text(encoding="utf-8"))
    found = data.pop("branch", branch)
    if found != branch:
        raise ValueError(f"{path.parent} holds a {found!r} model, not {kind}")
    return from_dict(cls, data, source=str(path))
