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
from p2vimage.core.output import partial_path


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


def _write(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def save(image: Path, data: dict[str, Any]) -> None:
    """Write the state of ``image`` (temporary name, fsync, rename)."""
    path = state_path(image)
    tmp = path.with_name(f".{path.name}.tmp")
    _write(tmp, data)
    tmp.replace(path)


def save_pending(image: Path, data: dict[str, Any]) -> None:
    """Write the state of the image being built at ``image``'s partial name: ``atomic_output``
    (with the state file as a companion) puts it in place together with the image."""
    _write(partial_path(state_path(image)), data)


def source_identity(tree: Path) -> dict[str, Any]:
    """How the state names the tree an image is made from: its resolved path, and the device
    and inode of its root (the same directory even when reached by another path)."""
    st = os.stat(tree)
    return {"source": os.fspath(tree.resolve()), "source_id": [st.st_dev, st.st_ino]}


def same_source(state: dict[str, Any], tree: Path) -> str | None:
    """None when ``tree`` is the tree the state records, else why not (one phrase)."""
    recorded = state.get("source")
    if not isinstance(recorded, str):
        return "its state does not record the tree it was built from (an older p2vimage)"
    now = source_identity(tree)
    ident = state.get("source_id")
    if ident is not None and list(ident) == now["source_id"]:
        return None  # the same directory, perhaps moved or reached by another path
    if now["source"] != recorded:
        return f"it was built from {recorded}"
    # The same path: the same directory unless it was made again since (device numbers can
    # change across reboots, inode numbers do not).
    if ident is not None and ident[1] != now["source_id"][1]:
        return f"{recorded} is a new directory since it was built (removed and made again)"
    return None


def update(image: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the state of ``image`` and save it."""
    data = load(image) or {}
    data.update(fields)
    save(image, data)
    return data
