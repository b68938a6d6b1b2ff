"""Configs and metrics to and from JSON, for ResultsDir (interp.results): plain JSON values from frozen dataclasses,
numpy / torch scalars, paths and enums; the frozen config rebuilt from config.json (tuples and nested dataclasses
restored from the type hints), its class found among the modules already imported; and the fields where two recorded
configs differ."""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from interp.errors import InterpError


def config_differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted names of the fields where two JSON configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append(name)
            else:
                out += config_differences(old[key], new[key], name)
        return out
    return [] if old == new else [where or "config"]


def to_jsonable(value: Any, where: str) -> Any:
    """Plain JSON values from configs and metrics (dataclasses, tuples, paths, enums, numpy and torch scalars)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, where)
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if type(value).__module__ == "torch":
        if hasattr(value, "numel") and value.numel() == 1:
            return value.item()
        return str(value)  # torch.dtype, torch.device
    raise InterpError(
        f"{where} = {value!r} ({type(value).__name__}) cannot be written as JSON; use numbers, strings, lists, dicts or nested dataclasses."
    )


def loaded_class(qualified: str) -> type:
    """The class `module.Qualname` from a module already imported; this module never imports one itself
    (interp/ imports nothing above it, and config.json must not be able to make it)."""
    module_name, _, qualname = qualified.rpartition(".")
    while module_name:
        module = sys.modules.get(module_name)
        if module is not None:
            obj: Any = module
            try:
                for part in qualname.split("."):
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                pass
        module_name, _, head = module_name.rpartition(".")
        qualname = f"{head}.{qualname}"
    raise ImportError(qualified)


def from_json_fields(cls: type, fields: Mapping[str, Any]) -> Any:
    """cls(**fields) with JSON lists turned back into tuples and nested dataclasses rebuilt where the hints say so."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise InterpError(
            f"config.json has fields {sorted(unknown)} that {cls.__qualname__} does not define; it was written by another version of the config."
        )
    kwargs = {}
    for name, value in fields.items():
        hint = hints.get(name)
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        nested = next((h for h in options if dataclasses.is_dataclass(h)), None)
        if nested is not None and isinstance(value, Mapping):
            value = from_json_fields(nested, value)
        elif isinstance(value, list) and any(typing.get_origin(h) is tuple or h is tuple for h in options):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
