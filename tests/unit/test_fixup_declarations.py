"""Each fixup declares what it reads and writes (READS/WRITES next to its code): its plans,
run on real file texts of many kinds of guest, touch nothing undeclared; verify and refresh
derive their lists from those declarations."""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

import pytest

from p2vimage.build import verify
from p2vimage.convert import fixups
from p2vimage.convert.fixups.base import Inspection, Target
from p2vimage.guest import record
from p2vimage.guest.record import Bootloader, GuestRecord, InitSystem, Kernel
from tests.fakes import DictFiles

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


class Recording(DictFiles):
    """A DictFiles that remembers every path asked about."""

    def __init__(self, files: dict[str, bytes | str | tuple[str, str]]) -> None:
        super().__init__(files)
        self.asked: set[str] = set()

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        self.asked.add(path)
        return super().read_bytes(path, limit)

    def is_file(self, path: str) -> bool:
        self.asked.add(path)
        return super().is_file(path)

    def is_dir(self, path: str) -> bool:
        self.asked.add(path)
        return super().is_dir(path)

    def listdir(self, path: str) -> list[str]:
        self.asked.add(path)
        return super().listdir(path)

    def readlink(self, path: str) -> str | None:
        self.asked.add(path)
        return super().readlink(path)


def guests() -> dict[str, tuple[dict[str, str | bytes | tuple[str, str]], str]]:
    """Guest file sets of every kind the fixups handle, with their init system."""
    kernels = {"/boot/vmlinuz-2.6.26-2-686": b"k", "/boot/initrd.img-2.6.26-2-686": b"i"}
    lenny: dict[str, str | bytes | tuple[str, str]] = {
        **kernels, "/etc/fstab": (DATA / "lenny-fstab").read_text(),
        "/boot/grub/menu.lst": (DATA / "lenny-menu.lst").read_text(),
        "/boot/grub/device.map": "(hd0)\t/dev/sda\n",
        "/etc/inittab": (DATA / "lenny-inittab").read_text(), "/etc/securetty": "tty1\n",
        "/etc/udev/rules.d/70-persistent-net.rules":
            (DATA / "70-persistent-net.rules").read_text(),
        "/lib/udev/rules.d/75-persistent-net-generator.rules": "# generator\n",
        "/etc/network/interfaces": "auto eth0\niface eth0 inet static\n address 192.0.2.5\n"
                                   " hwaddress ether 00:16:3e:00:00:01\n",
        "/etc/init.d/mdadm": "#!/bin/sh\n", "/etc/rc2.d/S25mdadm": ("symlink", "../init.d/mdadm"),
        "/etc/init.d/util-vserver": "#!/bin/sh\n",
        "/etc/rcS.d/S10util-vserver": ("symlink", "../init.d/util-vserver"),
        "/usr/sbin/update-initramfs": b"#!/bin/sh\n", "/etc/initramfs-tools/modules": "# list\n",
    }
    bookworm: dict[str, str | bytes | tuple[str, str]] = {
        **kernels, "/etc/fstab": "UUID=1 / ext4 defaults 0 1\nUUID=2 /home ext4 defaults 0 2\n",
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX=""\n',
        "/lib/systemd/system/serial-getty@.service": "[Unit]\n",
        "/lib/systemd/system/smartd.service": "[Unit]\n",
        "/etc/systemd/network/10-eth.network": "[Match]\nName=eno1\n",
        "/etc/netplan/01.yaml": "network:\n  ethernets:\n    enp3s0:\n      dhcp4: true\n",
    }
    centos: dict[str, str | bytes | tuple[str, str]] = {
        **kernels, "/etc/fstab": "/dev/VolGroup00/root / ext3 defaults 1 1\n",
        "/etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nHWADDR=00:16:3e:00:00:02\n",
        "/sbin/mkinitrd": b"#!/bin/sh\n", "/etc/sysconfig/kernel": "INITRD_MODULES=\"\"\n",
        "/etc/init/tty1.conf": "start on runlevel\n", "/etc/securetty": "tty1\n",
    }
    dracut: dict[str, str | bytes | tuple[str, str]] = {
        **kernels, "/etc/fstab": "/dev/sda1 / ext4 defaults 1 1\n", "/usr/bin/dracut": b"x",
    }
    return {"lenny": (lenny, "sysvinit"), "bookworm": (bookworm, "systemd"),
            "centos-upstart": (centos, "upstart"), "dracut": (dracut, "systemd")}


