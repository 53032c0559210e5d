"""The built-in examples: legacy-like Linux root trees, built with debootstrap (or reused
from cache), that ``p2vimage demo`` and the tests migrate.

``python -m p2vimage.examples NAME [--cache DIR] [--force]`` prints the path of the
finished root tree on stdout; progress goes to stderr and every command's output to
``build.log`` beside the tree. From Python: ``ensure_fixture("bullseye-i386") -> Path``.
A variant (``bullseye-i386-novirtio``) is a copy of another fixture's finished tree, then
changed; its base is built first when missing (``--force`` rebuilds only the variant).

Trees live at ``<cache>/fixtures/<NAME>-<key>/root``; the key hashes this file and NAME, so
editing a recipe rebuilds. A build happens in ``.tmp-*`` and is renamed into place only when
complete, under an flock on ``<cache>/fixtures/.lock``. Needs root, debootstrap, acl, attr,
libcap2-bin and a Debian mirror (``P2VIMAGE_MIRROR``, default deb.debian.org); variants also
need lsinitramfs (initramfs-tools-core).

This is the test rig's recipe, not a pipeline stage: it runs its own commands (chroot,
debootstrap, mknod…) with their output in build.log, instead of going through run.py.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("p2vimage.demo.examples")

DEFAULT_CACHE = "/var/cache/p2vimage"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOT_PASSWORD = "p2vimage"  # noqa: S105 - the throwaway example guest's password
HOST_TOOLS = ("debootstrap", "chroot", "mount", "umount", "setfacl", "setfattr", "setcap",
              "mknod", "touch")
LENNY_RELEASE = 1234656000  # 2009-02-15 00:00:00 UTC: the mtime of all hard content
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C",
              "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
APT_INSTALL = ("apt-get", "install", "-y", "--no-install-recommends",
               "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")


class FixtureError(RuntimeError):
    """A fixture could not be built; the message says which step and shows the log tail."""


@dataclass(frozen=True)
class Recipe:
    """What one fixture is made of: settings only, never build state."""

    suite: str
    arch: str
    hostname: str
    packages: tuple[str, ...]  # apt-get install arguments ("pkg-" forbids pkg)
    configure: Callable[[Context], None]
    optional: tuple[str, ...] = ()  # installed only if the archive has them
    debconf: str = ""  # debconf-set-selections input, applied before installing


@dataclass
class Context:
    """State of one build: where the tree is, where command output is logged."""

    name: str
    recipe: Recipe
    work: Path
    debs: Path
    mirror: str
    base: Path | None = None  # a variant's base fixture tree, copied to root
    root: Path = field(init=False)  # the tree being built: work/root
    logfile: Path = field(init=False)  # every command's output: work/build.log

    def __post_init__(self) -> None:
        self.root, self.logfile = self.work / "root", self.work / "build.log"


def run(ctx: Context, argv: Sequence[str], *, stdin: str | None = None,
        capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run argv with output appended to the build log (or captured); raise FixtureError."""
    log.debug("+ %s", shlex.join(argv))
    with ctx.logfile.open("a") as out:
        out.write(f"+ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.run(
            argv, input=stdin if stdin is not None else "", text=True, check=False,
            stdout=subprocess.PIPE if capture else out, stderr=out,
            env=CHROOT_ENV if argv[0] == "chroot" else None)
    if proc.returncode != 0:
        tail = "\n".join(ctx.logfile.read_text(errors="replace").splitlines()[-25:])
        raise FixtureError(f"{shlex.join(argv)} exited {proc.returncode}; log "
                           f"{ctx.logfile}, last lines:\n{tail}")
    return proc


def sh(*argv: str, cwd: Path | None = None) -> None:
    """Run a short host command outside any build log; raise FixtureError with its stderr."""
    log.debug("+ %s", shlex.join(argv))
    proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise FixtureError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")


