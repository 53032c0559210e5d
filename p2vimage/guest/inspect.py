"""Inspection for ``convert``: what the guest in an image is, and what its initrds lack.

Reads through a FileView (the libguestfs session), so everything but the initrd listing is
pure. Initrds are listed on the host with ``lsinitramfs`` (initramfs-tools-core), which reads
every compression and the early-microcode prefix; dracut and mkinitrd images are cpio too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from p2vimage.guest import facts as guestfacts
from p2vimage.guest.files import FileView, read_text
from p2vimage.guest.netconf import nic_names
from p2vimage.host import run as runmod

VIRTIO = ("virtio_pci", "virtio_blk", "virtio_net")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel in the guest's /boot and the initrd that belongs to it (if any)."""

    version: str  # "5.10.0-32-686"
    image: str  # "/boot/vmlinuz-5.10.0-32-686"
    initrd: str | None


@dataclasses.dataclass(frozen=True)
class GuestInfo:
    """Facts about the guest found by inspection (see guestinfo.py)."""

    distro: str
    version: str
    arch: str
    init: str  # "systemd", "sysvinit", "upstart", "unknown"
    kernels: tuple[Kernel, ...]  # oldest first
    bootloader: str  # what the guest used: "grub-legacy", "grub2", "extlinux", "none"
    nics: tuple[str, ...]  # interface names in its network configuration
    predictable_names: bool  # its udev renames NICs (enp0s3) unless net.ifnames=0
    root_uuid: str
    fstype: str
    mbr_code: bytes = b""  # the first 440 bytes of the disk
    bootable: bool = False  # partition 1 has the boot flag
    root_boot_sector: bytes = b""  # the root filesystem's first sector (extlinux's VBR)
    missing_modules: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


_KMOD = re.compile(r"([^/]+)\.ko(?:\.(?:xz|gz|zst|bz2))?$")
# What inspection reads (convert plans from it: a change here makes convert's work stale).
READS = ("boot/vmlinuz-*", "boot/vmlinux-*", "boot/kernel-*", "boot/bzImage*", "boot/config-*",
         "boot/initrd.img-*", "boot/initrd-*", "boot/initramfs-*", "lib/modules/*",
         "usr/lib/modules/*", "sbin/init", "usr/sbin/init", "etc/inittab",
         "lib/systemd/systemd-udevd", "usr/lib/systemd/systemd-udevd")
INITRD_NAMES = ("initrd.img-{v}", "initrd-{v}.img", "initramfs-{v}.img", "initrd-{v}",
                "initrd.img-{v}.img")


def init_system(view: FileView) -> str:
    """systemd, upstart or sysvinit, from what /sbin/init is."""
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


def kernels(view: FileView) -> tuple[Kernel, ...]:
    """The kernels in /boot with their initrds, oldest first."""
    found = []
    for _, name in guestfacts.kernels(view):
        version = re.sub(r"^(?:vmlinuz|vmlinux|bzImage|kernel)-", "", name)
        initrd = next((f"/boot/{p.format(v=version)}" for p in INITRD_NAMES
                       if view.is_file(f"/boot/{p.format(v=version)}")), None)
        found.append(Kernel(version, f"/boot/{name}", initrd))
    return tuple(found)


def predictable_names(view: FileView) -> bool:
    """Whether the guest's udev renames NICs (udev ≥ 197, i.e. any systemd-udevd)."""
    pkgs = guestfacts.dpkg_versions(view, {"udev"})
    if "udev" in pkgs:
        version = guestfacts.parse_version(pkgs["udev"])
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


def missing_virtio(view: FileView, kernel: Kernel,
                   listing: Callable[[str], str]) -> tuple[str, ...]:
    """The virtio modules kernel ``kernel`` cannot load at boot (not built in, not in initrd)."""
    have = builtin_modules(view, kernel.version)
    if kernel.initrd:
        have |= initrd_modules(listing(kernel.initrd))
    return tuple(m for m in VIRTIO if m not in have)


def gather(view: FileView, facts: dict[str, str], root_uuid: str, fstype: str,
           mbr_code: bytes, bootable: bool, listing: Callable[[str], str],
           root_boot_sector: bytes = b"") -> GuestInfo:
    """All facts ``convert`` plans from. ``listing`` lists a guest initrd's files."""
    found = kernels(view)
    return GuestInfo(
        distro=facts.get("distro", "unknown"),
        version=facts.get("version", ""), arch=facts.get("arch", ""),
        init=init_system(view), kernels=found,
        bootloader=guestfacts.inspect_files(view).bootloader,
        nics=tuple(nic_names(view)), predictable_names=predictable_names(view),
        root_uuid=root_uuid, fstype=fstype, mbr_code=mbr_code, bootable=bootable,
        root_boot_sector=root_boot_sector,
        missing_modules={k.version: missing_virtio(view, k, listing) for k in found})
