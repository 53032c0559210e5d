"""e2fsprogs on an image file, no root and no mount: mke2fs, debugfs batches, e2fsck.

All tools address the filesystem inside a partition with e2fsprogs' ``FILE?offset=N`` syntax.
debugfs is driven in batches (one process for many commands) and addressed by inode number
(``<ino>``), since file names may contain newlines that a command line cannot carry.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from p2vimage.core.errors import InputError, StageError
from p2vimage.core.log import progress
from p2vimage.disk import mbr
from p2vimage.disk.content import ContentDigest, pieces
from p2vimage.host import run as runmod

# debugfs prints owner and group ids signed (%d): an id >= 2**31 shows as a negative number.
_LS_RECORD = re.compile(rb"/(\d+)/([0-7]+)/(-?\d+)/(-?\d+)/([^/]*)/(\d*)/\n")


def spec(image: Path, offset: int) -> str:
    """The e2fsprogs device spec for the filesystem at ``offset`` bytes into ``image``."""
    return f"{os.fspath(image)}?offset={offset}"


def debugfs(image: Path, offset: int, commands: Iterable[str | bytes],
            write: bool = False) -> bytes:
    """Run ``commands`` in one debugfs process; return its raw stdout.

    Raises StageError when debugfs fails or reports an error for any command.
    """
    script = b"".join((c if isinstance(c, bytes) else c.encode()) + b"\n" for c in commands)
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", spec(image, offset)]
    return _checked(image, runmod.run(argv, input=script, text=False, what="debugfs"))


def request(image: Path, offset: int, command: bytes, write: bool = False) -> bytes:
    """Run one debugfs command given on its command line (``-R``), where an argument may
    hold the newline a batch line cannot; return its raw stdout. Raises StageError as
    ``debugfs``."""
    argv = ["debugfs", *(["-w"] if write else []), "-R", os.fsdecode(command),
            spec(image, offset)]
    return _checked(image, runmod.run(argv, text=False, what="debugfs"))


def _checked(image: Path, proc: runmod.Completed[bytes]) -> bytes:
    errors = [line for line in proc.stderr.decode("utf-8", "replace").splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise StageError(f"debugfs on {image}: {errors[0]}",
                         hint="the filesystem may be damaged; run e2fsck -fn on it")
    return bytes(proc.stdout)


def quote(path: bytes) -> bytes | None:
    """``path`` as one argument in a debugfs batch, or None: a batch line cannot hold a
    newline or carriage return (use ``request`` with ``quote_any``)."""
    if b"\n" in path or b"\r" in path:
        return None
    return quote_any(path)


def quote_any(path: bytes) -> bytes:
    """``path`` as one debugfs argument ("" escapes a quote)."""
    return b'"' + path.replace(b'"', b'""') + b'"'


def sif_by_directory(fixes: Iterable[tuple[bytes, bytes]]
                     ) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """debugfs commands ``sif NAME FIELD VALUE`` for (relative path, b"FIELD VALUE") pairs,
    with one ``cd`` per directory, ending in "/".

    debugfs looks every path up from the root, scanning each directory on the way; after a
    ``cd`` it scans only the last one (half the batch's time on a Debian tree).
    Also returns the pairs no command line can carry (a newline in the path), to be
    addressed by inode number.
    """
    groups: dict[bytes, list[bytes]] = {}
    by_inode: list[tuple[bytes, bytes]] = []
    for rel, action in fixes:
        parent, _, name = rel.rpartition(b"/")
        directory, target, absolute = quote(b"/" + parent), quote(name), quote(b"/" + rel)
        if directory is None or target is None or absolute is None:
            by_inode.append((rel, action))
            continue
        if name.startswith(b"<") and name.endswith(b">"):  # debugfs reads <N> as inode N
            target = absolute
        groups.setdefault(directory, []).append(b"sif " + target + b" " + action)
    commands: list[bytes] = []
    for directory, sifs in groups.items():
        commands += [b"cd " + directory, *sifs]
    return [*commands, b'cd "/"'] if commands else [], by_inode


def walk(image: Path, offset: int) -> tuple[dict[bytes, int], dict[int, int]]:
    """(every path, relative and b'' for the root → inode number; inode number → mode).

    Breadth-first, one debugfs process per directory level, with ``ls -p <ino>``.
    """
    paths: dict[bytes, int] = {b"": 2}
    modes: dict[int, int] = {2: 0o040000}
    level: dict[int, bytes] = {2: b""}
    while level:
        out = debugfs(image, offset, (f"ls -p <{ino}>" for ino in level))
        current: bytes | None = None
        next_level: dict[int, bytes] = {}
        for match in _LS_RECORD.finditer(out):
            ino, mode, name = int(match.group(1)), int(match.group(2), 8), match.group(5)
            if name == b".":
                current = level.get(ino)
                modes[ino] = mode
                continue
            if name in (b"..", b"") or ino == 0 or current is None:
                continue
            path = current + b"/" + name if current else name
            paths[path] = ino
            modes[ino] = mode
            if mode & 0o170000 == 0o040000:
                next_level[ino] = path
        level = next_level
    return paths, modes


def fsck(image: Path, offset: int) -> tuple[bool, str]:
    """``e2fsck -fn`` of the filesystem: (clean, last line of its output)."""
    proc = runmod.run(["e2fsck", "-fn", spec(image, offset)], check=False, what="e2fsck")
    return proc.returncode == 0, runmod.last_line(proc.stdout + proc.stderr)


def time_fields(seconds: int, nanoseconds: int) -> tuple[int, int]:
    """The (low 32 bits as stored, extra field) encoding of a time in a large ext4 inode."""
    low = ((seconds + 2**31) % 2**32) - 2**31
    epoch = ((seconds - low) >> 32) & 3
    return low, epoch | (nanoseconds << 2)


# ---- reading a whole filesystem, for verify ---------------------------------------------

_STAT_HEAD = re.compile(rb"^debugfs: stat <(\d+)>\n", re.M)
_USER = re.compile(rb"User:\s+(-?\d+)\s+Group:\s+(-?\d+).*?Size:\s+(\d+)")
_LINKS = re.compile(rb"Links:\s+(\d+)")
_ACL_BLOCK = re.compile(rb"^File ACL: (\d+)", re.M)
_MTIME = re.compile(rb"^ ?mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?", re.M)
_DEVICE = re.compile(rb"Device major/minor number: (\d+):(\d+)")
_FASTLINK = re.compile(rb'Fast link dest: "(.*)"\n', re.S)
_XATTR = re.compile(rb"^  (\S+) \((\d+)\)", re.M)
# One run of a file's extent or block map: (logical[-last][u]):physical[-last]; index and
# indirect blocks ((ETB0), (IND), (DIND), (TIND)) do not match.
_RANGE = re.compile(rb"\((\d+)(?:-(\d+))?(\[u\])?\):(\d+)")
_MAP = re.compile(rb"^(?:EXTENTS|BLOCKS):\n", re.M)
_SB_FIELD = re.compile(rb"^(Block size|Inode size):\s+(\d+)", re.M)


def find_partition(image: Path) -> int:
    """Byte offset of the ext filesystem in ``image``: partition 1 of an msdos label, or 0.

    Raises InputError when the file is not a raw image holding an ext2/3/4 filesystem.
    """
    try:
        with open(image, "rb") as f:
            head = f.read(512)
            offsets = [p.start * mbr.SECTOR for p in mbr.partitions(head)] + [0]
            for offset in offsets:
                f.seek(offset + 1024 + 56)
                if f.read(2) == b"\x53\xef":
                    return offset
    except FileNotFoundError:
        raise InputError(f"image {image} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"image {image} is a directory",
                         hint="give the raw image file") from None
    if head.startswith(b"QFI\xfb"):
        raise InputError(f"{image} is a qcow2 image", hint="give the raw image")
    raise InputError(f"{image} holds no ext2/3/4 filesystem (in partition 1 or the whole file)",
                     hint="give a raw image made by 'p2vimage build'")


@dataclasses.dataclass
class Inode:
    """What verify needs of one inode, as debugfs shows it."""

    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    links: int = 1
    mtime: tuple[int, int] = (0, 0)  # seconds (decoded like the kernel), nanoseconds
    rdev: tuple[int, int] | None = None
    link_target: bytes | None = None
    xattr_names: list[bytes] = dataclasses.field(default_factory=list)
    xattrs: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    data_blocks: int = 0
    # (first logical block, first physical block, count) of each run of written data blocks
    extents: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    inline: bool = False  # data in the inode (inline_data), no block map
    xattr_block: int = 0  # the block holding xattrs that do not fit in the inode
    sha256: str | None = None  # content.ContentDigest of a regular file


def _decode_time(low_hex: bytes, extra_hex: bytes | None) -> tuple[int, int]:
    low = int(low_hex, 16)
    low = low - 2**32 if low >= 2**31 else low
    if extra_hex is None:
        return low, 0
    extra = int(extra_hex, 16)
    return low + ((extra & 3) << 32), extra >> 2


def _parse_stat(text: bytes, mode: int) -> Inode:
    inode = Inode(mode=mode)
    if m := _USER.search(text):
        inode.uid, inode.gid = int(m.group(1)) % 2**32, int(m.group(2)) % 2**32
        inode.size = int(m.group(3))
    if m := _LINKS.search(text):
        inode.links = int(m.group(1))
    if m := _ACL_BLOCK.search(text):
        inode.xattr_block = int(m.group(1))
    if m := _MTIME.search(text):
        inode.mtime = _decode_time(m.group(1), m.group(2))
    if m := _DEVICE.search(text):
        inode.rdev = (int(m.group(1)), int(m.group(2)))
    if m := _FASTLINK.search(text):
        inode.link_target = m.group(1)
    if b"Extended attributes:\n" in text:
        section = text.split(b"Extended attributes:\n", 1)[1]
        inode.xattr_names = [m.group(1) for m in _XATTR.finditer(section)]
    inode.inline = b"Size of inline data:" in text
    if m := _MAP.search(text):
        for r in _RANGE.finditer(text, m.end()):
            if not r.group(3):  # an unwritten extent reads as zeros: a hole
                first = int(r.group(1))
                count = int(r.group(2) or first) - first + 1
                inode.extents.append((first, int(r.group(4)), count))
                inode.data_blocks += count
    inode.extents.sort()
    return inode


def stat_inodes(image: Path, offset: int, modes: dict[int, int]) -> dict[int, Inode]:
    """Inode number → Inode (without xattr values and content) for each inode in ``modes``
    (inode number → mode), from one debugfs process."""
    out = debugfs(image, offset, (f"stat <{ino}>" for ino in modes))
    heads = list(_STAT_HEAD.finditer(out))
    inodes: dict[int, Inode] = {}
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(out)
        ino = int(head.group(1))
        inodes[ino] = _parse_stat(out[head.end():end], modes[ino])
    return inodes


class ImageTree:
    """A read-only view of the ext filesystem in an image file, through debugfs."""

    def __init__(self, image: Path, offset: int | None = None) -> None:
        self.image = image
        self.offset = find_partition(image) if offset is None else offset
        fields = dict(_SB_FIELD.findall(debugfs(image, self.offset, ["stats -h"])))
        self.block_size = int(fields.get(b"Block size", b"4096"))
        self.inode_size = int(fields.get(b"Inode size", b"128"))

    def entries(self) -> tuple[dict[bytes, int], dict[int, Inode]]:
        """(path → inode number, inode number → Inode with xattrs and content hashes)."""
        paths, modes = walk(self.image, self.offset)
        inodes = stat_inodes(self.image, self.offset, modes)
        self._read_data(inodes)
        self._hash_mapped(inodes)
        return paths, inodes

    def _hash_mapped(self, inodes: dict[int, Inode]) -> None:
        """Hash each regular file from the blocks its map lists, read straight from the image
        file: the holes of a sparse file are never read (a 1 TiB hole costs nothing)."""
        files = [n for n in inodes.values() if n.mode & 0o170000 == 0o100000 and not n.inline]
        bs = self.block_size
        total = sum(min(n.data_blocks * bs, n.size) for n in files)
        fd = os.open(self.image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with progress(total, "reading image") as bar:
                for inode in files:
                    digest = ContentDigest()
                    for logical, physical, count in inode.extents:
                        start, end = logical * bs, min((logical + count) * bs, inode.size)
                        for offset, length in pieces(start, end):
                            where = self.offset + physical * bs + offset - start
                            data = os.pread(fd, length, where)
                            if len(data) != length:
                                raise StageError(f"{self.image} ends before block "
                                                 f"{where // bs} of its filesystem",
                                                 hint="the image is truncated; build it again")
                            digest.update(offset, data)
                            bar.update(length)
                    inode.sha256 = digest.hexdigest(inode.size)
        finally:
            os.close(fd)

    def _read_data(self, inodes: dict[int, Inode]) -> None:
        """Stream xattr values, slow symlink targets and inline file data through one
        debugfs process."""
        commands: list[tuple[str, int, bytes | None]] = []
        for ino, inode in inodes.items():
            for xname in inode.xattr_names:
                commands.append((f"ea_get -x <{ino}> {xname.decode()}", ino, xname))
            kind = inode.mode & 0o170000
            if (kind == 0o100000 and inode.inline) or (
                    kind == 0o120000 and inode.link_target is None):
                commands.append((f"cat <{ino}>", ino, None))
        if not commands:
            return
        script = "".join(f"{c}\n" for c, _, _ in commands).encode()
        proc = runmod.popen(["debugfs", "-f", "-", spec(self.image, self.offset)],
                            stdin=runmod.PIPE, stderr=runmod.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        writer = threading.Thread(target=_feed, args=(proc.stdin, script), daemon=True)
        writer.start()
        out = proc.stdout
        try:
            for command, ino, name in commands:
                echo = out.readline()
                if echo != f"debugfs: {command}\n".encode():
                    raise StageError(f"unexpected debugfs output reading {self.image}: "
                                     f"{echo[:80]!r}", hint="run with --debug")
                inode = inodes[ino]
                if name is not None:
                    value = b""
                    while (line := out.readline()) not in (b"\n", b""):
                        value += line
                    hexpart = value.split(b") = ", 1)[1] if b") = " in value else b""
                    inode.xattrs[name] = bytes.fromhex(hexpart.decode())
                elif inode.mode & 0o170000 == 0o120000:
                    inode.link_target = bytes(out.read(inode.size))
                else:
                    digest = ContentDigest()
                    done = 0
                    while done < inode.size:
                        chunk = out.read(min(inode.size - done, 1 << 20))
                        if not chunk:
                            raise StageError(f"debugfs stopped reading {self.image}",
                                             hint="run e2fsck -fn on the image")
                        digest.update(done, chunk)
                        done += len(chunk)
                    inode.sha256 = digest.hexdigest(inode.size)
        finally:
            out.close()
            proc.wait()
            writer.join()


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except BrokenPipeError:
        pass


class E2fsFiles:
    """A FileView over the ext filesystem in an image, through debugfs (no appliance, no
    root): for reading a handful of guest files fast, e.g. the network config before a boot."""

    def __init__(self, image: Path, offset: int | None = None) -> None:
        self.image = image
        self.offset = find_partition(image) if offset is None else offset
        self._dirs: dict[str, dict[bytes, tuple[int, int]]] = {}

    def _entries(self, path: str) -> dict[bytes, tuple[int, int]]:
        """name → (mode, size) of one directory."""
        path = "/" + path.strip("/")
        if path not in self._dirs:
            target = quote(path.encode())
            out = debugfs(self.image, self.offset, [b"ls -p " + target]) if target else b""
            self._dirs[path] = {m.group(5): (int(m.group(2), 8), int(m.group(6) or 0))
                                for m in _LS_RECORD.finditer(out)
                                if m.group(5) not in (b".", b"..", b"")}
        return self._dirs[path]

    def _stat(self, path: str) -> tuple[int, int] | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name:
            return 0o040000, 0
        parent_stat = self._stat(parent) if parent else (0o040000, 0)
        if parent_stat is None or parent_stat[0] & 0o170000 != 0o040000:
            return None
        return self._entries(parent or "/").get(name.encode())

    def _mode(self, path: str) -> int | None:
        found = self._stat(path)
        return None if found is None else found[0]

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        if not self.is_file(path):
            return None
        target = quote(path.encode())
        if target is None:
            return None
        data = debugfs(self.image, self.offset, [b"cat " + target])
        data = data.split(b"\n", 1)[1] if data.startswith(b"debugfs: ") else data
        return data if limit is None else data[:limit]

    def is_file(self, path: str) -> bool:
        mode = self._mode(path)
        return mode is not None and mode & 0o170000 == 0o100000

    def is_dir(self, path: str) -> bool:
        mode = self._mode(path)
        return mode is not None and mode & 0o170000 == 0o040000

    def listdir(self, path: str) -> list[str]:
        if not self.is_dir(path):
            return []
        return sorted(os.fsdecode(n) for n in self._entries(path))

    def readlink(self, path: str) -> str | None:
        found = self._stat(path)
        target = quote(path.encode())
        if found is None or found[0] & 0o170000 != 0o120000 or target is None:
            return None
        if found[1] < 60:  # a fast link: the target is in the inode, stat shows it
            m = _FASTLINK.search(debugfs(self.image, self.offset, [b"stat " + target]))
            if m:
                return os.fsdecode(m.group(1))
        out = debugfs(self.image, self.offset, [b"cat " + target])  # a slow link: a block
        return os.fsdecode(out.split(b"\n", 1)[1] if out.startswith(b"debugfs: ") else out)

    def size(self, path: str) -> int | None:
        found = self._stat(path)
        return None if found is None else found[1]


def superblock_ids(image: Path, offset: int) -> tuple[str, str]:
    """(UUID, label) of the filesystem at ``offset``, read from its superblock."""
    with open(image, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    raw = sb[0x68:0x78].hex()
    uuid = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    return uuid, sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
