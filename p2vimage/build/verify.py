"""``verify``: a manifest of the source tree and of the image, and every difference.

Fields compared per path: type, mode, owner, size, mtime (to the resolution the image's inodes
keep), content digest (``content.py``: data ranges only, holes and zeros alike), hard-link
group, symlink target, device numbers, every xattr (ACLs and capabilities included), and
sparseness (a source file with holes must keep holes). The image is read with debugfs (no
root, no mount). Paths that ``convert`` rewrites are reported as expected rewrites and do not
fail the check unless ``strict`` is set. Names are shown as ``ls -b`` does (``escape``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2vimage.convert.fixups import holds_rewrites, rewritten
from p2vimage.core.errors import InputError
from p2vimage.core.log import progress, step
from p2vimage.disk.content import file_digest
from p2vimage.disk.e2fs import ImageTree, Inode

# Paths convert rewrites or creates (documented in README.md "verify").
CREATED_BY_MKFS = ("lost+found",)
ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
_ACL_NO_ID = {0x01, 0x04, 0x10, 0x20}  # USER_OBJ, GROUP_OBJ, MASK, OTHER carry no id


@dataclasses.dataclass(frozen=True)
class Entry:
    """One path's manifest record."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None
    mtime: tuple[int, int]
    sha256: str | None
    link_target: bytes | None
    rdev: tuple[int, int] | None
    xattrs: tuple[tuple[bytes, bytes], ...]
    links: tuple[bytes, ...]  # other paths of the same inode
    holes: bool


@dataclasses.dataclass(frozen=True)
class Difference:
    """One field of one path that differs."""

    path: str
    field: str
    source: str
    image: str
    note: str = ""


@dataclasses.dataclass
class VerifyResult:
    """All differences, expected rewrites and filesystem limits found."""

    compared: int
    differences: list[Difference]
    expected: list[Difference]
    limited: list[Difference]

    def as_dict(self) -> dict[str, Any]:
        """The result as data for --json."""
        return {"compared": self.compared, "ok": not self.differences,
                "differences": [dataclasses.asdict(d) for d in self.differences],
                "expected_rewrites": [dataclasses.asdict(d) for d in self.expected],
                "filesystem_limits": [dataclasses.asdict(d) for d in self.limited]}

    def lines(self, max_shown: int = 50) -> list[str]:
        """The human form: one line per difference, then a summary line."""
        out = [f"{d.path}: {d.field}: source {d.source} != image {d.image}"
               for d in self.differences[:max_shown]]
        if len(self.differences) > max_shown:
            out.append(f"… and {len(self.differences) - max_shown} more (use --json)")
        out += [f"{d.path}: {d.field} beyond what the filesystem keeps: {d.source} → {d.image}"
                for d in self.limited if d.note == "range"][:max_shown]
        nanos = sum(1 for d in self.limited if d.note == "nanoseconds")
        if nanos:
            out.append(f"{nanos} mtimes lost their nanoseconds (128-byte inodes keep seconds)")
        verdict = "identical" if not self.differences else f"{len(self.differences)} differences"
        extra = f", {len(self.expected)} expected rewrites" if self.expected else ""
        out.append(f"verify: {self.compared} paths compared, {verdict}{extra}")
        return out


def _kind(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), f"unknown({stat.S_IFMT(mode):o})")


