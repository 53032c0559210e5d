"""The one record of a guest: what it is (distro, version, architecture), how it starts (init
system, kernels and initrds, bootloader), its NICs, the virtio modules its initrds lack and the
Glance properties that follow.

One reader (``read``) with the same rules whatever shows the guest's files: a staging tree
(``LocalFiles``), an image through debugfs (``E2fsFiles``) or the libguestfs appliance; every
view is read through ``Resolved``, so symlinked directories (merged /usr) mean the same in
each. ``build`` reads it from the tree, ``convert`` through its appliance, and both keep it in
``IMAGE.state.json``; ``smoke`` and ``upload`` take it from there while it still describes the
image (``for_image``), and read it the same way through debugfs when it does not.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError
from p2vimage.disk import state as imagestate
from p2vimage.disk.e2fs import E2fsFiles
from p2vimage.guest import facts
from p2vimage.guest.facts import Version
from p2vimage.guest.files import FileView, LocalFiles, Resolved
from p2vimage.guest.netconf import Iface, interfaces, nic_names

FORMAT = 1  # of the JSON form; a record stored in another format is read again
# What the record reads. convert plans from it, so a change here makes convert's work stale
# (build --refresh converts again); the fixups declare the rest (convert/fixups/__init__.py).
READS = ("boot/vmlinuz-*", "boot/vmlinux-*", "boot/kernel-*", "boot/bzImage*", "boot/config-*",
         "boot/initrd.img-*", "boot/initrd-*", "boot/initramfs-*", "lib/modules/*",
         "usr/lib/modules/*", "sbin/init", "usr/sbin/init", "sbin/initctl", "etc/inittab",
         "lib/systemd/systemd-udevd", "usr/lib/systemd/systemd-udevd",
         "etc/os-release", "usr/lib/os-release", "etc/lsb-release", "etc/debian_version",
         "etc/redhat-release", "etc/SuSE-release", "var/lib/dpkg/status", "etc/lilo.conf")
Listing = Callable[[str], str]  # a guest initrd's path → its file list


class Bootloader(enum.StrEnum):
    """The bootloader the guest itself uses (syslinux's configuration counts as extlinux:
    EXTLINUX reads syslinux.cfg too, and the rules for both are the same)."""

    GRUB_LEGACY = "grub-legacy"
    GRUB2 = "grub2"
    EXTLINUX = "extlinux"
    LILO = "lilo"
    NONE = "none"


class InitSystem(enum.StrEnum):
    """What /sbin/init is."""

    SYSTEMD = "systemd"
    SYSVINIT = "sysvinit"
    UPSTART = "upstart"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel in the guest's /boot and the initrd that belongs to it (if any)."""

    version: str  # "5.10.0-32-686"
    image: str  # "/boot/vmlinuz-5.10.0-32-686"
    initrd: str | None

    @property
    def numbers(self) -> Version:
        """The numeric part of the version: (5, 10, 0)."""
        match = facts.KERNEL_RE.match(self.image.rsplit("/", 1)[-1])
        return tuple(int(g) for g in match.groups() if g is not None) if match else ()


@dataclasses.dataclass(frozen=True)
class GuestRecord:
    """Everything the stages need to know about a guest, read from its own files."""

    distro: str  # Glance's os_distro name ("debian"), else the guest's ID, else "unknown"
    version: str  # "11", "5", "6.10"; "" when unknown
    product: str  # "Debian GNU/Linux 11 (bullseye)", for people
    arch: str  # "i686", "x86_64"; "" when unknown
    init: InitSystem
    kernels: tuple[Kernel, ...]  # oldest first
    bootloader: Bootloader
    grub_version: Version | None
    syslinux_version: Version | None
    e2fsprogs_version: Version | None
    nics: tuple[str, ...]  # interface names in its network configuration
    interfaces: tuple[Iface, ...]  # its IPv4 interfaces, in NIC order (smoke's NICs)
    predictable_names: bool  # its udev renames NICs (enp0s3) unless net.ifnames=0
    # kernel version → the virtio modules it cannot load at boot; None: initrds not listed
    missing_virtio: Mapping[str, tuple[str, ...]] | None = None

    @property
    def oldest_kernel(self) -> Version | None:
        """The oldest installed kernel: every kernel the user may pick must mount root."""
        return min((k.numbers for k in self.kernels), default=None)

    def glance_properties(self) -> dict[str, str]:
        """Image properties for Nova: virtio disk and NIC, and the guest's identity.

        hw_machine_type=pc (i440fx) for guests whose oldest kernel predates 3.0 or that are
        32-bit: those kernels lack the PCIe-hotplug and ACPI support q35 machines rely on,
        and a cloud whose default is q35 would boot them without disks or NICs.
        """
        props = {"hw_disk_bus": "virtio", "hw_vif_model": "virtio"}
        if self.distro in facts.OS_DISTRO.values():
            props["os_distro"] = self.distro
        if self.version:
            props["os_version"] = self.version
        if self.arch:
            props["architecture"] = self.arch
        oldest = self.oldest_kernel
        if (oldest is not None and oldest < (3, 0)) or self.arch == "i686":
            props["hw_machine_type"] = "pc"
        return props

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data (enums as their strings)."""
        data = dataclasses.asdict(self)
        data["init"], data["bootloader"] = str(self.init), str(self.bootloader)
        data["missing_virtio"] = None if self.missing_virtio is None else {
            k: list(v) for k, v in self.missing_virtio.items()}
        return {"format": FORMAT, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GuestRecord:
        """The record ``to_json`` wrote. Raises ValueError for anything else."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError("not a guest record of this version")
        try:
            def version(v: Any) -> Version | None:
                return None if v is None else tuple(int(x) for x in v)

            missing = data["missing_virtio"]
            return cls(
                distro=str(data["distro"]), version=str(data["version"]),
                product=str(data["product"]), arch=str(data["arch"]),
                init=InitSystem(data["init"]),
                kernels=tuple(Kernel(str(k["version"]), str(k["image"]), k["initrd"])
                              for k in data["kernels"]),
                bootloader=Bootloader(data["bootloader"]),
                grub_version=version(data["grub_version"]),
                syslinux_version=version(data["syslinux_version"]),
                e2fsprogs_version=version(data["e2fsprogs_version"]),
                nics=tuple(str(n) for n in data["nics"]),
                interfaces=tuple(Iface(**i) for i in data["interfaces"]),
                predictable_names=bool(data["predictable_names"]),
                missing_virtio=None if missing is None else {
                    str(k): tuple(v) for k, v in missing.items()})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"damaged guest record ({exc})") from None


