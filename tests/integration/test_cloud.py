"""upload / volume / boot / cleanup against the real services of tests/rig/openstack.py, and
write-volume into a real loop device.

The image is the bullseye i386 legacy fixture, built and converted once per session
(tests/conftest.py ``converted``), copied so that trimming it does not touch the shared one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    P2VIMAGE,
    REPO,
    Converted,
    assert_one_line_error,
    needs_root,
    p2v,
)
from tests.rig.openstack import PASSWORD, Rig

pytestmark = [pytest.mark.slow, pytest.mark.root, needs_root]
rig_test = pytest.mark.openstack
MiB = 1 << 20
HOST = "legacy1"


def _hashes(path: Path) -> tuple[str, str]:
    md5, sha512 = hashlib.md5(usedforsecurity=False), hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            md5.update(chunk)
            sha512.update(chunk)
    return md5.hexdigest(), sha512.hexdigest()


@pytest.fixture(scope="session")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 MiB raw ext4 image of a tiny Debian 12 tree: for what needs an image, not a guest
    (regions, imports, ports), and converts, uploads and clones in a moment."""
    tree = tmp_path_factory.mktemp("small-tree")
    (tree / "etc").mkdir()
    (tree / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (tree / "etc/motd").write_bytes(os.urandom(MiB))  # data a hash notices
    image = tmp_path_factory.mktemp("small") / "small.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, image, "24M"], check=True)
    return image


@pytest.fixture(scope="session")
def legacy_image(converted: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the converted bullseye i386 image, named after the host."""
    conv: Converted = converted("bullseye-i386")
    dest = tmp_path_factory.mktemp("cloud") / f"{HOST}.img"
    subprocess.run(["cp", "--sparse=always", conv.image, dest], check=True)
    return dest


def _cli(rig: Rig, *args: str | os.PathLike[str]) -> dict[str, Any]:
    proc = p2v("--json", *args, env=rig.env)
    assert proc.returncode == 0, f"{proc.stderr}\n{rig.tail(lines=15)}"
    return dict(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def uploaded(cloud_rig: Rig, legacy_image: Path) -> dict[str, Any]:
    return _cli(cloud_rig, "upload", legacy_image, "--os-cloud", "rig", "--name", HOST)


@pytest.fixture(scope="module")
def volume(cloud_rig: Rig, uploaded: dict[str, Any]) -> dict[str, Any]:
    return _cli(cloud_rig, "volume", "--image", uploaded["image_id"], "--az", "az2",
                "--os-cloud", "rig")


@pytest.fixture(scope="module")
def server(cloud_rig: Rig, volume: dict[str, Any]) -> dict[str, Any]:
    return _cli(cloud_rig, "boot", "--volume", volume["volume_id"], "--flavor", "m1.small",
                "--network", "none", "--az", "nova", "--os-cloud", "rig")


@rig_test
def test_upload_glance_hashes_equal_local_and_download_equals(
        cloud_rig: Rig, legacy_image: Path, uploaded: dict[str, Any], tmp_path: Path) -> None:
    assert uploaded["status"] == "active" and uploaded["hash_verified"]
    assert uploaded["disk_format"] == "qcow2" and uploaded["compression"] == "zstd"
    assert uploaded["bytes_sent"] == uploaded["file_size"]
    image = cloud_rig.api("GET", f"{cloud_rig.url('glance')}/v2/images/{uploaded['image_id']}")
    stored = cloud_rig.glance_file(uploaded["image_id"])
    assert image["checksum"] == uploaded["md5"] == _hashes(stored)[0]
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == uploaded["sha512"] == _hashes(stored)[1]
    assert image["size"] == uploaded["file_size"] == stored.stat().st_size
    for key, value in {"os_distro": "debian", "os_version": "11", "architecture": "i686",
                       "hw_disk_bus": "virtio", "hw_vif_model": "virtio",
                       "hw_machine_type": "pc"}.items():
        assert image[key] == value, key
    assert f"p2vimage:host={HOST}" in image["tags"]
    assert f"p2vimage:run={uploaded['run']}" in image["tags"]
    # what Glance serves is what was sent, and it is the (trimmed) raw image, block for block
    got = cloud_rig.download(f"{cloud_rig.url('glance')}/v2/images/{image['id']}/file",
                             tmp_path / "download.qcow2")
    assert _hashes(got) == (uploaded["md5"], uploaded["sha512"])
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", got,
                              legacy_image], capture_output=True, text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    # the upload sent the compressed image, far less than the raw image holds
    assert uploaded["bytes_sent"] < uploaded["raw_allocated"]


@rig_test
def test_volume_in_the_zone_is_byte_identical(cloud_rig: Rig, legacy_image: Path,
                                             volume: dict[str, Any]) -> None:
    assert volume["status"] == "available" and volume["bootable"]
    assert volume["availability_zone"] == "az2"
    record = cloud_rig.api("GET", f"{cloud_rig.url('cinder')}/v3/{cloud_rig.project_id}"
                                  f"/volumes/{volume['volume_id']}")["volume"]
    assert record["availability_zone"] == "az2" and record["bootable"] == "true"
    assert record["os-vol-host-attr:host"].startswith("rig@file-b")  # az2's backend
    assert record["metadata"]["p2vimage:host"] == HOST
    assert record["volume_image_metadata"]["image_id"] == volume["image_id"]
    backing = cloud_rig.volume_file(volume["volume_id"])
    size = legacy_image.stat().st_size
    assert backing.stat().st_size == volume["size_gb"] << 30 >= size
    with open(backing, "rb") as vol, open(legacy_image, "rb") as raw:
        pos = 0
        while pos < size:
            want = raw.read(4 * MiB)
            assert vol.read(len(want)) == want, f"differs in the MiB at {pos // MiB}"
            pos += len(want)
        rest = os.lseek(vol.fileno(), 0, os.SEEK_END) - size
        vol.seek(size)
        while rest > 0:
            block = vol.read(min(rest, 8 * MiB))
            assert block.count(0) == len(block), "data after the image"
            rest -= len(block)


@rig_test
def test_server_active_with_the_volume_mapped_as_root(cloud_rig: Rig, volume: dict[str, Any],
                                                      server: dict[str, Any]) -> None:
    """Nova's side only: the rig's compute driver is Nova's fake one, which boots nothing
    (the next test boots the volume's bytes)."""
    assert server["status"] == "ACTIVE"
    assert server["attached_volumes"] == [volume["volume_id"]]
    nova = cloud_rig.url("nova") + "/v2.1"
    body = cloud_rig.api("GET", f"{nova}/servers/{server['server_id']}",
                         headers={"OpenStack-API-Version": "compute 2.79"})["server"]
    assert body["status"] == "ACTIVE" and body["image"] == ""  # booted from a volume
    assert body["os-extended-volumes:volumes_attached"] == [
        {"id": volume["volume_id"], "delete_on_termination": False}]
    root = body["OS-EXT-SRV-ATTR:root_device_name"]
    assert body["metadata"] == {"p2vimage:host": HOST, "p2vimage:run": server["run"]}
    attachments = cloud_rig.api("GET", f"{nova}/servers/{server['server_id']}"
                                       "/os-volume_attachments")["volumeAttachments"]
    # the volume is the root disk: boot_index 0 (the fake driver names it sda, libvirt with
    # hw_disk_bus=virtio vda)
    assert [(a["volumeId"], a["device"]) for a in attachments] == [(volume["volume_id"], root)]


@rig_test
def test_the_servers_root_volume_boots(cloud_rig: Rig, volume: dict[str, Any],
                                       server: dict[str, Any], tmp_path: Path) -> None:
    """The bytes Cinder stored for the server's root volume (the file-backed driver's file)
    boot with smoke (an overlay: the volume is only read) and answer on the guest's own
    address with the fixture's page."""
    attachments = cloud_rig.api("GET", f"{cloud_rig.url('nova')}/v2.1/servers/"
                                       f"{server['server_id']}/os-volume_attachments")
    assert [a["volumeId"] for a in attachments["volumeAttachments"]] == [volume["volume_id"]]
    backing = cloud_rig.volume_file(volume["volume_id"])
    before = os.stat(backing)
    proc = p2v("--json", "smoke", backing, "--report-dir", tmp_path / "smoke",
               "--probe", "http:80:/:200:p2vimage fixture bullseye-i386 OK")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["verdict"] == "pass" and report["image"] == str(backing)
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [
        ("phase bootloader", True), ("phase kernel", True), ("phase login", True),
        ("probe tcp 22", True), ("probe http 80/", True)]
    after = os.stat(backing)
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_size, before.st_mtime_ns, before.st_ctime_ns)


@rig_test
def test_upload_with_import_checks_the_import(cloud_rig: Rig, small_image: Path) -> None:
    """The rig's RegionOne Glance converts what it imports to raw (its image_conversion
    plugin, as on a Ceph-backed cloud): a qcow2 import is checked against the raw image
    itself; a raw one is not converted and is checked against what was sent."""
    upload = ("upload", small_image, "--os-cloud", "rig", "--source-host", "import-test",
              "--use-import")
    qcow2 = _cli(cloud_rig, *upload, "--name", "imported")
    assert qcow2["status"] == "active" and qcow2["hash_verified"]
    assert qcow2["disk_format"] == "qcow2" and qcow2["converted_to"] == "raw"
    record = cloud_rig.api("GET", f"{cloud_rig.url('glance')}/v2/images/{qcow2['image_id']}")
    assert record["disk_format"] == "raw" and record["size"] == small_image.stat().st_size
    assert _hashes(cloud_rig.glance_file(qcow2["image_id"])) == _hashes(small_image)
    assert _hashes(small_image)[0] != qcow2["md5"]  # the md5 of the qcow2 that was sent
    assert record["owner_specified.openstack.md5"] == qcow2["md5"]
    raw = _cli(cloud_rig, *upload, "--name", "imported-raw", "--disk-format", "raw",
               "--compression", "none")
    assert raw["status"] == "active" and raw["hash_verified"] and raw["converted_to"] is None
    assert _hashes(cloud_rig.glance_file(raw["image_id"])) == (raw["md5"], raw["sha512"])
    _cli(cloud_rig, "cloud", "cleanup", "--source-host", "import-test", "--os-cloud", "rig")


@rig_test
def test_the_sdk_sees_the_upload_as_its_own(cloud_rig: Rig, uploaded: dict[str, Any],
                                            tmp_path: Path) -> None:
    """openstacksdk's create_image, given the same file, finds the image up to date by its
    owner_specified.openstack hashes and uploads nothing (Ansible's openstack.cloud.image
    goes through it)."""
    import openstack.config
    import openstack.connection

    got = cloud_rig.download(f"{cloud_rig.url('glance')}/v2/images/{uploaded['image_id']}"
                             "/file", tmp_path / "sent.qcow2")
    record = cloud_rig.api("GET", f"{cloud_rig.url('glance')}/v2/images/"
                                  f"{uploaded['image_id']}")
    assert record["owner_specified.openstack.md5"] == uploaded["md5"] == _hashes(got)[0]
    sha256 = hashlib.sha256()
    with open(got, "rb") as f:
        while chunk := f.read(4 * MiB):
            sha256.update(chunk)
    assert record["owner_specified.openstack.sha256"] == uploaded["sha256"] == \
        sha256.hexdigest()
    assert record["owner_specified.openstack.object"] == f"images/{HOST}"
    config = openstack.config.OpenStackConfig(config_files=[str(cloud_rig.clouds_yaml)],
                                              load_envvars=False)
    conn = openstack.connection.Connection(config=config.get_one("rig"))
    image = conn.image.create_image(HOST, filename=str(got), disk_format="qcow2",
                                    container_format="bare", validate_checksum=True,
                                    wait=True, timeout=300)
    assert image.id == uploaded["image_id"]
    assert [i["id"] for i in _images(cloud_rig, HOST)] == [uploaded["image_id"]]


@rig_test
def test_regions(cloud_rig: Rig, small_image: Path) -> None:
    """rig-regions lists RegionOne then RegionTwo: --os-region-name and $OS_REGION_NAME pick
    RegionTwo's Glance; cleanup there skips the services RegionTwo lacks."""
    argv = ("upload", small_image, "--os-cloud", "rig-regions", "--source-host",
            "region-test")
    two = _cli(cloud_rig, *argv, "--name", "region-2", "--os-region-name", "RegionTwo")
    proc = p2v("--json", *argv, "--name", "region-env",
               env={**cloud_rig.env, "OS_REGION_NAME": "RegionTwo"})
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)
    one = _cli(cloud_rig, *argv, "--name", "region-1")
    assert (two["region"], env["region"], one["region"]) == ("RegionTwo", "RegionTwo",
                                                             "RegionOne")
    assert [i["id"] for i in _images(cloud_rig, "region-2", "glance2")] == [two["image_id"]]
    assert [i["id"] for i in _images(cloud_rig, "region-env", "glance2")] == [env["image_id"]]
    assert _images(cloud_rig, "region-2") == []
    assert _images(cloud_rig, "region-1", "glance2") == []
    done = _cli(cloud_rig, "cloud", "cleanup", "--source-host", "region-test", "--os-cloud",
                "rig-regions", "--os-region-name", "RegionTwo")
    assert sorted(i["id"] for i in done["found"]["images"]) == sorted(
        [two["image_id"], env["image_id"]])
    assert sorted(done["skipped_services"]) == ["ports", "servers", "volumes"]
    assert _images(cloud_rig, "region-2", "glance2") == []
    _cli(cloud_rig, "cloud", "cleanup", "--source-host", "region-test", "--os-cloud", "rig")


def _images(rig: Rig, name: str, glance: str = "glance") -> list[dict[str, Any]]:
    return list(rig.api("GET", f"{rig.url(glance)}/v2/images?name={name}")["images"])


@rig_test
def test_glance_killed_mid_upload(cloud_rig: Rig, legacy_image: Path) -> None:
    """Glance's worker dies while the image streams in: one line, the partial image deleted,
    and the same command succeeds (uWSGI has started a new worker)."""
    name = f"killed-{uuid.uuid4().hex[:6]}"
    argv = ["upload", legacy_image, "--os-cloud", "rig", "--name", name, "--source-host",
            "kill-test", "--disk-format", "raw", "--no-trim"]
    store = cloud_rig.top / "glance/images"
    before = set(store.iterdir())
    proc = subprocess.Popen([*P2VIMAGE, *map(str, argv)], env=cloud_rig.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        growing = [p for p in set(store.iterdir()) - before if p.stat().st_size > 8 * MiB]
        if growing:
            assert cloud_rig.kill_glance_worker() >= 1
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line_error(result, 1, "connection to the image service", "broke",
                          "the partial image was deleted")
    assert _images(cloud_rig, name) == []
    again = _cli(cloud_rig, *argv)
    assert again["status"] == "active" and again["hash_verified"]
    assert [i["id"] for i in _images(cloud_rig, name)] == [again["image_id"]]
    _cli(cloud_rig, "cloud", "cleanup", "--source-host", "kill-test", "--os-cloud", "rig")


@rig_test
def test_errors_are_one_line_each(cloud_rig: Rig, legacy_image: Path,
                                  uploaded: dict[str, Any]) -> None:
    def fails(code: int, *args: str | os.PathLike[str], words: tuple[str, ...]) -> None:
        assert_one_line_error(p2v(*args, env=cloud_rig.env), code, *words)

    image = uploaded["image_id"]
    fails(2, "volume", "--image", image, "--os-cloud", "nosuch",
          words=("cloud 'nosuch' is not defined",))
    fails(3, "volume", "--image", image, "--os-cloud", "rig-badpass",
          words=("refused the credentials",))
    # --debug shows tracebacks and every request, never a password or a token
    for cloud_name in ("rig-badpass", "rig"):
        proc = p2v("--debug", "volume", "--image", "no-such-image", "--os-cloud", cloud_name,
                   env=cloud_rig.env)
        assert proc.returncode != 0 and "Traceback" in proc.stderr
        shown = proc.stdout + proc.stderr
        assert PASSWORD not in shown and "not-the-password" not in shown
        assert "gAAAAA" not in shown  # a fernet token
    fails(3, "upload", legacy_image, "--os-cloud", "rig-small", "--name", "too-big",
          "--source-host", "quota-test", words=("HTTP 413", "the partial image was deleted"))
    assert _images(cloud_rig, "too-big", "glance2") == []
    fails(2, "volume", "--image", "no-such-image", "--os-cloud", "rig",
          words=("no image 'no-such-image'",))
    fails(2, "volume", "--image", image, "--az", "az9", "--os-cloud", "rig",
          words=("no volume availability zone 'az9'", "az2, nova"))
    spare = _cli(cloud_rig, "volume", "--image", image, "--source-host", "error-test",
                 "--os-cloud", "rig")["volume_id"]
    boot = ("boot", "--volume", spare, "--os-cloud", "rig")
    fails(2, *boot, "--flavor", "m9.huge", "--network", "none",
          words=("no flavor 'm9.huge'", "m1.small"))
    fails(2, *boot, "--flavor", "m1.small", "--network", "none", "--az", "az9",
          words=("no compute availability zone 'az9'",))
    fails(2, *boot, "--flavor", "m1.small", "--network", "no-such-net",
          words=("no network 'no-such-net'", "rig-net"))
    _cli(cloud_rig, "cloud", "cleanup", "--source-host", "error-test", "--os-cloud", "rig")


# -- boot's NIC: a port that keeps the legacy address ---------------------------------------


@pytest.fixture(scope="module")
def net_image(cloud_rig: Rig, small_image: Path) -> str:
    return str(_cli(cloud_rig, "upload", small_image, "--os-cloud", "rig", "--name",
                    "net-test", "--source-host", "net-test")["image_id"])


def _neutron(rig: Rig, path: str) -> Any:
    return rig.api("GET", f"{rig.url('neutron')}/v2.0/{path}")


def _gone(rig: Rig, url: str) -> bool:
    try:
        rig.api("GET", url)
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    return False


def _marked_ports(rig: Rig, host: str) -> list[str]:
    return [p["id"] for p in _neutron(rig, f"ports?tags=p2vimage:host={host}")["ports"]]


@rig_test
def test_boot_on_a_port_that_keeps_the_legacy_address(cloud_rig: Rig, net_image: str) -> None:
    """The port is made first with the legacy address, the public address as an allowed
    address pair and the legacy MAC, tagged; Neutron binds it, the server is ACTIVE on it
    on the compute host ZONE:HOST names; cleanup deletes the server, then the port."""
    vol = _cli(cloud_rig, "volume", "--image", net_image, "--source-host", "port-test",
               "--os-cloud", "rig")["volume_id"]
    report = _cli(cloud_rig, "boot", "--volume", vol, "--flavor", "m1.small", "--network",
                  "rig-net", "--subnet", "rig-subnet", "--fixed-ip", "192.0.2.15",
                  "--allowed-address", "203.0.113.7", "--allowed-address", "198.51.100.0/28",
                  "--mac-address", "52:54:00:AB:CD:EF", "--security-group", "default",
                  "--availability-zone", "nova:rig", "--source-host", "port-test",
                  "--os-cloud", "rig")
    assert report["status"] == "ACTIVE" and report["port"]["created"]
    port = _neutron(cloud_rig, f"ports/{report['port']['id']}")["port"]
    assert [(ip["ip_address"], ip["subnet_id"]) for ip in port["fixed_ips"]] == [
        ("192.0.2.15", cloud_rig.subnet_id)]
    assert sorted((p["ip_address"], p["mac_address"])
                  for p in port["allowed_address_pairs"]) == [
        ("198.51.100.0/28", "52:54:00:ab:cd:ef"), ("203.0.113.7", "52:54:00:ab:cd:ef")]
    assert port["mac_address"] == "52:54:00:ab:cd:ef" and port["port_security_enabled"]
    assert sorted(port["tags"]) == ["p2vimage:host=port-test",
                                    f"p2vimage:run={report['run']}"]
    default = _neutron(cloud_rig, "security-groups?name=default")["security_groups"]
    assert port["security_groups"] == [g["id"] for g in default
                                       if g["project_id"] == port["project_id"]]
    assert port["device_id"] == report["server_id"]
    assert port["binding:host_id"] == "rig" and port["binding:vif_type"] == "ovs"
    nova = cloud_rig.url("nova") + "/v2.1"
    server = cloud_rig.api("GET", f"{nova}/servers/{report['server_id']}")["server"]
    assert server["OS-EXT-SRV-ATTR:host"] == "rig"
    nics = cloud_rig.api("GET", f"{nova}/servers/{report['server_id']}/os-interface")
    assert [(n["port_id"], n["mac_addr"], [ip["ip_address"] for ip in n["fixed_ips"]])
            for n in nics["interfaceAttachments"]] == [
        (port["id"], "52:54:00:ab:cd:ef", ["192.0.2.15"])]
    assert report["addresses"] == {"rig-net": ["192.0.2.15"]}
    done = _cli(cloud_rig, "cloud", "cleanup", "--source-host", "port-test", "--os-cloud",
                "rig")
    found = {kind: [r["id"] for r in items] for kind, items in done["found"].items()}
    assert found == {"servers": [report["server_id"]], "ports": [port["id"]],
                     "volumes": [vol], "images": []}
    assert _gone(cloud_rig, f"{cloud_rig.url('neutron')}/v2.0/ports/{port['id']}")
    assert _gone(cloud_rig, f"{nova}/servers/{report['server_id']}")


@rig_test
def test_a_failed_boot_deletes_the_port_it_made(cloud_rig: Rig, net_image: str) -> None:
    """ZONE:HOST names a host Nova does not have: the server goes to ERROR; the server and
    then the port are deleted, the volume stays."""
    vol = _cli(cloud_rig, "volume", "--image", net_image, "--source-host", "fail-test",
               "--os-cloud", "rig")["volume_id"]
    proc = p2v("boot", "--volume", vol, "--flavor", "m1.small", "--network", "rig-net",
               "--fixed-ip", "192.0.2.16", "--availability-zone", "nova:no-such-host",
               "--source-host", "fail-test", "--os-cloud", "rig", env=cloud_rig.env)
    assert_one_line_error(proc, 1, "ERROR")
    assert "Deleting port" in proc.stderr
    assert _marked_ports(cloud_rig, "fail-test") == []
    assert [p for p in _neutron(cloud_rig, "ports")["ports"]
            if any(ip["ip_address"] == "192.0.2.16" for ip in p["fixed_ips"])] == []
    servers = cloud_rig.api("GET", f"{cloud_rig.url('nova')}/v2.1/servers?name=fail-test")
    assert servers["servers"] == []
    record = cloud_rig.api("GET", f"{cloud_rig.url('cinder')}/v3/{cloud_rig.project_id}"
                                  f"/volumes/{vol}")["volume"]
    assert record["status"] == "available"
    _cli(cloud_rig, "cloud", "cleanup", "--source-host", "fail-test", "--os-cloud", "rig")


@rig_test
def test_boot_on_an_existing_port_keeps_it(cloud_rig: Rig, net_image: str) -> None:
    """--port takes the operator's port as it is: no tags added, and cleanup deletes the
    server but never the port."""
    port = cloud_rig.api("POST", f"{cloud_rig.url('neutron')}/v2.0/ports", {"port": {
        "network_id": cloud_rig.network_id, "name": "operators-port",
        "fixed_ips": [{"ip_address": "192.0.2.17"}]}})["port"]
    vol = _cli(cloud_rig, "volume", "--image", net_image, "--source-host", "kept-test",
               "--os-cloud", "rig")["volume_id"]
    report = _cli(cloud_rig, "boot", "--volume", vol, "--flavor", "m1.small", "--port",
                  "operators-port", "--source-host", "kept-test", "--os-cloud", "rig")
    assert report["status"] == "ACTIVE"
    assert report["port"]["id"] == port["id"] and not report["port"]["created"]
    assert _neutron(cloud_rig, f"ports/{port['id']}")["port"]["device_id"] == \
        report["server_id"]
    spare = _cli(cloud_rig, "volume", "--image", net_image, "--source-host", "kept-test",
                 "--os-cloud", "rig")["volume_id"]
    busy = p2v("boot", "--volume", spare, "--flavor", "m1.small", "--port", port["id"],
               "--os-cloud", "rig", env=cloud_rig.env)
    assert_one_line_error(busy, 2, f"port {port['id']} is in use")
    done = _cli(cloud_rig, "cloud", "cleanup", "--source-host", "kept-test", "--os-cloud",
                "rig")
    assert done["found"]["ports"] == [] and len(done["found"]["servers"]) == 1
    kept = _neutron(cloud_rig, f"ports/{port['id']}")["port"]
    assert kept["tags"] == [] and kept["device_id"] == ""


@rig_test
def test_cleanup_finds_and_deletes_what_the_run_made(
        cloud_rig: Rig, uploaded: dict[str, Any], volume: dict[str, Any],
        server: dict[str, Any]) -> None:
    """Last in this file: it deletes the server, volume and image the tests above made."""
    dry = _cli(cloud_rig, "cloud", "cleanup", "--source-host", HOST, "--os-cloud", "rig",
               "--dry-run")
    assert dry["dry_run"] and "found" not in dry  # it says what it would look for, offline
    assert f"compute.servers(details=True, metadata={{'p2vimage:host': '{HOST}'}})" in \
        dry["calls"]
    assert cloud_rig.api("GET", f"{cloud_rig.url('nova')}/v2.1/servers/"
                                f"{server['server_id']}")["server"]["status"] == "ACTIVE"
    done = _cli(cloud_rig, "cloud", "cleanup", "--source-host", HOST, "--os-cloud", "rig")
    found = {kind: [r["id"] for r in items] for kind, items in done["found"].items()}
    assert found == {"servers": [server["server_id"]], "ports": [],
                     "volumes": [volume["volume_id"]], "images": [uploaded["image_id"]]}
    again = _cli(cloud_rig, "cloud", "cleanup", "--source-host", HOST, "--os-cloud", "rig")
    assert again["found"] == {"servers": [], "ports": [], "volumes": [], "images": []}
    assert not cloud_rig.volume_file_exists(volume["volume_id"])


# -- write-volume into a real block device -------------------------------------------------


@contextlib.contextmanager
def _loop(backing: Path) -> Iterator[Path]:
    dev = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _image_with_holes(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, 7 * MiB + 4096, size - 3 * MiB):
            f.seek(offset)
            f.write(os.urandom(2 * MiB))


def test_write_volume_into_a_loop_device(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    _image_with_holes(image, 40 * MiB)
    backing = tmp_path / "device"
    backing.write_bytes(os.urandom(48 * MiB))  # the old data of a reused volume
    with _loop(backing) as dev:
        proc = p2v("--json", "write-volume", image, dev)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["verified"] and report["block_device"]
        assert report["data_bytes"] < 10 * MiB and report["zeroed_bytes"] > 30 * MiB
        with open(dev, "rb") as f:
            assert f.read(40 * MiB) == image.read_bytes()
            tail = f.read()
        assert len(tail) == 8 * MiB and tail == backing.read_bytes()[40 * MiB:]  # untouched


def test_write_volume_refuses_small_or_mounted_devices(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    _image_with_holes(image, 40 * MiB)
    small = tmp_path / "small"
    small.write_bytes(bytes(16 * MiB))
    with _loop(small) as dev:
        assert_one_line_error(p2v("write-volume", image, dev), 2, "less than the image")
    big = tmp_path / "big"
    big.write_bytes(bytes(48 * MiB))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with _loop(big) as dev:
        subprocess.run(["mke2fs", "-q", "-t", "ext2", dev], check=True)
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            assert_one_line_error(p2v("write-volume", image, dev), 3, "mounted")
        finally:
            subprocess.run(["umount", mnt], check=True)


def test_ids_in_the_openstack_clis_dialect(cloud_rig: Rig, small_image: Path) -> None:
    """ID=$(p2vimage upload … -f value -c id) works as with the openstack CLI, and -f
    json/table print the same fields."""
    argv = ("upload", small_image, "--os-cloud", "rig", "--source-host", "format-test",
            "--name", "format-test")
    proc = p2v(*argv, "-f", "value", "-c", "id", env=cloud_rig.env)
    assert proc.returncode == 0, proc.stderr
    image_id = proc.stdout.strip()
    record = cloud_rig.api("GET", f"{cloud_rig.url('glance')}/v2/images/{image_id}")
    assert record["name"] == "format-test" and record["status"] == "active"
    dry = p2v("volume", "--image", image_id, "--os-cloud", "rig", "--dry-run", "-f", "json",
              "-c", "image_id", "-c", "name", env=cloud_rig.env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["schema_version"] == 1
    assert set(json.loads(dry.stdout)) == {"schema_version", "image_id", "name"}
    _cli(cloud_rig, "cloud", "cleanup", "--source-host", "format-test", "--os-cloud", "rig")
