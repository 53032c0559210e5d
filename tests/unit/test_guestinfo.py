"""The record's init, kernel, udev and virtio rules, from guest file texts."""

from __future__ import annotations

from p2vimage.guest import record
from p2vimage.guest.facts import (
    builtin_modules,
    dpkg_versions,
    init_system,
    initrd_modules,
    missing_virtio,
)
from p2vimage.guest.facts import predictable_names as udev_renames
from p2vimage.guest.files import FileView
from p2vimage.guest.record import Kernel
from tests.fakes import DictFiles


def kernels(view: FileView) -> tuple[Kernel, ...]:
    return record.read(view).kernels


def predictable_names(view: FileView) -> bool:
    return udev_renames(view, dpkg_versions(view, {"udev"}))


def test_init_systems() -> None:
    assert init_system(DictFiles({"/sbin/init": ("symlink", "/lib/systemd/systemd")})) == \
        "systemd"
    assert init_system(DictFiles({"/sbin/init": b"ELF", "/etc/inittab": "id:2\n"})) == \
        "sysvinit"
    assert init_system(DictFiles({"/sbin/init": b"ELF", "/sbin/initctl": b"ELF",
                                  "/etc/init/tty1.conf": "exec getty\n"})) == "upstart"
    assert init_system(DictFiles({})) == "unknown"


def test_kernels_with_their_initrds() -> None:
    files = DictFiles({"/boot/vmlinuz-2.6.26-2-686": b"k", "/boot/initrd.img-2.6.26-2-686": b"i",
                       "/boot/vmlinuz-2.6.32-754.el6.x86_64": b"k",
                       "/boot/initramfs-2.6.32-754.el6.x86_64.img": b"i",
                       "/boot/vmlinuz-2.6.18-8.el5": b"k", "/boot/initrd-2.6.18-8.el5.img": b"i",
                       "/boot/vmlinuz-3.2.0-4-amd64": b"k"})
    assert kernels(files) == (
        Kernel("2.6.18-8.el5", "/boot/vmlinuz-2.6.18-8.el5", "/boot/initrd-2.6.18-8.el5.img"),
        Kernel("2.6.26-2-686", "/boot/vmlinuz-2.6.26-2-686", "/boot/initrd.img-2.6.26-2-686"),
        Kernel("2.6.32-754.el6.x86_64", "/boot/vmlinuz-2.6.32-754.el6.x86_64",
               "/boot/initramfs-2.6.32-754.el6.x86_64.img"),
        Kernel("3.2.0-4-amd64", "/boot/vmlinuz-3.2.0-4-amd64", None))


def test_predictable_names_from_udev_version() -> None:
    status = "Package: udev\nStatus: install ok installed\nVersion: {}\n"
    assert not predictable_names(DictFiles({"/var/lib/dpkg/status": status.format("0.125-7")}))
    assert predictable_names(DictFiles({"/var/lib/dpkg/status": status.format("247.3-7")}))
    assert predictable_names(DictFiles({"/lib/systemd/systemd-udevd": b"ELF"}))


def test_missing_virtio() -> None:
    files = DictFiles({
        "/lib/modules/5.10.0-1/modules.builtin": "kernel/drivers/virtio/virtio.ko\n"
                                                 "kernel/drivers/virtio/virtio_pci.ko\n",
        "/boot/config-5.10.0-1": "CONFIG_VIRTIO_NET=y\nCONFIG_VIRTIO_BLK=m\n"})
    assert builtin_modules(files, "5.10.0-1") == {"virtio", "virtio_pci", "virtio_net"}
    listing = ("usr/lib/modules/5.10.0-1/kernel/drivers/block/virtio_blk.ko.xz\n"
               "usr/lib/modules/5.10.0-1/kernel/fs/ext4/ext4.ko\n")
    assert initrd_modules(listing) == {"virtio_blk", "ext4"}
    initrd = "/boot/initrd.img-5.10.0-1"
    assert missing_virtio(files, "5.10.0-1", initrd, lambda _: listing) == ()
    assert missing_virtio(files, "5.10.0-1", initrd, lambda _: "") == ("virtio_blk",)
    assert missing_virtio(DictFiles({}), "5.10.0-1", None, lambda _: "") == (
        "virtio_pci", "virtio_blk", "virtio_net")
