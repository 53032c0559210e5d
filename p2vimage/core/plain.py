"""Typed settings as plain JSON data: what stamps digest and state files record."""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import PurePath
from typing import Any


def _value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    return value


def plain(settings: Any) -> dict[str, Any]:
    """A dataclass instance as a dict of JSON values (enums as their values, paths as
    strings, tuples as lists), nested dataclasses included: the same settings always give
    the same ``json.dumps(..., sort_keys=True)``."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError(f"not a dataclass instance: {settings!r}")
    return dataclasses.asdict(settings, dict_factory=lambda items: {k: _value(v)
                                                                    for k, v in items})
