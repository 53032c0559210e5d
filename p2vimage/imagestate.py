"""What p2vimage knows about an image it made: ``IMAGE.state.json`` beside the image.

``build`` writes it (the source tree, the filesystem profile, the stat digest of the paths the
fixups read); ``convert`` adds the options it ran with; ``build --refresh`` reads both to know
which fixups must run again, and marks the image ``dirty`` while it changes it in place, so an
interrupted refresh is never taken for a good image.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

from p2vimage.errors import InputError
from p2vimage.output import partial_path
from p2vimage.verify import CONVERT_REWRITES

# Paths that make convert's work out of date when they change in the staging tree, beyond
# the files it rewrites: kernels and their modules, the network and init configuration.
TRIGGERS = (
    "boot/vmlinuz-*", "boot/vmlinux-*", "boot/kernel-*", "boot/bzImage*", "lib/modules/*",
    "usr/lib/modules/*", "etc/network/interfaces", "etc/network/interfaces.d/*",
    "etc/sysconfig/network-scripts/ifcfg-*", "etc/netplan/*", "etc/systemd/network/*",
    "etc/initramfs-tools/*", "etc/mkinitcpio.conf", "etc/dracut.conf", "sbin/init",
    "usr/lib/grub/i386-pc/boot.img", "usr/lib/grub/i386-pc/kernel.img",
)
_ROOTS = ("boot", "etc", "lib", "usr/lib", "sbin")
Digest = dict[str, list[int]]


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


def rewritten(rel: str) -> bool:
    """Whether convert rewrites ``rel`` (relative, no leading slash)."""
    return any(fnmatch.fnmatchcase(rel, p) for p in CONVERT_REWRITES)


def watched(rel: str) -> bool:
    """Whether a change of ``rel`` in the staging tree makes convert's work out of date."""
    return rewritten(rel) or any(fnmatch.fnmatchcase(rel, p) for p in TRIGGERS)


def input_digest(tree: Path) -> Digest:
    """Size, mtime (ns), mode, owner of every watched path in ``tree`` (small: no hashing)."""
    digest: Digest = {}
    if os.path.lexists(tree / "swapfile"):
        digest["swapfile"] = _stat(tree / "swapfile")
    for top in _ROOTS:
        base = tree / top
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, tree)
            keep = []
            for name in (*dirnames, *filenames):
                rel = f"{rel_dir}/{name}"
                if watched(rel):
                    digest[rel] = _stat(Path(dirpath, name))
            for name in dirnames:
                rel = f"{rel_dir}/{name}"
                # descend only where watched paths can be
                if any(p.startswith(rel + "/") or fnmatch.fnmatchcase(rel, p.rsplit("/", 1)[0])
                       for p in (*CONVERT_REWRITES, *TRIGGERS)):
                    keep.append(name)
            dirnames[:] = keep
    return digest


def _stat(path: Path) -> list[int]:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid]


def changed(old: Digest, new: Digest) -> list[str]:
    """Watched paths added, removed or changed between two digests, sorted."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
