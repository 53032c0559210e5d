"""A read-only view of a guest's files, the same whether they are in a local staging tree or
inside an image opened with libguestfs. Fact finders and fixups read through it, so they are
pure functions of file contents and unit tests can feed them real file texts."""

from __future__ import annotations

import os
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
