"""Sizes as users write them: 4G, 800M, 1.5GiB, 1048576."""

from __future__ import annotations

import re

from p2vimage.core.errors import InputError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in ``text`` (binary units; KiB/K/k alike). Raises InputError when unreadable."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTB]?)(?:I?B)?\s*", text, re.I)
    if not match:
        raise InputError(f"cannot read size {text!r}", hint="write it like 4G, 800M or 1.5G")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise InputError(f"size {text!r} must be positive", hint="write it like 4G or 800M")
    return int(value)


def human(nbytes: float) -> str:
    """A byte count for people: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"
