"""The msdos partition table (MBR): written for ``build``, read to find partitions.

Writing it directly (one 512-byte write) instead of running sfdisk saves a process that
scans the whole image for signatures.
"""

from __future__ import annotations

import dataclasses
import os

SECTOR = 512
_HEADS, _SECTORS = 255, 63  # the geometry fdisk and sfdisk assume


@dataclasses.dataclass(frozen=True)
class Partition:
    """One primary partition entry."""

    number: int
    bootable: bool
    type: int
    start: int  # in sectors
    sectors: int


def _chs(lba: int) -> bytes:
    cyl = lba // (_HEADS * _SECTORS)
    if cyl > 1023:
        return bytes((254, 0xFF, 0xFF))
    head = (lba // _SECTORS) % _HEADS
    sector = lba % _SECTORS + 1
    return bytes((head, sector | ((cyl >> 2) & 0xC0), cyl & 0xFF))


def table(disk_bytes: int, start: int = 2048, ptype: int = 0x83,
          signature: bytes | None = None) -> bytes:
    """An MBR (without boot code) holding one bootable partition from ``start`` to the end."""
    sectors = disk_bytes // SECTOR - start
    entry = (b"\x80" + _chs(start) + bytes((ptype,)) + _chs(start + sectors - 1)
             + start.to_bytes(4, "little") + sectors.to_bytes(4, "little"))
    sig = signature if signature is not None else os.urandom(4)
    return bytes(440) + sig + b"\0\0" + entry + bytes(48) + b"\x55\xaa"


def write_table(fd: int, disk_bytes: int) -> None:
    """Write the partition table part of sector 0 (bytes 440-511), keeping any boot code."""
    os.pwrite(fd, table(disk_bytes)[440:], 440)


def partitions(sector0: bytes) -> list[Partition]:
    """The used primary partitions of an MBR ([] when there is no 0x55AA signature)."""
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        return []
    found = []
    for i in range(4):
        e = sector0[446 + 16 * i: 462 + 16 * i]
        start = int.from_bytes(e[8:12], "little")
        if e[4] and start:
            found.append(Partition(i + 1, e[0] == 0x80, e[4], start,
                                   int.from_bytes(e[12:16], "little")))
    return found
