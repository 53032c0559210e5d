"""extlinux (the seed comment's way): config for the newest kernel, installed through
libguestfs, the MBR boot code from the host's syslinux ``mbr.bin``, the boot flag.

The default for guests whose own bootloader cannot be installed offline (grub-legacy). The
host's syslinux installs it, so the guest needs no syslinux package; it reads ext2/3/4 (not
64bit ext4, which build never gives an extlinux guest)."""

from __future__ import annotations

from p2vimage.convert.fixups.base import (
    ExtlinuxInstall,
    Inspection,
    Loader,
    Result,
    SetBootable,
    Target,
    WriteMbr,
)
from p2vimage.guest.files import FileView
from p2vimage.guest.record import Kernel

DIR = "/boot/extlinux"
CONF = f"{DIR}/extlinux.conf"

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = (f"{DIR.lstrip('/')}/*",)
WRITES = (DIR.lstrip("/"), f"{DIR.lstrip('/')}/*")

def pick_kernel(info: Inspection) -> Kernel:
    """The newest kernel that has an initrd (else the newest kernel)."""
    with_initrd = [k for k in info.record.kernels if k.initrd]
    return (with_initrd or list(info.record.kernels))[-1]


def config(info: Inspection, target: Target) -> str:
    """The extlinux.conf text: serial console, the kernel, root and console arguments."""
    kernel = pick_kernel(info)
    append = [f"root={target.root_spec}", "ro", *target.kernel_args]
    if kernel.initrd:
        append.insert(0, f"initrd={kernel.initrd}")
    return (
        "# Written by p2vimage convert: boots the newest kernel with a serial console.\n"
        "SERIAL 0 115200\n"
        "DEFAULT linux\n"
        "PROMPT 0\n"
        "TIMEOUT 20\n"
        "\n"
        "LABEL linux\n"
        f"  MENU LABEL {info.record.distro} {info.record.version}, kernel {kernel.version}\n"
        f"  KERNEL {kernel.image}\n"
        f"  APPEND {' '.join(append)}\n"
    )


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """extlinux.conf, and the install, MBR and boot-flag actions that are still needed."""
    result = Result("extlinux")
    if target.bootloader != Loader.EXTLINUX:
        return result
    result.write(view, CONF, config(info, target))
    # ldlinux.sys copied from another filesystem (a synced, already converted host) is not
    # installed: its boot record is missing and its sector map points elsewhere.
    if not (view.is_file(f"{DIR}/ldlinux.sys") and view.is_file(f"{DIR}/ldlinux.c32")
            and b"SYSLINUX" in info.root_boot_sector):
        result.actions.append(ExtlinuxInstall(DIR))
    if info.mbr_code != target.mbr_bin[:440].ljust(440, b"\0"):
        result.actions.append(WriteMbr())
    if not info.bootable:
        result.actions.append(SetBootable())
    result.notes.append(f"boots {pick_kernel(info).image}")
    return result
