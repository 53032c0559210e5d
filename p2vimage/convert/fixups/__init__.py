"""Offline fixups, one module per concern. Each ``plan`` reads guest files through a FileView
and returns the edits and bootloader actions it wants; nothing here writes. ``convert``
applies the plans, so ``--dry-run`` can show them as diffs and unit tests can feed real file
texts.

Each fixup module **declares**, next to its code, the paths its plan reads (``READS``) and
the paths it or its actions may write, replace or remove (``WRITES``), as globs relative to
the guest's root. Whatever needs those lists derives them from here: ``verify``'s expected
rewrites, ``build --refresh``'s protected files and re-convert triggers, README's table.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from p2vimage.convert.fixups import (
    console,
    extlinux,
    fstab,
    grub2,
    grub_legacy,
    hardware,
    initramfs,
    network,
)
from p2vimage.guest import record

ALL = (fstab, network, console, hardware, grub_legacy, grub2, extlinux, initramfs)
Digest = dict[str, list[int]]


def writes() -> tuple[str, ...]:
    """Every path any fixup (or its actions) may write, in fixup order, each once."""
    return tuple(dict.fromkeys(p for fixup in ALL for p in fixup.WRITES))


def reads() -> tuple[str, ...]:
    """Every path convert's plans depend on: the fixups' inputs and the guest record's."""
    return tuple(dict.fromkeys([*record.READS, *(p for fixup in ALL for p in fixup.READS)]))


def _match(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def rewritten(path: str) -> bool:
    """Whether convert may rewrite ``path`` (with or without a leading slash)."""
    return _match(path.strip("/"), writes())


def holds(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether directory ``path`` is an ancestor of a path ``patterns`` can match."""
    parts = [p for p in path.strip("/").split("/") if p]
    for pattern in patterns:
        pparts = pattern.split("/")
        if len(parts) < len(pparts) and all(
                fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pparts, strict=False)):
            return True
    return False


def holds_rewrites(path: str) -> bool:
    """A directory convert may add entries to or remove entries from (its mtime changes)."""
    return holds(path, writes())


def watched(rel: str) -> bool:
    """Whether a change of ``rel`` in the staging tree makes convert's work out of date."""
    return _match(rel, writes()) or _match(rel, reads())


def input_digest(tree: Path) -> Digest:
    """Size, mtime (ns), mode, owner of every watched path in ``tree`` (small: no hashing)."""
    digest: Digest = {}
    patterns = (*writes(), *reads())
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = os.path.relpath(dirpath, tree)
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        keep = []
        for name in (*dirnames, *filenames):
            rel = prefix + name
            if watched(rel):
                digest[rel] = _stat(Path(dirpath, name))
        for name in dirnames:  # descend only where watched paths can be
            rel = prefix + name
            if not os.path.islink(os.path.join(dirpath, name)) and holds(rel, patterns):
                keep.append(name)
        dirnames[:] = keep
    return digest


def _stat(path: Path) -> list[int]:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid]


def changed(old: Digest, new: Digest) -> list[str]:
    """Watched paths added, removed or changed between two digests, sorted."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
