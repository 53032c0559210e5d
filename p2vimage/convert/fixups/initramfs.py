"""Make sure every initrd can find a virtio disk: add the missing virtio modules to the
guest's initramfs configuration and ask for a rebuild with the guest's own tool.

Which modules an initrd lacks is found by ``convert`` (listing each initrd and the kernel's
built-in modules) and given in ``GuestRecord.missing_virtio``; this module only decides."""

from __future__ import annotations

from p2vimage.convert.fixups.base import InitramfsRebuild, Inspection, Result, Target
from p2vimage.guest.facts import VIRTIO
from p2vimage.guest.files import FileView, read_text

INITRDS = ("boot/initrd.img-*", "boot/initrd-*", "boot/initramfs-*")  # rebuilt ones
TOOLS = {  # tool: (its binary in the guest, the configuration file the modules go to)
    "update-initramfs": ("/usr/sbin/update-initramfs", "/etc/initramfs-tools/modules"),
    "dracut": ("/usr/bin/dracut", "/etc/dracut.conf.d/90-p2vimage-virtio.conf"),
    "mkinitrd": ("/sbin/mkinitrd", "/etc/sysconfig/kernel"),
}

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = ("etc/initramfs-tools/*", "etc/dracut.conf", "etc/dracut.conf.d/*",
         "etc/sysconfig/kernel", "etc/mkinitcpio.conf",
         *(p for binary, _ in TOOLS.values() for p in (binary.lstrip("/"),
                                                         binary.replace("/usr/", "/")[1:])))
WRITES = (*(conf.lstrip("/") for _, conf in TOOLS.values()), *INITRDS,
          "var/lib/initramfs-tools/*")

def guest_tool(view: FileView) -> str | None:
    """The initramfs tool the guest has (Debian's first, then dracut, then mkinitrd)."""
    for tool, (binary, _) in TOOLS.items():
        if view.is_file(binary) or view.is_file(binary.replace("/usr/", "/")):
            return tool
    return None


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """Config edits and one rebuild action for the kernels whose initrd lacks virtio."""
    result = Result("initramfs")
    missing = {k: m for k, m in (info.record.missing_virtio or {}).items() if m}
    for kernel in info.record.kernels:
        if kernel.version in missing:
            result.notes.append(f"{kernel.initrd or kernel.version}: lacks "
                                f"{', '.join(missing[kernel.version])}")
        elif kernel.initrd:
            result.notes.append(f"{kernel.initrd}: has virtio")
    if not missing:
        return result
    tool = guest_tool(view)
    if tool is None:
        result.notes.append("no initramfs tool in the guest: cannot add virtio modules")
        return result
    modules = sorted({m for mods in missing.values() for m in mods} | set(VIRTIO))
    conf = TOOLS[tool][1]
    text = read_text(view, conf) or ""
    if tool == "update-initramfs":
        present = {line.split()[0] for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")}
        add = [m for m in modules if m not in present]
        if add:
            result.write(view, conf, text.rstrip("\n") + "\n" + "\n".join(add) + "\n")
    elif tool == "dracut":
        result.write(view, conf, f'add_drivers+=" {" ".join(modules)} "\n')
    else:
        line = f'INITRD_MODULES="$INITRD_MODULES {" ".join(modules)}"'
        if line not in text:
            result.write(view, conf, text.rstrip("\n") + "\n" + line + "\n")
    result.actions.append(InitramfsRebuild(tool, tuple(sorted(missing))))
    return result
