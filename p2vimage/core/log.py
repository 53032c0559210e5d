"""Logging to stderr, timed steps, and progress: a bar on a terminal, plain timestamped lines
every few seconds or tenth of the way when stderr is not one (systemd, AWX, CI logs)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("p2vimage")
_state: dict[str, Any] = {"depth": 0, "quiet_progress": False, "interval": 5.0}
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
COUNTER_FORMAT = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}]{postfix}"


def setup(debug: bool = False, json_mode: bool = False, quiet: bool = False,
          verbose: bool = False) -> None:
    """Send p2vimage's log records to stderr. ``verbose`` and ``debug`` show every command
    run; ``quiet`` keeps warnings and errors only, and no progress."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug or verbose else
                 logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    _state["quiet_progress"] = (json_mode and sys.stderr.isatty()) or quiet
    _state["interval"] = float(os.environ.get("P2VIMAGE_PROGRESS_INTERVAL") or 5.0)


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


class _Lines(tqdm):  # type: ignore[type-arg]
    """tqdm, drawn as a timestamped log line at most every few seconds, or when another
    tenth of the total is done, and once at the end (stderr is not a terminal)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last = 0.0
        self._tenth = -1
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        if not hasattr(self, "_tenth"):
            return
        now = time.monotonic()
        tenth = int(10 * self.n / self.total) if self.total else -1
        if self.n and (now - self._last >= _state["interval"] or tenth > self._tenth):
            self._last, self._tenth = now, tenth
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.info("%s %s", stamp, self.__str__().strip())

    def close(self) -> None:
        # (close also runs from __del__ when __init__ was interrupted: attributes may lack)
        if "n" in self.__dict__ and not self.disable and self.n and (
                not self.total or self._tenth < 10):
            self._last, self._tenth = 0.0, 10
            self.display()
        super().close()


def progress(total: int | None, desc: str, unit: str = "B") -> tqdm[Any]:
    """Progress on stderr (``total`` None: a counter): a bar on a terminal, timestamped
    lines otherwise; none with -q, nor with --json on a terminal."""
    if _state["quiet_progress"]:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, leave=False)
    return _Lines(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                  file=io.StringIO(), mininterval=0.5,
                  bar_format=LINE_FORMAT if total else COUNTER_FORMAT)
