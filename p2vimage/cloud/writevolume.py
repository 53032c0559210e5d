"""``write-volume``: a raw image straight into a block device (or a file), the seed's way.

The seed attached the Cinder volume's LVM logical volume on the compute node and wrote the
image into it. This writes only the image's data: extents found with SEEK_DATA/SEEK_HOLE,
and within them 1 MiB blocks that are all zeros are skipped too. The target may hold old data,
so every range that is not written is zeroed with BLKZEROOUT (the kernel uses the device's
write-zeroes or unmap where it can); a regular file is truncated to nothing first. Then the
whole image extent is read back and its sha256 compared with the image's.

The target is checked before anything is opened for writing: never the image itself (under
another name, or a loop device over it, through partitions and device-mapper); a missing path
under /dev is a typo, not a new file; a new file needs ``create``, an existing one ``force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import hashlib
import os
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, PreconditionError, StageError
from p2vimage.core.log import log, progress, step

BLOCK = 1 << 20
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = 232  # sizeof(struct loop_info64)
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


def _sysdir(rdev: int) -> Path:
    return Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")


def _loop_inode(device: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file behind loop device ``device``, from LOOP_GET_STATUS64:
    right even when the file's name has since been removed (a hard link kept it)."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        buf = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64))
    except OSError:
        return None  # not a loop device, or one with no file
    finally:
        os.close(fd)
    enc, ino = struct.unpack_from("QQ", buf)
    # the kernel's huge_encode_dev: minor bits 0-7 and 20-31, major bits 8-19
    return os.makedev((enc & 0xFFF00) >> 8, (enc & 0xFF) | ((enc >> 12) & 0xFFF00)), ino


def backing_files(rdev: int, seen: set[int] | None = None) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every regular file that block device ``rdev`` stores its data in:
    the file of a loop device, found through partitions (their disk) and device-mapper or md
    devices (their slaves), recursively."""
    seen = set() if seen is None else seen
    if rdev in seen:
        return set()
    seen.add(rdev)
    sysdir = _sysdir(rdev).resolve()
    found: set[tuple[int, int]] = set()
    lower = [sysdir.parent / "dev"] if (sysdir / "partition").exists() else []
    with contextlib.suppress(OSError):
        lower += [slave / "dev" for slave in (sysdir / "slaves").iterdir()]
    with contextlib.suppress(OSError):
        name = (sysdir / "loop/backing_file").read_text().rstrip("\n")
        st = os.stat(name)  # fails for a name removed since (" (deleted)")
        if stat.S_ISREG(st.st_mode):
            found.add((st.st_dev, st.st_ino))
        elif stat.S_ISBLK(st.st_mode):
            found |= backing_files(st.st_rdev, seen)
    for dev in lower:
        with contextlib.suppress(OSError, ValueError):
            major, minor = dev.read_text().strip().split(":")
            found |= backing_files(os.makedev(int(major), int(minor)), seen)
    return found


def _loop_users(st: os.stat_result) -> list[str]:
    """The loop devices whose file is the regular file ``st``."""
    users = []
    for loop in sorted(Path("/sys/block").glob("loop*")):
        with contextlib.suppress(OSError, ValueError):
            major, minor = (loop / "dev").read_text().strip().split(":")
            if (st.st_dev, st.st_ino) in backing_files(os.makedev(int(major), int(minor))):
                users.append(f"/dev/{loop.name}")
    return users


class Action(enum.Enum):
    """What a run does to DEVICE."""

    BLOCK = "write into block device"
    CREATE = "create file"
    OVERWRITE = "overwrite file"


@dataclasses.dataclass(frozen=True)
class Target:
    """What DEVICE is and what a run does to it (with the device's size)."""

    path: Path
    action: Action
    size: int | None

    @property
    def is_block(self) -> bool:
        return self.action is Action.BLOCK


_HINT = "give the attached volume's block device (lsblk lists them)"


def _new_file(device: Path, create: bool) -> Target:
    """A DEVICE that does not exist: a new file with ``create``, never under /dev."""
    parent = Path(os.path.realpath(Path(os.path.abspath(device)).parent))
    if parent.is_relative_to("/dev"):
        raise InputError(f"{device} does not exist (no such device)",
                         hint="list the block devices with lsblk and check the name")
    if os.path.lexists(device):
        raise InputError(f"{device} is a symbolic link to nothing",
                         hint="give the volume's device, or a file path with --create")
    if not parent.is_dir():
        raise InputError(f"{device} does not exist, nor does its directory", hint=_HINT)
    if not create:
        raise InputError(f"{device} does not exist",
                         hint=f"{_HINT}; or add --create to write the image into a new file")
    return Target(device, Action.CREATE, None)


