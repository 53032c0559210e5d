"""The hard content every example carries under /srv/hard (every kind of file and metadata a
faithful copy must keep), and the check that a finished tree has what tests rely on."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from p2vimage.demo.chroot import (
    LENNY_RELEASE,
    Context,
    FixtureError,
    dpkg_installed,
    in_root,
    kernel_version,
    mounts_under,
    sh,
)


def add_hard_content(ctx: Context) -> None:
    """Build step: the hard content, in the tree being built."""
    make_hard_content(ctx.root)


def make_hard_content(root: Path) -> None:
    """Create root/srv/hard: every kind of file and metadata a faithful copy must keep.

    Works on any directory (tests use a bare one); raises FixtureError if a tool fails.
    """
    hard = root / "srv/hard"
    true = root / "bin/true"  # the tree's own binary; the host's for a bare test tree
    binary = true if true.is_file() else Path(shutil.which("true") or "/bin/true")
    if hard.exists():
        shutil.rmtree(hard)
    for sub in ("links/sub", "other", "sparse", "special", "symlinks", "acl/dir", "xattr",
                "caps", "modes", "names/日本語", "empty", "times", "owners", "misc"):
        (hard / sub).mkdir(parents=True)
    # Hard links: a group of 2 names, and one of 3 names in different directories.
    for first, *more in (("two-a", "two-b"), ("three-1", "sub/three-2", "../other/three-3")):
        (hard / "links" / first).write_text(f"one inode, {len(more) + 1} names\n")
        for name in more:
            os.link(hard / "links" / first, hard / "links" / name)
    # 64 MiB apparent size with four 4 KiB data blocks; then 1 MiB of allocated zeros.
    with open(hard / "sparse/sparse-64M", "wb") as f:
        f.truncate(64 << 20)
        for i, off in enumerate((0, 8 << 20, (33 << 20) + 4096, (64 << 20) - 4096)):
            os.pwrite(f.fileno(), bytes([0x41 + i]) * 4096, off)
    with open(hard / "sparse/zeros-1M", "wb") as f:
        f.write(bytes(1 << 20))
        os.fsync(f.fileno())
    # Special files.
    for node, perm, *kind in (("char-null", "0666", "c", "1", "3"), ("fifo", "0644", "p"),
                              ("block-sda", "0660", "b", "8", "0")):
        sh("mknod", "-m", perm, str(hard / "special" / node), *kind)
    # Bound from inside the directory: a socket path may not exceed 107 bytes.
    sh(sys.executable, "-c", "import socket; socket.socket(socket.AF_UNIX).bind('socket')",
       cwd=hard / "special")
    for link, target in (("dangling", "does/not/exist"), ("loop-a", "loop-b"),
                         ("loop-b", "loop-a"), ("self", "self")):
        (hard / "symlinks" / link).symlink_to(target)
    # POSIX ACLs: access ACL on a file; access and default ACL on a directory.
    (hard / "acl/file").write_text("access ACL\n")
    sh("setfacl", "-m", "u:4242:rw-,g:33:r--", str(hard / "acl/file"))
    sh("setfacl", "-m", "u:4242:rwx,g:4343:r-x", str(hard / "acl/dir"))
    sh("setfacl", "-d", "-m", "u:4242:rwx,g:4343:r-x,o::---", str(hard / "acl/dir"))
    # Extended attributes, one with a binary value, and a trusted.* one.
    xf = hard / "xattr/file"
    xf.write_text("has xattrs\n")
    for attr, value in (("user.comment", "legacy host file"), ("user.binary", "0x00ff10fe0a0d7f80"),
                        ("trusted.p2vimage", "trusted value")):
        sh("setfattr", "-n", attr, "-v", value, str(xf))
    # A file capability on a copied binary; setuid, setgid and sticky files and directories.
    shutil.copy2(binary, hard / "caps/raw-true")
    sh("setcap", "cap_net_raw+ep", str(hard / "caps/raw-true"))
    for fname, mode in (("setuid", 0o4755), ("setgid", 0o2755), ("sticky", 0o1644)):
        shutil.copy2(binary, hard / "modes" / fname)
        (hard / "modes" / fname).chmod(mode)
    for dname, mode in (("setgid-dir", 0o2775), ("sticky-dir", 0o1777), ("all-dir", 0o7755)):
        (hard / "modes" / dname).mkdir()
        (hard / "modes" / dname).chmod(mode)
    # Names: UTF-8, spaces, an embedded newline, and a Latin-1 name that is not UTF-8.
    for fname in ("café", "日本語/ファイル.txt", "name with spaces.txt", "new\nline",
                  os.fsdecode(b"latin1-caf\xe9")):
        (hard / "names" / fname).write_text(f"{fname!r}\n")
    for mode in (0o000, 0o700, 0o1777, 0o2750):
        (hard / f"empty/mode-{mode:04o}").mkdir()
        (hard / f"empty/mode-{mode:04o}").chmod(mode)
    dated = {"before-1970": "1960-06-01 00:00:00 UTC", "after-2038": "2040-01-01 00:00:00 UTC"}
    for fname, date in dated.items():
        (hard / "times" / fname).write_text(f"mtime {date}\n")
    (hard / "owners/orphan").write_text("owned by 4242:4343, in no passwd or group file\n")
    for orphan in (hard / "owners", hard / "owners/orphan"):
        os.chown(orphan, 4242, 4343)
    (hard / "misc/empty-file").touch()
    (hard / "misc/mode-000").write_text("nobody may read this but root\n")
    (hard / "misc/mode-000").chmod(0)
    # Times last, children before parents, so directory mtimes are deterministic too.
    for top, dirs, files in os.walk(hard, topdown=False):
        for entry in (*files, *dirs):
            os.utime(os.path.join(top, entry), (LENNY_RELEASE,) * 2, follow_symlinks=False)
    for fname, date in dated.items():
        sh("touch", "-h", "-d", date, str(hard / "times" / fname))
    os.utime(hard, (LENNY_RELEASE,) * 2)


def check_tree(ctx: Context) -> dict[str, str]:
    """Fail unless the tree has what tests rely on; return facts for build.json."""
    root, ver, pkgs = ctx.root, kernel_version(ctx.root), dpkg_installed(ctx.root)
    hard, initrd = root / "srv/hard", root / f"boot/initrd.img-{ver}"
    want, never = (({"sysvinit-core"}, {"systemd-sysv", "isc-dhcp-client", "dhcpcd5", "udhcpc"})
                   if ctx.recipe.arch == "i386" else ({"systemd-sysv", "grub-pc"}, set()))
    problems = [f"{p} missing" for p in want - pkgs] + [f"{p} installed" for p in pkgs & never]
    problems += [f"/{d} not empty" for d in ("proc", "sys", "dev/pts") if any((root / d).iterdir())]
    checks = {
        f"mounts left under {ctx.work}": not mounts_under(ctx.work),
        f"no initramfs for {ver}": initrd.is_file() and initrd.stat().st_size > 1 << 20,
        "no sshd": (root / "usr/sbin/sshd").is_file(),
        "no ssh host keys": any(root.glob("etc/ssh/ssh_host_*_key")),
        "busybox has no httpd applet": "httpd" in in_root(ctx, "/bin/busybox", "--list",
                                                           capture=True).stdout.split(),
        "sparse file is not sparse": os.stat(hard / "sparse/sparse-64M").st_blocks < 128,
        "zeros file is not allocated": os.stat(hard / "sparse/zeros-1M").st_blocks >= 2048,
    }
    problems += [problem for problem, ok in checks.items() if not ok]
    if problems:
        raise FixtureError(f"fixture {ctx.name} is broken: " + "; ".join(problems))
    return {"kernel": ver, "packages": str(len(pkgs)), "grub-legacy": str("grub-legacy" in pkgs)}
