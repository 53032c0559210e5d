"""The cloud verbs' logic without a cloud: requests they build, plans they print, errors they
map, trimming and sparse writing on real files, the hashing stream, guest properties."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

from p2vimage import blockdev, cloud
from p2vimage import upload as up
from p2vimage.errors import InputError, PreconditionError, StageError
from p2vimage.files import LocalFiles
from tests.conftest import assert_one_line_error, p2v

MiB = 1 << 20


def _boot_opts(**kw: object) -> cloud.BootOptions:
    base: dict[str, object] = dict(cloud="c", volume="v", flavor="f", key=None, az=None,
                                   network="none", security_groups=(), name=None, host=None,
                                   run="R1")
    base.update(kw)
    return cloud.BootOptions(**base)  # type: ignore[arg-type]


def test_server_request_boots_from_the_volume_and_keeps_it() -> None:
    req = cloud.server_request(_boot_opts(key="k", az="az2", security_groups=("web",)),
                               "VOL", "FLAVOR", "NET", "legacy1")
    assert req == {
        "name": "legacy1", "flavor_id": "FLAVOR",
        "block_device_mapping": [{"boot_index": 0, "uuid": "VOL", "source_type": "volume",
                                  "destination_type": "volume",
                                  "delete_on_termination": False}],
        "metadata": {"p2vimage:host": "legacy1", "p2vimage:run": "R1"},
        "networks": [{"uuid": "NET"}], "key_name": "k", "availability_zone": "az2",
        "security_groups": [{"name": "web"}]}


def test_server_request_without_network() -> None:
    req = cloud.server_request(_boot_opts(name="srv"), "VOL", "F", None, "h")
    assert req["networks"] == "none"
    assert req["name"] == "srv"
    assert "security_groups" not in req and "key_name" not in req
    assert "availability_zone" not in req


def test_security_groups_need_a_network() -> None:
    with pytest.raises(InputError, match="security groups need a network"):
        cloud.boot(_boot_opts(security_groups=("web",), dry_run=True))


def test_volume_request_and_size() -> None:
    opts = cloud.VolumeOptions(cloud="c", image="img", az="az2", size_gb=None, name=None,
                               host=None, run="R2", volume_type="fast")
    req = cloud.volume_request(opts, "IMG", 3, "legacy1")
    assert req == {"name": "p2vimage-legacy1-R2", "size": 3, "image_id": "IMG",
                   "metadata": {"p2vimage:host": "legacy1", "p2vimage:run": "R2"},
                   "description": "p2vimage: legacy1, run R2", "availability_zone": "az2",
                   "volume_type": "fast"}
    assert cloud.size_for(300 * MiB, 640 * MiB, None) == 1
    assert cloud.size_for(300 * MiB, (4 << 30) + 1, None) == 5
    assert cloud.size_for(300 * MiB, None, 10) == 10
    with pytest.raises(InputError, match="smaller than the image"):
        cloud.size_for(300 * MiB, 5 << 30, 2)


def test_upload_plan_lists_every_call() -> None:
    opts = cloud.UploadOptions(image=Path("/x/legacy1.img"), cloud="c", name="legacy1",
                               host="legacy1", run="R3")
    calls = [c.api for c in cloud.upload_plan(opts, {"os_distro": "debian"})]
    assert calls == ["local.trim", "local.run", "image.create_image", "image.upload",
                     "image.wait_for_status", "image.get_image"]
    create = cloud.upload_plan(opts, {"os_distro": "debian"})[2].args
    assert create["tags"] == ["p2vimage:host=legacy1", "p2vimage:run=R3"]
    assert create["os_distro"] == "debian" and create["container_format"] == "bare"
    imported = cloud.UploadOptions(image=Path("/x/a.img"), cloud="c", name="a", host="a",
                                   run="R", use_import=True, trim=False, disk_format="raw",
                                   compression="none")
    assert [c.api for c in cloud.upload_plan(imported, {})] == [
        "image.create_image", "image.stage_image", "image.import_image",
        "image.wait_for_status", "image.get_image"]


def test_qemu_img_argv_and_compression_checks() -> None:
    src, dst = Path("/a.img"), Path("/a.qcow2")
    assert up.qemu_img_argv(src, dst, "qcow2", "zstd") == [
        "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
        "compression_type=zstd", "/a.img", "/a.qcow2"]
    assert "-c" not in up.qemu_img_argv(src, dst, "qcow2", "none")
    assert "compression_type=zlib" in up.qemu_img_argv(src, dst, "qcow2", "zlib")
    with pytest.raises(InputError, match="raw upload cannot be compressed"):
        up.check_compression("raw", "zstd")
    with pytest.raises(InputError, match="unknown compression"):
        up.check_compression("qcow2", "lz4")


DUMPE2FS = """Filesystem volume name:   root
Block size:               4096
Group 0: (Blocks 0-32767)
  Free blocks: 4470-4471, 11366, 11460
  Free inodes: 12-20
