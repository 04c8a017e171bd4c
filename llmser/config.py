"""Typed configs: dataclasses loaded from YAML recipes and overridden from the command line.

Recipes under ``adapters/`` are plain YAML mapped onto dataclasses, so a typo or a wrong type is
caught before a model is built, with every problem reported at once::

    cfg = load_config(TrainConfig, "adapters/wavlm_tiny.yaml", ["optim.lr=3e-4", "train.max_steps=50"])

Overrides are ``dotted.key=value`` with the value parsed as YAML (``true``, ``3e-4``, ``[q_proj,v_proj]``).
The resolved config is saved beside the weights (``save_config``) so a run can be rebuilt from its
output folder.

Checked before any work, so a mistake never trains silently:

- **Ranges** are declared next to the fields, in their metadata (``metadata={"help": ..., "gt": 0}``):
  ``min``/``max`` (inclusive) and ``gt``/``lt`` (exclusive) apply to every number a field holds (each
  item of a list too); every float must be finite. Rules that span fields live in ``__post_init__``.
- **YAML**: a key given twice in one mapping is refused (YAML itself keeps the last one silently),
  and so are anchors/aliases (``&a``/``*a``): a 2 KB file of nested aliases expands to gigabytes,
  and recipes have no need for them. An override given twice on the command line is refused too.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit its dataclass; the message lists every problem."""


class RangeError(ValueError):
    """A dataclass built in code with a value outside a field's declared range (see :func:`check_ranges`)."""


def check_ranges(obj: Any) -> None:
    """Raise :class:`RangeError` listing every field of ``obj`` (nested dataclasses too) outside its declared
    range. ``__post_init__`` calls it so configs built in code are held to the same ranges as recipes."""
    issues: list[str] = []
    _collect_ranges(obj, "", issues)
    if issues:
        raise RangeError("; ".join(issues))


def _collect_ranges(obj: Any, prefix: str, issues: list[str]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _collect_ranges(value, f"{prefix}{f.name}.", issues)
        else:
            _check_range(f, value, f"{prefix}{f.name}", issues)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML file (optional) plus ``key=value`` overrides."""
    data = read_config_data(path, overrides)
    return from_dict(cls, data, source=str(path) if path is not None else "<defaults>")


def read_config_data(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping a YAML file (optional) plus ``key=value`` overrides give, before it is typed."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            from llmser.utils.io import missing

            raise ConfigError(f"recipe {path} {missing(path)}; recipes live under adapters/ (e.g. adapters/*.yaml)")
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values, not a {type(loaded).__name__}")
        data = loaded
    return apply_overrides(data, overrides or [])


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, refusing duplicate keys and aliases (all of them listed, with their lines).

    Aliases are found from the event stream before anything is built, so an alias bomb is refused
    without being expanded.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc}); re-save it as UTF-8") from None
    try:
        aliases = [e for e in yaml.parse(text, Loader=yaml.SafeLoader) if isinstance(e, yaml.AliasEvent)]
        if aliases:
            lines = ", ".join(f"*{e.anchor} on line {e.start_mark.line + 1}" for e in aliases[:5])
            raise ConfigError(f"{path}: YAML aliases are not accepted in recipes ({lines}"
                              f"{' ...' if len(aliases) > 5 else ''}); write the values out instead")
        loader = _StrictLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if loader.duplicates:
        raise ConfigError(f"{path}: {len(loader.duplicates)} key(s) given twice (YAML would keep the last one "
                          "silently):\n  - " + "\n  - ".join(loader.duplicates))
    return data


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records every key given twice in one mapping instead of keeping the last one."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                self.duplicates.append(f"key {key!r} on line {line} was already given on line {seen[key]}; "
                                       "keep one of them")
            seen.setdefault(key, line) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep=deep)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML).

    The same key twice is refused: which one should win is a guess the user has to make.
    """
    result = _deep_copy(data)
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        if key in given:
            raise ConfigError(f"override {key!r} is given twice ({given[key]!r} and {item!r}); give it once")
        given[key] = item
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
    """Instantiate a (nested) dataclass from a mapping, checking keys, types and ranges; raises ConfigError."""
    obj, issues = collect(cls, data)
    if issues:
        raise config_error(source, issues)
    return obj


def collect(cls: type[T], data: Any, prefix: str = "") -> tuple[T | None, list[str]]:
    """Like :func:`from_dict`, but return the problems (one line each) instead of raising, so a caller
    checking several sections can report them all at once."""
    issues: list[str] = []
    obj = _build(cls, data, prefix=prefix, issues=issues)
    return (obj if not issues else None), issues


def config_error(source: str, issues: list[str]) -> ConfigError:
    return ConfigError(f"{source}: {len(issues)} problem(s) in the config:\n  - " + "\n  - ".join(issues))


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
    where = prefix.rstrip(".") or "<root>"
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
    before_all = len(issues)
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                issues.append(f"missing required key {prefix + name!r}; add it to the recipe or pass "
                              f"{prefix + name}=VALUE")
            continue
        before = len(issues)
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}", issues)
        if len(issues) == before:
            _check_range(field, kwargs[name], f"{prefix}{name}", issues)
            _check_presets(field, kwargs[name], f"{prefix}{name}", issues)
    fields_ok = len(issues) == before_all
    try:
        return cls(**kwargs)
    except RangeError as exc:  # check_ranges in __post_init__: already reported field by field above
        if fields_ok:
            issues.append(f"{where}: {exc}")
    except ValueError as exc:  # __post_init__: the rules that span fields, reported with the others
        issues.append(f"{where}: {exc}")
    except Exception as exc:  # noqa: BLE001 - __post_init__ tripping over a value already reported above
        if fields_ok:
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
        number = _float(value)
        if number is None:
            issues.append(f"{key}: expected a number, got {value!r}")
            return value
        if not math.isfinite(number):
            issues.append(f"{key}: expected a finite number, got {value!r}")
        return number
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


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-4" (no dot) as a string
        except ValueError:
            return None
    return None


