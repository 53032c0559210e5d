"""Outputs written under a temporary name in the same directory, renamed when complete.

A run that is interrupted (SIGINT, SIGTERM) removes its partial file; one that is killed
(SIGKILL) leaves ``.NAME.partial`` behind, which the next run takes over once it holds the
lock. The final path only ever holds a complete output.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from p2vimage.core.errors import InputError, PreconditionError


def check_output(final: Path, force: bool) -> None:
    """Refuse an output path that cannot or must not be written, before any work starts."""
    parent = final.parent
    if not parent.is_dir():
        raise InputError(f"output directory {parent} does not exist",
                         hint="create it first or choose another -o path")
    if final.is_dir():
        raise InputError(f"output {final} is a directory", hint="give a file path with -o")
    if final.exists() and not force:
        raise InputError(f"output {final} already exists", hint="add --force to replace it")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {parent} is not writable",
                         hint="choose another -o path or fix its permissions")


def lock_or_refuse(fd: int, message: str, hint: str) -> None:
    """Take an exclusive flock on ``fd`` without waiting; PreconditionError(message, hint)
    when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise PreconditionError(message, hint=hint) from None
        raise


def partial_path(final: Path) -> Path:
    """The temporary name ``final`` is written under."""
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_output(final: Path, force: bool) -> Iterator[Path]:
    """Yield the partial path to write; rename it onto ``final`` when the block succeeds.

    Raises InputError for a bad output path and PreconditionError when another run holds it.
    """
    check_output(final, force)
    partial = partial_path(final)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        lock_or_refuse(fd, f"another p2vimage run is writing {final}",
                       "wait for it to finish or stop it")
        os.ftruncate(fd, 0)  # a partial left by a killed run is ours now
        committed = False
        try:
            yield partial
            os.fsync(fd)
            os.replace(partial, final)
            committed = True
            dirfd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        finally:
            if not committed:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
    finally:
        os.close(fd)
