"""What a batch runner shows while it works, on stderr: on a terminal a table redrawn in place
(host, stage, elapsed, the last line of its log; the hosts that wait, with the reason),
otherwise plain timestamped lines — one per event (a stage started, passed, failed) and a
heartbeat of every running host every six P2VIMAGE_PROGRESS_INTERVAL seconds (30 by default).
Nothing with -q."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from p2vimage.core.log import log
from p2vimage.fleet.state import last_line

Row = tuple[str, str, float, Path]  # host, stage, started (epoch), log


def clock(seconds: float) -> str:
    """Elapsed seconds as [H:]MM:SS."""
    s = int(max(0, seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}"
    return f"{s // 60:02}:{s % 60:02}"


def iso(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def counts(hosts: Mapping[str, Mapping[str, Any]]) -> str:
    """``5 hosts: 2 running, 1 waiting, …`` (only the statuses present)."""
    tally = Counter(str(h["status"]) for h in hosts.values())
    parts = [f"{tally[s]} {s}" for s in ("running", "waiting", "queued", "passed", "failed",
                                          "interrupted", "not-run") if tally[s]]
    return f"{len(hosts)} hosts: " + ", ".join(parts)


def table(hosts: Mapping[str, Mapping[str, Any]], rows: list[Row], width: int,
          height: int, now: float) -> list[str]:
    """The live table's lines (at most ``height``, each at most ``width`` wide)."""
    head = f"{'HOST':16} {'STAGE':9} {'ELAPSED':>8}  LAST LINE"
    lines = [counts(hosts), head]
    for host, stage, started, logfile in rows:
        lines.append(f"{host:16} {stage:9} {clock(now - started):>8}  {last_line(logfile)}")
    waiting = [(n, h) for n, h in hosts.items() if h["status"] == "waiting"]
    room = max(0, height - len(lines) - 1)
    for name, entry in waiting[:room]:
        lines.append(f"{name:16} {'waiting':9} {'':>8}  {entry['waiting']}")
    if len(waiting) > room:
        lines.append(f"… and {len(waiting) - room} more waiting")
    return [line[:width] for line in lines]


class Live:
    """The runner's display (``stream``: stderr; ``tty``: draw the table)."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = not log.isEnabledFor(logging.INFO)
        self.drawn = 0
        self.last_draw = 0.0
        self.last_beat = time.monotonic()
        interval = float(os.environ.get("P2VIMAGE_PROGRESS_INTERVAL") or 5.0)
        self.beat = 6 * interval

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def event(self, text: str) -> None:
        """One thing that happened, as a timestamped line."""
        if self.quiet:
            return
        if self.tty:
            self._clear()
            self.stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
            self.stream.flush()
            self.last_draw = 0.0
        else:
            log.info("%s %s", iso(), text)

    def refresh(self, hosts: Mapping[str, Mapping[str, Any]], rows: list[Row]) -> None:
        """Redraw the table (a terminal, at most once a second) or, off a terminal, write
        the heartbeat when it is due."""
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw < 1.0:
                return
            self.last_draw = now
            size = shutil.get_terminal_size()
            lines = table(hosts, rows, size.columns - 1, max(5, size.lines - 2), time.time())
            self._clear()
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self.drawn = len(lines)
        elif now - self.last_beat >= self.beat:
            self.last_beat = now
            stamp = iso()
            for host, stage, started, logfile in rows:
                log.info("%s %s: %s running %s: %s", stamp, host, stage,
                         clock(time.time() - started), last_line(logfile))
            log.info("%s %s", stamp, counts(hosts))

    def close(self) -> None:
        if self.tty and not self.quiet:
            self._clear()
            self.stream.flush()
