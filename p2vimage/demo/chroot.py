"""Building an example tree: debootstrap, packages in a chroot, the commands run with their
output in the build log (the test rig's recipe steps, not a pipeline stage)."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("p2vimage.demo.examples")

DEFAULT_CACHE = "/var/cache/p2vimage"
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
    mirror: str | None  # None: debootstrap's own default mirror
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
    log.info("debootstrap %s %s from %s", r.suite, r.arch, ctx.mirror or "its default mirror")
    run(ctx, ["debootstrap", f"--arch={r.arch}", "--variant=minbase",
              f"--cache-dir={ctx.debs}", r.suite, str(ctx.root),
              *([ctx.mirror] if ctx.mirror else [])])


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


def clean_tree(ctx: Context) -> None:
    """Drop apt lists, caches and the policy-rc.d, so the tree is small and boots normally."""
    root = ctx.root
    (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    lists = root / "var/lib/apt/lists"
    shutil.rmtree(lists)
    (lists / "partial").mkdir(parents=True)
    for junk in root.glob("var/cache/debconf/*-old"):
        junk.unlink()
