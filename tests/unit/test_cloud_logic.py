"""The cloud verbs' logic without a cloud: requests they build, plans they print, errors they
map, trimming and sparse writing on real files, the hashing stream, guest properties."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2vimage.cloud import cinder, cleanup, connect, glance, neutron, nova
from p2vimage.cloud import upload as up
from p2vimage.cloud import writevolume as blockdev
from p2vimage.core.errors import InputError, PreconditionError, StageError
from p2vimage.guest.facts import elf_arch
from p2vimage.guest.record import from_tree
from tests.conftest import P2VIMAGE, REPO, assert_one_line_error, p2v

MiB = 1 << 20


def _boot_opts(**kw: object) -> nova.BootOptions:
    base: dict[str, object] = dict(cloud="c", volume="v", flavor="f", key=None, az=None,
                                   network="none", security_groups=(), name=None, host=None,
                                   run="R1")
    base.update(kw)
    return nova.BootOptions(**base)  # type: ignore[arg-type]


def test_server_request_boots_from_the_volume_and_keeps_it() -> None:
    req = nova.server_request(_boot_opts(key="k", az="az2", security_groups=("web",)),
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
    req = nova.server_request(_boot_opts(name="srv"), "VOL", "F", None, "h")
    assert req["networks"] == "none"
    assert req["name"] == "srv"
    assert "security_groups" not in req and "key_name" not in req
    assert "availability_zone" not in req


def test_security_groups_need_a_network() -> None:
    with pytest.raises(InputError, match="security groups need a network"):
        nova.boot(_boot_opts(security_groups=("web",), dry_run=True))


def test_volume_request_and_size() -> None:
    opts = cinder.VolumeOptions(cloud="c", image="img", az="az2", size_gb=None, name=None,
                               host=None, run="R2", volume_type="fast")
    req = cinder.volume_request(opts, "IMG", 3, "legacy1")
    assert req == {"name": "p2vimage-legacy1-R2", "size": 3, "image_id": "IMG",
                   "metadata": {"p2vimage:host": "legacy1", "p2vimage:run": "R2"},
                   "description": "p2vimage: legacy1, run R2", "availability_zone": "az2",
                   "volume_type": "fast"}
    assert cinder.size_for(300 * MiB, 640 * MiB, None) == 1
    assert cinder.size_for(300 * MiB, (4 << 30) + 1, None) == 5
    assert cinder.size_for(300 * MiB, None, 10) == 10
    with pytest.raises(InputError, match="smaller than the image"):
        cinder.size_for(300 * MiB, 5 << 30, 2)


def test_upload_plan_lists_every_call() -> None:
    opts = glance.UploadOptions(image=Path("/x/legacy1.img"), cloud="c", name="legacy1",
                               host="legacy1", run="R3")
    calls = [c.api for c in glance.upload_plan(opts, {"os_distro": "debian"})]
    assert calls == ["local.trim", "local.run", "image.create_image", "image.upload",
                     "image.wait_for_status", "image.get_image", "image.patch"]
    create = glance.upload_plan(opts, {"os_distro": "debian"})[2].args
    assert create["tags"] == ["p2vimage:host=legacy1", "p2vimage:run=R3"]
    assert create["os_distro"] == "debian" and create["container_format"] == "bare"
    imported = glance.UploadOptions(image=Path("/x/a.img"), cloud="c", name="a", host="a",
                                   run="R", use_import=True, trim=False, disk_format="raw",
                                   compression="none")
    plan = glance.upload_plan(imported, {})
    assert [c.api for c in plan] == [
        "image.create_image", "image.stage_image", "image.import_image",
        "image.wait_for_status", "image.get_image", "image.patch"]
    # a failed import puts the image back to queued: waiting for active would never end
    assert plan[3].args["failures"] == ["killed", "deleted", "queued"]
    assert set(plan[-1].args["add"]) == {"owner_specified.openstack.md5",
                                         "owner_specified.openstack.sha256",
                                         "owner_specified.openstack.object"}


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
    assert reader.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert reader.sha512.hexdigest() == hashlib.sha512(data).hexdigest()


def _elf(machine: int, bits: int = 1) -> bytes:
    return b"\x7fELF" + bytes([bits, 1, 1]) + bytes(9) + b"\x02\x00" + \
        machine.to_bytes(2, "little") + bytes(40)


def test_elf_arch() -> None:
    assert elf_arch(_elf(3)) == "i686"
    assert elf_arch(_elf(62, 2)) == "x86_64"
    assert elf_arch(b"#!/bin/sh\n") is None
    assert elf_arch(None) is None


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
    lenny = from_tree(_tree(tmp_path / "lenny", None, "2.6.26-2-686", 3))
    assert lenny.glance_properties() == {
        "hw_disk_bus": "virtio", "hw_vif_model": "virtio", "os_distro": "debian",
        "os_version": "5", "architecture": "i686", "hw_machine_type": "pc"}
    bookworm = from_tree(_tree(
        tmp_path / "bookworm", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
        'VERSION_ID="12"\n', "6.1.0-13-amd64", 62))
    assert bookworm.glance_properties() == {
        "hw_disk_bus": "virtio", "hw_vif_model": "virtio", "os_distro": "debian",
        "os_version": "12", "architecture": "x86_64"}


def test_translate_maps_sdk_errors_to_exit_codes() -> None:
    ksa, sdk = connect.ksa_exc, connect.sdk_exc
    assert isinstance(connect.translate(ksa.Unauthorized(), "x", "c"), PreconditionError)
    assert isinstance(connect.translate(ksa.ConnectFailure("refused"), "x", "c"),
                      PreconditionError)
    http = sdk.HttpException("big")
    http.status_code = 413
    too_big = connect.translate(http, "uploading", "c")
    assert isinstance(too_big, PreconditionError) and "HTTP 413" in too_big.message
    assert isinstance(connect.translate(sdk.ResourceFailure("error"), "x", "c"), StageError)
    missing = connect.translate(ksa.MissingRequiredOptions([]), "x", "c")
    assert isinstance(missing, InputError)
    err = connect.translate(RuntimeError("boom"), "doing it", "c")
    assert isinstance(err, StageError) and "doing it" in err.message


def test_connect_needs_a_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in [v for v in os.environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    with pytest.raises(InputError, match="no cloud given"):
        connect.connect(None)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"other": {"auth": {"auth_url": "http://x"}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    with pytest.raises(InputError, match="cloud 'mine' is not defined"):
        connect.connect("mine")


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A loopback port that records every connection made to it (and closes it)."""
    sock = socket.create_server(("127.0.0.1", 0))
    accepted: list[object] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = sock.accept()
                accepted.append(peer)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1], accepted
    sock.close()