def inspect_target(device: Path, image: Path, image_st: os.stat_result, create: bool = False,
                   force: bool = False) -> Target:
    """What writing ``image`` (``image_st``) into ``device`` would do; InputError for the
    image itself (any name, or a device backed by it), a missing /dev path, a new file
    without ``create``, an existing file without ``force``, a directory or character device,
    a device smaller than the image; PreconditionError for a device mounted or in use."""
    try:
        st = os.stat(device)
    except (FileNotFoundError, NotADirectoryError):
        return _new_file(device, create)
    same = (image_st.st_dev, image_st.st_ino)
    if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == same:
        raise InputError(f"{device} is the image {image} itself",
                         hint=f"{_HINT}; write-volume never writes into its own image")
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{device} is a directory",
                         hint=f"{_HINT}, or a file path with --create")
    if stat.S_ISCHR(st.st_mode):
        raise InputError(f"{device} is a character device, not a block device", hint=_HINT)
    if stat.S_ISREG(st.st_mode):
        users = _loop_users(st)
        if users:
            raise PreconditionError(f"{device} is the file of loop device {', '.join(users)}",
                                    hint="detach it first (losetup -d), or give that device")
        if not force:
            raise InputError(f"{device} is an existing file, not a block device",
                             hint=f"add --force to overwrite it; or {_HINT}")
        return Target(device, Action.OVERWRITE, st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise InputError(f"{device} is neither a block device nor a regular file", hint=_HINT)
    if same in backing_files(st.st_rdev) or _loop_inode(device) == same:
        raise InputError(f"{device} is backed by the image {image} (a loop device over it)",
                         hint=f"{_HINT}; write-volume never writes into its own image")
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
    if size < image_st.st_size:
        raise InputError(f"{device} holds {size} bytes, less than the image's "
                         f"{image_st.st_size}",
                         hint="create a larger volume (p2vimage volume --size)")
    return Target(device, Action.BLOCK, size)


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


def _open_target(target: Target) -> tuple[int, Path | None]:
    """The target open for writing, and the temporary name a new file is written under."""
    device = target.path
    if target.action is Action.CREATE:  # renamed into place once verified
        try:
            fd, name = tempfile.mkstemp(dir=device.parent, prefix=f".{device.name}.",
                                        suffix=".part")
        except OSError as exc:
            raise PreconditionError(f"cannot create a file in {device.parent}: "
                                    f"{exc.strerror}", hint="check its permissions") from exc
        os.fchmod(fd, 0o644)
        return fd, Path(name)
    flags = os.O_RDWR | os.O_CLOEXEC
    if target.is_block:
        flags |= os.O_EXCL  # the kernel refuses a device mounted or held by another user
    try:
        return os.open(device, flags), None
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise PreconditionError(f"{device} is in use (mounted, or held by another "
                                    "process or device-mapper)",
                                    hint="detach it from whatever holds it") from exc
        raise PreconditionError(f"cannot open {device}: {exc.strerror}",
                                hint="run as root, or check the path") from exc


def _copy(src: int, dst: int, target: Target, size: int, writes: list[tuple[int, int]],
          zeros: list[tuple[int, int]], what: str) -> tuple[str, str]:
    """Write the data ranges, zero the rest (a device) or leave holes (a file), fsync; the
    sha256 of the image and of what the target holds, read back."""
    if not target.is_block:
        os.ftruncate(dst, 0)  # a file: all of it becomes a hole, then the data
        os.ftruncate(dst, size)
    with step(what):
        bar = progress(sum(e - s for s, e in writes), "write")
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
    return want, got


def write_volume(image: Path, device: Path, dry_run: bool = False, create: bool = False,
                 force: bool = False) -> dict[str, Any]:
    """Write raw ``image`` into ``device`` sparsely, zero the rest of its extent, verify.

    ``device`` is a block device; a new file only with ``create`` (written under a temporary
    name, renamed when verified); an existing file only with ``force``. A dry run refuses
    what a run refuses. Raises InputError (missing image, a qcow2, a target that is the
    image, see inspect_target), PreconditionError (a mounted or busy device, no permission),
    StageError (I/O error, hash mismatch).
    """
    started = time.monotonic()
    try:
        src = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"image {image} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"{image} is a directory", hint="give the raw image file") from None
    try:
        image_st = os.fstat(src)
        if not stat.S_ISREG(image_st.st_mode):
            raise InputError(f"image {image} is not a regular file",
                             hint="give the raw image file")
        if os.pread(src, 4, 0) == b"QFI\xfb":
            raise InputError(f"{image} is a qcow2 image", hint="write-volume takes the raw image")
        size = image_st.st_size
        target = inspect_target(device, image, image_st, create=create, force=force)
        writes, zeros = plan(src, size)
        report: dict[str, Any] = {
            "image": str(image), "device": str(device), "image_size": size,
            "action": target.action.name.lower(), "block_device": target.is_block,
            "device_size": target.size, "data_bytes": sum(e - s for s, e in writes),
            "zeroed_bytes": sum(e - s for s, e in zeros), "dry_run": dry_run}
        if dry_run:
            return report
        dst, temp = _open_target(target)
        try:
            want, got = _copy(src, dst, target, size, writes, zeros,
                              f"Writing {report['data_bytes']} bytes of {image.name} to "
                              f"{device}")
            if got != want:
                raise StageError(f"{device} does not hold the image after writing (sha256 "
                                 f"{got[:16]}… ≠ {want[:16]}…)",
                                 hint="the device may be failing; run again")
            if temp is not None:
                os.rename(temp, device)
                temp = None
        except OSError as exc:
            raise StageError(f"writing {device} failed: {exc.strerror}",
                             hint="check the device (dmesg) and run again") from exc
        finally:
            os.close(dst)
            if temp is not None:
                temp.unlink(missing_ok=True)
    finally:
        os.close(src)
    log.debug("sha256 %s", want)
    report.update(sha256=want, verified=True, seconds=round(time.monotonic() - started, 1))
    return report


def lines(report: dict[str, Any]) -> list[str]:
    if report["dry_run"]:
        data, zeroed, dev = report["data_bytes"], report["zeroed_bytes"], report["device"]
        return [{"block": f"would write {data} bytes of {report['image']} into block device "
                          f"{dev} ({report['device_size']} bytes) and zero {zeroed} bytes",
                 "create": f"would create file {dev} with {data} bytes of {report['image']} "
                           f"and holes for the other {zeroed}",
                 "overwrite": f"would overwrite file {dev} (--force) with {data} bytes of "
                              f"{report['image']} and holes for the other {zeroed}",
                 }[report["action"]]]
    return [f"{report['device']}: {report['data_bytes']} bytes written, "
            f"{report['zeroed_bytes']} bytes zeroed, sha256 of the {report['image_size']}-byte "
            f"extent verified ({report['seconds']} s)"]
