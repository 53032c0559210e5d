"""/etc/fstab for one root filesystem on a virtio disk.

The legacy host had several partitions (the seed's had seven on /dev/sda); sync merged them
into one tree. So: the root line points at the new filesystem (by UUID, or /dev/vda1 as the
seed wrote), every other local disk filesystem and swap partition is commented out (kept as
a comment, so nothing is lost), an optional swap file replaces swap, and proc, tmpfs, network
and bind entries stay as they were.
"""

from __future__ import annotations

import re

from p2vimage.convert.fixups.base import Inspection, Result, SwapFile, Target
from p2vimage.guest.files import FileView, read_text

PATH = "/etc/fstab"
SWAPFILE = "/swapfile"
MERGED = "# p2vimage: merged into /: "
SWAP_REMOVED = "# p2vimage: swap partition removed: "
NOT_DISK_TYPES = {"proc", "sysfs", "devpts", "tmpfs", "devtmpfs", "usbfs", "nfs", "nfs4",
                  "cifs", "smbfs", "sshfs", "fuse", "none", "binfmt_misc", "securityfs",
                  "debugfs", "cgroup", "cgroup2", "hugetlbfs", "mqueue", "rpc_pipefs",
                  "nfsd", "iso9660", "udf", "auto"}
_DISK = re.compile(r"^(?:(?:UUID|LABEL|PARTUUID|PARTLABEL)=.+|/dev/(?:[hsv]d[a-z]+\d*|xvd\w+|"
                   r"md\S*|mapper/\S+|disk/by-\S+|cciss/\S+|ida/\S+|nvme\S+|mmcblk\S+|"
                   r"[^/\s]+/[^/\s]+))$")
_REMOVABLE = re.compile(r"^/dev/(?:cdrom\d*|dvd\d*|fd\d+|sr\d+|scd\d+|floppy)")

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = ("etc/fstab",)
WRITES = (PATH.lstrip("/"), SWAPFILE.lstrip("/"))

def is_disk(spec: str, fstype: str, options: str) -> bool:
    """An entry for a filesystem on a local disk (merged into the new root)."""
    if _REMOVABLE.match(spec) or "bind" in options.split(","):
        return False
    return fstype not in NOT_DISK_TYPES and bool(_DISK.match(spec))


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """The new /etc/fstab (see the module docstring)."""
    result = Result("fstab")
    text = read_text(view, PATH)
    if text is None:
        text = ""
        result.notes.append("no /etc/fstab: writing one")
    out: list[str] = []
    have_root = have_swapfile = False
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 3:
            out.append(line)
            continue
        spec, mountpoint, fstype = fields[:3]
        options = fields[3] if len(fields) > 3 else "defaults"
        if spec == SWAPFILE or (fstype == "swap" and not is_disk(spec, "swap", options)):
            have_swapfile = have_swapfile or spec == SWAPFILE
            out.append(line)
        elif mountpoint == "/":
            if not have_root:
                opts = options if fstype in ("ext2", "ext3", "ext4") else "errors=remount-ro"
                out.append(f"{target.root_spec} / {info.fstype} {opts} 0 1")
                have_root = True
                if spec != target.root_spec:
                    result.notes.append(f"root: {spec} → {target.root_spec}")
        elif fstype == "swap":
            out.append(SWAP_REMOVED + line)
            result.notes.append(f"swap partition {spec} removed")
        elif is_disk(spec, fstype, options):
            out.append(MERGED + line)
            result.notes.append(f"{mountpoint} ({spec}) merged into /")
        else:
            out.append(line)
    if not have_root:
        out.append(f"{target.root_spec} / {info.fstype} defaults,errors=remount-ro 0 1")
    if target.swap_file_mib and not have_swapfile:
        out.append(f"{SWAPFILE} none swap sw 0 0")
        result.actions.append(SwapFile(SWAPFILE, target.swap_file_mib))
    result.write(view, PATH, "\n".join(out) + "\n")
    return result