CLOUDS = """clouds:
  c1:
    auth:
      auth_url: http://127.0.0.1:{port}/v3
      username: u
      password: not-the-password
      project_name: p
      user_domain_name: Default
      project_domain_name: Default
"""
BROKEN = "clouds:\n  c1:\n    auth:\n\tauth_url: http://x\n"  # a tab on line 4


@dataclasses.dataclass(frozen=True)
class Config:
    """Where the cloud settings are, and what every verb's dry run says about them."""

    name: str
    files: dict[str, str]  # path under tmp → text ({port} filled in)
    env: dict[str, str]  # {tmp} and {port} filled in
    cloud: str | None
    code: int
    words: tuple[str, ...] = ()  # in the error line ({tmp} filled in)


CFG = {"OS_CLIENT_CONFIG_FILE": "{tmp}/cfg/clouds.yaml"}
CONFIGS = [
    Config("defined", {"cfg/clouds.yaml": CLOUDS}, CFG, "c1", 0),
    Config("undefined", {"cfg/clouds.yaml": CLOUDS}, CFG, "nosuch", 2,
           ("cloud 'nosuch' is not defined in {tmp}/cfg/clouds.yaml",)),
    Config("unparsable", {"cfg/clouds.yaml": BROKEN}, CFG, "c1", 2,
           ("cannot parse {tmp}/cfg/clouds.yaml at line 4",)),
    Config("no cloud", {}, {}, None, 2, ("no cloud given",)),
]
# where openstacksdk's loader looks, in its order (one verb: they share the reading)
SEARCH = [
    Config("unparsable ./clouds.yaml", {"cwd/clouds.yaml": BROKEN}, {}, "c1", 2,
           ("cannot parse {tmp}/cwd/clouds.yaml at line 4",)),
    Config("unparsable ~/.config/openstack/clouds.yaml",
           {"home/.config/openstack/clouds.yaml": BROKEN}, {}, "c1", 2,
           ("cannot parse {tmp}/home/.config/openstack/clouds.yaml at line 4",)),
    Config("OS_CLIENT_CONFIG_FILE before a broken ./clouds.yaml",
           {"cfg/clouds.yaml": CLOUDS, "cwd/clouds.yaml": BROKEN}, CFG, "c1", 0),
    Config("~/.config/openstack/clouds.yaml",
           {"home/.config/openstack/clouds.yaml": CLOUDS}, {}, "c1", 0),
    Config("OS_CLIENT_CONFIG_FILE names no file",
           {"home/.config/openstack/clouds.yaml": CLOUDS}, CFG, "c1", 2,
           ("OS_CLIENT_CONFIG_FILE names {tmp}/cfg/clouds.yaml, which does not exist",)),
    Config("OS_* variables", {}, {"OS_AUTH_URL": "http://127.0.0.1:{port}/v3",
                                  "OS_USERNAME": "u", "OS_PASSWORD": "p"}, None, 0),
]
VERBS = {
    "upload": ["upload", "{image}", "--name", "legacy1"],
    "volume": ["volume", "--image", "legacy1", "--az", "az2", "--run-id", "R9"],
    "boot": ["boot", "--volume", "v1", "--flavor", "m1", "--network", "none"],
    "cloud cleanup": ["cloud", "cleanup", "--source-host", "legacy1", "--run-id", "R9"],
}


