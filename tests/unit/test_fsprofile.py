"""The filesystem chosen from the guest's kernel, e2fsprogs and bootloader."""

from __future__ import annotations

import pytest

from p2vimage.build.fsprofile import choose
from p2vimage.core.errors import InputError
from p2vimage.guest.facts import Version
from p2vimage.guest.record import Bootloader, GuestRecord, InitSystem, Kernel


def facts(kernels: tuple[Version, ...] = ((6, 1, 0),), bootloader: str = "grub2",
          e2fs: Version | None = (1, 47, 0), grub: Version | None = (2, 6)) -> GuestRecord:
    versions = ['.'.join(map(str, k)) for k in kernels]
    return GuestRecord(
        distro="debian", version="12", product="test", arch="x86_64", init=InitSystem.SYSTEMD,
        kernels=tuple(Kernel(v, f"/boot/vmlinuz-{v}", None) for v in versions),
        bootloader=Bootloader(bootloader), grub_version=grub, syslinux_version=None,
        e2fsprogs_version=e2fs, nics=(), interfaces=(), predictable_names=True)


def test_grub_legacy_gets_ext3_with_128_byte_inodes() -> None:
    profile = choose(facts(kernels=((2, 6, 26),), bootloader="grub-legacy", e2fs=(1, 41, 3)))
    assert profile.fstype == "ext3"
    assert profile.inode_size == 128
    assert profile.mke2fs_args() == [
        "-t", "ext3", "-O",
        "none,has_journal,ext_attr,resize_inode,dir_index,filetype,sparse_super,large_file",
        "-I", "128"]
    assert not profile.keeps_nanoseconds


def test_grub_legacy_wins_even_with_a_new_kernel() -> None:
    profile = choose(facts(kernels=((5, 10, 0),), bootloader="grub-legacy"))
    assert (profile.fstype, profile.inode_size) == ("ext3", 128)


def test_old_kernel_gets_ext3() -> None:
    profile = choose(facts(kernels=((2, 6, 18),), e2fs=(1, 39)))
    assert profile.fstype == "ext3"
    assert profile.inode_size == 256
    assert any("2.6.28" in r for r in profile.reasons)


def test_old_e2fsprogs_gets_no_new_ext4_features() -> None:
    profile = choose(facts(kernels=((5, 10, 0),), e2fs=(1, 42, 9)))
    assert profile.fstype == "ext4"
    for feature in ("metadata_csum", "metadata_csum_seed", "orphan_file"):
        assert feature not in profile.features
    assert "64bit" in profile.features  # e2fsprogs 1.42 knows 64bit
    assert "uninit_bg" in profile.features  # the checksum before metadata_csum
    assert any("e2fsprogs 1.42.9 < 1.43" in r for r in profile.reasons)


def test_modern_guest_gets_ext4_with_modern_features_but_no_csum_seed_for_grub_206() -> None:
    profile = choose(facts())
    assert profile.fstype == "ext4"
    assert profile.inode_size == 256
    for feature in ("extent", "flex_bg", "64bit", "metadata_csum", "orphan_file"):
        assert feature in profile.features
    assert "metadata_csum_seed" not in profile.features
    assert "uninit_bg" not in profile.features
    assert profile.keeps_nanoseconds


def test_grub_212_allows_csum_seed() -> None:
    assert "metadata_csum_seed" in choose(facts(grub=(2, 12))).features


def test_oldest_kernel_decides() -> None:
    profile = choose(facts(kernels=((4, 19, 0), (6, 1, 0))))
    assert "orphan_file" not in profile.features  # 4.19 < 5.15
    assert "metadata_csum" in profile.features


def test_no_kernel_is_treated_as_old() -> None:
    assert choose(facts(kernels=())).fstype == "ext3"


def test_overrides() -> None:
    profile = choose(facts(), fstype="ext3", features="^dir_index,quota")
    assert profile.fstype == "ext3"
    assert "dir_index" not in profile.features
    assert "quota" in profile.features


def test_unknown_fs_is_input_error() -> None:
    with pytest.raises(InputError, match="unsupported filesystem"):
        choose(facts(), fstype="xfs")
