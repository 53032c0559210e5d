"""Logging to stderr, timed steps, and progress bars that stay quiet off a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("p2vimage")
_state = {"depth": 0, "quiet_progress": False}


def setup(debug: bool = False, json_mode: bool = False) -> None:
    """Send p2vimage's log records to stderr; debug shows every command run."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    _state["quiet_progress"] = json_mode


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log ``‣ title…``, indent what happens inside, and log the time it took."""
    indent = "  " * int(_state["depth"])
    log.info("%s‣ %s…", indent, title)
    started = time.monotonic()
    _state["depth"] = int(_state["depth"]) + 1
    try:
        yield
    finally:
        _state["depth"] = int(_state["depth"]) - 1
    log.info("%s  done in %.1f s", indent, time.monotonic() - started)


def progress(total: int | None, desc: str, unit: str = "B") -> tqdm[Any]:
    """A progress bar on stderr (``total`` None: a counter), shown only on a terminal and
    never in --json mode."""
    disabled = bool(_state["quiet_progress"]) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                disable=disabled, file=sys.stderr, leave=False)