@pytest.fixture(scope="module")
def ext_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    (tree / "etc").mkdir()
    (tree / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    image = tmp_path_factory.mktemp("img") / "legacy1.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, image, "8M"], check=True)
    return image


def _in(tmp: Path, config: Config, port: int, verb: str, image: Path,
        *extra: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from ``tmp``/cwd with ``tmp``/home as HOME and only ``config``'s OS_*."""
    for rel, text in config.files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text.replace("{port}", str(port)))
    (tmp / "cwd").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OS_") and k != "XDG_CONFIG_HOME"}
    env |= {k: v.format(tmp=tmp, port=port) for k, v in config.env.items()}
    env |= {"HOME": str(tmp / "home"), "PYTHONPATH": str(REPO)}
    argv = [a.format(image=image) for a in VERBS[verb]]
    argv += ["--os-cloud", config.cloud] if config.cloud else []
    return subprocess.run([*P2VIMAGE, *argv, *extra], capture_output=True, text=True,
                          cwd=tmp / "cwd", env=env, check=False)


@pytest.mark.parametrize(("config", "verb"), [
    *(pytest.param(c, verb, id=f"{verb}-{c.name}") for verb in VERBS for c in CONFIGS),
    *(pytest.param(c, "volume", id=f"volume-{c.name}") for c in SEARCH)])
def test_dry_runs_check_the_cloud_settings_and_never_connect(
        tmp_path: Path, listener: tuple[int, list[object]], ext_image: Path, config: Config,
        verb: str) -> None:
    """Every verb's dry run reads the cloud's settings as the run does, refuses what the run
    refuses with the same line, and opens no connection."""
    port, accepted = listener
    dry = _in(tmp_path, config, port, verb, ext_image, "--dry-run")
    words = [w.format(tmp=tmp_path) for w in config.words]
    if config.code:
        assert_one_line_error(dry, config.code, *words)
        real = _in(tmp_path, config, port, verb, ext_image)
        assert_one_line_error(real, config.code, *words)
        assert real.stderr.splitlines()[-1] == dry.stderr.splitlines()[-1]
    else:
        assert dry.returncode == 0, dry.stderr
        assert "would call: " in dry.stdout
        if verb == "cloud cleanup":
            assert "p2vimage:host=legacy1, p2vimage:run=R9" in dry.stdout
    assert accepted == []


def test_dry_run_plans(tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(CLOUDS.replace("{port}", "9"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    proc = p2v("volume", "--image", "legacy1", "--az", "az2", "--os-cloud", "c1",
               "--run-id", "R9", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "would call: block_storage.create_volume(" in proc.stdout
    assert "availability_zone='az2'" in proc.stdout
    proc = p2v("--json", "boot", "--volume", "v1", "--flavor", "m1", "--network", "none",
               "--os-cloud", "c1", "--run-id", "R9", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(proc.stdout)["calls"]
    assert any("'delete_on_termination': False" in c and "'boot_index': 0" in c
               for c in calls)
    proc = p2v("boot", "--volume", "v1", "--flavor", "m1", "--network", "none",
               "--security-group", "web", "--dry-run", env=env)
    assert_one_line_error(proc, 2, "security groups need a network")
    assert [c.api for c in cleanup.cleanup_plan("h", None)] == [
        "compute.servers", "compute.delete_server", "network.ports", "network.delete_port",
        "block_storage.volumes", "block_storage.delete_volume", "image.images",
        "image.delete_image"]
    assert cleanup.cleanup_plan("h", "R1")[2].args == {
        "tags": "p2vimage:host=h,p2vimage:run=R1"}


@pytest.mark.parametrize(("content", "options", "words"), [
    (None, ("--dry-run",), ("does not exist",)),
    (None, ("--disk-format", "raw", "--compression", "zstd"),
     ("raw upload cannot be compressed",)),
    (b"QFI\xfb" + bytes(1020), ("--dry-run",), ("qcow2 image, not a raw one",)),
    (b"KDMV" + bytes(1020), ("--dry-run",), ("vmdk image, not a raw one",)),
], ids=["missing", "raw compressed", "qcow2", "vmdk"])
def test_upload_refuses_what_it_cannot_send(tmp_path: Path, content: bytes | None,
                                           options: tuple[str, ...],
                                           words: tuple[str, ...]) -> None:
    image = tmp_path / "x.img"
    if content is not None:
        image.write_bytes(content)
    assert_one_line_error(p2v("upload", image, "--name", "x", *options), 2, *words)


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


# -- the openstack CLI's dialect: regions, aliases, properties, tags, zones, ports ----------

REGIONS = CLOUDS.replace("{port}", "9") + "    regions: [RegionOne, RegionTwo]\n"


@pytest.fixture
def regions_env(tmp_path: Path) -> dict[str, str]:
    """Only a clouds.yaml whose cloud c1 has two regions (no OS_* settings besides)."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(REGIONS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return env | {"OS_CLIENT_CONFIG_FILE": str(clouds), "OS_CLOUD": "c1"}


def _dry(env: dict[str, str], *args: str | os.PathLike[str]) -> dict[str, Any]:
    proc = p2v("--json", *args, "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_every_cloud_verb_takes_the_region(regions_env: dict[str, str],
                                           ext_image: Path) -> None:
    """--os-region-name, else $OS_REGION_NAME (which openstacksdk's loader ignores for a
    named cloud), else the cloud's first region; a region the cloud lacks is refused."""
    verbs = [["upload", ext_image, "--name", "x"], ["volume", "--image", "x"],
             ["boot", "--volume", "v", "--flavor", "f", "--network", "none"],
             ["cloud", "cleanup", "--source-host", "x"]]
    for verb in verbs:
        assert _dry(regions_env, *verb)["region"] == "RegionOne", verb
        assert _dry(regions_env, *verb, "--os-region-name", "RegionTwo")["region"] == \
            "RegionTwo", verb
        assert _dry(regions_env | {"OS_REGION_NAME": "RegionTwo"}, *verb)["region"] == \
            "RegionTwo", verb
        assert_one_line_error(p2v(*verb, "--os-region-name", "RegionNine", "--dry-run",
                                  env=regions_env), 2, "has no region 'RegionNine'",
                              "--os-region-name")


def test_connections_retry_with_openstacksdks_own_settings(tmp_path: Path,
                                                           regions_env: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    for key, value in regions_env.items():
        monkeypatch.setenv(key, value)
    _, settings = connect.cloud_region("c1")
    assert settings.get_connect_retries("compute") == 4
    assert settings.get_status_code_retries("network") == 4
    assert settings.get_status_code_retries("image") == 5  # openstacksdk's own default
    clouds = tmp_path / "own.yaml"
    clouds.write_text(REGIONS + "    connect_retries: 1\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    assert connect.cloud_region("c1")[1].get_connect_retries("compute") == 1  # the cloud's


def test_openstack_cli_option_names(regions_env: dict[str, str]) -> None:
    calls = "\n".join(_dry(regions_env, "volume", "--image", "x", "--availability-zone",
                           "az2", "--type", "fast")["calls"])
    assert "availability_zone='az2'" in calls and "volume_type='fast'" in calls
    calls = "\n".join(_dry(regions_env, "boot", "--volume", "v", "--flavor", "f",
                           "--network", "none", "--key-name", "ops", "--availability-zone",
                           "nova:node7")["calls"])
    assert "key_name='ops'" in calls and "availability_zone='nova:node7'" in calls
    assert "compute.availability_zones()" in calls  # the zone part is checked


def test_zone_host_and_node_forms() -> None:
    for az in ("nova", "nova:node7", "nova:node7:node7.example", "nova::node7.example"):
        assert nova.zone_of(az) == "nova"
    for az in (":node7", "nova:", "nova::", "nova:a:b:c", ""):
        with pytest.raises(InputError, match="is not ZONE, ZONE:HOST"):
            nova.zone_of(az)


def test_properties_and_tags(regions_env: dict[str, str], ext_image: Path) -> None:
    assert glance.user_properties(("hw_vif_model=e1000", "note=a=b", " k = v")) == {
        "hw_vif_model": "e1000", "note": "a=b", "k": " v"}
    opts = glance.UploadOptions(image=ext_image, cloud="c", name="n", host="h", run="R",
                                properties=("hw_vif_model=e1000",), tags=("legacy", "legacy",
                                                                          "wave3"))
    props = {"hw_vif_model": "virtio", **glance.user_properties(opts.properties)}
    attrs = glance.image_attrs(opts, props)
    assert attrs["hw_vif_model"] == "e1000"  # the operator's value over the guest's
    assert attrs["tags"] == ["p2vimage:host=h", "p2vimage:run=R", "legacy", "wave3"]
    for bad, words in (("novalue", "is not KEY=VALUE"), ("=x", "is not KEY=VALUE"),
                       ("name=x", "Glance's own attributes"),
                       ("disk_format=raw", "Glance's own attributes"),
                       ("os_glance_import_task=1", "set by Glance or by upload"),
                       ("owner_specified.openstack.md5=0", "set by Glance or by upload")):
        assert_one_line_error(p2v("upload", ext_image, "--name", "x", "--property", bad,
                                  "--dry-run", env=regions_env), 2, *words)
    for bad, words in (("", "empty"), ("p2vimage:host=other", "p2vimage's own marks")):
        assert_one_line_error(p2v("upload", ext_image, "--name", "x", "--tag", bad,
                                  "--dry-run", env=regions_env), 2, *words)
    report = _dry(regions_env, "upload", ext_image, "--name", "x", "--property",
                  "hw_qemu_guest_agent=yes", "--tag", "legacy", "--run-id", "R1")
    create = next(c for c in report["calls"] if c.startswith("image.create_image("))
    assert "hw_qemu_guest_agent='yes'" in create
    assert "tags=['p2vimage:host=legacy1', 'p2vimage:run=R1', 'legacy']" in create


def test_owner_specified_properties_are_openstacksdks(tmp_path: Path) -> None:
    """The keys and values openstacksdk's create_image sets and compares, for the hashes the
    upload stream computes."""
    from openstack import utils
    from openstack.image.v2._proxy import Proxy

    path = tmp_path / "blob.qcow2"
    path.write_bytes(os.urandom(2 * MiB + 5))
    with up.HashingReader(path) as reader:
        while reader.read(8192):
            pass
    props = glance.owner_props("legacy1", reader.md5.hexdigest(), reader.sha256.hexdigest())
    md5, sha256 = utils._get_file_hashes(str(path))
    assert props == {Proxy._IMAGE_MD5_KEY: md5, Proxy._IMAGE_SHA256_KEY: sha256,
                     Proxy._IMAGE_OBJECT_KEY: "images/legacy1"}
    assert utils._hashes_up_to_date(md5, sha256, props[Proxy._IMAGE_MD5_KEY],
                                    props[Proxy._IMAGE_SHA256_KEY])


def test_source_host_and_the_deprecated_host(regions_env: dict[str, str]) -> None:
    calls = _dry(regions_env, "volume", "--image", "x", "--source-host", "web1",
                 "--run-id", "R1")["calls"]
    assert any("name='p2vimage-web1-R1'" in c for c in calls)
    old = p2v("--json", "volume", "--image", "x", "--host", "web1", "--run-id", "R1",
              "--dry-run", env=regions_env)
    assert old.returncode == 0 and "--host is deprecated, use --source-host" in old.stderr
    assert any("name='p2vimage-web1-R1'" in c for c in json.loads(old.stdout)["calls"])
    assert_one_line_error(p2v("volume", "--image", "x", "--host", "a", "--source-host", "b",
                              "--dry-run", env=regions_env), 2, "differ")
    # boot: the openstack CLI's --host is a compute host; never take it for the mark
    assert_one_line_error(p2v("boot", "--volume", "v", "--flavor", "f", "--network", "none",
                              "--host", "compute7", "--dry-run", env=regions_env), 2,
                          "boot takes no --host", "--availability-zone ZONE:HOST")
    assert_one_line_error(p2v("cloud", "cleanup", "--dry-run", env=regions_env), 2,
                          "--source-host")
    dry = _dry(regions_env, "cloud", "cleanup", "--host", "web1")
    assert dry["host"] == "web1"


BOOT = ("boot", "--volume", "v", "--flavor", "f", "--run-id", "R1", "--source-host", "web1")


def test_boot_plans_the_port_that_keeps_the_legacy_address(
        regions_env: dict[str, str]) -> None:
    calls = _dry(regions_env, *BOOT, "--network", "tenant", "--fixed-ip", "10.0.0.15",
                 "--subnet", "tenant-v4", "--allowed-address", "203.0.113.7",
                 "--allowed-address", "198.51.100.0/28", "--mac-address",
                 "52:54:00:AB:CD:EF", "--security-group", "web")["calls"]
    apis = [c.split("(")[0] for c in calls]
    assert apis.index("network.create_port") < apis.index("network.set_tags") < \
        apis.index("compute.create_server")
    port = calls[apis.index("network.create_port")]
    assert "fixed_ips=[{'ip_address': '10.0.0.15', 'subnet_id': '<id of tenant-v4>'}]" in port
    assert ("allowed_address_pairs=[{'ip_address': '203.0.113.7'}, "
            "{'ip_address': '198.51.100.0/28'}]") in port
    assert "mac_address='52:54:00:ab:cd:ef'" in port
    assert "security_groups=['<id of web>']" in port and "name='p2vimage-web1-R1'" in port
    assert "tags=['p2vimage:host=web1', 'p2vimage:run=R1']" in \
        calls[apis.index("network.set_tags")]
    server = calls[apis.index("compute.create_server")]
    assert "networks=[{'port': '<new port id>'}]" in server
    assert "security_groups" not in server  # they are the port's
    calls = _dry(regions_env, *BOOT, "--port", "legacy-port")["calls"]
    assert "network.find_port(name_or_id='legacy-port')" in calls
    assert not any(c.startswith("network.create_port") for c in calls)
    assert any("networks=[{'port': '<id of legacy-port>'}]" in c
               for c in calls)


@pytest.mark.parametrize(("args", "words"), [
    (("--network", "none", "--fixed-ip", "10.0.0.15"), ("needs a network",)),
    ((), ("no NIC given", "--port")),
    (("--port", "p", "--fixed-ip", "10.0.0.15"), ("existing port as it is",)),
    (("--port", "p", "--network", "n"), ("both name the NIC",)),
    (("--port", "p", "--security-group", "web"), ("does not apply to an existing --port",)),
    (("--network", "n", "--fixed-ip", "10.0.0.300"), ("is not an IP address",)),
    (("--network", "n", "--allowed-address", "203.0.113.7/24"),
     ("not an address or network", "203.0.113.0/24")),
    (("--network", "n", "--allowed-address", "nope"), ("not an address or network",)),
    (("--network", "n", "--mac-address", "01:00:5e:00:00:01"), ("not a unicast MAC",)),
    (("--network", "n", "--mac-address", "52:54:00:12:34"), ("not a unicast MAC",)),
    (("--network", "n", "--availability-zone", "nova:"), ("is not ZONE, ZONE:HOST",)),
], ids=["port without network", "no nic", "port and fixed ip", "port and network",
        "port and security group", "bad fixed ip", "host bits", "bad allowed", "multicast mac",
        "short mac", "zone without host"])
def test_boot_refuses_ports_that_cannot_be(regions_env: dict[str, str],
                                          args: tuple[str, ...], words: tuple[str, ...]) -> None:
    for dry in (("--dry-run",), ()):  # refused alike, before connecting
        assert_one_line_error(p2v(*BOOT, *args, *dry, env=regions_env), 2, *words)


def test_port_request_from_the_options() -> None:
    opts = neutron.PortOptions(fixed_ips=("10.0.0.15", "2001:db8::0015"),
                               allowed_addresses=("203.0.113.7",),
                               mac_address="52-54-00-12-34-56")
    assert neutron.port_request(opts, "NET", None, [], "web1", "R1") == {
        "network_id": "NET", "name": "p2vimage-web1-R1",
        "description": "p2vimage: web1, run R1",
        "fixed_ips": [{"ip_address": "10.0.0.15"}, {"ip_address": "2001:db8::15"}],
        "allowed_address_pairs": [{"ip_address": "203.0.113.7"}],
        "mac_address": "52:54:00:12:34:56"}
    only_subnet = neutron.PortOptions(subnet="tenant-v4")
    assert neutron.port_request(only_subnet, "NET", "SUB", ["SG"], "h", "R")["fixed_ips"] == [
        {"subnet_id": "SUB"}]
    assert nova.server_request(_boot_opts(network="n", security_groups=("web",)), "VOL", "F",
                               "NET", "h", "PORT")["networks"] == [{"port": "PORT"}]
