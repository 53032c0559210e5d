"""Fakes for pure logic only: a FileView over a dict of file texts."""

from __future__ import annotations


class DictFiles:
    """A FileView over a dict (path → bytes/str, or ('symlink', target)); for pure tests."""

    def __init__(self, files: dict[str, bytes | str | tuple[str, str]]) -> None:
        self.files = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        value = self.files.get(path)
        if not isinstance(value, bytes):
            return None
        return value if limit is None else value[:limit]

    def is_file(self, path: str) -> bool:
        return isinstance(self.files.get(path), bytes)

    def is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return path == "/" or any(k.startswith(prefix) for k in self.files)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({k[len(prefix):].split("/")[0] for k in self.files if k.startswith(prefix)})

    def readlink(self, path: str) -> str | None:
        value = self.files.get(path)
        return value[1] if isinstance(value, tuple) else None

    def size(self, path: str) -> int | None:
        value = self.files.get(path)
        return len(value) if isinstance(value, bytes) else None
