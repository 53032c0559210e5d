"""What p2vimage needs from the host, per verb: one declarative table, read by ``doctor``.

Each entry is one thing a verb uses on this host — a program, a file in one of its known
locations, a Python module, or a capability that is tried for real — with the verbs that fail
without it (required), the verbs that only lose a feature (optional, with what is lost), and
the package that brings it on Debian and, where known, on Fedora/RHEL.
tests/integration/test_doctor_tools.py checks that every program the package runs is here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping


class Kind(enum.Enum):
    """How a requirement is looked for."""

    PROGRAM = "program"  # on PATH, /usr/sbin or /sbin (run.which)
    FILE = "file"  # a regular file in one of its known locations
    MODULE = "module"  # a Python module that imports
    CAPABILITY = "capability"  # something tried for real (doctor says how)


# The verbs, in pipeline order: what each does on this host. Those in EXTRAS are not
# production work: doctor lists what they lack but counts it only when asked (--verb).
VERBS: Mapping[str, str] = {
    "sync": "rsync a legacy host's tree over ssh",
    "build": "make the raw image (mke2fs -d, debugfs)",
    "verify": "compare the image with its tree",
    "convert": "fix the guest up in a libguestfs appliance",
    "smoke": "boot the image under qemu and probe it",
    "run": "build, convert and smoke (after sync for an ssh:// SOURCE)",
    "upload": "trim, convert to qcow2 and upload to Glance",
    "volume": "make a Cinder volume from the Glance image",
    "boot": "boot a Nova server from the volume",
    "write-volume": "write the image onto an attached volume",
    "cutover": "move the public address (cutover run and rollback)",
    "demo": "build example legacy guests with debootstrap and run them",
    "bench": "the benchmarks (bench/)",
    "tests": "the test suite's own fixtures and checks",
}
EXTRAS = ("demo", "bench", "tests")
# run and demo go through these stages: whatever they require, run and demo require.
PIPELINE = ("build", "convert", "smoke")

# Where syslinux's MBR boot code may be (Debian's extlinux, syslinux-common; Fedora).
MBR_BIN = ("/usr/lib/EXTLINUX/mbr.bin", "/usr/lib/syslinux/mbr/mbr.bin",
           "/usr/share/syslinux/mbr.bin", "/usr/lib/syslinux/mbr.bin")


@dataclasses.dataclass(frozen=True)
class Need:
    """One thing some verbs need from the host."""

    name: str  # the program, file, module or capability
    kind: Kind
    required: tuple[str, ...]  # verbs that fail without it
    debian: str  # the Debian package ("" when no package brings it)
    fedora: str = ""  # the Fedora/RHEL package, when known
    optional: Mapping[str, str] = dataclasses.field(default_factory=dict)  # verb: what is lost
    locations: tuple[str, ...] = ()  # FILE: where it may be
    note: str = ""  # what else to do (a version, another way)

    def required_by(self) -> tuple[str, ...]:
        """The verbs that cannot run without it (run and demo inherit from their stages)."""
        verbs = set(self.required)
        if verbs & set(PIPELINE):
            verbs |= {"run", "demo"}
        return tuple(v for v in VERBS if v in verbs)

    def optional_for(self) -> dict[str, str]:
        """The verbs that only lose a feature without it: verb → what is lost."""
        out = dict(self.optional)
        for stage in ("convert", "smoke"):  # run never refreshes an image: not build's
            if stage in out:
                out.setdefault("run", out[stage])
        required = self.required_by()
        return {v: out[v] for v in VERBS if v in out and v not in required}

    def install(self) -> str:
        """What to do to get it: apt-get (and dnf when the Fedora name is known); for a
        capability, its note first (the package may be there and still lack it)."""
        parts = [f"apt-get install {self.debian}"] if self.debian else []
        if self.fedora:
            parts.append(f"dnf install {self.fedora}")
        packages = " | ".join(parts)
        if self.kind is Kind.CAPABILITY:
            return self.note + (f" ({packages})" if packages else "")
        return packages + (f"; {self.note}" if self.note else "")


_P, _F, _M, _C = Kind.PROGRAM, Kind.FILE, Kind.MODULE, Kind.CAPABILITY
_REFRESH = "build --refresh in place (the loop method; without it --refresh rebuilds)"
_CHROOT = ("initramfs rebuilt in a host chroot of the image (else inside the appliance: "
           "minutes under TCG)")
_SSH_SOURCE = "ssh://HOST as SOURCE (sync first)"
_SSH_PROBES = "ssh: probes (log in with a throwaway key)"

NEEDS: tuple[Need, ...] = (
    Need("rsync", _P, ("sync",), "rsync", "rsync", {"build": _REFRESH, "run": _SSH_SOURCE}),
    Need("ssh", _P, ("sync", "cutover"), "openssh-client", "openssh-clients",
         {"smoke": _SSH_PROBES, "run": _SSH_SOURCE}),
    Need("ssh-keygen", _P, (), "openssh-client", "openssh-clients", {"smoke": _SSH_PROBES}),
    Need("sh", _P, ("sync", "convert", "cutover"), "dash", "bash"),
    Need("mke2fs", _P, ("build",), "e2fsprogs", "e2fsprogs"),
    Need("debugfs", _P, ("build", "verify"), "e2fsprogs", "e2fsprogs"),
    Need("dumpe2fs", _P, ("upload",), "e2fsprogs", "e2fsprogs",
         note="or upload with --no-trim"),
    Need("e2fsck", _P, ("tests",), "e2fsprogs", "e2fsprogs"),
    Need("losetup", _P, ("demo",), "mount", "util-linux",
         {"build": _REFRESH, "convert": _CHROOT}),
    Need("mount", _P, ("demo",), "mount", "util-linux", {"build": _REFRESH, "convert": _CHROOT}),
    Need("umount", _P, ("demo",), "mount", "util-linux",
         {"build": _REFRESH, "convert": _CHROOT}),
    Need("sync", _P, (), "coreutils", "coreutils", {"build": _REFRESH}),
    Need("chroot", _P, ("demo",), "coreutils", "coreutils", {"convert": _CHROOT}),
    Need("cp", _P, ("demo",), "coreutils", "coreutils"),
    Need("mknod", _P, ("demo",), "coreutils", "coreutils"),
    Need("touch", _P, ("demo",), "coreutils", "coreutils"),
    Need("lsinitramfs", _P, ("convert",), "initramfs-tools-core"),
    Need("extlinux", _P, ("convert",), "extlinux", "syslinux-extlinux"),
    Need("mbr.bin", _F, ("convert",), "syslinux-common", "syslinux-nonlinux",
         locations=MBR_BIN),
    Need("guestfs", _M, ("convert",), "python3-guestfs", "python3-libguestfs",
         {"smoke": _SSH_PROBES}),
    Need("qemu-system-x86_64", _P, ("convert", "smoke"), "qemu-system-x86",
         "qemu-system-x86-core"),
    Need("qemu-img", _P, ("smoke", "upload"), "qemu-utils", "qemu-img"),
    Need("qemu-img zstd", _C, ("upload",), "qemu-utils", "qemu-img",
         note="QEMU 5.1 or later built with zstd; or upload with --compression zlib"),
    Need("accelerator", _C, ("convert", "smoke"), "qemu-system-x86", "qemu-system-x86-core",
         note="see what was tried: 'p2vimage --debug doctor --refresh'"),
    Need("libguestfs appliance", _C, ("convert",), "", optional={"smoke": _SSH_PROBES},
         note="run 'libguestfs-test-tool' to see why (it needs a readable /boot/vmlinuz-*)"),
    Need("ip", _P, ("cutover",), "iproute2", "iproute"),
    Need("arping", _P, (), "iputils-arping", "iputils",
         {"cutover": "gratuitous ARP when this host is the node or the legacy host "
                     "(neighbours then learn the move only as their entries expire)"},
         note="or the arping package"),
    Need("debootstrap", _P, ("demo", "tests"), "debootstrap", "debootstrap"),
    Need("setfacl", _P, ("demo",), "acl", "acl"),
    Need("setfattr", _P, ("demo",), "attr", "attr"),
    Need("setcap", _P, ("demo",), "libcap2-bin", "libcap"),
    Need("virt-make-fs", _P, ("bench",), "libguestfs-tools", "guestfs-tools"),
)


def needs_of(verbs: tuple[str, ...]) -> list[Need]:
    """The entries any of ``verbs`` needs (required or optional), in table order."""
    return [n for n in NEEDS
            if set(verbs) & {*n.required_by(), *n.optional_for()}]