def normalize_acl(value: bytes) -> bytes:
    """An ACL xattr with the ids of owner/group/mask/other entries set to -1, as the kernel."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return value
    out = bytearray(value[:4])
    for i in range(4, len(value), 8):
        tag = int.from_bytes(value[i:i + 2], "little")
        entry = bytearray(value[i:i + 8])
        if tag in _ACL_NO_ID:
            entry[4:8] = b"\xff\xff\xff\xff"
        out += entry
    return bytes(out)


def _xattrs(items: dict[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(sorted((k, normalize_acl(v) if k in ACL_NAMES else v)
                        for k, v in items.items()))


def _walk(root: bytes) -> Iterator[tuple[bytes, bytes]]:
    yield b"", root
    stack = [(root, b"")]
    while stack:
        path, rel = stack.pop()
        for entry in os.scandir(path):
            erel = rel + b"/" + entry.name if rel else entry.name
            yield erel, entry.path
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, erel))


def source_manifest(root: Path) -> dict[bytes, Entry]:
    """The manifest of a local tree (lstat, xattrs, content digests of the data ranges)."""
    groups: dict[tuple[int, int], list[bytes]] = {}
    raw: dict[bytes, tuple[os.stat_result, bytes]] = {}
    for rel, path in _walk(os.fsencode(root)):
        st = os.lstat(path)
        raw[rel] = (st, path)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    manifest: dict[bytes, Entry] = {}
    total = sum(min(st.st_blocks * 512, st.st_size) for st, _ in raw.values()
                if stat.S_ISREG(st.st_mode))
    with progress(total, "reading source") as bar:
        for rel, (st, path) in raw.items():
            manifest[rel] = _source_entry(st, path, groups.get((st.st_dev, st.st_ino), [rel]),
                                          rel, bar.update)
    return manifest


def _source_entry(st: os.stat_result, path: bytes, group: list[bytes], rel: bytes,
                  read: Callable[[int], object]) -> Entry:
    xattrs = {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False)
              for n in os.listxattr(path, follow_symlinks=False)}
    digest, holes, target = None, False, None
    if stat.S_ISREG(st.st_mode):
        digest, holes = file_digest(path, st.st_size, read)
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
    return Entry(
        kind=_kind(st.st_mode), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        size=st.st_size if not stat.S_ISDIR(st.st_mode) else None,
        mtime=divmod(st.st_mtime_ns, 1_000_000_000), sha256=digest, link_target=target,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None,
        xattrs=_xattrs(xattrs), links=tuple(sorted(p for p in group if p != rel)),
        holes=holes)


def image_manifest(image: Path) -> tuple[dict[bytes, Entry], int]:
    """The manifest of the filesystem in ``image``, and its inode size."""
    tree = ImageTree(image)
    paths, inodes = tree.entries()
    groups: dict[int, list[bytes]] = {}
    for rel, ino in paths.items():
        groups.setdefault(ino, []).append(rel)
    manifest: dict[bytes, Entry] = {}
    for rel, ino in paths.items():
        node: Inode = inodes[ino]
        is_dir = stat.S_ISDIR(node.mode)
        blocks_needed = -(-node.size // tree.block_size)
        manifest[rel] = Entry(
            kind=_kind(node.mode), mode=stat.S_IMODE(node.mode), uid=node.uid, gid=node.gid,
            size=None if is_dir else node.size, mtime=node.mtime, sha256=node.sha256,
            link_target=node.link_target if stat.S_ISLNK(node.mode) else None,
            rdev=node.rdev if stat.S_ISCHR(node.mode) or stat.S_ISBLK(node.mode) else None,
            xattrs=_xattrs(node.xattrs),
            links=() if is_dir else tuple(sorted(p for p in groups[ino] if p != rel)),
            holes=stat.S_ISREG(node.mode) and node.data_blocks < blocks_needed)
    return manifest, tree.inode_size


_C_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v", 0x0C: "\\f",
              0x0D: "\\r", 0x20: "\\ ", 0x5C: "\\\\"}
_C_UNESCAPES = {v[1:].encode(): bytes([k]) for k, v in _C_ESCAPES.items()}
_UNPRINTABLE = {"Cc", "Cn", "Cs", "Zl", "Zp"}  # what glibc's iswprint refuses in C.UTF-8
_ESCAPE = re.compile(rb"\\(?:([0-3][0-7]{2})|(.?))", re.S)


def escape(name: bytes) -> str:
    """``name`` as ``ls -b`` shows it in a UTF-8 locale: C escapes for backslash, space and
    \\a \\b \\t \\n \\v \\f \\r; ``\\NNN`` (octal) for every other byte of a non-printable
    character and every byte that is not UTF-8; printable UTF-8 as it is. ``unescape`` gives
    the bytes back."""
    text = name.decode("utf-8", "surrogateescape")
    if text.isascii() and text.isprintable() and " " not in text and "\\" not in text:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if code in _C_ESCAPES:
            out.append(_C_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\{code - 0xDC00:03o}")
        elif code > 0x7F and unicodedata.category(ch) in _UNPRINTABLE:
            out.append("".join(f"\\{b:03o}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> bytes:
    """The bytes of a name shown by ``escape``. Raises ValueError for an unknown escape."""
    def one(match: re.Match[bytes]) -> bytes:
        if match.group(1):
            return bytes([int(match.group(1), 8)])
        if match.group(2) not in _C_UNESCAPES:
            raise ValueError(f"unknown escape \\{match.group(2).decode('utf-8', 'replace')}")
        return _C_UNESCAPES[match.group(2)]
    return _ESCAPE.sub(one, text.encode("utf-8"))


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return escape(value)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return "{" + ", ".join(f"{escape(k)}={v.hex()}" for k, v in value) + "}"
    if isinstance(value, tuple) and all(isinstance(v, bytes) for v in value):
        return "[" + ", ".join("/" + escape(v) for v in value) + "]"
    return str(value)


def _stored_time(mtime: tuple[int, int], inode_size: int,
                 got: tuple[int, int]) -> tuple[int, int]:
    """What an inode of ``inode_size`` keeps of a time: ns need large inodes; seconds out of
    range wrap when written by debugfs (build) and are clamped when written through the kernel
    (refresh); ``got``, the image's time, is either."""
    seconds, nanos = mtime
    if inode_size <= 128:
        clamped = min(max(seconds, -(2**31)), 2**31 - 1)
        if (clamped, 0) == got:
            return got
        return ((seconds + 2**31) % 2**32) - 2**31, 0
    return seconds, nanos


