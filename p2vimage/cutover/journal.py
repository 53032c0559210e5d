"""The cutover journal: what was changed, on disk before and after every change.

``<workdir>/cutover/journal.jsonl``: append-only JSON lines, each fsynced before the runner
goes on, so a runner killed at any point (SIGKILL, power loss of the desktop) leaves a record
of every step it started and every step it finished. A lock file (``flock``) keeps two
runners from working on the same host at once; the kernel releases it when a runner dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.errors import PreconditionError
from p2vimage.core.log import log
from p2vimage.core.output import lock_held, lock_or_refuse


def directory(workdir: Path) -> Path:
    """Where a host's cutover state lives."""
    return workdir / "cutover"


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Hold the host's cutover lock for the block. Raises PreconditionError if taken."""
    top = directory(workdir)
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        lock_or_refuse(fd, f"another cutover runner holds {top / 'lock'}",
                       "wait for it, or see 'p2vimage cutover status'")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def is_locked(workdir: Path) -> bool:
    """Whether a runner is working on this host right now."""
    return lock_held(directory(workdir) / "lock")


class Journal:
    """Appends records; every record is on disk when :meth:`write` returns."""

    def __init__(self, workdir: Path) -> None:
        self.path = directory(workdir) / "journal.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lost: str | None = None  # why a record could not be written (see note)

    def note(self, event: str, **fields: Any) -> None:
        """Like :meth:`write`, but a record that cannot be written (disk full, a read-only
        file) is logged and remembered in ``lost``, not raised: a rollback goes on without
        its journal rather than leave the network half moved."""
        try:
            self.write(event, **fields)
        except OSError as exc:
            if self.lost is None:
                self.lost = f"{self.path}: {exc.strerror or exc}"
                log.warning("warning: cannot write the journal (%s); going on", self.lost)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record (event, wall-clock time, FIELDS) and fsync it."""
        record = {"t": round(time.time(), 4), "event": event, **fields}
        line = json.dumps(record, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record (a torn last line, from a crash mid-write, is ignored)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


@dataclasses.dataclass
class State:
    """The last run in the journal, replayed."""

    status: str  # none | in-progress | done | rolled-back | rollback-incomplete
    run: str | None = None
    digest: str | None = None
    profile: str | None = None
    done: list[str] = dataclasses.field(default_factory=list)  # do finished, not undone
    started: list[str] = dataclasses.field(default_factory=list)  # do begun, order of start
    current: str | None = None  # a step begun and not finished (interrupted or failed)
    phase: str | None = None  # do | undo: what was running when it stopped
    failed: str | None = None
    error: str | None = None
    downtime: float | None = None
    stopped_at: float | None = None
    recovery: float | None = None
    steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """For --json."""
        return dataclasses.asdict(self)


def replay(records: list[dict[str, Any]]) -> State:
    """The state of the last run from the journal's records."""
    starts = [i for i, r in enumerate(records) if r["event"] == "begin"]
    if not starts:
        return State("none")
    first = records[starts[-1]]
    st = State("in-progress", run=first.get("run"), digest=first.get("digest"),
               profile=first.get("profile"))
    for r in records[starts[-1]:]:
        ev, name = r["event"], str(r.get("step") or "")
        info = st.steps.setdefault(name, {}) if name else {}
        if ev == "do-start":
            if name not in st.started:
                st.started.append(name)
            st.current, st.phase = name, "do"
            info["started"] = r["t"]
            if r.get("starts_downtime") and st.stopped_at is None:
                st.stopped_at = r["t"]
        elif ev == "do-done":
            if name not in st.done:
                st.done.append(name)
            st.current = st.phase = None
            info["seconds"] = r.get("seconds")
            if r.get("ends_downtime") and st.stopped_at is not None:
                st.downtime = round(r["t"] - st.stopped_at, 3)
        elif ev == "failed":
            st.failed, st.error = name, r.get("error")
        elif ev == "undo-start":
            st.current, st.phase = name, "undo"
        elif ev == "undo-done":
            if name in st.done:
                st.done.remove(name)
            if name in st.started:
                st.started.remove(name)
            st.current = st.phase = None
        elif ev == "finished":
            st.status = "done"
        elif ev == "rolled-back":
            st.status = "rolled-back" if not r.get("incomplete") else "rollback-incomplete"
            st.recovery = r.get("recovery")
    return st


def state(workdir: Path) -> State:
    """The replayed state of the host's journal."""
    return replay(Journal(workdir).records())


def check_digest(st: State, digest: str) -> None:
    """Refuse to continue a run made from another spec."""
    if st.digest != digest:
        raise PreconditionError("the spec or profile changed since the journal's run started",
                         hint="run 'p2vimage cutover rollback' with the spec it was started "
                              "with, or restore that spec")
