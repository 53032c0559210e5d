"""What ``convert`` is asked for: the settings a user chooses (the same for ``convert``,
``run`` and a re-convert by ``build --refresh``) and the image they apply to."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class BootloaderChoice(enum.StrEnum):
    """``--bootloader``: what the converted guest boots with."""

    AUTO = "auto"  # the guest's GRUB 2 when it has one, else extlinux
    EXTLINUX = "extlinux"
    GRUB2 = "grub2"


class RootDevice(enum.StrEnum):
    """``--root-device``: how fstab and the bootloader name the root filesystem."""

    UUID = "uuid"  # UUID=…
    VDA1 = "vda1"  # /dev/vda1


class InitramfsMethod(enum.StrEnum):
    """``--initramfs-method``: where an initrd that lacks virtio is rebuilt."""

    AUTO = "auto"  # chroot when this process can loop-mount the image, else appliance
    CHROOT = "chroot"  # a host chroot of the loop-mounted image (root; fast)
    APPLIANCE = "appliance"  # inside the libguestfs appliance (slow under TCG)


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    """The user's choices for a conversion (recorded in the image's state, so that
    ``build --refresh`` converts again the same way)."""

    bootloader: BootloaderChoice = BootloaderChoice.AUTO
    root_device: RootDevice = RootDevice.UUID
    swap_file_mib: int = 0
    disable_hardware: bool = False
    initramfs_method: InitramfsMethod = InitramfsMethod.AUTO

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> ConvertSettings:
        """The settings recorded as ``plain(settings)`` (missing keys: the defaults).
        Raises ValueError for a value that is not one of the choices."""
        default = cls()
        return cls(
            bootloader=BootloaderChoice(data.get("bootloader", default.bootloader)),
            root_device=RootDevice(data.get("root_device", default.root_device)),
            swap_file_mib=int(data.get("swap_file_mib", default.swap_file_mib)),
            disable_hardware=bool(data.get("disable_hardware", default.disable_hardware)),
            initramfs_method=InitramfsMethod(data.get("initramfs_method",
                                                      default.initramfs_method)))


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """One ``convert``: the image, the settings, and whether only to show the plan."""

    image: Path
    settings: ConvertSettings = dataclasses.field(default_factory=ConvertSettings)
    dry_run: bool = False
