"""The rules that read one fact each from a guest's files: release, architecture, init system,
kernels, bootloader, tool versions, the virtio modules an initrd lacks.

Pure reading through a FileView (nothing in the guest runs); ``record.read`` puts them together
into the one record every stage uses. Versions come from the package database when there is
one (dpkg) and otherwise from the version strings compiled into the binaries, which works for
any distribution. Initrds are listed on the host with ``lsinitramfs`` (initramfs-tools-core),
which reads every compression and the early-microcode prefix; dracut and mkinitrd images are
cpio too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from p2vimage.guest.files import FileView, read_text
from p2vimage.host import run as runmod

Version = tuple[int, ...]

KERNEL_RE = re.compile(r"^(?:vmlinuz|vmlinux|bzImage|kernel)-(\d+)\.(\d+)(?:\.(\d+))?")
# e2fsprogs binaries carry "1.42.9 (28-Dec-2013)"; the date pins it to the version string.
_E2FS_RE = re.compile(rb"\b(1\.\d{2}(?:\.\d+)?)(?:-WIP)? \(\d{1,2}-[A-Z][a-z]{2}-\d{4}\)")
_SYSLINUX_RE = re.compile(rb"(?:EXTLINUX|SYSLINUX) (\d+\.\d+)")
_KMOD = re.compile(r"([^/]+)\.ko(?:\.(?:xz|gz|zst|bz2))?$")
VIRTIO = ("virtio_pci", "virtio_blk", "virtio_net")
INITRD_NAMES = ("initrd.img-{v}", "initrd-{v}.img", "initramfs-{v}.img", "initrd-{v}",
                "initrd.img-{v}.img")
# Packages whose versions the rules read from the dpkg database.
PACKAGES = frozenset({"e2fsprogs", "grub-pc", "grub-common", "grub-efi-amd64", "grub2-common",
                      "grub-legacy", "grub", "syslinux", "extlinux", "lilo", "udev"})

# os-release ID (or the release file's name) → Glance's os_distro (libosinfo short names).
OS_DISTRO = {"debian": "debian", "ubuntu": "ubuntu", "centos": "centos", "rhel": "rhel",
             "fedora": "fedora", "sles": "sles", "opensuse": "opensuse",
             "opensuse-leap": "opensuse", "almalinux": "almalinux", "rocky": "rocky",
             "ol": "oraclelinux", "arch": "arch", "gentoo": "gentoo", "alpine": "alpine"}
_REDHAT = (("centos", "centos"), ("red hat", "rhel"), ("fedora", "fedora"),
           ("oracle", "oraclelinux"), ("scientific", "rhel"))
# ELF e_machine → Glance's architecture.
ELF_ARCH = {3: "i686", 62: "x86_64", 183: "aarch64", 40: "armv7l", 20: "ppc", 21: "ppc64",
            22: "s390x"}
ARCH_BINARIES = ("/bin/sh", "/bin/bash", "/sbin/init", "/usr/bin/env")


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


def dpkg_versions(view: FileView, names: set[str] | frozenset[str]) -> dict[str, str]:
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
        if name is not None and name in names and fields.get("Status", "").endswith(
                " installed"):
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


def e2fsprogs_version(view: FileView, pkgs: dict[str, str]) -> Version | None:
    """The guest's e2fsprogs: its package, else the version string in its binaries."""
    if "e2fsprogs" in pkgs:
        return parse_version(pkgs["e2fsprogs"])
    candidates = [f"/{d}/{n}" for d in ("sbin", "usr/sbin", "lib", "usr/lib", "lib64")
                  for n in ("e2fsck", "mke2fs", "libext2fs.so.2")]
    return _scan_binary(view, candidates, _E2FS_RE)


def grub_version(pkgs: dict[str, str]) -> Version | None:
    """The guest's GRUB 2 package version."""
    grub = pkgs.get("grub-common") or pkgs.get("grub-pc") or pkgs.get("grub2-common")
    return parse_version(grub) if grub else None


def syslinux_version(view: FileView, pkgs: dict[str, str]) -> Version | None:
    """The guest's syslinux/extlinux: its package, else the string in its installed loader."""
    if "extlinux" in pkgs or "syslinux" in pkgs:
        return parse_version(pkgs.get("extlinux") or pkgs["syslinux"])
    if view.is_dir("/boot/extlinux"):
        return _scan_binary(view, ["/boot/extlinux/ldlinux.sys", "/boot/extlinux/ldlinux.c32"],
                            _SYSLINUX_RE)
    return None


def kernel_files(view: FileView) -> list[tuple[Version, str]]:
    """(version, file name) of each kernel image in /boot, oldest first."""
    found: list[tuple[Version, str]] = []
    for name in view.listdir("/boot"):
        match = KERNEL_RE.match(name)
        if match and view.is_file(f"/boot/{name}"):
            found.append((tuple(int(g) for g in match.groups() if g is not None), name))
    return sorted(found)


def initrd_of(view: FileView, version: str) -> str | None:
    """The initrd in /boot that belongs to kernel ``version``, if any."""
    return next((f"/boot/{p.format(v=version)}" for p in INITRD_NAMES
                 if view.is_file(f"/boot/{p.format(v=version)}")), None)


def bootloader(view: FileView, pkgs: dict[str, str]) -> str:
    """grub-legacy, grub2, extlinux (syslinux's configuration counts), lilo or none."""
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
    if view.is_file("/etc/lilo.conf") or "lilo" in pkgs:
        return "lilo"
    return "none"


def _fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"\'')
    return fields