TARGETS = {
    "extlinux": Target(root_spec="/dev/vda1", bootloader="extlinux",
                       kernel_args=("console=ttyS0,115200", "net.ifnames=0"), swap_file_mib=256,
                       disable_hardware=True, mbr_bin=b"MBR"),
    "grub2": Target(root_spec="UUID=6b5af12e", bootloader="grub2",
                    kernel_args=("console=ttyS0,115200",), disable_hardware=True),
}


def _info(init: str) -> Inspection:
    kernel = Kernel("2.6.26-2-686", "/boot/vmlinuz-2.6.26-2-686", "/boot/initrd.img-2.6.26-2-686")
    guest = GuestRecord(
        distro="debian", version="5", product="Debian 5.0.10", arch="i686",
        init=InitSystem(init), kernels=(kernel,), bootloader=Bootloader.GRUB_LEGACY,
        grub_version=None, syslinux_version=None, e2fsprogs_version=None, nics=("eth0",),
        interfaces=(), predictable_names=True,
        missing_virtio={kernel.version: ("virtio_blk", "virtio_pci")})
    return Inspection(guest, root_uuid="6b5af12e", fstype="ext3")


def _declared(path: str, patterns: tuple[str, ...]) -> bool:
    rel = path.strip("/")
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns) or fixups.holds(rel, patterns)


@pytest.mark.parametrize("guest", sorted(guests()))
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_plans_touch_only_what_they_declare(guest: str, target: str) -> None:
    files, init = guests()[guest]
    info = _info(init)
    wrote_anything = False
    for fixup in fixups.ALL:
        view = Recording(files)
        result = fixup.plan(view, info, TARGETS[target])
        for edit in result.edits:
            wrote_anything = True
            assert _declared(edit.path, fixup.WRITES), (fixup.__name__, "writes", edit.path)
        allowed = (*fixup.READS, *fixup.WRITES, *record.READS)
        for path in view.asked:
            assert _declared(path, allowed), (fixup.__name__, "reads", path)
    assert wrote_anything


def test_a_new_fixup_write_shows_up_in_verify_and_refresh() -> None:
    """verify's expected rewrites and refresh's triggers are derived, not a second list."""
    assert verify.rewritten("/etc/securetty") and verify.rewritten("/etc/init/ttyS0.conf")
    assert verify.rewritten("/etc/sysconfig/kernel") and verify.rewritten("/boot/grub2/grub.cfg")
    assert verify.rewritten("/etc/systemd/system/smartd.service")
    assert verify.rewritten("/etc/rc2.d/K25mdadm") and not verify.rewritten("/etc/rc2.d/K25x")
    assert not verify.rewritten("/etc/passwd")
    assert verify.holds_rewrites("/etc/rc2.d") and verify.holds_rewrites("/")
    assert not verify.holds_rewrites("/srv")
    assert fixups.watched("etc/network/interfaces") and fixups.watched("boot/vmlinuz-6.1.0-9")
    assert not fixups.watched("srv/www/index.html")


def test_readme_table_is_the_declarations() -> None:
    """README's table of the paths convert may rewrite is made from WRITES."""
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- convert-writes -->")
    end = text.index("<!-- /convert-writes -->")
    rows = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("fixup", "---"):
            rows[cells[0]] = cells[1]
    want = {f.__name__.rsplit(".", 1)[1]: ", ".join(f"`{p}`" for p in f.WRITES)
            for f in fixups.ALL}
    assert rows == want


def test_declarations_are_relative_globs() -> None:
    for fixup in (*fixups.ALL, record):
        for pattern in (*fixup.READS, *getattr(fixup, "WRITES", ())):
            assert pattern and not pattern.startswith("/"), (fixup.__name__, pattern)
    assert dataclasses.is_dataclass(Target)
