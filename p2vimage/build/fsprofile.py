"""Choose the filesystem type and features from the guest, never from the build host.

The build host's mke2fs defaults (1.47: 64bit, metadata_csum, metadata_csum_seed, orphan_file)
produce filesystems an old guest's kernel, e2fsck or bootloader cannot read. So the feature
list is built up explicitly (``-O none,...``) from what the guest's oldest kernel, its e2fsprogs
and its bootloader support. Each rule names its reason; the reasons go into the build report.
"""

from __future__ import annotations

import dataclasses

from p2vimage.core.errors import InputError
from p2vimage.guest.facts import Version, fmt
from p2vimage.guest.record import GuestRecord

EXT3_FEATURES = ("has_journal", "ext_attr", "resize_inode", "dir_index", "filetype",
                 "sparse_super", "large_file")
EXT4_BASE = ("extent", "flex_bg", "huge_file", "dir_nlink", "extra_isize")

# feature: (minimum guest kernel, minimum guest e2fsprogs) for the feature to be safe.
EXT4_OPTIONAL: dict[str, tuple[Version, Version]] = {
    "64bit": ((3, 2), (1, 42)),
    "metadata_csum": ((3, 18), (1, 43)),
    "orphan_file": ((5, 15), (1, 47)),
    "metadata_csum_seed": ((4, 4), (1, 43)),
}
EXT4_KERNEL = (2, 6, 28)  # ext4 left "ext4dev" in 2.6.28
EXT4_E2FSPROGS = (1, 41)
GRUB_CSUM_SEED = (2, 12)  # GRUB before 2.12 rejects the metadata_csum_seed incompat flag


@dataclasses.dataclass(frozen=True)
class FsProfile:
    """The filesystem ``build`` makes: type, explicit feature list, inode size, reasons."""

    fstype: str
    features: tuple[str, ...]
    inode_size: int
    reasons: tuple[str, ...]

    def mke2fs_args(self) -> list[str]:
        """mke2fs options selecting exactly this profile."""
        return ["-t", self.fstype, "-O", ",".join(("none", *self.features)),
                "-I", str(self.inode_size)]

    @property
    def keeps_nanoseconds(self) -> bool:
        """Whether inode timestamps keep nanoseconds (only in large inodes)."""
        return self.inode_size > 128


def _at_least(version: Version | None, minimum: Version) -> bool:
    return version is not None and version >= minimum


def choose(facts: GuestRecord, fstype: str | None = None,
           features: str | None = None) -> FsProfile:
    """The profile for ``facts``; ``fstype``/``features`` (``--fs``/``--fs-features``) override.

    ``features`` is a comma list applied on top of the choice: ``name`` adds, ``^name`` removes.
    Raises InputError for an unsupported ``fstype``.
    """
    reasons: list[str] = []
    kernel = facts.oldest_kernel
    e2fs = facts.e2fsprogs_version
    inode_size = 256
    legacy_loader = facts.bootloader == "grub-legacy" or (
        facts.bootloader == "extlinux" and not _at_least(facts.syslinux_version, (4, 0)))
    if legacy_loader:
        inode_size = 128
        reasons.append(f"{facts.bootloader} reads only ext2/ext3 with 128-byte inodes")
    if fstype is None:
        if legacy_loader:
            fstype = "ext3"
        elif not _at_least(kernel, EXT4_KERNEL):
            fstype = "ext3"
            reasons.append(f"oldest guest kernel {fmt(kernel)} predates stable ext4 (2.6.28)")
        elif e2fs is not None and not _at_least(e2fs, EXT4_E2FSPROGS):
            fstype = "ext3"
            reasons.append(f"guest e2fsprogs {fmt(e2fs)} cannot check ext4 (needs 1.41)")
        else:
            fstype = "ext4"
            reasons.append(f"guest kernel {fmt(kernel)} and e2fsprogs {fmt(e2fs)} support ext4")
    else:
        reasons.append(f"--fs {fstype} given")
    if fstype not in ("ext2", "ext3", "ext4"):
        raise InputError(f"unsupported filesystem type {fstype!r}",
                         hint="use --fs ext2, ext3 or ext4")
    chosen = [f for f in EXT3_FEATURES if fstype != "ext2" or f != "has_journal"]
    if fstype == "ext4":
        chosen += EXT4_BASE
        for feature, (min_kernel, min_e2fs) in EXT4_OPTIONAL.items():
            why_not = None
            if not _at_least(kernel, min_kernel):
                why_not = f"guest kernel {fmt(kernel)} < {fmt(min_kernel)}"
            elif e2fs is not None and not _at_least(e2fs, min_e2fs):
                why_not = f"guest e2fsprogs {fmt(e2fs)} < {fmt(min_e2fs)}"
            elif feature == "metadata_csum_seed" and facts.bootloader == "grub2" and not (
                    _at_least(facts.grub_version, GRUB_CSUM_SEED)):
                why_not = f"guest GRUB {fmt(facts.grub_version)} < {fmt(GRUB_CSUM_SEED)}"
            elif feature == "64bit" and facts.bootloader == "extlinux":
                why_not = "extlinux cannot read 64bit ext4"
            if why_not:
                reasons.append(f"no {feature}: {why_not}")
            else:
                chosen.append(feature)
        if "metadata_csum" not in chosen:
            chosen.append("uninit_bg")
    for item in (features or "").split(","):
        item = item.strip()
        if not item:
            continue
        name = item.lstrip("^")
        if item.startswith("^"):
            chosen = [f for f in chosen if f != name]
        elif name not in chosen:
            chosen.append(name)
        reasons.append(f"--fs-features {item}")
    return FsProfile(fstype, tuple(chosen), inode_size, tuple(reasons))
