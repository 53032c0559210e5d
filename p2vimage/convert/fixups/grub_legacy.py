"""grub-legacy's menu.lst and device.map, edited as the seed did, so the guest's own
``update-grub`` stays correct later: ``# kopt=root=…``, ``# groot=(hd0,0)``, ``default 0``,
``root=`` on every kernel line, ``(hd0) /dev/vda``. Kernel and initrd paths get ``/boot/``
when /boot was a separate partition that is now part of the root filesystem."""

from __future__ import annotations

import re

from p2vimage.convert.fixups.base import Inspection, Loader, Result, Target, add_args
from p2vimage.guest.files import FileView, read_text

MENU = "/boot/grub/menu.lst"
DEVICE_MAP = "/boot/grub/device.map"
_KOPT = re.compile(r"^(#\s*kopt=)(.*)$")
_GROOT = re.compile(r"^(#\s*groot=)(.*)$")
_DEFAULT = re.compile(r"^(default)(\s*=?\s*)(\S+)(.*)$")
_ROOT = re.compile(r"^(\s*root)(\s*=?\s*)\(hd\d+(?:,\d+)?\)(.*)$")
_KERNEL = re.compile(r"^(\s*kernel)(\s*=?\s*)(\S+)(.*)$")
_INITRD = re.compile(r"^(\s*initrd)(\s*=?\s*)(\S+)(.*)$")

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = (MENU.lstrip("/"),  # and the kernels and initrds it names, on a separate /boot or not
         "vmlinuz*", "initrd*", "boot/vmlinuz*", "boot/initrd*")
WRITES = (MENU.lstrip("/"), DEVICE_MAP.lstrip("/"))

def _path(view: FileView, path: str) -> str:
    """A /boot-relative path written as it was on a separate /boot, made root-relative."""
    if path.startswith("/") and not view.is_file(path) and view.is_file("/boot" + path):
        return "/boot" + path
    return path


def _kernel_args(args: str, target: Target) -> str:
    return add_args(args, (f"root={target.root_spec}", *target.kernel_args))


def rewrite_menu(text: str, view: FileView, target: Target) -> str:
    """menu.lst with the seed's edits (pure: unit-tested on a lenny menu.lst)."""
    out = []
    for line in text.splitlines():
        if m := _KOPT.match(line):
            line = m.group(1) + _kernel_args(m.group(2), target)
        elif m := _GROOT.match(line):
            line = m.group(1) + "(hd0,0)"
        elif m := _DEFAULT.match(line):
            line = f"{m.group(1)}{m.group(2)}0{m.group(4)}"
        elif m := _ROOT.match(line):
            line = f"{m.group(1)}{m.group(2)}(hd0,0){m.group(3)}"
        elif m := _KERNEL.match(line):
            line = f"{m.group(1)}{m.group(2)}{_path(view, m.group(3))} " + _kernel_args(
                m.group(4), target)
        elif m := _INITRD.match(line):
            line = f"{m.group(1)}{m.group(2)}{_path(view, m.group(3))}{m.group(4)}"
        out.append(line)
    return "\n".join(out) + "\n"


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """The menu.lst and device.map edits (only when the guest has a menu.lst)."""
    result = Result("grub-legacy")
    text = read_text(view, MENU)
    if text is None:
        return result
    result.write(view, MENU, rewrite_menu(text, view, target))
    result.write(view, DEVICE_MAP, "(hd0)\t/dev/vda\n")
    if target.bootloader != Loader.GRUB2 and info.record.bootloader == "grub-legacy":
        result.notes.append(f"grub-legacy cannot be installed offline: booting with "
                            f"{target.bootloader}; menu.lst kept correct for update-grub")
    return result
