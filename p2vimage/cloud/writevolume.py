"""``write-volume``: a raw image straight into a block device (or a file), the seed's way.

The seed attached the Cinder volume's LVM logical volume on the compute node and wrote the
image into it. This writes only the image's data: extents found with SEEK_DATA/SEEK_HOLE,
and within them 1 MiB blocks that are all zeros are skipped too. The target may hold old data,
so every range that is not written is zeroed with BLKZEROOUT (the kernel uses the device's
write-zeroes or unmap where it can); a regular file is truncated to nothing first. Then the
whole image extent is read back and its sha256 compared with the image's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, PreconditionError, StageError
from p2vimage.core.log import log, progress, step

BLOCK = 1 << 20
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
_ZERO = bytes(BLOCK)


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) ranges covering [0, size), from SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = size
        if data > pos:
            yield pos, min(data, size), False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole, True
        pos = hole


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent (start, end) ranges joined."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _mounted_devices() -> set[int]:
    """st_rdev of every device mounted or used as swap."""
    devs: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            major, minor = line.split()[2].split(":")
            devs.add(os.makedev(int(major), int(minor)))
    with contextlib.suppress(OSError):
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:
            with contextlib.suppress(OSError):
                devs.add(os.stat(line.split()[0]).st_rdev)
    return devs


def _with_partitions(rdev: int) -> set[int]:
    """The device and its partitions (from sysfs)."""
    found = {rdev}
    sysdir = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    with contextlib.suppress(OSError):
        for child in sysdir.iterdir():
            dev = child / "dev"
            if (child / "partition").exists() and dev.exists():
                major, minor = dev.read_text().strip().split(":")
                found.add(os.makedev(int(major), int(minor)))
    return found


@dataclasses.dataclass(frozen=True)
class Target:
    """What DEVICE is: a block device (with its size) or a regular file."""

    path: Path
    is_block: bool
    size: int | None


def inspect_target(device: Path, image_size: int) -> Target:
    """Refuse a target that is missing, mounted, in use or smaller than the image."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        if device.parent.is_dir():
            return Target(device, False, None)  # a new regular file
        raise InputError(f"{device} does not exist", hint="give the attached volume's device "
                         "(e.g. /dev/vdb or /dev/VG/volume-ID) or a file path") from None
    if stat.S_ISREG(st.st_mode):
        return Target(device, False, st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise InputError(f"{device} is neither a block device nor a regular file",
                         hint="give the volume's device path")
    if _with_partitions(st.st_rdev) & _mounted_devices():
        raise PreconditionError(f"{device} (or a partition of it) is mounted or used as swap",
                                hint="unmount it first; write-volume never writes a device in "
                                "use")
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError as exc:
        raise PreconditionError(f"cannot open {device}: permission denied",
                                hint="run as root") from exc
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        size = int(struct.unpack("Q", buf)[0])
    finally:
        os.close(fd)
    if size < image_size:
        raise InputError(f"{device} holds {size} bytes, less than the image's {image_size}",
                         hint="create a larger volume (p2vimage volume --size)")
    return Target(device, True, size)


def _zero(fd: int, start: int, end: int) -> None:
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", start, end - start))


def plan(fd: int, size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(data ranges to write, ranges to zero) for the image open as ``fd``; data ranges are
    split on 1 MiB blocks that are all zeros."""
    writes: list[tuple[int, int]] = []
    zeros: list[tuple[int, int]] = []
    for start, end, is_data in extents(fd, size):
        if not is_data:
            zeros.append((start, end))
            continue
        pos = start
        while pos < end:
            n = min(BLOCK, end - pos)
            block = os.pread(fd, n, pos)
            (writes if block != _ZERO[:n] else zeros).append((pos, pos + n))
            pos += n
    return merge(writes), merge(zeros)


def _sha256(fd: int, size: int, bar: Any) -> str:
    digest = hashlib.sha256()
    pos = 0
    while pos < size:
        data = os.pread(fd, min(BLOCK << 3, size - pos), pos)
        if not data:
            raise StageError("short read while verifying", hint="the device shrank?")
        digest.update(data)
        pos += len(data)
        bar.update(len(data))
    return digest.hexdigest()


def write_volume(image: Path, device: Path, dry_run: bool = False) -> dict[str, Any]:
    """Write raw ``image`` into ``device`` sparsely, zero the rest of its extent, verify.

    Raises InputError (missing image, a qcow2, a target too small), PreconditionError (a
    mounted or busy device, no permission), StageError (I/O error, hash mismatch).
    """
    started = time.monotonic()
    try:
        src = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"image {image} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"{image} is a directory", hint="give the raw image file") from None
    try:
        if os.pread(src, 4, 0) == b"QFI\xfb":
            raise InputError(f"{image} is a qcow2 image", hint="write-volume takes the raw image")
        size = os.fstat(src).st_size
        target = inspect_target(device, size)
        writes, zeros = plan(src, size)
        report: dict[str, Any] = {
            "image": str(image), "device": str(device), "image_size": size,
            "block_device": target.is_block, "device_size": target.size,
            "data_bytes": sum(e - s for s, e in writes),
            "zeroed_bytes": sum(e - s for s, e in zeros), "dry_run": dry_run}
        if dry_run:
            return report
        flags = os.O_RDWR | os.O_CLOEXEC
        if target.is_block:
            flags |= os.O_EXCL  # the kernel refuses a device mounted or held by another user
        else:
            flags |= os.O_CREAT
        try:
            dst = os.open(device, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise PreconditionError(f"{device} is in use (mounted, or held by another "
                                        "process or device-mapper)",
                                        hint="detach it from whatever holds it") from exc
            raise PreconditionError(f"cannot open {device}: {exc.strerror}",
                                    hint="run as root, or check the path") from exc
        try:
            if not target.is_block:
                os.ftruncate(dst, 0)  # a file: all of it becomes a hole, then the data
                os.ftruncate(dst, size)
            with step(f"Writing {report['data_bytes']} bytes of {image.name} to {device}"):
                bar = progress(report["data_bytes"], "write")
                for start, end in writes:
                    pos = start
                    while pos < end:
                        data = os.pread(src, min(BLOCK << 3, end - pos), pos)
                        os.pwrite(dst, data, pos)
                        pos += len(data)
                        bar.update(len(data))
                bar.close()
                for start, end in zeros if target.is_block else ():
                    _zero(dst, start, end)
                os.fsync(dst)
            with step("Verifying (sha256 of the image and of the device's image extent)"):
                bar = progress(2 * size, "verify")
                want = _sha256(src, size, bar)
                if target.is_block:
                    # read what is on the device, not what the page cache kept
                    os.posix_fadvise(dst, 0, size, os.POSIX_FADV_DONTNEED)
                got = _sha256(dst, size, bar)
                bar.close()
        except OSError as exc:
            raise StageError(f"writing {device} failed: {exc.strerror}",
                             hint="check the device (dmesg) and run again") from exc
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if got != want:
        raise StageError(f"{device} does not hold the image after writing (sha256 {got[:16]}… "
                         f"≠ {want[:16]}…)", hint="the device may be failing; run again")
    log.debug("sha256 %s", want)
    report.update(sha256=want, verified=True, seconds=round(time.monotonic() - started, 1))
    return report


def lines(report: dict[str, Any]) -> list[str]:
    if report["dry_run"]:
        return [f"would write {report['data_bytes']} bytes of {report['image']} to "
                f"{report['device']} and zero {report['zeroed_bytes']} bytes"]
    return [f"{report['device']}: {report['data_bytes']} bytes written, "
            f"{report['zeroed_bytes']} bytes zeroed, sha256 of the {report['image_size']}-byte "
            f"extent verified ({report['seconds']} s)"]