def in_root(ctx: Context, *argv: str, stdin: str | None = None,
            capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command chrooted into the tree, with a clean noninteractive environment."""
    return run(ctx, ["chroot", str(ctx.root), *argv], stdin=stdin, capture=capture)


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    """Write a text file at root/rel (parents created) with the given mode."""
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def mounts_under(top: Path) -> list[str]:
    """Mount points at or below top, deepest first (read from /proc/self/mountinfo)."""
    prefix = os.path.realpath(top)
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(top: Path) -> None:
    """Unmount everything below top (lazily if busy); raise if something stays mounted."""
    for point in mounts_under(top):
        if subprocess.run(["umount", point], check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False)
    if left := mounts_under(top):
        raise FixtureError(f"still mounted under {top}: {left}")


def remove_tree(path: Path) -> None:
    """Delete a build directory, first making sure no host filesystem is mounted in it."""
    if path.exists():
        unmount_all(path)
        shutil.rmtree(path)


def dpkg_installed(root: Path) -> set[str]:
    """Names of the packages dpkg lists as installed in the tree."""
    status = (root / "var/lib/dpkg/status").read_text()
    return {m[1] for m in re.finditer(r"^Package: (\S+)\n(?:.+\n)*?Status: install ok "
                                      r"installed$", status, re.M)}


def kernel_version(root: Path) -> str:
    """Version of the one kernel installed in root/boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise FixtureError(f"expected one kernel in {root}/boot, found {kernels}")
    return kernels[0].name.removeprefix("vmlinuz-")


def sync_debs(src: Path, dst: Path) -> None:
    """Hard-link (or copy) .deb files missing in dst from src: apt's cache <-> ours."""
    for deb in src.glob("*.deb"):
        target = dst / deb.name
        if not target.exists():
            try:
                os.link(deb, target)
            except OSError:
                shutil.copy2(deb, target)


# --- the build, step by step -------------------------------------------------------------


def bootstrap(ctx: Context) -> None:
    """Debootstrap a minbase tree, keeping downloaded packages in the cache."""
    r = ctx.recipe
    log.info("debootstrap %s %s from %s", r.suite, r.arch, ctx.mirror)
    run(ctx, ["debootstrap", f"--arch={r.arch}", "--variant=minbase",
              f"--cache-dir={ctx.debs}", r.suite, str(ctx.root), ctx.mirror])


def install_packages(ctx: Context) -> None:
    """Install the recipe's packages with apt in the chroot, services kept from starting."""
    r, root = ctx.recipe, ctx.root
    write(root, "usr/sbin/policy-rc.d", "#!/bin/sh\n# p2vimage: start no services\nexit 101\n",
          0o755)
    archives = root / "var/cache/apt/archives"
    try:  # /proc for maintainer scripts; nothing may stay mounted, whatever happens
        run(ctx, ["mount", "-t", "proc", "proc", str(root / "proc")])
        in_root(ctx, "apt-get", "update")
        if r.debconf:
            in_root(ctx, "debconf-set-selections", stdin=r.debconf)
        sync_debs(ctx.debs, archives)
        log.info("apt-get install %s", " ".join(r.packages))
        in_root(ctx, *APT_INSTALL, *r.packages)
        for pkg in r.optional:
            show = f"apt-cache show {shlex.quote(pkg)} 2>/dev/null || true"  # exits 100 if absent
            if in_root(ctx, "sh", "-c", show, capture=True).stdout.strip():
                in_root(ctx, *APT_INSTALL, pkg)
            else:
                log.warning("optional package %s is not in %s/%s", pkg, r.suite, r.arch)
        sync_debs(archives, ctx.debs)
        common_config(ctx)
        r.configure(ctx)
        in_root(ctx, "apt-get", "clean")
    finally:
        unmount_all(root)


def common_config(ctx: Context) -> None:
    """Hostname, hosts, resolver, root password and root ssh login: the same for all."""
    root, host = ctx.root, ctx.recipe.hostname
    write(root, "etc/hostname", f"{host}\n")
    write(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{host}.example.org\t{host}\n\n"
          "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
          "ff02::2\tip6-allrouters\n")
    in_root(ctx, "chpasswd", stdin=f"root:{ROOT_PASSWORD}\n")
    # As on lenny, where PermitRootLogin yes was the default: tests log in as root.
    write(root, "etc/ssh/sshd_config.d/p2vimage-fixture.conf", "PermitRootLogin yes\n")
    www = write(root, "var/www/index.html", f"p2vimage fixture {ctx.name} OK\n")
    www.parent.chmod(0o755)


def net_rules(*macs: str) -> str:
    """A udev 70-persistent-net.rules naming eth0, eth1, ... by MAC address."""
    text = ("# This file was automatically generated by the /lib/udev/write_net_rules\n"
            "# program, run by the persistent-net-generator.rules rules file.\n")
    for i, mac in enumerate(macs):
        text += (f"\n# PCI device 0x8086:0x10c9 (igb)\nSUBSYSTEM==\"net\", ACTION==\"add\", "
                 f"DRIVERS==\"?*\", ATTR{{address}}==\"{mac}\", ATTR{{dev_id}}==\"0x0\", "
                 f"ATTR{{type}}==\"1\", KERNEL==\"eth*\", NAME=\"eth{i}\"\n")
    return text


MENU_LST = """\
# menu.lst - See: grub(8), info grub, update-grub(8)
default\t\t0
timeout\t\t5

# Pretty colours
color cyan/blue white/blue

### BEGIN AUTOMAGIC KERNELS LIST
## lines between the AUTOMAGIC KERNELS LIST markers will be modified
## by the debian update-grub script except for the default options below

## DO NOT UNCOMMENT THEM, Just edit them to your needs

## ## Start Default Options ##
## default kernel options for automagic boot options
# kopt=root=/dev/sda1 ro
## default grub root device
# groot={groot}

# alternative=true
# lockalternative=false
# defoptions=quiet
# altoptions=(single-user mode) single
# howmany=all
# memtest86=true

## ## End Default Options ##

title\t\tDebian GNU/Linux, kernel {ver}
root\t\t{groot}
kernel\t\t/vmlinuz-{ver} root=/dev/sda1 ro quiet
initrd\t\t/initrd.img-{ver}

title\t\tDebian GNU/Linux, kernel {ver} (single-user mode)
root\t\t{groot}
kernel\t\t/vmlinuz-{ver} root=/dev/sda1 ro single
initrd\t\t/initrd.img-{ver}

### END DEBIAN AUTOMAGIC KERNELS LIST
"""

LSB_HTTPD = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          p2v-httpd
# Required-Start:    $network $remote_fs $syslog
# Required-Stop:     $network $remote_fs $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: p2vimage fixture web page (busybox httpd)
### END INIT INFO

case "$1" in
start|restart|force-reload)
\t[ "$1" = start ] || "$0" stop
\tbusybox httpd -p 80 -h /var/www ;;
stop)\tfor p in /proc/[0-9]*; do  # httpd forks away: find it by its command line
\t\tcase "$(tr '\\000' ' ' < "$p/cmdline" 2>/dev/null)" in
\t\t*"busybox httpd -p 80 "*) kill "${p#/proc/}" ;;
\t\tesac
\tdone ;;
*)\techo "Usage: $0 {start|stop|restart|force-reload}" >&2; exit 3 ;;
esac
"""


def configure_bullseye_i386(ctx: Context) -> None:
    """Legacy (lenny-era) sysvinit host: seven ext3 partitions, grub-legacy, two NICs."""
    root, ver = ctx.root, kernel_version(ctx.root)
    # / on sda1 and a separate /boot on sda2 (hd0,1): kernel paths are relative to /boot.
    write(root, "etc/fstab", """\
