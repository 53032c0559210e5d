"""The sha256 of every file under a directory: proof that a refused command changed nothing,
neither its inputs nor anything beside them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_tree(root: Path) -> dict[str, str]:
    """Relative path → sha256 of a file's content, ``-> TARGET`` for a symlink, ``dir`` for a
    directory (so that a file or directory created or removed shows too)."""
    sums: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = os.fspath(path.relative_to(root))
            if path.is_symlink():
                sums[rel] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                sums[rel] = "dir"
            elif path.is_file():
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                sums[rel] = digest.hexdigest()
            else:
                sums[rel] = "special"
    return sums
