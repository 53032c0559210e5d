"""A read-only view of a guest's files, the same whether they are in a local staging tree or
inside an image opened with libguestfs. Fact finders and fixups read through it, so they are
pure functions of file contents and unit tests can feed them real file texts."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Protocol


class FileView(Protocol):
    """Guest paths are absolute ('/etc/fstab'); every method returns None/False when absent."""

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        """Content of a regular file (at most ``limit`` bytes), or None."""
        ...

    def is_file(self, path: str) -> bool:
        """A regular file (not through a symlink)."""
        ...

    def is_dir(self, path: str) -> bool:
        """A directory (not through a symlink)."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, [] when it is not one."""
        ...

    def readlink(self, path: str) -> str | None:
        """Target of a symlink, or None when it is not one."""
        ...

    def size(self, path: str) -> int | None:
        """Size in bytes of a file, or None when absent."""
        ...


def read_text(view: FileView, path: str) -> str | None:
    """A file as text (undecodable bytes replaced), or None."""
    data = view.read_bytes(path)
    return None if data is None else data.decode("utf-8", "replace")


class LocalFiles:
    """A FileView over a local root tree (never following symlinks out of it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        p = self._p(path)
        if p.is_symlink() or not p.is_file():
            return None
        try:
            with open(p, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        except OSError:
            return None

    def is_file(self, path: str) -> bool:
        p = self._p(path)
        return not p.is_symlink() and p.is_file()

    def is_dir(self, path: str) -> bool:
        p = self._p(path)
        return not p.is_symlink() and p.is_dir()

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._p(path))) if self.is_dir(path) else []
        except OSError:
            return []

    def readlink(self, path: str) -> str | None:
        p = self._p(path)
        return os.readlink(p) if p.is_symlink() else None

    def size(self, path: str) -> int | None:
        try:
            return os.lstat(self._p(path)).st_size
        except OSError:
            return None


class Resolved:
    """A FileView that follows the guest's own symlinks in the directories of a path, as a
    chroot of the guest would (an absolute target starts at the guest's root, never the
    host's); the last component is not followed, as in every FileView.

    Backends differ here: a local tree follows a directory symlink through the host (an
    absolute one would leave the tree), debugfs and libguestfs do not follow it at all. Read
    through this, a merged-/usr guest (/bin → usr/bin) gives the same answers in each.
    """

    MAX_LINKS = 40

    def __init__(self, view: FileView) -> None:
        self.view = view
        self._real: dict[str, str | None] = {}

    def follow(self, path: str) -> str | None:
        """``path`` with every symlink in it followed (the last component too), or None for
        a loop or too many links. The result need not exist."""
        if path in self._real:
            return self._real[path]
        real = self._follow(path, [0])
        self._real[path] = real
        return real

    def _follow(self, path: str, hops: list[int]) -> str | None:
        current = "/"
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                current = posixpath.dirname(current)
                continue
            candidate = posixpath.join(current, part)
            target = self.view.readlink(candidate)
            if target is None:
                current = candidate
                continue
            hops[0] += 1
            if hops[0] > self.MAX_LINKS:
                return None
            followed = self._follow(posixpath.join(current, target), hops)
            if followed is None:
                return None
            current = followed
        return current

    def resolve(self, path: str) -> str | None:
        """``path`` with its directories' symlinks followed and its last component kept."""
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name or name in (".", ".."):
            return self.follow(path)
        real = self.follow(parent or "/")
        return None if real is None else posixpath.join(real, name)

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        real = self.resolve(path)
        return None if real is None else self.view.read_bytes(real, limit)

    def is_file(self, path: str) -> bool:
        real = self.resolve(path)
        return real is not None and self.view.is_file(real)

    def is_dir(self, path: str) -> bool:
        real = self.resolve(path)
        return real is not None and self.view.is_dir(real)

    def listdir(self, path: str) -> list[str]:
        real = self.resolve(path)
        return [] if real is None else self.view.listdir(real)

    def readlink(self, path: str) -> str | None:
        real = self.resolve(path)
        return None if real is None else self.view.readlink(real)

    def size(self, path: str) -> int | None:
        real = self.resolve(path)
        return None if real is None else self.view.size(real)