#: Range rules a field may declare in its metadata: name -> (how it reads, test).
_RANGE_RULES: dict[str, tuple[str, Any]] = {
    "min": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
    "max": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b),
}


def range_text(field: dataclasses.Field) -> str:
    """The field's declared range as text (``> 0``, ``>= 1 and <= 4294967295``); empty when none."""
    return " and ".join(f"{sign} {field.metadata[name]}" for name, (sign, _) in _RANGE_RULES.items()
                        if name in field.metadata)


def _check_range(field: dataclasses.Field, value: Any, key: str, issues: list[str]) -> None:
    """Check every number ``value`` holds (itself, or the items of a list/tuple) against the metadata."""
    if not any(name in field.metadata for name in _RANGE_RULES):
        return
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue  # None (= "use the default") and non-numbers are not range-checked
        broken = [f"{sign} {field.metadata[name]}" for name, (sign, ok) in _RANGE_RULES.items()
                  if name in field.metadata and not ok(item, field.metadata[name])]
        if broken:
            why = field.metadata.get("help", "")
            issues.append(f"{key}={_show(value)} is out of range; set it {range_text(field)}"
                          + (f" ({why})" if why else ""))
            return


def _check_presets(field: dataclasses.Field, value: Any, key: str, issues: list[str]) -> None:
    """A model-name field (``metadata["presets"]``): a preset, a folder or an org/name Hub id, checked
    without asking the Hub (``llmser.utils.hub.unknown_model_name``)."""
    if "presets" not in field.metadata or not isinstance(value, str):
        return
    from llmser.utils.hub import unknown_model_name

    problem = unknown_model_name(value, field.metadata["presets"])
    if problem:
        issues.append(f"{key}: {problem}")


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple)) else repr(value)


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
    check_branch(path.parent, branch, kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; is {path.parent} a folder saved by {saved_by}?")
    data = json.loads(path.read_text(encoding="utf-8"))
    found = data.pop("branch", branch)
    if found != branch:
        raise BranchMismatchError(branch_mismatch(path.parent, found, branch, kind))
    return from_dict(cls, data, source=str(path))


class BranchMismatchError(ValueError):
    """A saved model folder of another branch than the one asked for."""


BRANCH_CONFIG_FILES = ("llmser_config.json", "config.json")  # where each branch's save_pretrained tags its branch


def saved_branch(folder: str | Path) -> str | None:
    """The branch tag of a saved llmser model folder (None: untagged, or not an llmser folder)."""
    for name in BRANCH_CONFIG_FILES:
        path = Path(folder) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("branch"), str):
            return data["branch"]
    return None


def branch_mismatch(folder: str | Path, found: str, branch: str, kind: str) -> str:
    return (f"{folder} holds a {found!r}-branch model, not {kind} (a {branch!r}-branch model); give the folder of "
            f"a {branch} run, or load this one as a {found} member")


def check_branch(folder: str | Path, branch: str, kind: str) -> None:
    """Refuse a folder tagged with another branch before reading its weights, naming both branches."""
    found = saved_branch(folder)
    if found is not None and found != branch:
        raise BranchMismatchError(branch_mismatch(folder, found, branch, kind))