# /etc/fstab: static file system information.
#
# <file system>                            <mount point>   <type>  <options>       <dump>  <pass>
proc                                       /proc           proc    defaults        0       0
/dev/sda1                                  /               ext3    errors=remount-ro 0     1
/dev/sda2                                  /boot           ext3    defaults        0       2
/dev/sda3                                  /usr            ext3    defaults        0       2
LABEL=var                                  /var            ext3    defaults        0       2
# /home was on /dev/sda6 during installation
UUID=0b7e3d5c-1f2a-4c6d-9e8f-a1b2c3d4e5f6  /home           ext3    defaults,nodev  0       2
/dev/sda7                                  /tmp            ext3    defaults        0       2
/dev/sda8                                  none            swap    sw              0       0
""")
    write(root, "boot/grub/menu.lst", MENU_LST.format(ver=ver, groot="(hd0,1)"))
    write(root, "boot/grub/device.map", "(hd0)\t/dev/sda\n")
    write(root, "etc/udev/rules.d/70-persistent-net.rules",
          net_rules("00:30:48:9a:1b:10", "00:30:48:9a:1b:11"))
    write(root, "etc/network/interfaces", """\
# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
auto eth0
iface eth0 inet dhcp

auto eth1
iface eth1 inet static
\taddress 203.0.113.10
\tnetmask 255.255.255.0
\tgateway 203.0.113.1
""")
    write(root, "etc/resolv.conf", "search example.org\nnameserver 203.0.113.1\n")
    write(root, "etc/init.d/p2v-httpd", LSB_HTTPD, 0o755)
    in_root(ctx, "update-rc.d", "p2v-httpd", "defaults")


def configure_bookworm_amd64(ctx: Context) -> None:
    """Modern systemd host with grub2 (package only, no disk), one static NIC."""
    root = ctx.root
    write(root, "etc/fstab", """\
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/sda1 during installation
UUID=5d3c1e7a-8b42-4f19-a6d0-2c9e7b1f4a63 /               ext4    errors=remount-ro 0       1
# swap was on /dev/sda5 during installation
UUID=9f1a2b3c-4d5e-4f60-8172-83a4b5c6d7e8 none            swap    sw              0       0
""")
    write(root, "etc/udev/rules.d/70-persistent-net.rules", net_rules("52:54:00:5e:00:20"))
    write(root, "etc/network/interfaces", """\
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet static
\taddress 198.51.100.20/24
\tgateway 198.51.100.1
""")
    write(root, "etc/resolv.conf", "nameserver 198.51.100.1\n")
    unit = write(root, "etc/systemd/system/p2v-httpd.service", """\
