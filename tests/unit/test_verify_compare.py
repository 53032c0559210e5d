"""verify's comparison of two manifests, field by field (pure logic)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from p2vimage.build.verify import Entry, compare, escape, normalize_acl, unescape
from p2vimage.disk.content import CHUNK, ContentDigest, file_digest

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


# ---- names: shown as ls -b shows them ----------------------------------------------------

ODD_NAMES = [b"plain.txt", b"a b", b"new\nline", b"tab\there", b"back\\slash", b"caf\xc3\xa9",
             b"latin1-caf\xe9", b"ctl\x01\x7f", b"bell\x07\x08\x0b\x0c\x0d", b"q\"uote'",
             b"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", b"c1-\xc2\x85", b"nbsp\xc2\xa0",
             b"ls\xe2\x80\xa8", b"surrogate\xed\xa0\x80", b"too-big\xf4\x90\x80\x80",
             b"cut\xe2\x80", b"\\012-not-a-newline", b"#~*?[]$`"]


def test_escape_is_what_ls_b_shows(tmp_path: Path) -> None:
    if b"C.utf8" not in subprocess.run(["locale", "-a"], capture_output=True).stdout:
        pytest.skip("no C.UTF-8 locale")
    for name in ODD_NAMES:
        (tmp_path / os.fsdecode(name)).touch()
    shown = subprocess.run(["ls", "-b", "-1", "-U"], cwd=tmp_path, capture_output=True,
                           check=True, env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
    assert sorted(shown.decode().splitlines()) == sorted(escape(n) for n in ODD_NAMES)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_escape_round_trips_and_stays_on_one_line(name: bytes) -> None:
    shown = escape(name)
    assert unescape(shown) == name
    assert shown.isprintable() or "\xa0" in shown  # no control characters; ls keeps U+00A0
    shown.encode("utf-8")  # valid UTF-8: never a lone surrogate


def test_unescape_refuses_what_escape_never_writes() -> None:
    for text in ("bad\\q", "trailing\\", "\\400"):
        with pytest.raises(ValueError):
            unescape(text)


def test_differences_show_escaped_names_in_both_forms() -> None:
    link = dataclasses.replace(BASE, kind="symlink", link_target=b"to\nthere", mode=0o777)
    source = {b"d/new\nline": BASE, b"latin1-caf\xe9": BASE, b"l": link}
    image = {b"d/new\nline": dataclasses.replace(BASE, uid=7),
             b"latin1-caf\xe9": dataclasses.replace(BASE, links=(b"d/new\nline",)),
             b"l": dataclasses.replace(link, link_target=b"x")}
    result = compare(source, image, 256)
    lines = result.lines()
    assert "/d/new\\nline: uid: source 0 != image 7" in lines
    assert "/latin1-caf\\351: hard links: source [] != image [/d/new\\nline]" in lines
    assert "/l: symlink target: source to\\nthere != image x" in lines
    assert all("\n" not in line and "\ufffd" not in line for line in lines)
    data = json.loads(json.dumps(result.as_dict()))
    assert {unescape(d["path"]) for d in data["differences"]} == {
        b"/d/new\nline", b"/latin1-caf\xe9", b"/l"}


# ---- the content digest reads data ranges only --------------------------------------------

def test_digest_of_holes_equals_digest_of_zeros() -> None:
    data = bytes(range(256)) * 1000
    whole = ContentDigest()
    whole.update(0, bytes(CHUNK * 3) + data + bytes(5000))
    sparse = ContentDigest()  # the zeros never fed: holes
    for offset in range(0, len(data), 4096):  # and fed in 4 KiB pieces, not chunk-aligned
        sparse.update(CHUNK * 3 + offset, data[offset:offset + 4096])
    size = CHUNK * 3 + len(data) + 5000
    assert whole.hexdigest(size) == sparse.hexdigest(size)
    other = ContentDigest()
    other.update(CHUNK * 3 + 1, data)  # the same bytes one further: other content
    assert other.hexdigest(size) != ContentDigest().hexdigest(size)
    assert ContentDigest().hexdigest(10) != ContentDigest().hexdigest(11)


def test_file_digest_reads_a_huge_sparse_file_by_its_data(tmp_path: Path) -> None:
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    size = 1 << 40  # 1 TiB: reading the holes would take an hour
    with open(sparse, "wb") as f:
        f.truncate(size)
        for offset in (0, 4096 * 12345 + 17, (1 << 39) + 3, size - 5000):
            os.pwrite(f.fileno(), b"data" * 1000, offset)
    digest, holes = file_digest(os.fsencode(sparse), size)
    assert holes
    with open(dense, "wb") as f:  # a small file: the same check against a full read
        f.write(b"x" * 5000 + bytes(3 * CHUNK) + b"y" * 70000)
    reference = ContentDigest()
    reference.update(0, dense.read_bytes())
    assert file_digest(os.fsencode(dense), dense.stat().st_size) == (
        reference.hexdigest(dense.stat().st_size), False)
    with open(sparse, "r+b") as f:  # one byte in the middle of a hole
        os.pwrite(f.fileno(), b"\1", (3 << 38) + 77)
    assert file_digest(os.fsencode(sparse), size)[0] != digest
