"""convert on real images with real libguestfs: read the result back, count appliance
launches, idempotence, verify lists only documented rewrites, bad input (slow: TCG)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2vimage.build import verify
from p2vimage.convert import fixups
from p2vimage.convert.stage import host_mbr_bin
from p2vimage.disk.e2fs import E2fsFiles
from p2vimage.disk.mbr import partitions
from p2vimage.guest import record
from tests.conftest import Converted, assert_one_line_error, launches, needs_root, p2v

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]


def convert(image: Path, wrapper: Path, *args: str) -> tuple[dict[str, object], int]:
    before = launches(wrapper)
    proc = p2v("--json", "convert", image, *args,
               env={**os.environ, "LIBGUESTFS_HV": str(wrapper)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, object] = json.loads(proc.stdout)
    return report, launches(wrapper) - before


def guestfish(image: Path, *commands: str) -> list[str]:
    """Run guestfish commands on the image (read-only); the output of each, in order."""
    argv = ["guestfish", "--ro", "-a", str(image), "-m", "/dev/sda1", "--"]
    for i, command in enumerate(commands):
        if i:
            argv.append(":")
        argv += [*command.split(), ":", "echo", "@@@"]
    env = {**os.environ, "LIBGUESTFS_BACKEND": "direct",
           "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    return out.split("@@@\n")[:len(commands)]


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(params=["bullseye-i386", "bookworm-amd64"])
def conv(request: pytest.FixtureRequest,
         converted: Callable[[str], Converted]) -> tuple[str, Path, Path, dict[str, Any], int]:
    c = converted(request.param)
    return c.name, c.tree, c.image, c.report, c.launches


def test_one_launch_and_the_result_reads_back(
        conv: tuple[str, Path, Path, dict[str, Any], int]) -> None:
    name, _, image, report, count = conv
    assert count == 1
    assert report["appliance_launches"] == 1 and report["changed"] is True
    guest = report["guest"]
    assert isinstance(guest, dict)
    uuid = guest["root_uuid"]
    with open(image, "rb") as f:
        sector0 = f.read(512)
    assert partitions(sector0)[0].bootable
    if name.startswith("bullseye"):
        assert (guest["init"], guest["bootloader"], guest["arch"]) == (
            "sysvinit", "grub-legacy", "i686")  # the ELF header of its shell, as Glance says
        fstab, conf, ldlinux, menu, devmap, inittab, rules = guestfish(
            image, "cat /etc/fstab", "cat /boot/extlinux/extlinux.conf",
            "is-file /boot/extlinux/ldlinux.sys", "cat /boot/grub/menu.lst",
            "cat /boot/grub/device.map", "cat /etc/inittab",
            "exists /etc/udev/rules.d/70-persistent-net.rules")
        assert sector0[:440] == host_mbr_bin()[:440].ljust(440, b"\0")
        assert f"APPEND initrd=/boot/initrd.img-5.10.0-32-686 root=UUID={uuid} ro " \
               "console=tty0 console=ttyS0,115200 net.ifnames=0" in conf
        assert ldlinux.strip() == "true"
        assert f"# kopt=root=UUID={uuid} ro" in menu and "# groot=(hd0,0)" in menu
        assert devmap.strip() == "(hd0)\t/dev/vda"
        assert "T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100" in inittab
        assert rules.strip() == "false"
        assert "# p2vimage: merged into /: /dev/sda2" in fstab
    else:
        assert (guest["init"], guest["bootloader"]) == ("systemd", "grub2")
        fstab, grubcfg, getty = guestfish(
            image, "cat /etc/fstab", "cat /boot/grub/grub.cfg",
            "readlink /etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service")
        assert b"GRUB" in sector0[:440]
        linux = next(line.split() for line in grubcfg.splitlines()
                     if line.strip().startswith("linux"))
        assert {f"root=UUID={uuid}", "ro", "console=tty0", "console=ttyS0,115200",
                "net.ifnames=0"} <= set(linux)
        assert "serial --speed=115200" in grubcfg
        assert getty.strip().endswith("/serial-getty@.service")
    assert f"UUID={uuid} / " in fstab
    assert all(not line.split()[0].startswith("/dev/sd") for line in fstab.splitlines()
               if line.strip() and not line.startswith("#"))


def test_the_appliance_reads_the_record_the_tree_gives(
        conv: tuple[str, Path, Path, dict[str, Any], int]) -> None:
    _, tree, image, report, _ = conv
    guest, in_tree = report["guest"], record.from_tree(tree)
    assert (guest["distro"], guest["version"], guest["arch"], guest["init"],
            guest["bootloader"], guest["nics"]) == (
        in_tree.distro, in_tree.version, in_tree.arch, in_tree.init, in_tree.bootloader,
        list(in_tree.nics))
    assert guest["kernels"] == [dataclasses.asdict(k) for k in in_tree.kernels]
    assert in_tree.distro == "debian" and in_tree.arch and in_tree.kernels
    # what convert kept describes the converted image as debugfs reads it now
    kept, view = record.stored(image), E2fsFiles(image)
    assert kept is not None and kept == record.read(view, record.copied_listing(view))


def test_second_convert_changes_nothing(
        conv: tuple[str, Path, Path, dict[str, Any], int], hv_wrapper: Path) -> None:
    _, _, image, _, _ = conv
    before, _ = verify.image_manifest(image)
    with open(image, "rb") as f:
        mbr_before = f.read(512)
    report, count = convert(image, hv_wrapper)
    assert count == 1
    assert report["changed"] is False
    after, _ = verify.image_manifest(image)
    assert {k: (v.sha256, v.link_target, v.mode) for k, v in after.items()} == \
        {k: (v.sha256, v.link_target, v.mode) for k, v in before.items()}
    with open(image, "rb") as f:
        assert f.read(512) == mbr_before
    human = p2v("convert", "--dry-run", image)
    assert "no changes: the image is already converted" in human.stdout


def test_verify_lists_only_documented_rewrites(
        conv: tuple[str, Path, Path, dict[str, Any], int]) -> None:
    _, tree, image, _, _ = conv
    proc = p2v("--json", "verify", tree, image)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, result["differences"][:10]
    rewritten = {d["path"] for d in result["expected_rewrites"]}
    assert "/etc/fstab" in rewritten
    assert_only_declared_writes(tree, image, rewritten)


def assert_only_declared_writes(tree: Path, image: Path, rewritten: set[str]) -> None:
    """Every path convert changed on this example is one a fixup declares it may write (or a
    directory holding such paths, whose mtime changed)."""
    for path in rewritten:
        assert fixups.rewritten(path) or fixups.holds_rewrites(path), path
    strict = json.loads(p2v("--json", "verify", "--strict", tree, image).stdout)
    differences = {d["path"] for d in strict["differences"]}
    assert differences == rewritten
    for d in strict["differences"]:
        assert fixups.rewritten(d["path"]) or (
            d["field"] in ("mtime", "presence") and fixups.holds_rewrites(d["path"])), d


def test_initrd_without_virtio_is_rebuilt(tmp_path: Path, hv_wrapper: Path) -> None:
    from p2vimage.demo.examples import ensure_fixture

    tree = ensure_fixture("bullseye-i386-novirtio")
    image = tmp_path / "novirtio.img"
    assert p2v("build", tree, "-o", image).returncode == 0
    report, count = convert(image, hv_wrapper)
    assert count == 1
    guest, initramfs = report["guest"], report["initramfs"]
    assert isinstance(guest, dict) and isinstance(initramfs, dict)
    assert guest["missing_virtio"] == {"5.10.0-32-686": ["virtio_pci", "virtio_blk",
                                                         "virtio_net"]}
    assert initramfs["method"] == "chroot" and initramfs["kernels"] == ["5.10.0-32-686"]
    local = tmp_path / "initrd"
    env = {**os.environ, "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    subprocess.run(["guestfish", "--ro", "-a", str(image), "-m", "/dev/sda1", "download",
                    "/boot/initrd.img-5.10.0-32-686", str(local)], check=True, env=env)
    listing = subprocess.run(["lsinitramfs", str(local)], capture_output=True, text=True,
                             check=True).stdout
    for module in ("virtio_blk.ko", "virtio_pci.ko", "virtio_net.ko"):
        assert module in listing
    kept = record.stored(image)  # the record kept says what the image has now
    assert kept is not None and kept.missing_virtio == {"5.10.0-32-686": ()}
    again, _ = convert(image, hv_wrapper)
    assert again["changed"] is False
    # the rebuild (in a chroot of the image) wrote only declared paths
    result = json.loads(p2v("--json", "verify", tree, image).stdout)
    assert result["differences"] == [], result["differences"][:10]
    assert_only_declared_writes(tree, image, {d["path"] for d in result["expected_rewrites"]})


# -- bad input: one clear line, exit code, image unchanged ----------------------------

def small_os(root: Path, kernel: bool = True, bootloader: bool = True) -> Path:
    for d in ("etc", "bin", "sbin", "usr/bin", "boot/grub", "lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text('NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="11"\n')
    (root / "etc/debian_version").write_text("11.0\n")
    (root / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    shutil.copy("/bin/true", root / "bin/sh")
    shutil.copy("/bin/true", root / "sbin/init")
    if kernel:
        (root / "boot/vmlinuz-5.10.0-32-686").write_bytes(b"not really a kernel")
    if bootloader:
        (root / "boot/grub/menu.lst").write_text("default 0\n")
    return root


def check_refused(image: Path, code: int, *words: str, args: tuple[str, ...] = ()) -> None:
    before = sha(image) if image.is_file() else None
    assert_one_line_error(p2v("convert", *args, image), code, *words)
    if before is not None:
        assert sha(image) == before


def test_bad_images_are_refused_before_launch(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    check_refused(text, 2, "not a disk image")
    qcow = tmp_path / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "64M"], check=True)
    check_refused(qcow, 2, "qcow2")
    check_refused(tmp_path / "missing.img", 2, "does not exist")
    image = tmp_path / "ro.img"
    assert p2v("build", small_os(tmp_path / "t"), "-o", image).returncode == 0
    image.chmod(0o444)
    check_refused(image, 2, "read-only", "--dry-run")


def test_image_locked_by_running_qemu(tmp_path: Path) -> None:
    image = tmp_path / "busy.img"
    assert p2v("build", small_os(tmp_path / "t"), "-o", image).returncode == 0
    vm = subprocess.Popen(["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none",
                           "-drive", f"file={image},format=raw,if=virtio"])
    try:
        time.sleep(1.0)
        assert vm.poll() is None
        check_refused(image, 3, "in use")
    finally:
        vm.kill()
        vm.wait()


def two_os_image(tmp_path: Path) -> Path:
    image = tmp_path / "two.img"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], check=True, text=True,
                   input="start=2048, size=256M, type=83\nstart=526336, type=83\n")
    for i, start in enumerate((2048, 526336)):
        tree = small_os(tmp_path / f"os{i}")
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={start * 512}",
                        "-d", str(tree), str(image), "200M"], check=True)
    return image


@pytest.mark.parametrize("case", ["no-os", "two-os", "no-kernel", "no-bootloader", "noise"])
def test_bad_images_found_by_inspection(tmp_path: Path, case: str) -> None:
    image = tmp_path / "x.img"
    if case == "two-os":
        image = two_os_image(tmp_path)
        check_refused(image, 2, "more than one operating system")
        return
    if case == "noise":
        with open(image, "wb") as f:
            f.write(os.urandom(4 << 20))
        check_refused(image, 2, "not a disk image")
        return
    tree = tmp_path / "t"
    if case == "no-os":
        (tree / "data").mkdir(parents=True)
        (tree / "data/file").write_text("just data\n")
    else:
        small_os(tree, kernel=case != "no-kernel", bootloader=case != "no-bootloader")
    assert p2v("build", tree, "-o", image).returncode == 0
    words = {"no-os": ("no operating system",), "no-kernel": ("no kernel",),
             "no-bootloader": ("no bootloader", "--bootloader extlinux")}[case]
    check_refused(image, 2, *words)