[Unit]
Description=p2vimage fixture web page (busybox httpd)
After=network.target

[Service]
ExecStart=/bin/busybox httpd -f -p 80 -h /var/www
Restart=on-failure

[Install]
WantedBy=multi-user.target
""")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    # Names stay eth* (the udev rules above), as on a host upgraded from older releases.
    default = root / "etc/default/grub"
    default.write_text(default.read_text().replace('GRUB_CMDLINE_LINUX=""',
                                                   'GRUB_CMDLINE_LINUX="net.ifnames=0"'))


RECIPES: dict[str, Recipe] = {
    "bullseye-i386": Recipe(
        suite="bullseye", arch="i386", hostname="ns1",
        packages=("sysvinit-core", "systemd-sysv-", "linux-image-686", "initramfs-tools",
                  "openssh-server", "busybox", "ifupdown", "e2fsprogs", "rsync"),
        optional=("grub-legacy",), configure=configure_bullseye_i386),
    "bookworm-amd64": Recipe(
        suite="bookworm", arch="amd64", hostname="web1",
        packages=("systemd-sysv", "linux-image-amd64", "initramfs-tools", "grub-pc",
                  "openssh-server", "busybox", "ifupdown", "e2fsprogs", "rsync", "zstd"),
        debconf="grub-pc grub-pc/install_devices multiselect\n"
                "grub-pc grub-pc/install_devices_empty boolean true\n",
        configure=configure_bookworm_amd64),
}


# --- variants: a finished fixture, copied and changed -------------------------------------


@dataclass(frozen=True)
class Variant:
    """A fixture made from another one's finished tree: copied, changed, then checked."""

    base: str  # a RECIPES name
    derive: Callable[[Context], None]  # changes the copy at ctx.root
    check: Callable[[Context], dict[str, str]]  # raises FixtureError; facts for build.json


