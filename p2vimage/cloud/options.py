"""What the cloud stages of ``run`` are asked for: the settings a user chooses for upload,
volume and boot (the same for ``run`` and a batch of hosts). Plain data: importing this
module does not import openstacksdk."""

from __future__ import annotations

import dataclasses
import enum


class DiskFormat(enum.StrEnum):
    """``--disk-format``: what is sent to the image service."""

    QCOW2 = "qcow2"  # converted beside the image, compressed
    RAW = "raw"  # every byte of the disk


class Compression(enum.StrEnum):
    """``--compression``: the qcow2 clusters' compression."""

    ZSTD = "zstd"
    ZLIB = "zlib"  # for clouds whose qemu is older than 5.1
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class CloudSettings:
    """The user's choices for the cloud stages: upload → volume → boot (a test server)."""

    cloud: str | None = None  # the clouds.yaml entry; default $OS_CLOUD, else OS_* variables
    host: str | None = None  # the p2vimage:host mark; default: the source's host, else the
    # image's stem
    image_name: str | None = None  # the Glance image name; default: the host mark
    disk_format: DiskFormat = DiskFormat.QCOW2
    compression: Compression | None = None  # default: zstd for qcow2, none for raw
    volume_size_gb: int | None = None  # default: the image's virtual size
    volume_type: str | None = None
    availability_zone: str | None = None  # of the volume and the server
    flavor: str | None = None  # needed by boot
    network: str | None = None  # an ID, a name or "none"; needed by boot
    key: str | None = None
    security_groups: tuple[str, ...] = ()

    @property
    def chosen_compression(self) -> Compression:
        """The compression used: the one given, else the disk format's default."""
        if self.compression is not None:
            return self.compression
        return Compression.ZSTD if self.disk_format is DiskFormat.QCOW2 else Compression.NONE
