"""One record of the guest: the same rules whatever shows its files (a tree, an image through
debugfs), kept in the image's state while it describes the image, and what sync records."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from p2vimage.disk.e2fs import E2fsFiles
from p2vimage.guest import record
from p2vimage.guest.facts import elf_arch
from p2vimage.guest.files import LocalFiles, Resolved
from p2vimage.guest.record import Bootloader, GuestRecord, InitSystem
from tests.conftest import needs_root, p2v
from tests.fakes import DictFiles

NEW, OLD = "6.1.0-9-amd64", "5.10.0-8-amd64"
# longer than the 60 bytes an inode holds: a "slow" symlink, its target in a data block
LONG_DIR = "a-directory-whose-name-is-long-enough-to-make-this-a-slow-symlink"
DPKG = "".join(f"Package: {name}\nStatus: install ok installed\nVersion: {version}\n\n"
               for name, version in (("grub-pc", "2.06-13"), ("grub-common", "2.06-13"),
                                     ("udev", "252.17-1"), ("e2fsprogs", "1.47.0-2")))


def _initrd(path: Path, modules: list[str]) -> None:
    """A real gzip'd newc cpio initrd holding ``modules``."""
    work = path.parent / f".{path.name}.d"
    for module in modules:
        ko = work / f"usr/lib/modules/{NEW}/kernel/drivers" / f"{module}.ko"
        ko.parent.mkdir(parents=True, exist_ok=True)
        ko.write_bytes(b"\x7fELF module")
    names = subprocess.run(["find", "."], cwd=work, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=work, input=names,
                             capture_output=True, check=True).stdout
    path.write_bytes(subprocess.run(["gzip", "-9n"], input=archive, capture_output=True,
                                    check=True).stdout)
    shutil.rmtree(work)


def guest_tree(root: Path) -> Path:
    """A merged-/usr guest: /bin, /sbin and /lib are symlinks into /usr, /bin/sh reaches dash
    through a slow symlink, init is systemd, one kernel's initrd has virtio_blk."""
    for d in ("usr/bin", "usr/sbin", "usr/lib/systemd", f"usr/lib/modules/{NEW}", "boot",
              "etc/network", "var/lib/dpkg", f"usr/share/{LONG_DIR}"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib"):
        (root / name).symlink_to(f"usr/{name}")
    shutil.copy("/bin/dash", root / "usr/bin/dash")
    (root / "usr/bin/sh").symlink_to(f"../share/{LONG_DIR}/../../bin/dash")
    (root / "usr/lib/systemd/systemd").write_bytes(b"\x7fELF systemd")
    (root / "usr/lib/systemd/systemd-udevd").write_bytes(b"\x7fELF udevd")
    (root / "usr/sbin/init").symlink_to("../lib/systemd/systemd")
    (root / "usr/lib/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/debian_version").write_text("12.5\n")
    (root / "var/lib/dpkg/status").write_text(DPKG)
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n"
        "  address 192.0.2.10/24\n  gateway 192.0.2.1\n\niface eth1 inet dhcp\n")
    for version in (NEW, OLD):
        (root / f"boot/vmlinuz-{version}").write_bytes(b"kernel " + version.encode())
    _initrd(root / f"boot/initrd.img-{NEW}", ["virtio_blk"])
    (root / f"usr/lib/modules/{NEW}/modules.builtin").write_text(
        "kernel/drivers/virtio/virtio_pci.ko\n")
    (root / f"boot/config-{OLD}").write_text("CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\n")
    (root / "boot/grub").mkdir()
    (root / "boot/grub/grub.cfg").write_text("set default=0\n")
    return root


