"""build without root, as README promises: the CLI run as an unprivileged user (nobody) on a
tree it can read, then verify (as root) finds the image equal to the tree.

The tree holds what a faithful copy must keep and a user can read: files owned by other users,
hard links, holes, a FIFO, symlinks, ACLs, user xattrs, a file capability, setuid/setgid/
sticky modes, odd names and nanosecond mtimes. No device nodes and no trusted.* xattrs (only
root reads those).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import P2VIMAGE, REPO, needs_root, p2v

pytestmark = [pytest.mark.root, needs_root]
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def top() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is root's alone, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="p2v-unpriv-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sh(*argv: str | os.PathLike[str]) -> None:
    subprocess.run([os.fspath(a) for a in argv], check=True)


def readable_tree(root: Path) -> None:
    """A tree with every kind of file and metadata that needs no root to read."""
    for sub in ("etc", "srv/links/sub", "srv/other", "srv/sparse", "srv/special",
                "srv/symlinks", "srv/acl/dir", "srv/xattr", "srv/modes", "srv/names/日本語",
                "srv/empty", "srv/owners"):
        (root / sub).mkdir(parents=True)
    (root / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    (root / "etc/hostname").write_text("unprivileged\n")
    links = root / "srv/links"
    (links / "a").write_text("one inode, three names\n")
    os.link(links / "a", links / "sub/b")
    os.link(links / "a", root / "srv/other/c")
    with open(root / "srv/sparse/holes", "wb") as f:
        f.truncate(32 << 20)
        for off in (0, 9 << 20, (32 << 20) - 4096):
            os.pwrite(f.fileno(), b"D" * 4096, off)
    os.mkfifo(root / "srv/special/fifo", 0o644)
    for link, target in (("relative", "../links/a"), ("absolute", "/etc/hostname"),
                         ("dangling", "no/such/file")):
        (root / "srv/symlinks" / link).symlink_to(target)
    (root / "srv/acl/file").write_text("access ACL\n")
    sh("setfacl", "-m", "u:4242:rw-,g:33:r--", root / "srv/acl/file")
    sh("setfacl", "-m", "u:4242:rwx", "-d", "-m", "u:4242:rwx,o::r-x", root / "srv/acl/dir")
    xf = root / "srv/xattr/file"
    xf.write_text("has user xattrs\n")
    sh("setfattr", "-n", "user.comment", "-v", "legacy host file", xf)
    sh("setfattr", "-n", "user.binary", "-v", "0x00ff10fe0a0d7f80", xf)
    binary = root / "srv/modes/raw-true"
    shutil.copy2(shutil.which("true") or "/bin/true", binary)
    sh("setcap", "cap_net_raw+ep", binary)
    for name, mode in (("setuid", 0o4755), ("setgid", 0o2755), ("sticky", 0o1644)):
        (root / "srv/modes" / name).write_text(f"{name}\n")
        (root / "srv/modes" / name).chmod(mode)
    (root / "srv/modes/sticky-dir").mkdir()
    (root / "srv/modes/sticky-dir").chmod(0o1777)
    for name in ("café", "日本語/ファイル.txt", "name with spaces", "new\nline"):
        (root / "srv/names" / name).write_text(f"{name!r}\n")
    for name, uid, gid in (("root-file", 0, 0), ("user-file", 1000, 100),
                           ("orphan", 4242, 4343)):
        (root / "srv/owners" / name).write_text(f"owned by {uid}:{gid}\n")
        os.chown(root / "srv/owners" / name, uid, gid)
    os.lchown(root / "srv/symlinks/relative", 4242, 4343)
    os.utime(root / "srv/names/café", ns=(1_600_000_000_123_456_789,) * 2)
    os.utime(root / "srv/empty", ns=(1_300_000_000_987_654_321,) * 2)
    os.utime(root, ns=(1_500_000_000_000_000_001,) * 2)


def test_build_as_an_unprivileged_user(top: Path) -> None:
    tree = top / "tree"
    readable_tree(tree)
    out = top / "out"
    home = top / "home"
    for path in (out, home):
        path.mkdir()
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    image = out / "unprivileged.img"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
         "--inh-caps=-all", "--bounding-set=-all", "--", *P2VIMAGE, "--json", "build", tree,
         "-o", image], capture_output=True, text=True, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["image"] == str(image)
    st = os.stat(image)
    assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)  # nobody wrote it
    assert sorted(p.name for p in out.iterdir()) == ["unprivileged.img",
                                                    "unprivileged.img.state.json"]
    result = p2v("--json", "verify", "--strict", tree, image)
    differences = json.loads(result.stdout)["differences"]
    assert differences == [], differences[:20]
    assert result.returncode == 0
    fsck = subprocess.run(["e2fsck", "-fn", f"{image}?offset={1 << 20}"], capture_output=True,
                          text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