def compare(source: dict[bytes, Entry], image: dict[bytes, Entry], inode_size: int,
            strict: bool = False) -> VerifyResult:
    """Every difference between two manifests (pure; unit-testable)."""
    diffs: list[Difference] = []
    limited: list[Difference] = []
    for rel in sorted(set(source) | set(image)):
        name = "/" + escape(rel)
        src, img = source.get(rel), image.get(rel)
        if src is None:
            if rel not in (n.encode() for n in CREATED_BY_MKFS):
                diffs.append(Difference(name, "presence", "absent", "present"))
            continue
        if img is None:
            diffs.append(Difference(name, "presence", "present", "absent"))
            continue
        if src.kind != img.kind:
            diffs.append(Difference(name, "type", src.kind, img.kind))
            continue
        want_time = _stored_time(src.mtime, inode_size, img.mtime)
        if want_time != src.mtime and want_time == img.mtime:
            note = "nanoseconds" if want_time[0] == src.mtime[0] else "range"
            limited.append(Difference(name, "mtime", _show(src.mtime), _show(img.mtime), note))
        checks: list[tuple[str, object, object]] = [
            ("mode", oct(src.mode), oct(img.mode)), ("uid", src.uid, img.uid),
            ("gid", src.gid, img.gid), ("size", src.size, img.size),
            ("mtime", want_time, img.mtime), ("sha256", src.sha256, img.sha256),
            ("symlink target", src.link_target, img.link_target), ("device", src.rdev, img.rdev),
            ("xattrs", src.xattrs, img.xattrs), ("hard links", src.links, img.links),
        ]
        if src.kind == "symlink":
            checks = [c for c in checks if c[0] != "mode"]  # symlink modes are always 0777
        for field, want, got in checks:
            if want != got:
                diffs.append(Difference(name, field, _show(want), _show(got)))
        if src.holes and not img.holes:
            diffs.append(Difference(name, "sparseness", "has holes", "fully allocated"))
    expected = [d for d in diffs if not strict and (
        rewritten(d.path) or (holds_rewrites(d.path) and (  # a directory convert wrote into
            d.field == "mtime" or (d.field == "presence" and d.source == "absent"))))]
    return VerifyResult(len(source), [d for d in diffs if d not in expected], expected, limited)


def verify(source: Path, image: Path, strict: bool = False) -> VerifyResult:
    """Compare ``source`` with ``image``. Raises InputError for a bad source or image."""
    if not source.is_dir():
        raise InputError(f"source {source} is not a directory", hint="give the staging tree")
    if not image.is_file():
        raise InputError(f"image {image} does not exist or is not a file",
                         hint="give the raw image made by 'p2vimage build'")
    with step(f"Reading {image}"):
        img_manifest, inode_size = image_manifest(image)
    with step(f"Reading {source}"):
        src_manifest = source_manifest(source)
    return compare(src_manifest, img_manifest, inode_size, strict)
