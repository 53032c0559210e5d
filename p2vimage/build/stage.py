"""``build``: a raw disk image with one bootable partition, populated from a root tree.

The filesystem is made and filled by the host's ``mke2fs -d`` straight into the partition
offset of the image file (no loop device, no mount, no root), then completed with one debugfs
batch for what ``mke2fs -d`` does not carry (1.47.0): the root directory's own mode, owner and
time, nanoseconds, times past 2038, and hard links of symlinks. The msdos label is written
last (``mbr.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import re
import select
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from p2vimage.build import fsprofile
from p2vimage.convert import fixups
from p2vimage.core.errors import InputError, PreconditionError, StageError
from p2vimage.core.log import log, progress, step
from p2vimage.core.output import atomic_output, check_output, reserve
from p2vimage.core.units import human
from p2vimage.disk import e2fs, mbr
from p2vimage.disk import state as imagestate
from p2vimage.guest import facts as guestfacts
from p2vimage.guest import record as guestrecord
from p2vimage.host import run as runmod
from p2vimage.sync import stage as syncmod

MiB = 1 << 20
PART_OFFSET = MiB  # partition 1 starts at sector 2048
BLOCK = 4096
TOOLS = ("mke2fs", "debugfs")
T = TypeVar("T")
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk without waiting (sync_file_range).

    mke2fs leaves what it writes dirty in the page cache until its closing fsync, which then
    waits for the whole image (0.3-0.8 s for the bookworm fixture here, under 0.1 s with
    this); started while mke2fs works, the writes overlap its work. A hint: errors ignored.
    """
    _libc().sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0),
                            ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


# The msdos label counts sectors in 32 bits: partition 1 (from sector 2048) ends by 2 TiB.
MAX_SIZE = 2 << 40


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """The user's choices for the image (the same for ``build`` and ``run``)."""

    size: int | None = None  # bytes; default: the tree plus headroom
    fstype: str | None = None  # ext2 | ext3 | ext4; default: chosen from the guest
    fs_features: str | None = None  # mke2fs features to add (name) or drop (^name)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """One ``build`` (never changed while it runs)."""

    source: Path
    output: Path
    settings: BuildSettings = dataclasses.field(default_factory=BuildSettings)
    force: bool = False
    label: str = "root"
    headroom: float = 0.25
    uuid: str | None = None  # keep a filesystem UUID (refresh by rebuilding)
    sync_workdir: Path | None = None  # where sync recorded its passes (for refresh)


@dataclasses.dataclass
class TreeScan:
    """What one walk of the source tree found."""

    data_bytes: int = 0  # allocated bytes, each inode counted once, in 4 KiB blocks
    apparent_bytes: int = 0
    inodes: int = 0
    time_fixups: list[tuple[bytes, int, int]] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)
    # (dev, ino) → its paths, for hard-linked inodes that are neither files nor directories
    # (mke2fs -d gives each name of a symlink its own inode; see _relink)
    special_links: dict[tuple[int, int], list[bytes]] = dataclasses.field(
        default_factory=dict)


