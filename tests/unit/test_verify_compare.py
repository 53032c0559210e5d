"""verify's comparison of two manifests, field by field (pure logic)."""

from __future__ import annotations

import dataclasses

import pytest

from p2vimage.build.verify import Entry, compare, normalize_acl

BASE = Entry(kind="file", mode=0o644, uid=0, gid=0, size=3, mtime=(1_000_000_000, 5),
             sha256="ab", link_target=None, rdev=None, xattrs=(), links=(), holes=False)


def test_identical_manifests() -> None:
    result = compare({b"a": BASE}, {b"a": BASE}, 256)
    assert result.differences == []
    assert result.compared == 1


@pytest.mark.parametrize("field,value", [
    ("mode", 0o600), ("uid", 1), ("gid", 2), ("size", 4), ("mtime", (1_000_000_000, 6)),
    ("sha256", "cd"), ("xattrs", ((b"user.x", b"1"),)), ("links", (b"b",)),
])
def test_each_field_is_compared(field: str, value: object) -> None:
    image = dataclasses.replace(BASE, **{field: value})
    result = compare({b"a": BASE}, {b"a": image}, 256)
    assert len(result.differences) == 1
    assert result.differences[0].path == "/a"
    assert result.differences[0].field == field.replace("links", "hard links")


def test_type_presence_target_device_sparseness() -> None:
    link = dataclasses.replace(BASE, kind="symlink", link_target=b"x", mode=0o777)
    dev = dataclasses.replace(BASE, kind="chardev", rdev=(1, 3), sha256=None)
    sparse = dataclasses.replace(BASE, holes=True)
    source = {b"l": link, b"d": dev, b"s": sparse, b"t": BASE, b"gone": BASE}
    image = {b"l": dataclasses.replace(link, link_target=b"y", mode=0o755),
             b"d": dataclasses.replace(dev, rdev=(1, 5)), b"s": BASE,
             b"t": dataclasses.replace(BASE, kind="dir"), b"new": BASE}
    fields = {(d.path, d.field) for d in compare(source, image, 256).differences}
    assert fields == {("/l", "symlink target"), ("/d", "device"), ("/s", "sparseness"),
                      ("/t", "type"), ("/gone", "presence"), ("/new", "presence")}


def test_image_may_be_sparser_than_source() -> None:
    image = {b"z": dataclasses.replace(BASE, holes=True)}
    assert not compare({b"z": BASE}, image, 256).differences


def test_lost_found_created_by_mkfs_is_not_a_difference() -> None:
    assert not compare({}, {b"lost+found": BASE}, 256).differences
    assert compare({}, {b"lost+foundx": BASE}, 256).differences


def test_small_inodes_keep_seconds_only_and_wrap_after_2038() -> None:
    src = dataclasses.replace(BASE, mtime=(2_208_988_800, 123))  # 2040-01-01
    wrapped = dataclasses.replace(BASE, mtime=(2_208_988_800 - 2**32, 0))
    result = compare({b"a": src}, {b"a": wrapped}, 128)
    assert not result.differences
    assert [d.field for d in result.limited] == ["mtime"]
    # with large inodes the same wrap is a real difference
    assert compare({b"a": src}, {b"a": wrapped}, 256).differences


def test_convert_rewrites_are_expected_unless_strict() -> None:
    changed = dataclasses.replace(BASE, sha256="ff")
    result = compare({b"etc/fstab": BASE}, {b"etc/fstab": changed}, 256)
    assert not result.differences and len(result.expected) == 1
    assert compare({b"etc/fstab": BASE}, {b"etc/fstab": changed}, 256,
                   strict=True).differences


def test_normalize_acl_sets_unused_ids() -> None:
    disk = bytes.fromhex("02000000" "01000600" "00000000" "02000600" "d2040000"
                         "04000400" "00000000" "10000600" "00000000" "20000400" "00000000")
    kernel = bytes.fromhex("02000000" "01000600" "ffffffff" "02000600" "d2040000"
                           "04000400" "ffffffff" "10000600" "ffffffff" "20000400" "ffffffff")
    assert normalize_acl(disk) == kernel
    assert normalize_acl(kernel) == kernel
