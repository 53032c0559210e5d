"""Where p2vimage keeps caches that outlive one run (fixtures, accelerator probes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$P2VIMAGE_CACHE``, else /var/cache/p2vimage for root, else ~/.cache/p2vimage."""
    env = os.environ.get("P2VIMAGE_CACHE")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/cache/p2vimage")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "p2vimage"
    path.mkdir(parents=True, exist_ok=True)
    return path
