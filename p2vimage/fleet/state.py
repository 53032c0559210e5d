"""The batch state file, BATCH_DIR/state.json: what a batch runner is doing and did, per host
and stage, so that ``batch status`` (another process) shows it live and ``batch report``
reads it afterwards.

One runner at a time holds BATCH_DIR/lock (``flock``: a killed runner holds nothing). The
runner rewrites the whole file at every change, atomically (a temporary file, fsync, rename):
a reader sees the last complete state, never a half-written one. After a runner was killed,
the file still says ``running`` for the stages it had started; readers check the lock and
show them as interrupted, and the next runner redoes them.

Layout (JSON): ``{"kind", "version", "inventory", "sections": {"run": SECTION,
"cutover": SECTION}}``; a SECTION is ``{"verb", "pid", "started", "finished", "limits",
"hosts": {NAME: HOST}}``; a HOST is ``{"name", "wave", "waves", "dir", "conversion_host",
"status", "stage", "waiting", "error", "failed_stage", "started", "finished", "stages":
{STAGE: {"status", "started", "finished", "pid", "log", "result", "error", "attempts"}}}``
plus, for run, ``"image"``, ``"console_log"`` and ``"smoke_report"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, PreconditionError
from p2vimage.core.output import lock_held

KIND = "p2vimage-batch-state"
VERSION = 1
STATE = "state.json"
LOCK = "lock"

# A host's status, and a stage's (closed vocabularies; strings in the JSON).
HOST_STATUSES = ("queued", "waiting", "running", "passed", "failed", "interrupted", "not-run")
STAGE_STATUSES = ("pending", "done-before", "running", "passed", "failed", "interrupted",
                  "not-run")
ACTIVE = ("queued", "waiting", "running")  # a host a live runner still works on

Record = dict[str, Any]


def path(batch_dir: Path) -> Path:
    return batch_dir / STATE


def read(batch_dir: Path) -> Record | None:
    """The state file, or None when there is none. Raises InputError when it is not one."""
    try:
        data = json.loads(path(batch_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the batch state {path(batch_dir)}: {exc}",
                         hint="give the right --batch-dir") from exc
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InputError(f"{path(batch_dir)} is not a p2vimage batch state",
                         hint="give the right --batch-dir")
    return data


def write(batch_dir: Path, data: Record) -> None:
    """Replace the state file atomically."""
    data["updated"] = time.time()
    tmp = batch_dir / f".{STATE}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path(batch_dir))


def new(inventory: Path) -> Record:
    return {"kind": KIND, "version": VERSION, "inventory": os.fspath(inventory),
            "sections": {}}


@contextlib.contextmanager
def locked(batch_dir: Path) -> Iterator[None]:
    """Hold BATCH_DIR/lock for the block. Raises PreconditionError when another runner holds
    it, or the batch directory cannot be made."""
    try:
        batch_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(batch_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PreconditionError(f"cannot use the batch directory {batch_dir}: "
                                f"{exc.strerror or exc}",
                                hint="give a writable --batch-dir") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise PreconditionError(
                f"another batch runner (pid {holder}) works in {batch_dir}",
                hint="watch it with 'p2vimage batch status', or wait for it to end") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def runner_active(batch_dir: Path) -> bool:
    """Whether a runner holds the batch directory's lock now."""
    return lock_held(batch_dir / LOCK)


def settled(section: Record, active: bool) -> Record:
    """``section`` as a reader should see it: when no runner is active, what the file still
    shows as running or waiting was interrupted (the runner was killed)."""
    if active:
        return section
    for host in section.get("hosts", {}).values():
        for stage in host["stages"].values():
            if stage["status"] == "running":
                stage["status"] = "interrupted"
        if host["status"] in ("running", "waiting", "queued") and host.get("started"):
            host["status"], host["waiting"] = "interrupted", None
        elif host["status"] == "waiting":
            host["status"], host["waiting"] = "queued", None
    return section


def last_line(log: Path, limit: int = 4096) -> str:
    """The last non-empty line of a log (its tail only is read)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.replace("\r", "\n").splitlines()):
        if line.strip():
            return " ".join(line.split())
    return ""
