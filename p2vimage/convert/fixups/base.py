"""What fixups return: file edits, actions for the applier, notes for the report."""

from __future__ import annotations

import dataclasses
import difflib
import enum
from typing import ClassVar

from p2vimage.guest.files import FileView
from p2vimage.guest.record import GuestRecord


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What convert plans from: the guest's record, and the facts of the disk it is on."""

    record: GuestRecord
    root_uuid: str
    fstype: str
    mbr_code: bytes = b""  # the first 440 bytes of the disk
    bootable: bool = False  # partition 1 has the boot flag
    root_boot_sector: bytes = b""  # the root filesystem's first sector (extlinux's VBR)


class Loader(enum.StrEnum):
    """The bootloader the converted guest boots with."""

    EXTLINUX = "extlinux"
    GRUB2 = "grub2"


@dataclasses.dataclass(frozen=True)
class Target:
    """What the converted guest should boot like."""

    root_spec: str  # "UUID=…" or "/dev/vda1"
    bootloader: Loader
    kernel_args: tuple[str, ...]  # console=tty0 console=ttyS0,115200 [net.ifnames=0]
    swap_file_mib: int = 0
    disable_hardware: bool = False
    mbr_bin: bytes = b""  # the host's syslinux mbr.bin (for extlinux)


@dataclasses.dataclass(frozen=True)
class Edit:
    """Make ``path`` hold ``new`` (None: remove it), or be a symlink to ``symlink``."""

    path: str
    old: bytes | None
    new: bytes | None
    symlink: str | None = None
    mode: int = 0o644

    def diff(self) -> str:
        """A unified diff of the edit (symlinks and removals as one line)."""
        if self.symlink is not None:
            return f"+++ {self.path} -> {self.symlink} (symlink)\n"
        old = (self.old or b"").decode("utf-8", "replace").splitlines(keepends=True)
        new = (self.new or b"").decode("utf-8", "replace").splitlines(keepends=True)
        a = f"a{self.path}" if self.old is not None else "/dev/null"
        b = f"b{self.path}" if self.new is not None else "/dev/null"
        return "".join(difflib.unified_diff(old, new, a, b))


# The actions: what the applier does besides editing files. Each kind has its own fields;
# ``name`` is its key in reports and timings, ``detail`` the line the report shows.


@dataclasses.dataclass(frozen=True)
class SwapFile:
    """Create a swap file of ``mib`` MiB at ``path`` (the guest's fstab names it)."""

    name: ClassVar[str] = "swapfile"
    path: str
    mib: int

    @property
    def detail(self) -> str:
        return f"create a {self.mib} MiB swap file {self.path}"


@dataclasses.dataclass(frozen=True)
class InitramfsRebuild:
    """Rebuild the initrds of kernel ``versions`` with the guest's own ``tool``."""

    name: ClassVar[str] = "initramfs-rebuild"
    tool: str  # update-initramfs | dracut | mkinitrd (fixups.initramfs.TOOLS)
    versions: tuple[str, ...]

    @property
    def detail(self) -> str:
        return f"rebuild with {self.tool} for {', '.join(self.versions)}"


@dataclasses.dataclass(frozen=True)
class Grub2Install:
    """Install GRUB 2 to the disk and write grub.cfg, with the guest's own binaries."""

    name: ClassVar[str] = "grub2-install"

    @property
    def detail(self) -> str:
        return "grub-install /dev/sda and grub-mkconfig with the guest's own binaries"


@dataclasses.dataclass(frozen=True)
class ExtlinuxInstall:
    """Install extlinux (the host's syslinux) into ``directory`` of the root filesystem."""

    name: ClassVar[str] = "extlinux-install"
    directory: str

    @property
    def detail(self) -> str:
        return f"install extlinux into {self.directory}"


@dataclasses.dataclass(frozen=True)
class WriteMbr:
    """Write the host syslinux's MBR boot code (``Target.mbr_bin``) to the disk."""

    name: ClassVar[str] = "mbr"

    @property
    def detail(self) -> str:
        return "write syslinux mbr.bin to the MBR"


@dataclasses.dataclass(frozen=True)
class SetBootable:
    """Mark partition 1 bootable (extlinux's MBR code boots the active partition)."""

    name: ClassVar[str] = "bootflag"

    @property
    def detail(self) -> str:
        return "mark partition 1 bootable"


Action = SwapFile | InitramfsRebuild | Grub2Install | ExtlinuxInstall | WriteMbr | SetBootable


@dataclasses.dataclass
class Result:
    """One fixup's plan."""

    name: str
    edits: list[Edit] = dataclasses.field(default_factory=list)
    actions: list[Action] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def write(self, view: FileView, path: str, new: str | bytes, mode: int = 0o644) -> None:
        """Plan ``path`` to hold ``new``, when it does not already."""
        data = new.encode() if isinstance(new, str) else new
        old = view.read_bytes(path)
        if old != data or view.readlink(path) is not None:
            self.edits.append(Edit(path, old, data, mode=mode))

    def remove(self, view: FileView, path: str) -> None:
        """Plan ``path`` (file or symlink) to be removed, when it exists."""
        if view.readlink(path) is not None:
            self.edits.append(Edit(path, None, None))
        elif view.is_file(path):
            self.edits.append(Edit(path, view.read_bytes(path), None))

    def link(self, view: FileView, path: str, target: str) -> None:
        """Plan ``path`` to be a symlink to ``target``, when it is not already."""
        if view.readlink(path) != target:
            self.edits.append(Edit(path, view.read_bytes(path), None, symlink=target))


def _arg_key(token: str) -> str:
    key, _, value = token.partition("=")
    if key == "console":  # several consoles are allowed, one per device
        return f"console={value.split(',')[0]}"
    return key


def add_args(args: str, wanted: tuple[str, ...]) -> str:
    """A kernel command line with each of ``wanted`` present once (the same key replaced)."""
    tokens = args.split()
    for want in wanted:
        if want in tokens:
            continue
        keys = [_arg_key(t) for t in tokens]
        key = _arg_key(want)
        if key in keys:  # replace in place, drop repeats
            first = keys.index(key)
            tokens = [want if i == first else t for i, t in enumerate(tokens)
                      if i == first or keys[i] != key]
        else:
            tokens.append(want)
    return " ".join(tokens)