def _blocks(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


def scan_tree(root: Path) -> TreeScan:
    """Walk ``root`` once: sizes, inode count, times mke2fs cannot set, unreadable entries."""
    scan = TreeScan()
    seen: set[tuple[int, int]] = set()
    can_read_all = os.geteuid() == 0
    stack: list[tuple[bytes, bytes]] = [(os.fsencode(root), b"")]
    while stack:
        path, rel = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            scan.unreadable.append(f"{os.fsdecode(rel) or '/'} ({exc.strerror})")
            continue
        for entry in entries:
            erel = rel + b"/" + entry.name if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(
                    st.st_mode):
                scan.special_links.setdefault((st.st_dev, st.st_ino), []).append(erel)
            if (st.st_dev, st.st_ino) in seen:
                continue
            if st.st_nlink > 1:
                seen.add((st.st_dev, st.st_ino))
            scan.inodes += 1
            scan.apparent_bytes += st.st_size
            if stat.S_ISLNK(st.st_mode):
                scan.data_bytes += _blocks(st.st_size) if st.st_size >= 60 else 0
            else:
                scan.data_bytes += _blocks(st.st_blocks * 512)
            if st.st_mtime_ns % 1_000_000_000 or not -(2**31) <= st.st_mtime < 2**31:
                scan.time_fixups.append((erel, *divmod(st.st_mtime_ns, 1_000_000_000)))
            if stat.S_ISDIR(st.st_mode):
                if not can_read_all and not os.access(entry.path, os.R_OK | os.X_OK):
                    scan.unreadable.append(os.fsdecode(erel))
                    continue
                stack.append((os.fsencode(entry.path), erel))
            elif stat.S_ISREG(st.st_mode) and not can_read_all and not os.access(
                    entry.path, os.R_OK):
                scan.unreadable.append(os.fsdecode(erel))
    return scan


def _journal_bytes(fs_bytes: int) -> int:
    blocks = fs_bytes // BLOCK
    if blocks < 32768:
        return 4 * MiB
    if blocks < 256 * 1024:
        return 16 * MiB
    if blocks < 512 * 1024:
        return 32 * MiB
    if blocks < 4096 * 1024:
        return 64 * MiB
    return 256 * MiB


def minimum_size(scan: TreeScan, profile: fsprofile.FsProfile) -> int:
    """The smallest filesystem that holds the tree (data, inode tables, journal, metadata)."""
    inodes = int(scan.inodes * 1.1) + 1024
    data = scan.data_bytes + scan.data_bytes // 100  # indirect/extent blocks, directories
    need = data + inodes * profile.inode_size + 8 * MiB
    return need + _journal_bytes(need) + need // 50


def default_size(scan: TreeScan, profile: fsprofile.FsProfile, headroom: float) -> int:
    """Image size when ``--size`` is not given: minimum plus headroom, 5 % reserved, 64 MiB."""
    need = minimum_size(scan, profile)
    size = int(need * (1 + headroom) / 0.95) + PART_OFFSET
    size = max(size, 256 * MiB)
    return -(-size // (64 * MiB)) * (64 * MiB)


def _fs_args(profile: fsprofile.FsProfile, scan: TreeScan, fs_bytes: int) -> list[str]:
    args = profile.mke2fs_args()
    if fs_bytes // 16384 < scan.inodes * 1.1 + 1024:  # default inode ratio too sparse
        args += ["-N", str(int(scan.inodes * 1.2) + 2048)]
    return args


def _populate(opts: BuildOptions, profile: fsprofile.FsProfile, scan: TreeScan,
              partial: Path, size: int, meanwhile: Callable[[], T]) -> T:
    """Run mke2fs -d into ``partial``; return what ``meanwhile`` returns, run while it works."""
    fs_bytes = size - PART_OFFSET
    argv = ["mke2fs", "-F", "-q", "-b", str(BLOCK), "-i", "16384",
            *_fs_args(profile, scan, fs_bytes), "-L", opts.label,
            *(["-U", opts.uuid] if opts.uuid else []),
            "-E", f"offset={PART_OFFSET}", "-d", os.fspath(opts.source),
            os.fspath(partial), f"{fs_bytes // 1024}k"]
    proc = runmod.popen(argv)
    image = pidfd = -1
    try:
        image = os.open(partial, os.O_RDONLY)
        exited = select.poll()
        with contextlib.suppress(OSError):  # readable once mke2fs exits (Linux >= 5.3)
            pidfd = os.pidfd_open(proc.pid)
            exited.register(pidfd, select.POLLIN)
        result = meanwhile()  # mke2fs is single-threaded: this runs on another core
        with progress(scan.data_bytes, "populate") as bar:
            while proc.poll() is None:
                _start_writeback(image)
                done = os.fstat(image).st_blocks * 512
                bar.update(max(0, min(done, scan.data_bytes) - bar.n))
                if pidfd >= 0:  # wakes at once on exit; proc.wait(timeout) sleeps up to 50 ms
                    exited.poll(200)
                else:
                    with contextlib.suppress(runmod.TimeoutExpired):
                        proc.wait(timeout=0.2)
            if proc.returncode == 0:  # all written: the last line says so
                bar.update(scan.data_bytes - bar.n)
        _, err = proc.communicate()
    finally:
        for fd in (image, pidfd):
            if fd >= 0:
                os.close(fd)
        if proc.poll() is None:  # interrupted: never leave mke2fs writing
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        message = err.decode("utf-8", "replace")
        detail = runmod.last_line(message)
        if "No space left on device" in message:
            raise PreconditionError(f"no space left on the filesystem of {opts.output.parent}",
                                    hint="free space there or choose another -o path")
        if "Could not allocate" in message or "No free space in the" in message:
            raise InputError(f"the tree {opts.source} does not fit in {size // MiB} MiB",
                             hint="give a larger --size, or none to compute it")
        raise StageError(f"mke2fs -d failed populating from {opts.source}: {detail}",
                         hint="run with --debug to see the command")
    return result


def _relink(partial: Path, scan: TreeScan) -> None:
    """Give all names of a hard-linked symlink, device, FIFO or socket one inode again.

    mke2fs -d (1.47.0) links the names of regular files but makes a new inode for each name
    of a symlink. Every extra name is unlinked and linked to the inode of the first name, and
    the link count set. The inodes left over are freed with a zero link count (else e2fsck
    finds them in use). kill_file leaves their xattr block, and no debugfs command frees one
    with its counts (freeb leaves the group's free count, ea_rm in 1.47.0 leaves an empty
    block), so the freed inode gets it as its first data block and that block is punched.
    A name with a newline cannot be a line of a batch: it gets a ``debugfs -R`` of its own,
    and the link goes by full path, not by ``cd``.
    """
    groups = [paths for paths in scan.special_links.values() if len(paths) > 1]
    if not groups:
        return
    inodes, modes = e2fs.walk(partial, PART_OFFSET)
    batch: list[str | bytes] = []
    alone: list[bytes] = []
    spare: dict[int, int] = {}
    for paths in groups:
        for rel in paths:
            if rel not in inodes:
                raise StageError(f"{os.fsdecode(rel)!r} is missing from the image",
                                 hint="mke2fs -d skipped it; run with --debug")
        keep = inodes[paths[0]]
        for rel in paths[1:]:
            if inodes[rel] == keep:
                continue
            spare[inodes[rel]] = modes[inodes[rel]]
            parent, _, name = rel.rpartition(b"/")
            # unlink <dir>/name looks up no path; link takes the full path, which does not
            # exist any more once unlinked (else debugfs would link into it as a directory).
            unlink = f"<{inodes[parent]}>/".encode() + name
            link = b"/" + rel if parent else name
            if e2fs.quote(rel) is None:
                alone += [b"unlink " + e2fs.quote_any(unlink),
                          f"link <{keep}> ".encode() + e2fs.quote_any(link)]
            else:
                batch += [b"unlink " + e2fs.quote_any(unlink),
                          f"link <{keep}> ".encode() + e2fs.quote_any(link)]
        batch.append(f"sif <{keep}> links_count {len(paths)}")
    for ino, node in e2fs.stat_inodes(partial, PART_OFFSET, spare).items():
        batch += [f"sif <{ino}> links_count 0", f"kill_file <{ino}>"]
        if node.xattr_block:  # its own: mke2fs -d never shares one
            batch += [f"sif <{ino}> file_acl 0", f"sif <{ino}> flags 0",
                      f"sif <{ino}> block[0] {node.xattr_block}", f"punch <{ino}> 0 0"]
    for command in alone:
        e2fs.request(partial, PART_OFFSET, command, write=True)
    e2fs.debugfs(partial, PART_OFFSET, batch, write=True)


def _complete(partial: Path, opts: BuildOptions, profile: fsprofile.FsProfile,
              scan: TreeScan) -> list[str]:
    """Set what mke2fs -d leaves out; return the warnings for times the fs cannot keep."""
    warnings: list[str] = []
    st = os.lstat(opts.source)
    low, extra = e2fs.time_fields(*divmod(st.st_mtime_ns, 1_000_000_000))
    commands: list[str | bytes] = [f"sif <2> mode 0{st.st_mode:o}", f"sif <2> uid {st.st_uid}",
                                   f"sif <2> gid {st.st_gid}", f"sif <2> mtime @{low}"]
    if profile.keeps_nanoseconds:
        commands.append(f"sif <2> mtime_extra {extra}")
        fixes: list[tuple[bytes, bytes]] = []
        for rel, seconds, nanos in scan.time_fixups:
            if seconds >= 2**34 - 2**31:
                warnings.append(f"{os.fsdecode(rel)}: mtime beyond 2446 cannot be stored")
            fixes.append((rel, f"mtime_extra {e2fs.time_fields(seconds, nanos)[1]}".encode()))
        # Address by quoted name; only names a command line cannot carry need inode numbers.
        by_name, by_inode = e2fs.sif_by_directory(fixes)
        commands += by_name
        inodes = e2fs.walk(partial, PART_OFFSET)[0] if by_inode else {}
        for rel, action in by_inode:
            if rel not in inodes:
                raise StageError(f"{os.fsdecode(rel)!r} is missing from the image",
                                 hint="mke2fs -d skipped it; run with --debug")
            commands.append(f"sif <{inodes[rel]}> ".encode() + action)
    else:
        for rel, seconds, _ in scan.time_fixups:
            if not -(2**31) <= seconds < 2**31:
                warnings.append(f"{os.fsdecode(rel)}: mtime {seconds} outside what "
                                f"{profile.inode_size}-byte inodes keep (1901–2038)")
    e2fs.debugfs(partial, PART_OFFSET, commands, write=True)
    return warnings


def check_source(source: Path) -> None:
    """Refuse a missing or non-directory source before any work starts."""
    if not source.exists():
        raise InputError(f"source {source} does not exist", hint="give the staging tree path")
    if not source.is_dir():
        raise InputError(f"source {source} is not a directory",
                         hint="give the root directory of the staging tree")


def check_outside(source: Path, output: Path) -> None:
    """Refuse an output inside the source tree: ``mke2fs -d`` would copy the growing image
    (and its state file) into itself, and no size would ever fit."""
    tree = source.resolve()
    final = output.parent.resolve() / output.name  # the partial and state files sit beside it
    if final == tree or tree in final.parents:
        raise InputError(f"output {output} is inside the source tree {source}",
                         hint="write the image outside the tree it is made from")


def check_size(size: int) -> None:
    """Refuse an image size the msdos partition table cannot describe."""
    if size > MAX_SIZE:
        raise InputError(f"image size {human(size)} is larger than an msdos partition table "
                         f"can address ({human(MAX_SIZE)})",
                         hint="give a --size of at most 2T")


def check_features(text: str | None) -> None:
    """Refuse ``--fs-features`` names the host's mke2fs does not know, before the tree is read.

    mke2fs itself is asked (``-n``: nothing is made, and the device path does not exist), one
    name at a time: it is the program that will get the list, so a name is known exactly when
    this e2fsprogs knows it (``orphan_file`` needs 1.47; ``gdt_csum`` is a libe2p name that
    mke2fs refuses), with no copy of its table here to fall out of date.
    """
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if not re.fullmatch(r"\^?[A-Za-z0-9_]+", item):
            raise InputError(f"cannot read --fs-features item {item!r}",
                             hint="write names like has_journal or ^metadata_csum, comma "
                                  "separated")
        with tempfile.TemporaryDirectory(prefix="p2vimage-features-") as tmp:
            proc = runmod.run(["mke2fs", "-n", "-q", "-F", "-t", "ext4", "-O", f"none,{item}",
                               os.path.join(tmp, "absent"), "64M"], check=False, timeout=30,
                              env={"LC_ALL": "C"}, what="mke2fs -n")
        if "Invalid filesystem option set" in proc.stderr:
            raise InputError(f"unknown filesystem feature {item.lstrip('^')!r} in "
                             f"--fs-features", hint="see 'man ext4' for the feature names "
                             "this host's mke2fs knows")


def check_options(opts: BuildOptions) -> None:
    """Refuse bad input before anything is read or written: source, output, size, features."""
    check_source(opts.source)
    check_output(opts.output, opts.force)
    check_outside(opts.source, opts.output)
    if opts.settings.size is not None:
        check_size(opts.settings.size)
    runmod.require_tools(TOOLS)
    check_features(opts.settings.fs_features)


def build(opts: BuildOptions) -> dict[str, object]:
    """Make the image; return the build report. Raises P2VError subclasses on failure.

    The image and its state file change only when the new image is complete."""
    check_options(opts)
    synced = len(syncmod.passes(opts.source, opts.sync_workdir))  # before the tree is read
    started = time.monotonic()
    with step(f"Scanning {opts.source}"):
        guest = guestrecord.from_tree(opts.source)
        scan = scan_tree(opts.source)
    if scan.unreadable:
        more = f" and {len(scan.unreadable) - 1} more" if len(scan.unreadable) > 1 else ""
        raise InputError(f"cannot read {scan.unreadable[0]}{more} in {opts.source}",
                         hint="run as root or fix the permissions; nothing was written")
    profile = fsprofile.choose(guest, opts.settings.fstype, opts.settings.fs_features)
    need = minimum_size(scan, profile) + PART_OFFSET
    size = opts.settings.size if opts.settings.size is not None else min(
        default_size(scan, profile, opts.headroom), max(MAX_SIZE, need))
    if size < need:
        raise InputError(f"--size {size // MiB} MiB is too small for {opts.source}: "
                         f"it needs at least {-(-need // MiB)} MiB",
                         hint="give a larger --size, or none to compute it")
    size = size // MiB * MiB
    check_size(size)
    free = os.statvfs(opts.output.parent)
    if free.f_bavail * free.f_frsize < scan.data_bytes:
        raise PreconditionError(
            f"not enough space in {opts.output.parent}: the image needs about "
            f"{scan.data_bytes // MiB} MiB, {free.f_bavail * free.f_frsize // MiB} MiB free",
            hint="free space there or choose another -o path")
    log.info("guest: %s (%s); kernels %s; bootloader %s; e2fsprogs %s", guest.product,
             guest.arch or "unknown arch", ", ".join(k.version for k in guest.kernels) or "none",
             guest.bootloader,
             guestfacts.fmt(guest.e2fsprogs_version))
    log.info("filesystem: %s, %d-byte inodes, features %s", profile.fstype,
             profile.inode_size, ",".join(profile.features))
    with atomic_output(opts.output, opts.force,
                       companions=(imagestate.state_path(opts.output),)) as partial:
        reserve(partial, size)
        with step(f"Populating {size // MiB} MiB image ({scan.data_bytes // MiB} MiB data)"):
            inputs = _populate(opts, profile, scan, partial, size,
                               meanwhile=lambda: fixups.input_digest(opts.source))
        with step("Completing what mke2fs -d does not carry"):
            _relink(partial, scan)
            warnings = _complete(partial, opts, profile, scan)
        fd = os.open(partial, os.O_WRONLY)
        try:
            mbr.write_table(fd, size)
        finally:
            os.close(fd)
        uuid, _ = e2fs.superblock_ids(partial, PART_OFFSET)
        imagestate.save_pending(opts.output, {
            **imagestate.source_identity(opts.source), "uuid": uuid, "label": opts.label,
            "filesystem": profile.fstype, "inode_size": profile.inode_size,
            "keeps_nanoseconds": profile.keeps_nanoseconds, "size_bytes": size,
            "inputs": inputs, "built": time.time(),
            "dirty": False, "synced_passes": synced,
            **guestrecord.state_fields(partial, guest)})  # renaming keeps size, mtime, inode
    for warning in warnings:
        log.warning("warning: %s", warning)
    return {
        "image": os.fspath(opts.output), "source": os.fspath(opts.source),
        "size_bytes": size, "partition_offset": PART_OFFSET, "data_bytes": scan.data_bytes,
        "inodes": scan.inodes, "filesystem": profile.fstype, "uuid": uuid,
        "features": list(profile.features), "inode_size": profile.inode_size,
        "reasons": list(profile.reasons), "warnings": warnings,
        "guest": {"distro": guest.distro, "version": guest.version, "product": guest.product,
                  "arch": guest.arch, "init": str(guest.init),
                  "kernels": [k.version for k in guest.kernels],
                  "bootloader": str(guest.bootloader),
                  "e2fsprogs": guestfacts.fmt(guest.e2fsprogs_version)},
        "seconds": round(time.monotonic() - started, 2),
    }

