"""The image's filesystem loop-mounted (root only): for the initramfs chroot and for
``build --refresh``'s rsync into the image. Always unmounted and detached, also on errors."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from p2vimage.core.errors import PreconditionError
from p2vimage.disk.e2fs import find_partition
from p2vimage.host import run as runmod


def possible() -> bool:
    """Whether this process can loop-mount (root, with losetup and mount)."""
    return (os.geteuid() == 0 and runmod.which("losetup") is not None
            and runmod.which("mount") is not None)


@contextlib.contextmanager
def mounted(image: Path, pseudo: bool = False) -> Iterator[Path]:
    """Yield the mount point of the filesystem in ``image`` (with /dev, /proc, /sys if
    ``pseudo``, and a throwaway tmpfs on the guest's /run, /tmp and /var/tmp, so what a tool
    run in the chroot leaves there — blkid's cache, mkinitramfs' work files, the mtimes of
    those directories — never reaches the image). Raises PreconditionError without root."""
    if os.geteuid() != 0:
        raise PreconditionError(f"loop-mounting {image} needs root",
                                hint="run as root or choose the method that needs none")
    offset = find_partition(image)
    loop = runmod.run(["losetup", "--find", "--show", "-o", str(offset), str(image)],
                      what="losetup").stdout.strip()
    with tempfile.TemporaryDirectory(prefix="p2vimage-mnt-") as tmp:
        mnt = Path(tmp)
        done: list[Path] = []
        try:
            runmod.run(["mount", loop, str(mnt)], what=f"mount of {image}")
            done.append(mnt)
            if pseudo:
                for fs, opts in (("dev", ["--bind", "/dev"]), ("proc", ["-t", "proc", "proc"]),
                                 ("sys", ["-t", "sysfs", "sysfs"])):
                    runmod.run(["mount", *opts, str(mnt / fs)], what="mount")
                    done.append(mnt / fs)
                for scratch in ("run", "tmp", "var/tmp"):
                    where = mnt / scratch
                    if where.is_dir() and not where.is_symlink() \
                            and not where.parent.is_symlink():
                        runmod.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs",
                                    str(where)], what="mount")
                        done.append(where)
            yield mnt
        finally:
            for path in reversed(done):
                runmod.run(["umount", str(path)], check=False)
            runmod.run(["losetup", "-d", loop], check=False)
