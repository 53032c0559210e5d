"""The guest record read from files in a tree: kernels, bootloader, versions, release."""

from __future__ import annotations

from pathlib import Path

from p2vimage.guest.facts import parse_version
from p2vimage.guest.record import from_tree

DPKG_STATUS = """\
Package: e2fsprogs
Status: install ok installed
Version: 1.41.3-1

Package: grub
Status: install ok installed
Version: 0.97-47lenny2

Package: removed-thing
Status: deinstall ok config-files
Version: 1.0
"""


def make(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return root


def test_parse_version() -> None:
    assert parse_version("1.42.9-7+b1") == (1, 42, 9)
    assert parse_version("2.06-13+deb12u1") == (2, 6)
    assert parse_version("1:2.02~beta2-36") == (2, 2)
    assert parse_version("0.97-47lenny2") == (0, 97)
    assert parse_version("1.47.0~rc1") == (1, 47, 0)


def test_lenny_tree(tmp_path: Path) -> None:
    root = make(tmp_path, {
        "var/lib/dpkg/status": DPKG_STATUS,
        "boot/vmlinuz-2.6.26-2-vserver-686-bigmem": b"kernel",
        "boot/vmlinuz-2.6.18-6-686": b"kernel",
        "boot/initrd.img-2.6.26-2-vserver-686-bigmem": b"initrd",
        "boot/grub/menu.lst": "default 0\n",
        "etc/debian_version": "5.0.10\n",
    })
    facts = from_tree(root)
    assert [k.image for k in facts.kernels] == ["/boot/vmlinuz-2.6.18-6-686",
                                                "/boot/vmlinuz-2.6.26-2-vserver-686-bigmem"]
    assert [k.initrd for k in facts.kernels] == [
        None, "/boot/initrd.img-2.6.26-2-vserver-686-bigmem"]
    assert facts.oldest_kernel == (2, 6, 18)
    assert facts.bootloader == "grub-legacy"
    assert facts.e2fsprogs_version == (1, 41, 3)
    assert (facts.distro, facts.version, facts.product) == ("debian", "5", "Debian 5.0.10")


def test_e2fsprogs_from_binary_without_package_database(tmp_path: Path) -> None:
    root = make(tmp_path, {
        "sbin/e2fsck": b"\x7fELF...\0e2fsck\x001.41.12 (17-May-2010)\0more",
        "boot/vmlinuz-2.6.32-754.el6.x86_64": b"k",
        "boot/grub/grub.conf": "default=0\n",
        "boot/grub/menu.lst": "default=0\n",
        "etc/redhat-release": "CentOS release 6.10 (Final)\n",
    })
    facts = from_tree(root)
    assert facts.e2fsprogs_version == (1, 41, 12)
    assert facts.bootloader == "grub-legacy"
    assert [k.numbers for k in facts.kernels] == [(2, 6, 32)]
    assert (facts.distro, facts.version) == ("centos", "6.10")


def test_grub2_guest(tmp_path: Path) -> None:
    root = make(tmp_path, {
        "var/lib/dpkg/status": "Package: grub-pc\nStatus: install ok installed\n"
                               "Version: 2.06-13+deb12u1\n\nPackage: grub-common\n"
                               "Status: install ok installed\nVersion: 2.06-13+deb12u1\n",
        "boot/vmlinuz-6.1.0-56-amd64": b"k",
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
                          'VERSION_ID="12"\n',
    })
    facts = from_tree(root)
    assert facts.bootloader == "grub2"
    assert facts.grub_version == (2, 6)
    assert facts.product == "Debian GNU/Linux 12 (bookworm)"
    assert (facts.distro, facts.version) == ("debian", "12")
    assert facts.e2fsprogs_version is None


def test_empty_tree(tmp_path: Path) -> None:
    facts = from_tree(tmp_path)
    assert facts.kernels == ()
    assert facts.bootloader == "none"
    assert facts.oldest_kernel is None
