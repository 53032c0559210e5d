"""Outputs written under a temporary name in the same directory, renamed when complete.

A run that is interrupted (SIGINT, SIGTERM) removes its partial file; one that is killed
(SIGKILL) leaves ``.NAME.partial`` behind, which the next run takes over once it holds the
lock. The final path only ever holds a complete output, and files that describe it (the
image's state file) are replaced together with it, never before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from p2vimage.core.errors import InputError, PreconditionError
from p2vimage.core.units import human


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


def reserve(partial: Path, size: int, what: str = "--size") -> None:
    """Set the length of the (sparse) partial output to ``size`` bytes.

    Raises PreconditionError when the filesystem holding it cannot have a file that large
    (FAT: 4 GiB, ext2/3 with 1 KiB blocks: 16 GiB, ext4: 16 TiB), naming the largest it can.
    """
    try:
        os.truncate(partial, size)
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise PreconditionError(f"cannot size {partial.name} in {partial.parent} to "
                                    f"{human(size)}: {exc.strerror}",
                                    hint="choose another -o path") from None
        limit = _largest_file(partial, size)
        raise PreconditionError(
            f"{what} {human(size)} is larger than the filesystem of {partial.parent} can hold "
            f"in one file (at most {human(limit)})",
            hint="choose a smaller size, or an -o path on a filesystem with larger files "
                 "(ext4, xfs)") from None


def _largest_file(path: Path, too_big: int) -> int:
    """The largest length (in MiB steps) ``path`` can be truncated to, by bisection."""
    low, high = 0, too_big >> 20  # in MiB: low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        try:
            os.truncate(path, middle << 20)
        except OSError:
            high = middle
        else:
            low = middle
    os.truncate(path, 0)
    return low << 20


@contextlib.contextmanager
def atomic_output(final: Path, force: bool, companions: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield the partial path to write; rename it onto ``final`` when the block succeeds.

    ``companions`` are files that describe ``final`` (the image's state file): the block
    writes their new contents to ``partial_path(companion)``. Until the block succeeds the old
    ones stay untouched with the old output; then the old ones are removed and the new ones
    renamed into place together with ``final`` (a companion the block did not write is only
    removed: it described the old output).

    Raises InputError for a bad output path and PreconditionError when another run holds it.
    """
    check_output(final, force)
    partial = partial_path(final)
    pending = [partial_path(c) for c in companions]
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        lock_or_refuse(fd, f"another p2vimage run is writing {final}",
                       "wait for it to finish or stop it")
        os.ftruncate(fd, 0)  # a partial left by a killed run is ours now
        for path in pending:
            path.unlink(missing_ok=True)
        committed = False
        try:
            yield partial
            os.fsync(fd)
            ready = [(new, old) for new, old in zip(pending, companions, strict=True)
                     if new.exists()]
            for old in companions:  # never let an old description meet the new output
                old.unlink(missing_ok=True)
            os.replace(partial, final)
            committed = True
            for new, old in ready:
                os.replace(new, old)
            dirfd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        finally:
            if not committed:
                for path in (partial, *pending):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Whether a process holds the flock on ``path`` now (False when there is no such file);
    for readers that show a runner's state without taking its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