Group 1: (Blocks 32768-65535)
  Free blocks:
Group 2: (Blocks 65536-98303)
  Free blocks: 70000-98303
"""


def test_free_ranges_from_dumpe2fs() -> None:
    assert up.free_ranges(DUMPE2FS) == (4096, [(4470, 4471), (11366, 11366),
                                               (11460, 11460), (70000, 98303)])
    with pytest.raises(StageError):
        up.free_ranges("nothing useful")


def test_trim_punches_free_blocks_and_keeps_files(tmp_path: Path) -> None:
    """A filesystem made over random bytes: its free blocks hold garbage until trimmed."""
    tree = tmp_path / "tree"
    tree.mkdir()
    payload = os.urandom(3 * MiB)
    (tree / "data.bin").write_bytes(payload)
    image = tmp_path / "fs.img"
    image.write_bytes(os.urandom(48 * MiB))
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", tree, image],
                   check=True)
    before = image.stat().st_blocks * 512
    result = up.trim(image)
    assert result["allocated_before"] == before
    assert result["allocated_after"] < 12 * MiB < before  # 3 MiB data + metadata remain
    fsck = subprocess.run(["e2fsck", "-fn", image], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout
    dump = subprocess.run(["debugfs", "-R", "cat /data.bin", image], capture_output=True,
                          check=True)
    assert dump.stdout == payload


def test_hashing_reader_sends_everything_in_large_blocks(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * MiB + 123)
    path.write_bytes(data)
    with up.HashingReader(path) as reader:
        assert len(reader) == len(data)
        first = reader.read(8192)  # what http.client asks for
        assert len(first) == up.CHUNK
        rest = b"".join(iter(lambda: reader.read(8192), b""))
        assert reader.complete
    assert first + rest == data
    assert reader.md5.hexdigest() == hashlib.md5(data).hexdigest()
    assert reader.sha512.hexdigest() == hashlib.sha512(data).hexdigest()


def _elf(machine: int, bits: int = 1) -> bytes:
    return b"\x7fELF" + bytes([bits, 1, 1]) + bytes(9) + b"\x02\x00" + \
        machine.to_bytes(2, "little") + bytes(40)


def test_elf_arch() -> None:
    assert up.elf_arch(_elf(3)) == "i686"
    assert up.elf_arch(_elf(62, 2)) == "x86_64"
    assert up.elf_arch(b"#!/bin/sh\n") is None
    assert up.elf_arch(None) is None


def _tree(root: Path, os_release: str | None, kernel: str, machine: int) -> Path:
    for d in ("etc", "bin", "boot"):
        (root / d).mkdir(parents=True)
    if os_release is not None:
        (root / "etc/os-release").write_text(os_release)
    (root / "etc/debian_version").write_text("5.0.10\n")
    (root / "bin/bash").write_bytes(_elf(machine))
    (root / "bin/sh").symlink_to("bash")
    (root / f"boot/vmlinuz-{kernel}").write_bytes(b"kernel")
    return root


def test_guest_properties_of_a_legacy_and_a_modern_guest(tmp_path: Path) -> None:
    lenny = up.guest_props(LocalFiles(_tree(tmp_path / "lenny", None, "2.6.26-2-686", 3)))
    assert lenny.properties() == {
        "hw_disk_bus": "virtio", "hw_vif_model": "virtio", "os_distro": "debian",
        "os_version": "5", "architecture": "i686", "hw_machine_type": "pc"}
    bookworm = up.guest_props(LocalFiles(_tree(
        tmp_path / "bookworm", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
        'VERSION_ID="12"\n', "6.1.0-13-amd64", 62)))
    assert bookworm.properties() == {
        "hw_disk_bus": "virtio", "hw_vif_model": "virtio", "os_distro": "debian",
        "os_version": "12", "architecture": "x86_64"}


def test_translate_maps_sdk_errors_to_exit_codes() -> None:
    ksa, sdk = cloud.ksa_exc, cloud.sdk_exc
    assert isinstance(cloud.translate(ksa.Unauthorized(), "x", "c"), PreconditionError)
    assert isinstance(cloud.translate(ksa.ConnectFailure("refused"), "x", "c"),
                      PreconditionError)
    http = sdk.HttpException("big")
    http.status_code = 413
    too_big = cloud.translate(http, "uploading", "c")
    assert isinstance(too_big, PreconditionError) and "HTTP 413" in too_big.message
    assert isinstance(cloud.translate(sdk.ResourceFailure("error"), "x", "c"), StageError)
    missing = cloud.translate(ksa.MissingRequiredOptions([]), "x", "c")
    assert isinstance(missing, InputError)
    err = cloud.translate(RuntimeError("boom"), "doing it", "c")
    assert isinstance(err, StageError) and "doing it" in err.message


def test_connect_needs_a_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in [v for v in os.environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    with pytest.raises(InputError, match="no cloud given"):
        cloud.connect(None)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"other": {"auth": {"auth_url": "http://x"}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    with pytest.raises(InputError, match="cloud 'mine' is not defined"):
        cloud.connect("mine")


def test_dry_runs_print_calls_and_touch_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    proc = p2v("volume", "--image", "legacy1", "--az", "az2", "--os-cloud", "nowhere",
               "--run-id", "R9", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "would call: block_storage.create_volume(" in proc.stdout
    assert "availability_zone='az2'" in proc.stdout
    proc = p2v("--json", "boot", "--volume", "v1", "--flavor", "m1", "--network", "none",
               "--run-id", "R9", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(proc.stdout)["calls"]
    assert any("'delete_on_termination': False" in c and "'boot_index': 0" in c
               for c in calls)
    proc = p2v("boot", "--volume", "v1", "--flavor", "m1", "--network", "none",
               "--security-group", "web", "--dry-run", env=env)
    assert_one_line_error(proc, 2, "security groups need a network")


def test_upload_refuses_a_missing_image_in_one_line(tmp_path: Path) -> None:
    proc = p2v("upload", tmp_path / "none.img", "--name", "x", "--dry-run")
    assert_one_line_error(proc, 2, "does not exist")
    proc = p2v("upload", tmp_path / "none.img", "--name", "x", "--disk-format", "raw",
               "--compression", "zstd")
    assert_one_line_error(proc, 2, "raw upload cannot be compressed")


def _sparse_image(path: Path) -> bytes:
    """A 24 MiB raw file: data at 0 and 10 MiB, a zero-filled MiB at 5 MiB, holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(24 * MiB)
        f.write(os.urandom(MiB + 17))
        f.seek(5 * MiB)
        f.write(bytes(MiB))
        f.seek(10 * MiB)
        f.write(os.urandom(2 * MiB))
    return path.read_bytes()