def _debian_major(text: str) -> str:
    text = text.strip()
    return text.split(".")[0] if text[:1].isdigit() else ""


def release(view: FileView) -> tuple[str, str, str]:
    """(distro, version, product name): os-release, else lsb-release, else the release files.

    distro is Glance's os_distro name when it is one ("debian", "oraclelinux"), else the
    guest's own ID, else "unknown"; version is VERSION_ID (Debian's major only, as its
    os-release says it), else what the release file gives, else "".
    """
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        fields = _fields(read_text(view, path) or "")
        if fields.get("ID"):
            ident = fields["ID"].lower()
            version = fields.get("VERSION_ID", "")
            if not version and ident == "debian":  # testing and sid have none
                version = _debian_major(read_text(view, "/etc/debian_version") or "")
            return (OS_DISTRO.get(ident, ident), version,
                    fields.get("PRETTY_NAME") or fields.get("NAME") or ident)
    lsb = _fields(read_text(view, "/etc/lsb-release") or "")
    if lsb.get("DISTRIB_ID"):
        ident = lsb["DISTRIB_ID"].lower()
        return (OS_DISTRO.get(ident, ident), lsb.get("DISTRIB_RELEASE", ""),
                lsb.get("DISTRIB_DESCRIPTION") or lsb["DISTRIB_ID"])
    text = (read_text(view, "/etc/debian_version") or "").strip()
    if text:
        return "debian", _debian_major(text), f"Debian {text}"
    for path in ("/etc/redhat-release", "/etc/SuSE-release"):
        text = (read_text(view, path) or "").strip()
        if not text:
            continue
        first = text.splitlines()[0]
        if path.endswith("SuSE-release"):
            distro = "opensuse" if "opensuse" in first.lower() else "sles"
            number = re.search(r"^VERSION\s*=\s*([\d.]+)", text, re.M)
        else:
            distro = next((d for key, d in _REDHAT if key in first.lower()), "rhel")
            number = re.search(r"release (\d+(?:\.\d+)*)", first)
        return distro, number.group(1) if number else "", first
    return "unknown", "", "unknown"


def elf_arch(data: bytes | None) -> str | None:
    """Glance's architecture for an ELF binary's header, or None."""
    if not data or len(data) < 20 or not data.startswith(b"\x7fELF"):
        return None
    machine = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    return ELF_ARCH.get(machine)


def arch(view: FileView, follow: Callable[[str], str | None]) -> str:
    """The architecture in the ELF header of the guest's shell (or init, env), else of an
    ELF kernel image; "" when none says. ``follow`` resolves a path's symlinks."""
    candidates = [*ARCH_BINARIES, *(f"/boot/{n}" for _, n in kernel_files(view)
                                    if n.startswith("vmlinux-"))]
    for path in candidates:
        real = follow(path)
        found = elf_arch(view.read_bytes(real, 64)) if real else None
        if found:
            return found
    return ""


def init_system(view: FileView) -> str:
    """systemd, upstart or sysvinit, from what /sbin/init is; unknown without one."""
    target = view.readlink("/sbin/init") or view.readlink("/usr/sbin/init") or ""
    if "systemd" in target:
        return "systemd"
    if view.is_file("/sbin/initctl") and view.is_dir("/etc/init") and not view.is_file(
            "/etc/inittab"):
        return "upstart"
    if view.is_file("/sbin/init") or view.is_file("/etc/inittab"):
        if view.is_file("/etc/inittab"):
            return "sysvinit"
        return "systemd" if view.is_dir("/lib/systemd/system") else "sysvinit"
    return "unknown"


def predictable_names(view: FileView, pkgs: dict[str, str]) -> bool:
    """Whether the guest's udev renames NICs (udev ≥ 197, i.e. any systemd-udevd)."""
    if "udev" in pkgs:
        version = parse_version(pkgs["udev"])
        return bool(version) and version[0] >= 197
    return any(view.is_file(p) for p in ("/lib/systemd/systemd-udevd",
                                         "/usr/lib/systemd/systemd-udevd"))


def builtin_modules(view: FileView, version: str) -> set[str]:
    """Modules built into kernel ``version`` (modules.builtin, else its config)."""
    names: set[str] = set()
    text = read_text(view, f"/lib/modules/{version}/modules.builtin") or read_text(
        view, f"/usr/lib/modules/{version}/modules.builtin")
    if text:
        names |= {m.group(1).replace("-", "_") for m in map(_KMOD.search, text.split()) if m}
    config = read_text(view, f"/boot/config-{version}") or ""
    for module in VIRTIO:
        if f"CONFIG_{module.upper()}=y" in config:
            names.add(module)
    return names


def initrd_modules(listing: str) -> set[str]:
    """Kernel module names in an initrd listing (one path per line)."""
    return {m.group(1).replace("-", "_") for m in map(_KMOD.search, listing.split("\n")) if m}


def list_initrd(path: Path) -> str:
    """The file list of an initrd on the host (lsinitramfs)."""
    return str(runmod.run(["lsinitramfs", str(path)], what="lsinitramfs", timeout=300).stdout)


def missing_virtio(view: FileView, version: str, initrd: str | None,
                   listing: Callable[[str], str]) -> tuple[str, ...]:
    """The virtio modules kernel ``version`` cannot load at boot (not built in, not in its
    initrd). ``listing`` lists a guest initrd's files."""
    have = builtin_modules(view, version)
    if initrd:
        have |= initrd_modules(listing(initrd))
    return tuple(m for m in VIRTIO if m not in have)