@needs_root
def test_a_tree_and_the_image_built_from_it_give_one_record(tmp_path: Path) -> None:
    tree = guest_tree(tmp_path / "tree")
    image = tmp_path / "guest.img"
    proc = p2v("build", tree, "-o", image)
    assert proc.returncode == 0, proc.stderr
    local = LocalFiles(tree)
    in_tree = record.read(local, record.copied_listing(local))
    debugfs = E2fsFiles(image)
    in_image = record.read(debugfs, record.copied_listing(debugfs))
    assert in_image == in_tree
    # and it is the right record, not two equally empty ones
    assert (in_tree.distro, in_tree.version, in_tree.init, in_tree.bootloader) == (
        "debian", "12", InitSystem.SYSTEMD, Bootloader.GRUB2)
    assert in_tree.arch == elf_arch(Path("/bin/dash").read_bytes()[:64]) and in_tree.arch
    assert [(k.version, k.initrd) for k in in_tree.kernels] == [
        (OLD, None), (NEW, f"/boot/initrd.img-{NEW}")]
    assert in_tree.missing_virtio == {OLD: ("virtio_blk", "virtio_net"), NEW: ("virtio_net",)}
    assert in_tree.nics == ("eth0", "eth1") and in_tree.predictable_names
    assert [(i.name, i.method, i.address) for i in in_tree.interfaces] == [
        ("eth0", "static", "192.0.2.10"), ("eth1", "dhcp", None)]
    assert in_tree.e2fsprogs_version == (1, 47, 0) and in_tree.grub_version == (2, 6)


@needs_root
def test_build_keeps_the_record_while_it_describes_the_image(tmp_path: Path) -> None:
    tree = guest_tree(tmp_path / "tree")
    image = tmp_path / "guest.img"
    report = json.loads(p2v("--json", "build", tree, "-o", image, check=True).stdout)
    assert report["guest"]["bootloader"] == "grub2" and report["guest"]["init"] == "systemd"
    state = json.loads(image.with_name("guest.img.state.json").read_text())
    assert state["guest"]["bootloader"] == "grub2"  # the strings, not enum reprs
    kept = record.stored(image)
    assert kept is not None and kept == record.from_tree(tree)
    os.utime(image)  # the image changed after the record was kept: read it again
    assert record.stored(image) is None
    assert record.for_image(image) == kept


@needs_root
def test_sync_records_the_staging_trees_record(tmp_path: Path) -> None:
    tree = guest_tree(tmp_path / "source")
    staging = tmp_path / "staging"
    proc = p2v("sync", tree, staging)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads((tmp_path / "staging.sync/source.json").read_text())
    assert facts["bootloader"] == "grub2"
    assert GuestRecord.from_json(facts["guest"]) == record.from_tree(staging)
    assert "mounts" in facts and "rsync_version" in facts  # the remote probe stays


def test_json_round_trip(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-2.6.26-2-686").write_bytes(b"k")
    (tmp_path / "boot/grub").mkdir()
    (tmp_path / "boot/grub/menu.lst").write_text("default 0\n")
    guest = dataclasses.replace(record.from_tree(tmp_path),
                                missing_virtio={"2.6.26-2-686": ()})
    guest = GuestRecord.from_json(json.loads(json.dumps(guest.to_json())))
    assert guest.bootloader is Bootloader.GRUB_LEGACY and guest.missing_virtio == {
        "2.6.26-2-686": ()}
    assert GuestRecord.from_json(json.loads(json.dumps(guest.to_json()))) == guest
    with pytest.raises(ValueError):
        GuestRecord.from_json({**guest.to_json(), "format": 0})


def test_directory_symlinks_stay_inside_the_guest(tmp_path: Path) -> None:
    """/bin -> /usr/bin (absolute) must mean the guest's /usr/bin, never the host's."""
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("/usr/bin")
    i686_elf = b"\x7fELF\x01\x01\x01" + bytes(9) + b"\x02\x00\x03\x00" + bytes(40)
    (tmp_path / "usr/bin/sh").write_bytes(i686_elf)
    assert record.from_tree(tmp_path).arch == "i686"
    view = Resolved(DictFiles({"/bin": ("symlink", "usr/bin"),
                               "/usr/bin/sh": ("symlink", "dash"), "/usr/bin/dash": b"x",
                               "/loop": ("symlink", "loop")}))
    assert view.follow("/bin/sh") == "/usr/bin/dash"
    assert view.read_bytes("/bin/dash") == b"x" and view.readlink("/bin/sh") == "dash"
    assert view.follow("/loop/x") is None and not view.is_file("/loop/x")


def test_glance_properties_follow_the_record(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/redhat-release").write_text("CentOS release 5.11 (Final)\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-2.6.18-398.el5").write_bytes(b"k")
    assert record.from_tree(tmp_path).glance_properties() == {
        "hw_disk_bus": "virtio", "hw_vif_model": "virtio", "os_distro": "centos",
        "os_version": "5.11", "hw_machine_type": "pc"}
