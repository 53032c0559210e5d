"""What p2vimage knows about an image it made: ``IMAGE.state.json`` beside the image.

``build`` writes it (the source tree, the filesystem profile, the stat digest of the paths the
fixups read); ``convert`` adds the options it ran with; ``build --refresh`` reads both to know
which fixups must run again, and marks the image ``dirty`` while it changes it in place, so an
interrupted refresh is never taken for a good image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError


def state_path(image: Path) -> Path:
    """Where the state of ``image`` is kept."""
    return image.with_name(image.name + ".state.json")


def load(image: Path) -> dict[str, Any] | None:
    """The recorded state of ``image``, or None when it has none."""
    try:
        data = json.loads(state_path(image).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InputError(f"the state file {state_path(image)} is damaged ({exc})",
                         hint="rebuild the image with 'p2vimage build --force'") from None
    return data if isinstance(data, dict) else None


def save(image: Path, data: dict[str, Any]) -> None:
    """Write the state of ``image`` (temporary name, fsync, rename)."""
    path = state_path(image)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def update(image: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the state of ``image`` and save it."""
    data = load(image) or {}
    data.update(fields)
    save(image, data)
    return data
