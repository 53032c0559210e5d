"""build + verify on real trees: faithful copies, the partition layout, e2fsck, and verify
catching a difference of every kind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from p2vimage.build import verify
from p2vimage.disk.e2fs import fsck
from tests.conftest import needs_root, p2v

pytestmark = [needs_root]


def mbr_partitions(image: Path) -> list[tuple[int, int, int]]:
    """(boot flag, type, start sector) of each used MBR partition entry."""
    with open(image, "rb") as f:
        head = f.read(512)
    assert head[510:512] == b"\x55\xaa"
    parts = []
    for i in range(4):
        e = head[446 + 16 * i:462 + 16 * i]
        if e[4]:
            parts.append((e[0], e[4], int.from_bytes(e[8:12], "little")))
    return parts


def build(source: Path, out: Path, *extra: str) -> dict[str, object]:
    proc = p2v("--json", "build", source, "-o", out, *extra)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


def assert_faithful(source: Path, image: Path) -> None:
    proc = p2v("--json", "verify", "--strict", source, image)
    result = json.loads(proc.stdout)
    assert result["differences"] == [], result["differences"][:20]
    assert proc.returncode == 0
    ok, detail = fsck(image, 1 << 20)
    assert ok, detail
    assert mbr_partitions(image) == [(0x80, 0x83, 2048)]


@pytest.mark.parametrize("fs", ["ext4", "ext3"])
def test_hard_tree_is_copied_faithfully(hard_tree: Path, tmp_path: Path, fs: str) -> None:
    image = tmp_path / "hard.img"
    report = build(hard_tree, image, "--fs", fs)
    assert report["filesystem"] == fs
    assert not (tmp_path / ".hard.img.partial").exists()
    assert_faithful(hard_tree, image)


def test_grub_legacy_tree_gets_small_inodes_and_warns_about_2040(hard_tree: Path,
                                                                  copy_tree: Callable[..., Path],
                                                                  tmp_path: Path) -> None:
    tree = copy_tree(hard_tree)
    (tree / "boot/grub").mkdir(parents=True)
    (tree / "boot/grub/menu.lst").write_text("default 0\n")
    image = tmp_path / "legacy.img"
    proc = p2v("--json", "build", tree, "-o", image)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["filesystem"], report["inode_size"]) == ("ext3", 128)
    assert any("after-2038" in w for w in report["warnings"])
    result = json.loads(p2v("--json", "verify", "--strict", tree, image).stdout)
    assert result["differences"] == []
    limited = {d["path"] for d in result["filesystem_limits"]}
    assert "/srv/hard/times/after-2038" in limited
    assert "/srv/ns-mtime" in limited  # nanoseconds are not kept by 128-byte inodes


def image_features(image: Path) -> set[str]:
    out = subprocess.run(["dumpe2fs", "-h", f"{image}?offset=1048576"], capture_output=True,
                         text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("Filesystem features:"))
    return set(line.split(":", 1)[1].split())


def test_guest_rules_reach_the_image(tmp_path: Path) -> None:
    """An old e2fsprogs in the guest: ext4 without the features it cannot check."""
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/vmlinuz-5.10.0-30-amd64").write_bytes(b"kernel")
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text(
        "Package: e2fsprogs\nStatus: install ok installed\nVersion: 1.42.9-3\n")
    old = build(tree, tmp_path / "old.img")
    assert old["filesystem"] == "ext4"
    features = image_features(tmp_path / "old.img")
    assert {"extent", "64bit", "uninit_bg"} <= features
    assert not features & {"metadata_csum", "metadata_csum_seed", "orphan_file"}
    (tree / "var/lib/dpkg/status").write_text(
        "Package: e2fsprogs\nStatus: install ok installed\nVersion: 1.47.0-2\n")
    (tree / "boot/vmlinuz-6.1.0-30-amd64").write_bytes(b"kernel")
    (tree / "boot/vmlinuz-5.10.0-30-amd64").unlink()
    build(tree, tmp_path / "new.img")
    assert {"metadata_csum", "orphan_file", "64bit"} <= image_features(tmp_path / "new.img")


def test_nanoseconds_reach_names_debugfs_parses_specially(tmp_path: Path) -> None:
    """Names that look like debugfs's <inode> syntax, quotes, a dash, a newline, in the root
    and below: each keeps its own nanosecond mtime (the batch works one directory at a time)."""
    tree = tmp_path / "tree"
    names = ["<2>", "<11>", 'q"uote', "-dash", "sp ace", "new\nline", "<d>/<3>", "<d>/x",
             "d/<7>", "d/e/<12>", "d/new\nl/f"]
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    every = [*sorted(tree.rglob("*"), key=lambda p: -len(p.parts)), tree]
    for i, path in enumerate(every):  # children first: a directory's mtime is set last
        os.utime(path, ns=(1_500_000_000_000_000_000 + 1001 * i,) * 2)
    image = tmp_path / "names.img"
    build(tree, image, "--fs", "ext4")
    assert_faithful(tree, image)


def test_image_matches_the_kernels_view(hard_tree: Path, tmp_path: Path) -> None:
    """debugfs's reading of the image equals what the kernel shows through a loop mount."""
    image = tmp_path / "k.img"
    build(hard_tree, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro,offset=1048576", str(image), str(mnt)], check=True)
    try:
        kernel = verify.source_manifest(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    debugfs_view, inode_size = verify.image_manifest(image)
    result = verify.compare(kernel, debugfs_view, inode_size, strict=True)
    assert result.differences == []
    assert result.compared == len(debugfs_view) > 60


def _alter(tree: Path) -> dict[str, str]:
    """Change one field of one path per kind; return path → the field verify must name."""
    hard = tree / "srv/hard"
    (hard / "misc/empty-file").chmod(0o600)
    os.chown(hard / "links/two-a", 1000, 0)
    os.chown(hard / "acl/file", 0, 1000)
    (hard / "xattr/file").write_text("has xattrs, longer now\n")
    os.utime(hard / "times/before-1970", (0, 0))
    subprocess.run(["setfattr", "-n", "user.new", "-v", "1", str(hard / "names/café")],
                   check=True)
    subprocess.run(["setfattr", "-n", "trusted.p2vimage", "-v", "other",
                    str(hard / "owners/orphan")], check=True)
    subprocess.run(["setfacl", "-m", "u:4242:r--", str(hard / "acl/dir")], check=True)
    subprocess.run(["setcap", "cap_net_admin+ep", str(hard / "caps/raw-true")], check=True)
    st = os.stat(hard / "sparse/zeros-1M")
    with open(hard / "sparse/zeros-1M", "r+b") as f:  # same size and times, other bytes
        f.write(b"x")
    os.utime(hard / "sparse/zeros-1M", ns=(st.st_atime_ns, st.st_mtime_ns))
    (hard / "symlinks/dangling").unlink()
    (hard / "symlinks/dangling").symlink_to("elsewhere")
    os.utime(hard / "symlinks/dangling", (1234656000,) * 2, follow_symlinks=False)
    os.utime(hard / "symlinks", (1234656000,) * 2)
    dev = hard / "special/char-null"
    dev.unlink()
    os.mknod(dev, 0o20666, os.makedev(1, 5))
    os.utime(dev, (1234656000,) * 2)
    three = hard / "other/three-3"  # split a hard link, same content and times
    data = three.read_bytes()
    three.unlink()
    three.write_bytes(data)
    os.utime(three, (1234656000,) * 2)
    os.utime(hard / "other", (1234656000,) * 2)
    (hard / "misc/added").write_text("new\n")
    os.utime(hard / "misc", (1234656000,) * 2)
    shutil.rmtree(hard / "empty/mode-0700")
    os.utime(hard / "empty", (1234656000,) * 2)
    fifo = hard / "special/fifo"
    fifo.unlink()
    fifo.write_text("")
    os.chmod(fifo, 0o644)
    os.utime(fifo, (1234656000,) * 2)
    os.utime(hard / "special", (1234656000,) * 2)
    return {
        "/srv/hard/misc/empty-file": "mode", "/srv/hard/links/two-a": "uid",
        "/srv/hard/acl/file": "gid", "/srv/hard/xattr/file": "size",
        "/srv/hard/times/before-1970": "mtime", "/srv/hard/names/café": "xattrs",
        "/srv/hard/owners/orphan": "xattrs", "/srv/hard/acl/dir": "xattrs",
        "/srv/hard/caps/raw-true": "xattrs", "/srv/hard/sparse/zeros-1M": "sha256",
        "/srv/hard/symlinks/dangling": "symlink target", "/srv/hard/special/char-null": "device",
        "/srv/hard/other/three-3": "hard links", "/srv/hard/misc/added": "presence",
        "/srv/hard/empty/mode-0700": "presence", "/srv/hard/special/fifo": "type",
    }


def test_verify_names_every_kind_of_difference(hard_tree: Path, tmp_path: Path,
                                                copy_tree: Callable[..., Path]) -> None:
    image = tmp_path / "orig.img"
    build(hard_tree, image)
    tree = copy_tree(hard_tree)
    expected = _alter(tree)
    proc = p2v("--json", "verify", tree, image)
    assert proc.returncode == 1
    found = {(d["path"], d["field"]) for d in json.loads(proc.stdout)["differences"]}
    for path, field in expected.items():
        assert (path, field) in found, (path, field, sorted(found))
    # the other names of changed inodes differ too; nothing else does
    extra = {f for f in found if f[0] not in expected}
    assert extra == {("/srv/hard/links/three-1", "hard links"),
                     ("/srv/hard/links/sub/three-2", "hard links"),
                     ("/srv/hard/links/two-b", "uid")}, extra
    human = p2v("verify", tree, image)
    assert human.returncode == 1
    assert "/srv/hard/special/char-null: device" in human.stdout


def test_verify_catches_lost_sparseness(hard_tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "s.img"
    build(hard_tree, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,offset=1048576", str(image), str(mnt)], check=True)
    try:  # rewrite the sparse file fully allocated, keeping bytes and times
        target = mnt / "srv/hard/sparse/sparse-64M"
        st = os.stat(target)
        subprocess.run(["cp", "--sparse=never", "--preserve=all", str(target),
                        str(target) + ".tmp"], check=True)
        os.replace(str(target) + ".tmp", target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.utime(target.parent, (1234656000,) * 2)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    result = json.loads(p2v("--json", "verify", hard_tree, image).stdout)
    fields = {(d["path"], d["field"]) for d in result["differences"]}
    assert fields == {("/srv/hard/sparse/sparse-64M", "sparseness")}, fields


@pytest.mark.fixture
@pytest.mark.parametrize("name,fstype,inode_size", [
    ("bullseye-i386", "ext3", 128), ("bookworm-amd64", "ext4", 256)])
def test_legacy_fixtures_build_and_verify(request: pytest.FixtureRequest, tmp_path: Path,
                                          name: str, fstype: str, inode_size: int) -> None:
    tree: Path = request.getfixturevalue(
        "bullseye_tree" if name.startswith("bullseye") else "bookworm_tree")
    image = tmp_path / f"{name}.img"
    report = build(tree, image)
    assert (report["filesystem"], report["inode_size"]) == (fstype, inode_size)
    if fstype == "ext4":
        assert "metadata_csum_seed" not in report["features"]  # bookworm's GRUB 2.06
    assert_faithful(tree, image)


# ---- odd trees of our own: huge sparse files, high ids, hard-linked specials, odd names ----

TIB = 1 << 40
LAYOUTS = pytest.mark.parametrize("legacy", [False, True], ids=["ext4", "ext3-128"])


def new_tree(tmp_path: Path, legacy: bool) -> Path:
    """An empty tree; ``legacy`` gives it a grub-legacy menu, so build makes ext3 with
    128-byte inodes and block maps (no extents)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    if legacy:
        (tree / "boot/grub").mkdir(parents=True)
        (tree / "boot/grub/menu.lst").write_text("default 0\n")
    return tree


def verify_json(tree: Path, image: Path) -> dict[str, object]:
    # Reading the holes of a 1 TiB file would take over an hour; this takes seconds.
    proc = p2v("--json", "verify", "--strict", tree, image, timeout=300)
    result: dict[str, object] = json.loads(proc.stdout)
    assert proc.returncode == (1 if result["differences"] else 0), proc.stderr
    return result


def kernel_view(image: Path, tmp_path: Path, paths: list[str]) -> dict[str, os.stat_result]:
    """lstat of ``paths`` in the image, through a read-only loop mount (the kernel's view)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop,ro,offset=1048576", str(image), str(mnt)],
                   check=True)
    try:
        return {p: os.lstat(mnt / p) for p in paths}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def keep_mtime(path: Path, offset: int, data: bytes) -> None:
    st = os.stat(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@LAYOUTS
def test_terabyte_sparse_file_builds_and_verifies(tmp_path: Path, legacy: bool) -> None:
    tree = new_tree(tmp_path, legacy)
    big = tree / "big"
    with open(big, "wb") as f:
        f.truncate(TIB)
        for i, offset in enumerate((0, 4096 * 12345 + 17, (1 << 39) + 3, TIB - 5000)):
            os.pwrite(f.fileno(), bytes([0x41 + i]) * 3000, offset)
        os.pwrite(f.fileno(), b"!", TIB - 1)
    with open(tree / "zeros-inside", "wb") as f:  # allocated zeros: a hole in the image
        f.write(b"a" * 5000 + bytes(1 << 20) + b"b" * 5000)
    image = tmp_path / "big.img"
    report = build(tree, image)
    assert report["inode_size"] == (128 if legacy else 256)
    result = verify_json(tree, image)
    assert result["differences"] == [] and result["compared"] == len(list(tree.rglob("*"))) + 1
    assert fsck(image, 1 << 20)[0]
    # one byte deep inside a data block, same size and mtime
    keep_mtime(big, (1 << 39) + 1000, b"\0")
    found = {(d["path"], d["field"]) for d in verify_json(tree, image)["differences"]}
    assert found == {("/big", "sha256")}, found
    # put it back; now one byte in the middle of a 256 GiB hole
    keep_mtime(big, (1 << 39) + 1000, b"C")
    assert verify_json(tree, image)["differences"] == []
    keep_mtime(big, 3 << 38, b"\1")
    found = {(d["path"], d["field"]) for d in verify_json(tree, image)["differences"]}
    assert found == {("/big", "sha256")}, found


HIGH_IDS = (2147483648, 4294967294, 65536, 70000)


@LAYOUTS
def test_owner_ids_up_to_2_pow_32_minus_2(tmp_path: Path, legacy: bool) -> None:
    tree = new_tree(tmp_path, legacy)
    owners: dict[str, tuple[int, int]] = {}
    for uid in HIGH_IDS:
        for owner in ((uid, uid), (uid, 100), (100, uid)):
            for kind in ("file", "dir", "link"):
                name = f"{kind}-{owner[0]}-{owner[1]}"
                if kind == "file":
                    (tree / name).write_text(f"{owner}\n")
                elif kind == "dir":
                    (tree / name).mkdir()
                else:
                    (tree / name).symlink_to("somewhere")
                os.chown(tree / name, *owner, follow_symlinks=False)
                owners[name] = owner
    os.chown(tree, 4294967294, 2147483648)  # the root directory is set by debugfs
    image = tmp_path / "ids.img"
    build(tree, image)
    result = verify_json(tree, image)
    assert result["differences"] == [], result["differences"]
    assert fsck(image, 1 << 20)[0]
    seen = kernel_view(image, tmp_path, [".", *owners])
    assert {p: (st.st_uid, st.st_gid) for p, st in seen.items()} == {
        ".": (4294967294, 2147483648), **owners}


@LAYOUTS
def test_hard_links_of_every_kind_stay_one_inode(tmp_path: Path, legacy: bool) -> None:
    tree = new_tree(tmp_path, legacy)
    for sub in ("a", "b", "日本語"):
        (tree / sub).mkdir()
    groups: list[list[str]] = []

    def link(first: str, *more: str) -> None:
        for name in more:
            os.link(tree / first, tree / name, follow_symlinks=False)
        groups.append([first, *more])

    (tree / "a/sym").symlink_to("target")
    link("a/sym", "a/sym2", "b/sym3")
    (tree / "a/slow").symlink_to("t" * 200)  # a target in a data block
    link("a/slow", "b/slow2")
    (tree / "a/xsym").symlink_to("x")  # an xattr value too big for the inode: an EA block
    subprocess.run(["setfattr", "-h", "-n", "trusted.big", "-v", "v" * 300,
                    str(tree / "a/xsym")], check=True)
    link("a/xsym", "b/xsym2")
    os.mkfifo(tree / "a/fifo")
    link("a/fifo", "b/fifo2")
    os.mknod(tree / "a/null", 0o20666, os.makedev(1, 3))
    link("a/null", "b/null2")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(tree / "a/sock"))
    sock.close()
    link("a/sock", "b/sock2")
    (tree / "日本語/リンク\none").symlink_to("ターゲット")  # UTF-8 and newline names
    link("日本語/リンク\none", "日本語/リンク\ntwo", "b/q\"uote")
    (tree / "a/file").write_text("a regular file\n")
    link("a/file", "b/file2")
    for top, dirs, files in os.walk(tree, topdown=False):  # nanosecond mtimes, kept by ext4
        for entry in (*files, *dirs):
            os.utime(os.path.join(top, entry), ns=(1_234_567_890_123_456_789,) * 2,
                     follow_symlinks=False)
    image = tmp_path / "links.img"
    build(tree, image)
    result = verify_json(tree, image)
    assert result["differences"] == [], result["differences"]
    ok, detail = fsck(image, 1 << 20)
    assert ok, detail  # link counts right, no inode or block left behind
    seen = kernel_view(image, tmp_path, [p for group in groups for p in group])
    for group in groups:
        assert len({seen[p].st_ino for p in group}) == 1, group
        assert {seen[p].st_nlink for p in group} == {len(group)}, group


def test_verify_escapes_names_as_ls_b(tmp_path: Path) -> None:
    tree = new_tree(tmp_path, False)
    names = [b"new\nline", b"latin1-caf\xe9", b"tab\there", b"back\\slash", b"caf\xc3\xa9",
             b"sp ace"]
    for name in names:
        (tree / os.fsdecode(name)).write_text("x\n")
    image = tmp_path / "names.img"
    build(tree, image)
    for name in names:
        (tree / os.fsdecode(name)).chmod(0o600)
    human = p2v("verify", tree, image)
    assert human.returncode == 1
    *lines, summary = human.stdout.splitlines()
    assert sorted(lines) == sorted(
        f"/{verify.escape(n)}: mode: source 0o600 != image 0o644" for n in names)
    assert summary == f"verify: {len(names) + 1} paths compared, {len(names)} differences"
    assert "/new\\nline: mode" in human.stdout and "/latin1-caf\\351: mode" in human.stdout
    result = json.loads(p2v("--json", "verify", tree, image).stdout)
    assert sorted(verify.unescape(d["path"]) for d in result["differences"]) == sorted(
        b"/" + n for n in names)