def read(view: FileView, listing: Listing | None = None) -> GuestRecord:
    """The record of the guest whose root filesystem ``view`` shows.

    ``listing`` lists a guest initrd's files (on the host: ``lsinitramfs``); without it the
    initrds are not checked for virtio (``missing_virtio`` is None).
    """
    resolved = view if isinstance(view, Resolved) else Resolved(view)
    pkgs = facts.dpkg_versions(resolved, facts.PACKAGES)
    kernels = []
    for _, name in facts.kernel_files(resolved):
        version = re.sub(r"^(?:vmlinuz|vmlinux|bzImage|kernel)-", "", name)
        kernels.append(Kernel(version, f"/boot/{name}", facts.initrd_of(resolved, version)))
    distro, version, product = facts.release(resolved)
    missing = None
    if listing is not None:
        lister = listing  # the view's own path of the initrd (its directories resolved)
        missing = {k.version: facts.missing_virtio(
            resolved, k.version, k.initrd, lambda p: lister(resolved.resolve(p) or p))
            for k in kernels}
    return GuestRecord(
        distro=distro, version=version, product=product,
        arch=facts.arch(resolved, resolved.follow),
        init=InitSystem(facts.init_system(resolved)), kernels=tuple(kernels),
        bootloader=Bootloader(facts.bootloader(resolved, pkgs)),
        grub_version=facts.grub_version(pkgs),
        syslinux_version=facts.syslinux_version(resolved, pkgs),
        e2fsprogs_version=facts.e2fsprogs_version(resolved, pkgs),
        nics=tuple(nic_names(resolved)), interfaces=tuple(interfaces(resolved)),
        predictable_names=facts.predictable_names(resolved, pkgs),
        missing_virtio=missing)


def copied_listing(view: FileView) -> Listing:
    """A ``listing`` that copies the initrd out of ``view`` and lists it on the host."""

    def listing(path: str) -> str:
        data = Resolved(view).read_bytes(path)
        if data is None:
            return ""
        with tempfile.NamedTemporaryFile(prefix="p2vimage-initrd-") as tmp:
            tmp.write(data)
            tmp.flush()
            return facts.list_initrd(Path(tmp.name))

    return listing


def from_tree(root: Path, listing: Listing | None = None) -> GuestRecord:
    """The record of the guest whose root filesystem is the tree at ``root``."""
    return read(LocalFiles(root), listing)


# -- kept beside the image ---------------------------------------------------------------

def _stamp(image: Path) -> list[int]:
    # not ctime: build keeps the record before its partial image is renamed into place
    st = image.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def state_fields(image: Path, record: GuestRecord) -> dict[str, Any]:
    """The state-file fields that keep ``record`` as the record of ``image`` as it is now
    (call it after the last write to the image; renaming it later keeps what is compared)."""
    return {"guest": record.to_json(), "guest_image": _stamp(image)}


def stored(image: Path) -> GuestRecord | None:
    """The record kept in the state of ``image``, when it still describes the image: same
    file (inode), size and mtime as when it was kept, and no refresh under way."""
    try:
        state = imagestate.load(image)
        if not state or state.get("dirty") or state.get("guest_image") != _stamp(image):
            return None
        return GuestRecord.from_json(state["guest"])
    except (InputError, OSError, KeyError, ValueError):
        return None


def for_image(image: Path) -> GuestRecord:
    """The record of the raw ``image``: kept, else read through debugfs (no appliance).

    Raises InputError when ``image`` holds no ext filesystem (or does not exist).
    """
    return stored(image) or read(E2fsFiles(image))

