"""Fixups on real file texts, with exact expected outputs (pure: no VM, no image)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from p2vimage.convert.fixups import (
    console,
    extlinux,
    fstab,
    grub2,
    grub_legacy,
    hardware,
    initramfs,
    network,
)
from p2vimage.convert.fixups.base import (
    ExtlinuxInstall,
    Grub2Install,
    InitramfsRebuild,
    Inspection,
    Loader,
    SetBootable,
    SwapFile,
    Target,
    WriteMbr,
    add_args,
)
from p2vimage.guest import netconf
from p2vimage.guest.record import Bootloader, GuestRecord, InitSystem, Kernel
from tests.fakes import DictFiles

DATA = Path(__file__).parent / "data"
KERNELS = ("2.6.18-6-686", "2.6.26-2-686", "2.6.26-2-vserver-686-bigmem")
RECORD = GuestRecord(
    distro="debian", version="5.0", product="Debian 5.0.10", arch="i686",
    init=InitSystem.SYSVINIT,
    kernels=tuple(Kernel(v, f"/boot/vmlinuz-{v}", f"/boot/initrd.img-{v}") for v in KERNELS),
    bootloader=Bootloader.GRUB_LEGACY, grub_version=None, syslinux_version=None,
    e2fsprogs_version=(1, 41, 3), nics=("eth0", "eth1"), interfaces=(),
    predictable_names=False)
INFO = Inspection(RECORD, root_uuid="6b5af12e-5a75-477f-ad54-7851cc474103", fstype="ext3")
SEED = Target(root_spec="/dev/vda1", bootloader=Loader.EXTLINUX, kernel_args=())
CONSOLE = ("console=tty0", "console=ttyS0,115200")


def data(name: str) -> str:
    return (DATA / name).read_text()


def lenny(**extra: str | bytes | tuple[str, str]) -> DictFiles:
    files: dict[str, str | bytes | tuple[str, str]] = {
        "/etc/fstab": data("lenny-fstab"), "/boot/grub/menu.lst": data("lenny-menu.lst"),
        "/boot/grub/device.map": "(hd0)\t/dev/sda\n", "/etc/inittab": data("lenny-inittab"),
        "/etc/udev/rules.d/70-persistent-net.rules": data("70-persistent-net.rules"),
        "/lib/udev/rules.d/75-persistent-net-generator.rules": "# generator\n",
    }
    for v in KERNELS:
        files[f"/boot/vmlinuz-{v}"] = b"kernel"
        files[f"/boot/initrd.img-{v}"] = b"initrd"
    files.update(extra)
    return DictFiles(files)


def new_text(result_edits: list[object], path: str) -> str:
    for edit in result_edits:
        if getattr(edit, "path", None) == path:
            return (getattr(edit, "new", b"") or b"").decode()
    raise AssertionError(f"no edit of {path}")


def test_fstab_seven_partitions_seed_style() -> None:
    target = dataclasses.replace(SEED, swap_file_mib=512)
    result = fstab.plan(lenny(), INFO, target)
    assert new_text(result.edits, "/etc/fstab") == data("lenny-fstab.expected")
    assert result.actions == [SwapFile("/swapfile", 512)]
    assert "/var (UUID=5f6e3a1c-0d2b-4a8e-9c7f-112233445566) merged into /" in result.notes


def test_fstab_by_uuid_and_idempotent() -> None:
    target = dataclasses.replace(SEED, root_spec=f"UUID={INFO.root_uuid}")
    first = new_text(fstab.plan(lenny(), INFO, target).edits, "/etc/fstab")
    assert f"UUID={INFO.root_uuid} / ext3 errors=remount-ro 0 1\n" in first
    again = fstab.plan(lenny(**{"/etc/fstab": first}), INFO, target)
    assert again.edits == [] and again.actions == []


def test_fstab_root_on_xfs_gets_plain_options() -> None:
    files = lenny(**{"/etc/fstab": "/dev/sda1 / xfs noatime,logbufs=8 0 1\n"})
    text = new_text(fstab.plan(files, INFO, SEED).edits, "/etc/fstab")
    assert text == "/dev/vda1 / ext3 errors=remount-ro 0 1\n"


def test_fstab_lvm_and_md_are_merged() -> None:
    files = lenny(**{"/etc/fstab": "/dev/md0 / ext3 defaults 0 1\n"
                                   "/dev/vg0/srv /srv ext3 defaults 0 2\n"
                                   "/dev/mapper/vg0-data /data xfs defaults 0 2\n"})
    text = new_text(fstab.plan(files, INFO, SEED).edits, "/etc/fstab")
    assert text.splitlines() == [
        "/dev/vda1 / ext3 defaults 0 1",
        "# p2vimage: merged into /: /dev/vg0/srv /srv ext3 defaults 0 2",
        "# p2vimage: merged into /: /dev/mapper/vg0-data /data xfs defaults 0 2"]


def test_grub_legacy_seed_edits_exactly() -> None:
    result = grub_legacy.plan(lenny(), INFO, SEED)
    menu = new_text(result.edits, "/boot/grub/menu.lst")
    assert menu == data("lenny-menu.lst.expected")
    for line in ("# kopt=root=/dev/vda1 ro", "default\t\t0", "# groot=(hd0,0)"):
        assert line in menu.splitlines()
    assert new_text(result.edits, "/boot/grub/device.map") == "(hd0)\t/dev/vda\n"
    again = grub_legacy.plan(lenny(**{"/boot/grub/menu.lst": menu,
                                      "/boot/grub/device.map": "(hd0)\t/dev/vda\n"}),
                             INFO, SEED)
    assert again.edits == []


def test_grub_legacy_adds_console_arguments_once() -> None:
    target = dataclasses.replace(SEED, kernel_args=CONSOLE)
    menu = new_text(grub_legacy.plan(lenny(), INFO, target).edits, "/boot/grub/menu.lst")
    assert "# kopt=root=/dev/vda1 ro console=tty0 console=ttyS0,115200" in menu.splitlines()
    assert ("kernel\t\t/boot/vmlinuz-2.6.26-2-686 root=/dev/vda1 ro quiet console=tty0 "
            "console=ttyS0,115200") in menu.splitlines()


def test_add_args_replaces_in_place() -> None:
    assert add_args("root=/dev/sda1 ro console=ttyS0,9600", ("root=/dev/vda1",
                    "console=ttyS0,115200", "console=tty0")) == \
        "root=/dev/vda1 ro console=ttyS0,115200 console=tty0"


def test_extlinux_config_and_actions() -> None:
    info = dataclasses.replace(INFO, mbr_code=bytes(440), bootable=False)
    target = dataclasses.replace(SEED, root_spec="UUID=abc", kernel_args=(*CONSOLE,),
                                 mbr_bin=b"\xfa" * 440)
    result = extlinux.plan(lenny(), info, target)
    assert new_text(result.edits, "/boot/extlinux/extlinux.conf") == (
        "# Written by p2vimage convert: boots the newest kernel with a serial console.\n"
        "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 20\n\nLABEL linux\n"
        "  MENU LABEL debian 5.0, kernel 2.6.26-2-vserver-686-bigmem\n"
        "  KERNEL /boot/vmlinuz-2.6.26-2-vserver-686-bigmem\n"
        "  APPEND initrd=/boot/initrd.img-2.6.26-2-vserver-686-bigmem root=UUID=abc ro "
        "console=tty0 console=ttyS0,115200\n")
    assert result.actions == [ExtlinuxInstall("/boot/extlinux"), WriteMbr(), SetBootable()]
    done = dataclasses.replace(info, mbr_code=b"\xfa" * 440, bootable=True,
                               root_boot_sector=b"\xeb\x58\x90SYSLINUX" + bytes(500))
    conf = new_text(result.edits, "/boot/extlinux/extlinux.conf")
    installed = lenny(**{"/boot/extlinux/extlinux.conf": conf,
                         "/boot/extlinux/ldlinux.sys": b"x", "/boot/extlinux/ldlinux.c32": b"x"})
    again = extlinux.plan(installed, done, target)
    assert again.edits == [] and again.actions == []
    # the files without an installed boot record (copied from a converted host): install
    copied = extlinux.plan(installed, dataclasses.replace(done, root_boot_sector=bytes(512)),
                           target)
    assert copied.actions == [ExtlinuxInstall("/boot/extlinux")]


def test_grub2_defaults() -> None:
    target = Target(root_spec="UUID=abc", bootloader=Loader.GRUB2,
                    kernel_args=(*CONSOLE, "net.ifnames=0"))
    files = DictFiles({"/etc/default/grub": data("bookworm-default-grub")})
    grub2_guest = dataclasses.replace(RECORD, bootloader=Bootloader.GRUB2)
    info = dataclasses.replace(INFO, record=grub2_guest, mbr_code=b"\xeb\x63GRUB" + bytes(433))
    result = grub2.plan(files, info, target)
    text = new_text(result.edits, "/etc/default/grub")
    assert text == data("bookworm-default-grub").replace(
        'GRUB_CMDLINE_LINUX=""',
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 net.ifnames=0"') + (
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"\n'
        'GRUB_DISABLE_OS_PROBER="true"\n')
    assert result.actions == [Grub2Install()]
    done = DictFiles({"/etc/default/grub": text, "/boot/grub/grub.cfg": "menuentry\n"})
    again = grub2.plan(done, info, target)
    assert again.edits == [] and again.actions == []


def test_grub2_by_device_disables_uuid() -> None:
    target = Target(root_spec="/dev/vda1", bootloader=Loader.GRUB2, kernel_args=CONSOLE)
    text = grub2.rewrite_defaults(data("bookworm-default-grub"), target)
    assert 'GRUB_DISABLE_LINUX_UUID="true"' in text.splitlines()


def test_network_rules_removed_generator_masked() -> None:
    result = network.plan(lenny(**{"/etc/network/interfaces":
                                   "auto eth0\niface eth0 inet static\n  address 192.0.2.5\n"
                                   "  hwaddress ether 00:1a:64:5c:2e:10\n"}), INFO, SEED)
    assert [(e.path, e.new, e.symlink) for e in result.edits] == [
        ("/etc/udev/rules.d/70-persistent-net.rules", None, None),
        ("/etc/udev/rules.d/75-persistent-net-generator.rules", None, "/dev/null")]
    assert any("hwaddress ether 00:1a:64:5c:2e:10" in n for n in result.notes)


def test_nic_names_from_every_config_format() -> None:
    files = DictFiles({
        "/etc/network/interfaces": "auto lo\niface lo inet loopback\niface eth0 inet dhcp\n",
        "/etc/sysconfig/network-scripts/ifcfg-eth1": "DEVICE=eth1\nHWADDR=00:11:22:33:44:55\n",
        "/etc/netplan/50.yaml": "network:\n  ethernets:\n    ens3:\n      dhcp4: true\n",
        "/etc/systemd/network/10.network": "[Match]\nName=eth2\n"})
    assert netconf.nic_names(files) == ["eth0", "eth1", "ens3", "eth2"]
    assert network.mac_bound(files) == [
        "/etc/sysconfig/network-scripts/ifcfg-eth1: HWADDR=00:11:22:33:44:55"]


def test_console_sysvinit_inittab() -> None:
    result = console.plan(lenny(), INFO, SEED)
    assert new_text(result.edits, "/etc/inittab") == data("lenny-inittab") + (
        "T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100\n")
    done = lenny(**{"/etc/inittab": new_text(result.edits, "/etc/inittab")})
    assert console.plan(done, INFO, SEED).edits == []


def test_console_systemd_and_securetty() -> None:
    info = dataclasses.replace(INFO, record=dataclasses.replace(RECORD, init=InitSystem.SYSTEMD))
    files = DictFiles({"/lib/systemd/system/serial-getty@.service": "[Unit]\n",
                       "/etc/securetty": "console\ntty1\n"})
    result = console.plan(files, info, SEED)
    assert [(e.path, e.symlink) for e in result.edits] == [
        ("/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
         "/lib/systemd/system/serial-getty@.service"), ("/etc/securetty", None)]
    assert new_text(result.edits, "/etc/securetty") == "console\ntty1\nttyS0\n"


def test_hardware_services_reported_and_disabled() -> None:
    files = DictFiles({"/etc/init.d/mdadm": "#!/bin/sh\n", "/etc/init.d/util-vserver": "#!",
                       "/etc/rc2.d/S25mdadm": ("symlink", "../init.d/mdadm"),
                       "/etc/rcS.d/S10mdadm": ("symlink", "../init.d/mdadm"),
                       "/lib/systemd/system/smartd.service": "[Unit]\n"})
    report = hardware.plan(files, INFO, SEED)
    assert report.edits == []
    assert any(n.startswith("mdadm: /etc/init.d/mdadm") for n in report.notes)
    assert any("vserver kernel 2.6.26-2-vserver-686-bigmem" in n for n in report.notes)
    off = hardware.plan(files, INFO, dataclasses.replace(SEED, disable_hardware=True))
    assert sorted((e.path, e.symlink) for e in off.edits) == [
        ("/etc/rc2.d/K25mdadm", "../init.d/mdadm"), ("/etc/rc2.d/S25mdadm", None),
        ("/etc/rcS.d/K10mdadm", "../init.d/mdadm"), ("/etc/rcS.d/S10mdadm", None),
        ("/etc/systemd/system/smartd.service", "/dev/null")]


def missing(modules: dict[str, tuple[str, ...]]) -> Inspection:
    return dataclasses.replace(INFO, record=dataclasses.replace(RECORD, missing_virtio=modules))


def test_initramfs_adds_missing_modules_for_initramfs_tools() -> None:
    info = missing({"2.6.26-2-686": ("virtio_blk",), "2.6.18-6-686": ()})
    files = DictFiles({"/usr/sbin/update-initramfs": "#!/bin/sh\n",
                       "/etc/initramfs-tools/modules": "# List of modules\nloop\n"})
    result = initramfs.plan(files, info, SEED)
    assert new_text(result.edits, "/etc/initramfs-tools/modules") == (
        "# List of modules\nloop\nvirtio_blk\nvirtio_net\nvirtio_pci\n")
    assert result.actions == [InitramfsRebuild("update-initramfs", ("2.6.26-2-686",))]
    nothing = initramfs.plan(files, missing({}), SEED)
    assert nothing.edits == [] and nothing.actions == []


def test_initramfs_dracut() -> None:
    info = missing({"3.10.0": ("virtio_pci", "virtio_blk")})
    files = DictFiles({"/usr/bin/dracut": "#!/bin/sh\n"})
    result = initramfs.plan(files, info, SEED)
    assert new_text(result.edits, "/etc/dracut.conf.d/90-p2vimage-virtio.conf") == (
        'add_drivers+=" virtio_blk virtio_net virtio_pci "\n')
    assert result.actions == [InitramfsRebuild("dracut", ("3.10.0",))]


ACTIONS = (SwapFile("/swapfile", 512), InitramfsRebuild("dracut", ("3.10.0", "4.18.0")),
           Grub2Install(), ExtlinuxInstall("/boot/extlinux"), WriteMbr(), SetBootable())


def test_actions_keep_their_report_names_and_details() -> None:
    """convert's report shows these details and keys its timings by these names."""
    assert [(a.name, a.detail) for a in ACTIONS] == [
        ("swapfile", "create a 512 MiB swap file /swapfile"),
        ("initramfs-rebuild", "rebuild with dracut for 3.10.0, 4.18.0"),
        ("grub2-install", "grub-install /dev/sda and grub-mkconfig with the guest's own "
                          "binaries"),
        ("extlinux-install", "install extlinux into /boot/extlinux"),
        ("mbr", "write syslinux mbr.bin to the MBR"),
        ("bootflag", "mark partition 1 bootable")]


class Appliance:
    """Records what an action asks of the appliance (answers every question with '')."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def __getattr__(self, name: str) -> object:
        return lambda *args: self.calls.append((name, *args)) or ""


def test_each_action_kind_runs_its_own_appliance_calls() -> None:
    from p2vimage.convert.stage import _run_action

    target = Target(root_spec="UUID=abc", bootloader=Loader.EXTLINUX, kernel_args=(),
                    mbr_bin=b"M" * 440)
    calls = []
    for action in ACTIONS:
        guest = Appliance()
        _run_action(guest, action, target)
        calls.append(guest.calls)
    assert calls == [
        [("swapfile", "/swapfile", 512)],
        [("command", ["dracut", "-f", "/boot/initramfs-3.10.0.img", "3.10.0"]),
         ("command", ["dracut", "-f", "/boot/initramfs-4.18.0.img", "4.18.0"])],
        [("is_file", "/usr/sbin/grub2-install"),
         ("command", ["grub-probe", "--target=disk", "/"]),
         ("command", ["grub-probe", "--target=device", "/"]),
         ("command", ["grub-install", ""]),
         ("command", ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])],
        [("install_extlinux", "/boot/extlinux")],
        [("write_mbr", b"M" * 440)],
        [("set_bootable",)]]
