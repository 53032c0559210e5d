"""The local half of ``upload``: trim, convert to qcow2, hash while streaming.

Nothing here talks to a cloud (that is cloud.py). Trimming punches holes in the raw image for
the blocks its ext2/3/4 filesystems list as free in their own bitmaps (``dumpe2fs``), which is
what ``fstrim`` does inside the guest, without an appliance: 0.01 s against the 11-13 s a
libguestfs launch takes before ``fstrim`` can even start (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, StageError
from p2vimage.core.log import progress
from p2vimage.disk import e2fs, mbr
from p2vimage.host import run as runmod

CHUNK = 1 << 20
COMPRESSIONS = ("zstd", "zlib", "none")
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_EXT_MAGIC = b"\x53\xef"


def _fallocate() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return fn


def punch(fd: int, offset: int, length: int) -> None:
    """Deallocate ``length`` bytes at ``offset`` (they read back as zeros; size unchanged)."""
    if _fallocate()(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def free_ranges(dumpe2fs_output: str) -> tuple[int, list[tuple[int, int]]]:
    """(block size, [(first, last) free block]) from ``dumpe2fs`` output, per group lines."""
    match = re.search(r"^Block size:\s+(\d+)", dumpe2fs_output, re.M)
    if not match:
        raise StageError("dumpe2fs printed no block size",
                         hint="the filesystem may be damaged; run e2fsck -fn on the image")
    ranges: list[tuple[int, int]] = []
    for line in re.findall(r"^\s+Free blocks: (.*)$", dumpe2fs_output, re.M):
        for item in filter(None, (part.strip() for part in line.split(","))):
            first, _, last = item.partition("-")
            ranges.append((int(first), int(last or first)))
    return int(match.group(1)), ranges


def ext_offsets(image: Path) -> list[int]:
    """Byte offsets of the ext2/3/4 filesystems in ``image`` (its partitions, or the file)."""
    with open(image, "rb") as f:
        head = f.read(512)
        found = []
        for offset in [p.start * mbr.SECTOR for p in mbr.partitions(head)] or [0]:
            f.seek(offset + 1024 + 56)
            if f.read(2) == _EXT_MAGIC:
                found.append(offset)
    return found


def trim(image: Path) -> dict[str, int]:
    """Punch holes for every free block of every ext filesystem in ``image``, in place.

    The filesystems' contents do not change (free blocks are never read). Returns the bytes
    allocated before and after. Raises StageError when dumpe2fs or the punching fails.
    """
    before = image.stat().st_blocks * 512
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for offset in ext_offsets(image):
            out = runmod.run(["dumpe2fs", e2fs.spec(image, offset)], what="dumpe2fs").stdout
            block, ranges = free_ranges(str(out))
            for first, last in ranges:
                try:
                    punch(fd, offset + first * block, (last - first + 1) * block)
                except OSError as exc:
                    raise StageError(f"cannot punch holes in {image}: {exc.strerror}",
                                     hint="trimming needs a filesystem with hole punching "
                                     "(ext4, xfs, btrfs, tmpfs); or upload with --no-trim"
                                     ) from exc
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"allocated_before": before, "allocated_after": image.stat().st_blocks * 512}


def qemu_img_argv(source: Path, dest: Path, disk_format: str, compression: str) -> list[str]:
    """The qemu-img command that writes ``dest`` for the upload."""
    argv = ["qemu-img", "convert", "-f", "raw", "-O", disk_format]
    if disk_format == "qcow2" and compression != "none":
        argv += ["-c", "-o", f"compression_type={compression}"]
    return [*argv, os.fspath(source), os.fspath(dest)]


@contextlib.contextmanager
def converted(image: Path, disk_format: str, compression: str) -> Iterator[Path]:
    """The file to upload: ``image`` itself for raw, else a qcow2 beside it (removed after)."""
    if disk_format == "raw":
        yield image
        return
    fd, name = tempfile.mkstemp(dir=image.parent, prefix=f".{image.name}.", suffix=".qcow2")
    os.close(fd)
    dest = Path(name)
    try:
        runmod.run(qemu_img_argv(image, dest, disk_format, compression), what="qemu-img convert")
        yield dest
    finally:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()


class HashingReader:
    """A file read once, front to back, by the HTTP client: md5, sha256 and sha512 of what it
    sent (Glance's checksum and os_hash_value; openstacksdk's owner_specified properties).

    ``read(n)`` returns up to ``max(n, CHUNK)`` bytes, so the client sends large blocks
    whatever block size it asks for (http.client asks for 8-16 KiB). ``len()`` gives
    requests the Content-Length (no chunked encoding). Drives a progress bar.
    """

    def __init__(self, path: Path, desc: str = "upload") -> None:
        self.path = path
        self.size = path.stat().st_size
        self.sent = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.sha512 = hashlib.sha512()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._bar = progress(self.size, desc)

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(self.size if n is None or n < 0 else max(n, CHUNK))
        self.md5.update(data)
        self.sha256.update(data)
        self.sha512.update(data)
        self.sent += len(data)
        self._bar.update(len(data))
        return data

    def close(self) -> None:
        self._bar.close()
        self._file.close()

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def complete(self) -> bool:
        return self.sent == self.size


# the first bytes of the image formats that are not raw (qemu's block drivers probe them so)
FOREIGN = {b"QFI\xfb": "qcow2", b"QED\x00": "qed", b"KDMV": "vmdk", b"vhdxfile": "vhdx",
           b"conectix": "vpc"}


def check_raw(image: Path) -> None:
    """Refuse an ``image`` that is missing, not a regular file, or in a non-raw format."""
    if not image.exists():
        raise InputError(f"image {image} does not exist", hint="check the path")
    if not image.is_file():
        raise InputError(f"image {image} is not a regular file", hint="give the raw image file")
    with open(image, "rb") as f:
        head = f.read(8)
    for magic, name in FOREIGN.items():
        if head.startswith(magic):
            raise InputError(f"{image} is a {name} image, not a raw one",
                             hint="upload takes the raw image (it converts it itself)")


def file_hashes(path: Path) -> tuple[str, str]:
    """(md5, sha512) of a file, read once (what Glance computes over what it stores)."""
    md5, sha512 = hashlib.md5(usedforsecurity=False), hashlib.sha512()
    with open(path, "rb") as f:
        while data := f.read(CHUNK * 4):
            md5.update(data)
            sha512.update(data)
    return md5.hexdigest(), sha512.hexdigest()


def check_compression(disk_format: str, compression: str) -> None:
    """Refuse a compression that the disk format cannot carry."""
    if compression not in COMPRESSIONS:
        raise InputError(f"unknown compression {compression!r}",
                         hint=f"use one of {', '.join(COMPRESSIONS)}")
    if disk_format == "raw" and compression != "none":
        raise InputError("a raw upload cannot be compressed",
                         hint="use --disk-format qcow2, or --compression none")