def test_plan_skips_holes_and_zero_blocks(tmp_path: Path) -> None:
    image = tmp_path / "a.img"
    _sparse_image(image)
    fd = os.open(image, os.O_RDONLY)
    try:
        writes, zeros = blockdev.plan(fd, image.stat().st_size)
    finally:
        os.close(fd)
    data = sum(e - s for s, e in writes)
    assert 3 * MiB <= data <= 4 * MiB  # what a filesystem rounds the data to, not 24 MiB
    assert all(s < e for s, e in writes + zeros)
    covered = sorted(writes + zeros)
    assert covered[0][0] == 0 and covered[-1][1] == 24 * MiB
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert not any(s <= 5 * MiB < e for s, e in writes)  # the zero-filled MiB is not sent


def test_write_volume_to_a_file_replaces_old_data(tmp_path: Path) -> None:
    image = tmp_path / "a.img"
    want = _sparse_image(image)
    target = tmp_path / "volume"
    target.write_bytes(os.urandom(30 * MiB))  # old data everywhere
    report = blockdev.write_volume(image, target, force=True)
    assert report["verified"] and target.read_bytes() == want
    assert report["sha256"] == hashlib.sha256(want).hexdigest()
    assert target.stat().st_blocks * 512 < 8 * MiB  # holes stay holes


def test_write_volume_refusals(tmp_path: Path) -> None:
    qcow = tmp_path / "a.qcow2"
    qcow.write_bytes(b"QFI\xfb" + bytes(1020))
    with pytest.raises(InputError, match="qcow2"):
        blockdev.write_volume(qcow, tmp_path / "t")
    with pytest.raises(InputError, match="does not exist"):
        blockdev.write_volume(tmp_path / "none", tmp_path / "t")
    image = tmp_path / "a.img"
    _sparse_image(image)
    with pytest.raises(InputError, match="character device, not a block device"):
        blockdev.write_volume(image, Path("/dev/null"))
    proc = p2v("write-volume", image, tmp_path / "no/such/dir/t")
    assert_one_line_error(proc, 2, "does not exist")
