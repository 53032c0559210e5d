"""Facts about the guest found in a root tree: kernels, bootloader, tool versions.

Pure reading of guest files through a FileView (a staging tree or an image opened with
libguestfs; nothing is executed), so ``build`` can choose a filesystem the guest's own kernel,
fsck and bootloader can read, and ``convert`` knows what it converts. Versions come from
the package database when there is one (dpkg) and otherwise from the version strings compiled
into the binaries, which works for any distribution.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from p2vimage.guest.files import FileView, LocalFiles, read_text

Version = tuple[int, ...]

_KERNEL_RE = re.compile(r"^(?:vmlinuz|vmlinux|bzImage|kernel)-(\d+)\.(\d+)(?:\.(\d+))?")
# e2fsprogs binaries carry "1.42.9 (28-Dec-2013)"; the date pins it to the version string.
_E2FS_RE = re.compile(rb"\b(1\.\d{2}(?:\.\d+)?)(?:-WIP)? \(\d{1,2}-[A-Z][a-z]{2}-\d{4}\)")
_SYSLINUX_RE = re.compile(rb"(?:EXTLINUX|SYSLINUX) (\d+\.\d+)")


def parse_version(text: str) -> Version:
    """Leading numeric components of an upstream version: '1:1.42.9-7+b1' → (1, 42, 9)."""
    upstream = re.split(r"[-~+]", text.split(":", 1)[-1], maxsplit=1)[0]
    parts: list[int] = []
    for piece in upstream.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def fmt(version: Version | None) -> str:
    """A version tuple as text, or 'unknown'."""
    return ".".join(map(str, version)) if version else "unknown"


@dataclasses.dataclass(frozen=True)
class GuestFacts:
    """What ``build`` needs to know about the guest in a tree."""

    kernels: tuple[str, ...]  # kernel image names in /boot, sorted by version
    kernel_versions: tuple[Version, ...]
    bootloader: str  # "grub-legacy", "grub2", "extlinux", "none"
    grub_version: Version | None
    syslinux_version: Version | None
    e2fsprogs_version: Version | None
    distro: str

    @property
    def oldest_kernel(self) -> Version | None:
        """The oldest installed kernel: every kernel the user may pick must mount root."""
        return min(self.kernel_versions) if self.kernel_versions else None


def dpkg_versions(view: FileView, names: set[str]) -> dict[str, str]:
    """Installed versions of ``names`` from /var/lib/dpkg/status (empty without dpkg)."""
    found: dict[str, str] = {}
    text = read_text(view, "/var/lib/dpkg/status")
    if text is None:
        return found
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package")
        if name in names and fields.get("Status", "").endswith(" installed"):
            found[name] = fields.get("Version", "")
    return found


def _scan_binary(view: FileView, paths: list[str],
                 pattern: re.Pattern[bytes]) -> Version | None:
    for path in paths:
        data = view.read_bytes(path, 8 << 20)
        match = pattern.search(data) if data else None
        if match:
            return parse_version(match.group(1).decode())
    return None


def _e2fsprogs(view: FileView, pkgs: dict[str, str]) -> Version | None:
    if "e2fsprogs" in pkgs:
        return parse_version(pkgs["e2fsprogs"])
    candidates = [f"/{d}/{n}" for d in ("sbin", "usr/sbin", "lib", "usr/lib", "lib64")
                  for n in ("e2fsck", "mke2fs", "libext2fs.so.2")]
    return _scan_binary(view, candidates, _E2FS_RE)


def kernels(view: FileView) -> list[tuple[Version, str]]:
    """(version, file name) of each kernel image in /boot, oldest first."""
    found: list[tuple[Version, str]] = []
    for name in view.listdir("/boot"):
        match = _KERNEL_RE.match(name)
        if match and view.is_file(f"/boot/{name}"):
            found.append((tuple(int(g) for g in match.groups() if g is not None), name))
    return sorted(found)


def _bootloader(view: FileView, pkgs: dict[str, str]) -> str:
    grub2_markers = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg", "usr/lib/grub/i386-pc",
                     "usr/lib/grub/x86_64-efi", "etc/default/grub")
    grub2_pkgs = ("grub-pc", "grub-efi-amd64", "grub2-common", "grub-common")
    if any(p in pkgs for p in grub2_pkgs) and "grub-legacy" not in pkgs:
        return "grub2"
    if view.is_file("/boot/grub/menu.lst") or "grub-legacy" in pkgs or "grub" in pkgs:
        return "grub-legacy"
    if any(view.is_file(p) or view.is_dir(p) for p in grub2_markers):
        return "grub2"
    for conf in ("/boot/extlinux/extlinux.conf", "/boot/extlinux.conf", "/extlinux.conf",
                 "/boot/syslinux/syslinux.cfg"):
        if view.is_file(conf):
            return "extlinux"
    return "none"


def _distro(view: FileView) -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = read_text(view, path)
        match = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M) if text else None
        if match:
            return match.group(1)
    for path in ("/etc/debian_version", "/etc/redhat-release", "/etc/SuSE-release"):
        text = read_text(view, path)
        if text is not None:
            return f"{path.split('/')[2]} {text.strip()}"
    return "unknown"


def inspect_tree(root: Path) -> GuestFacts:
    """Read the facts of the guest whose root filesystem is the tree at ``root``."""
    return inspect_files(LocalFiles(root))


def inspect_files(view: FileView) -> GuestFacts:
    """Read the facts of the guest whose root filesystem ``view`` shows."""
    pkgs = dpkg_versions(view, {"e2fsprogs", "grub-pc", "grub-common", "grub-efi-amd64",
                                "grub2-common", "grub-legacy", "grub", "syslinux",
                                "extlinux"})
    found = kernels(view)
    grub = pkgs.get("grub-common") or pkgs.get("grub-pc") or pkgs.get("grub2-common")
    syslinux: Version | None = None
    if "extlinux" in pkgs or "syslinux" in pkgs:
        syslinux = parse_version(pkgs.get("extlinux") or pkgs["syslinux"])
    elif view.is_dir("/boot/extlinux"):
        syslinux = _scan_binary(view, ["/boot/extlinux/ldlinux.sys",
                                       "/boot/extlinux/ldlinux.c32"], _SYSLINUX_RE)
    return GuestFacts(
        kernels=tuple(name for _, name in found),
        kernel_versions=tuple(v for v, _ in found),
        bootloader=_bootloader(view, pkgs),
        grub_version=parse_version(grub) if grub else None,
        syslinux_version=syslinux,
        e2fsprogs_version=_e2fsprogs(view, pkgs),
        distro=_distro(view),
    )
