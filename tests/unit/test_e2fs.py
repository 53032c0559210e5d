"""Pure parts of the e2fsprogs layer: time encoding, partition discovery, stat parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2vimage.core.errors import InputError
from p2vimage.disk.e2fs import (
    _LS_RECORD,
    _decode_time,
    _parse_stat,
    find_partition,
    sif_by_directory,
    time_fields,
)


@pytest.mark.parametrize("seconds,nanos", [
    (0, 0), (1_234_567_890, 123_456_789), (-302_659_200, 0),  # 1960
    (2_208_988_800, 999_999_999),  # 2040
    (2**31 - 1, 1), (-(2**31), 0), (2**33 + 5, 7),
])
def test_time_encoding_round_trips(seconds: int, nanos: int) -> None:
    low, extra = time_fields(seconds, nanos)
    assert -(2**31) <= low < 2**31
    assert _decode_time(f"{low % 2**32:x}".encode(), f"{extra:x}".encode()) == (seconds, nanos)


def test_small_inode_time_has_no_extra() -> None:
    assert _decode_time(b"edf5c980", None) == (-302659200, 0)


STAT = b"""Inode: 16   Type: regular    Mode:  0664   Flags: 0x80000
User:  4242   Group:  4343   Project:     0   Size: 67108864
File ACL: 0
Links: 2   Blockcount: 40
 mtime: 0x6b0776cb:eb79a2c4 -- Thu Nov 26 00:01:15 2026
Extended attributes:
  user.k (1) = "v"
  system.posix_acl_access (28) = 01 00
EXTENTS:
(0):7930, (2048-2050):8000-8002, (4096[u]):9000
"""


def test_parse_stat() -> None:
    inode = _parse_stat(STAT, 0o100664)
    assert (inode.uid, inode.gid, inode.size, inode.links) == (4242, 4343, 67108864, 2)
    assert inode.mtime == (0x6B0776CB, 0xEB79A2C4 >> 2)
    assert inode.xattr_names == [b"user.k", b"system.posix_acl_access"]
    assert inode.data_blocks == 4  # the unwritten extent is a hole


def test_parse_stat_ext3_blocks_and_device() -> None:
    text = (b"User:     0   Group:     6   Project:     0   Size: 0\nLinks: 1\n"
            b" mtime: 0x4991ea00 -- x\nDevice major/minor number: 08:00 (hex 08:00)\n")
    inode = _parse_stat(text, 0o060660)
    assert inode.rdev == (8, 0)
    assert inode.mtime == (0x4991EA00, 0)
    blocks = _parse_stat(b"BLOCKS:\n(0-11):100-111, (IND):112, (12-20):113-121\nTOTAL: 22\n",
                         0o100644)
    assert blocks.data_blocks == 21


def test_find_partition(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    mbr = bytearray(512)
    mbr[446 + 4] = 0x83
    mbr[446 + 8:446 + 12] = (2048).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    with open(image, "wb") as f:
        f.write(mbr)
        f.seek(2048 * 512 + 1024 + 56)
        f.write(b"\x53\xef")
    assert find_partition(image) == 1 << 20
    bare = tmp_path / "fs.img"
    with open(bare, "wb") as f:
        f.seek(1024 + 56)
        f.write(b"\x53\xef")
    assert find_partition(bare) == 0


def test_find_partition_rejects_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"QFI\xfb" + bytes(4096))
    with pytest.raises(InputError, match="qcow2"):
        find_partition(junk)
    junk.write_bytes(bytes(4096))
    with pytest.raises(InputError, match="no ext2/3/4"):
        find_partition(junk)
    with pytest.raises(InputError, match="does not exist"):
        find_partition(tmp_path / "missing")


def test_ids_printed_signed_are_read_unsigned() -> None:
    """debugfs prints owner and group with %d: 2**31 and up come out negative."""
    text = b"User: -2147483648   Group:    -2   Project:     0   Size: 3\n"
    inode = _parse_stat(text, 0o100644)
    assert (inode.uid, inode.gid, inode.size) == (2147483648, 4294967294, 3)
    record = _LS_RECORD.fullmatch(b"/30/100644/-2/-2147483648/umax/4/\n")
    assert record is not None and record.group(5) == b"umax"


def test_parse_stat_keeps_the_block_map() -> None:
    """The map is read so that verify reads only the data blocks of a file."""
    assert _parse_stat(STAT, 0o100664).extents == [(0, 7930, 1), (2048, 8000, 3)]
    ext3 = (b"BLOCKS:\n(0):4636, (DIND):4637, (IND):4638, (12345):4639, (TIND):4640, "
            b"(DIND):4641, (IND):4642, (134217728):4643, (268435454-268435456):4646-4648\n"
            b"TOTAL: 13\n")
    inode = _parse_stat(ext3, 0o100644)
    assert inode.extents == [(0, 4636, 1), (12345, 4639, 1), (134217728, 4643, 1),
                             (268435454, 4646, 3)]
    assert inode.data_blocks == 6 and not inode.inline
    deep = b"EXTENTS:\n(ETB0):33795, (0-1023):35840-36863, (1024-2047):38912-39935\n"
    assert _parse_stat(deep, 0o100644).extents == [(0, 35840, 1024), (1024, 38912, 1024)]
    assert _parse_stat(b"Size of inline data: 60\n", 0o100644).inline


def test_sif_by_directory_groups_and_keeps_special_names_absolute() -> None:
    fixes = [(b"a/b/f", b"mtime_extra 4"), (b"top", b"mtime_extra 8"), (b"a/b/<7>", b"x 1"),
             (b"a/b", b"x 2"), (b"a/new\nline", b"x 3"), (b'a/b/q"', b"x 5")]
    commands, by_inode = sif_by_directory(fixes)
    assert commands == [
        b'cd "/a/b"', b'sif "f" mtime_extra 4', b'sif "/a/b/<7>" x 1', b'sif "q""" x 5',
        b'cd "/"', b'sif "top" mtime_extra 8',
        b'cd "/a"', b'sif "b" x 2',
        b'cd "/"']  # back at the root for whatever follows
    assert by_inode == [(b"a/new\nline", b"x 3")]  # no command line carries a newline
    assert sif_by_directory([]) == ([], [])
