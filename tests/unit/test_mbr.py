"""The MBR p2vimage writes: one bootable primary partition at sector 2048."""

from __future__ import annotations

from p2vimage.disk.mbr import Partition, partitions, table


def test_table_round_trips() -> None:
    sector0 = table(960 << 20, signature=b"\x11\x22\x33\x44")
    assert len(sector0) == 512
    assert sector0[440:444] == b"\x11\x22\x33\x44"
    assert partitions(sector0) == [Partition(1, True, 0x83, 2048, (960 << 11) - 2048)]


def test_chs_like_fdisk() -> None:
    entry = table(960 << 20, signature=bytes(4))[446:462]
    assert entry[1:4] == bytes((32, 33, 0))  # LBA 2048 = C0 H32 S33 with 255/63 geometry
    huge = table(200 << 30, signature=bytes(4))[446:462]
    assert huge[5:8] == bytes((254, 0xFF, 0xFF))  # past cylinder 1023: the LBA-only marker


def test_no_signature_no_partitions() -> None:
    assert partitions(bytes(512)) == []
    assert partitions(b"short") == []