def tree_metadata(top: Path) -> dict[str, tuple[object, ...]]:
    """What a faithful copy must keep, for every entry below top (atime and ctime aside).

    Directory sizes are left out: they depend on the directory's history, not its entries.
    Of allocation, only whether a file is fully allocated: cp makes holes of the zero blocks
    a sparse file has allocated (var/log/lastlog), but must keep a file's allocated zeros.
    """
    meta: dict[str, tuple[object, ...]] = {}
    for path, dirs, files in os.walk(top):
        for entry in (*dirs, *files):
            full = os.path.join(path, entry)
            st = os.lstat(full)
            isdir, islink = stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode)
            xattrs = () if islink else tuple(sorted(
                (a, os.getxattr(full, a, follow_symlinks=False))
                for a in os.listxattr(full, follow_symlinks=False)))
            meta[os.path.relpath(full, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns, st.st_rdev,
                None if isdir else (st.st_size, st.st_blocks * 512 >= st.st_size),
                os.readlink(full) if islink else None, xattrs)
    return meta


def copy_base(ctx: Context) -> None:
    """Copy the base fixture's tree to ctx.root and check that nothing was lost on the way.

    ``cp -a`` keeps hard links, ACLs, xattrs (``--preserve=xattr`` makes a lost one an error,
    which ``-a`` alone does not) and, with ``--sparse=auto``, holes exactly where the source
    has them: ``--sparse=always`` would also punch the allocated zeros of the hard content.
    """
    if ctx.base is None:
        raise FixtureError(f"variant {ctx.name} has no base tree to copy")
    log.info("copying %s", ctx.base)
    run(ctx, ["cp", "-a", "--sparse=auto", "--preserve=xattr", str(ctx.base), str(ctx.root)])
    want, got = tree_metadata(ctx.base), tree_metadata(ctx.root)
    if lost := sorted(p for p in want.keys() | got.keys() if want.get(p) != got.get(p)):
        raise FixtureError(f"copy of {ctx.base} differs in {len(lost)} entries: "
                           + "; ".join(f"{p}: {want.get(p)} != {got.get(p)}" for p in lost[:5]))


# MODULES=dep is what such a host would have had, but in a chroot it inspects the build
# host's root device: it fails when the tree is no mount point and picks the build host's
# drivers (virtio_blk on a VM) when it is. So the list dep would have made on the physical
# box is written out instead: the root filesystem's module (ext4 serves ext3) and the disk.
NOVIRTIO_MODULES = ("ext4", "ata_piix", "sd_mod")
KMOD = re.compile(r"(?:^|/)([^/]+)\.ko(?:\.xz|\.zst|\.gz)?$")


def drop_virtio(ctx: Context) -> None:
    """Rebuild the initrd with MODULES=list, as a host tuned to its own hardware: no virtio."""
    root, ver = ctx.root, kernel_version(ctx.root)
    conf = root / "etc/initramfs-tools/initramfs.conf"
    text, found = re.subn(r"^MODULES=.*$", "MODULES=list", conf.read_text(), flags=re.M)
    if found != 1:
        raise FixtureError(f"{conf} has {found} MODULES= lines, expected 1")
    conf.write_text(text)
    modules = root / "etc/initramfs-tools/modules"
    modules.write_text(modules.read_text() + "".join(f"{m}\n" for m in NOVIRTIO_MODULES))
    try:  # /proc only: /sys and /dev would let mkinitramfs look at the build host
        run(ctx, ["mount", "-t", "proc", "proc", str(root / "proc")])
        log.info("update-initramfs -u -k %s with MODULES=list", ver)
        in_root(ctx, "update-initramfs", "-u", "-k", ver)
    finally:
        unmount_all(root)


def initrd_modules(ctx: Context, initrd: Path) -> set[str]:
    """Names of the kernel modules in an initrd, listed by the host's lsinitramfs."""
    listing = run(ctx, ["lsinitramfs", str(initrd)], capture=True).stdout
    return {m[1].replace("-", "_") for m in map(KMOD.search, listing.splitlines()) if m}


def check_novirtio(ctx: Context) -> dict[str, str]:
    """Fail unless the variant's initrd has no virtio module but the base's has; ext4 kept."""
    ver = kernel_version(ctx.root)
    have = initrd_modules(ctx, ctx.root / f"boot/initrd.img-{ver}")
    if ctx.base is None:
        raise FixtureError(f"variant {ctx.name} has no base tree")
    base = initrd_modules(ctx, ctx.base / f"boot/initrd.img-{ver}")
    virtio = sorted(m for m in have if m.startswith("virtio"))
    problems = [f"initrd has {', '.join(virtio)}"] if virtio else []
    problems += [f"initrd lacks {m}" for m in NOVIRTIO_MODULES if m not in have]
    if not any(m.startswith("virtio") for m in base):
        problems.append(f"base initrd {ctx.base}/boot has no virtio either: nothing to contrast")
    if problems:
        raise FixtureError(f"fixture {ctx.name} is broken: " + "; ".join(problems))
    return {"base": ctx.base.parent.name, "initrd-modules": " ".join(sorted(have)),
            "base-virtio": " ".join(sorted(m for m in base if m.startswith("virtio")))}


VARIANTS: dict[str, Variant] = {
    "bullseye-i386-novirtio": Variant(base="bullseye-i386", derive=drop_virtio,
                                      check=check_novirtio),
}


def clean_tree(ctx: Context) -> None:
    """Drop apt lists, caches and the policy-rc.d, so the tree is small and boots normally."""
    root = ctx.root
    (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    lists = root / "var/lib/apt/lists"
    shutil.rmtree(lists)
    (lists / "partial").mkdir(parents=True)
    for junk in root.glob("var/cache/debconf/*-old"):
        junk.unlink()


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


def fixture_key(name: str) -> str:
    """First 12 hex digits of sha256(this script's source + NAME)."""
    return hashlib.sha256(Path(__file__).read_bytes() + name.encode()).hexdigest()[:12]


def cache_dir(cache: str | os.PathLike[str] | None) -> Path:
    """The cache directory: argument, else $P2VIMAGE_CACHE, else /var/cache/p2vimage."""
    return Path(cache or os.environ.get("P2VIMAGE_CACHE") or DEFAULT_CACHE).absolute()


def preflight(variant: bool = False) -> None:
    """Refuse early, with a hint, when not root or a host tool is missing."""
    if os.geteuid() != 0:
        raise FixtureError("building a fixture needs root (debootstrap, mknod, chroot)")
    path = os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    tools = (*HOST_TOOLS, "lsinitramfs") if variant else HOST_TOOLS
    if missing := [t for t in tools if not shutil.which(t, path=path)]:
        raise FixtureError(f"missing host tools {missing}: apt-get install debootstrap acl attr "
                           "libcap2-bin" + (" initramfs-tools-core" if variant else ""))


def ensure_fixture(name: str, cache: str | os.PathLike[str] | None = None, *,
                   force: bool = False, mirror: str | None = None) -> Path:
    """Return the root tree of fixture `name`, building it first if it is not cached.

    A variant's base is built too if it is not cached (``force`` rebuilds only `name`).
    Raises KeyError for an unknown name and FixtureError when the build fails.
    """
    variant = VARIANTS.get(name)
    RECIPES[variant.base if variant else name]  # KeyError for an unknown name
    fixtures = cache_dir(cache) / "fixtures"
    final = fixtures / f"{name}-{fixture_key(name)}"
    if final.is_dir() and not force:
        return final / "root"
    preflight(variant is not None)
    fixtures.mkdir(parents=True, exist_ok=True)
    with open(fixtures / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another build to release %s", lock.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return build_locked(name, cache_dir(cache), force=force, mirror=mirror)


def build_locked(name: str, cache: Path, *, force: bool, mirror: str | None) -> Path:
    """ensure_fixture's work, with the lock held (a variant's base is built under it too)."""
    variant = VARIANTS.get(name)
    recipe = RECIPES[variant.base if variant else name]
    fixtures = cache / "fixtures"
    key = fixture_key(name)
    final = fixtures / f"{name}-{key}"
    if final.is_dir() and not force:  # built by whoever held the lock before us
        return final / "root"
    for stale in fixtures.glob(".tmp-*"):  # we hold the lock: these are from crashes
        log.info("removing stale %s", stale)
        remove_tree(stale)
    base = build_locked(variant.base, cache, force=False, mirror=mirror) if variant else None
    work = fixtures / f".tmp-{name}-{key}-{os.getpid()}"
    work.mkdir()
    debs = cache / "debootstrap-debs" / f"{recipe.suite}-{recipe.arch}"
    debs.mkdir(parents=True, exist_ok=True)
    ctx = Context(name, recipe, work, debs, mirror or os.environ.get("P2VIMAGE_MIRROR")
                  or DEFAULT_MIRROR, base)
    steps: tuple[Callable[[Context], None], ...] = (
        (copy_base, variant.derive) if variant
        else (bootstrap, install_packages, clean_tree, add_hard_content))
    start = time.monotonic()
    try:
        for step in steps:
            log.info("%s: %s", name, step.__name__)
            step(ctx)
        facts = check_tree(ctx) | (variant.check(ctx) if variant else {})
    except BaseException:
        unmount_all(work)
        log.error("build of %s failed; log kept in %s", name, ctx.logfile)
        raise
    facts |= {"name": name, "key": key, "seconds": f"{time.monotonic() - start:.0f}",
              "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (work / "build.json").write_text(json.dumps(facts, indent=1) + "\n")
    if final.exists():  # --force: swap the new tree in, then drop the old one
        old = fixtures / f".tmp-old-{name}-{key}-{os.getpid()}"
        final.rename(old)
        work.rename(final)
        remove_tree(old)
    else:
        work.rename(final)
    # The full match spares other fixtures whose names start with this one's.
    for other in fixtures.glob(f"{name}-*"):
        if re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", other.name) and other != final:
            log.info("removing outdated %s", other)
            remove_tree(other)
    log.info("%s built in %ss: %s", name, facts["seconds"], final / "root")
    return final / "root"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: print the fixture's root path; 1 on failure, 130 on ^C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = (*RECIPES, *VARIANTS)
    parser.add_argument("name", metavar="NAME", choices=sorted(names), help=", ".join(names))
    parser.add_argument("--cache", help=f"default: $P2VIMAGE_CACHE or {DEFAULT_CACHE}")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--debug", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="examples: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so finally: blocks unmount
    try:
        print(ensure_fixture(args.name, args.cache, force=args.force))
    except FixtureError as err:
        log.error("error: %s", err)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
