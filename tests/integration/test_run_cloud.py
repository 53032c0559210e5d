"""run's cloud stages against the real services of tests/rig/openstack.py: the bullseye i386
tree built, converted, smoke-tested, uploaded, made a volume and booted in one command, killed
(SIGKILL, no cleanup of any kind) in the middle of the upload and again in the middle of the
volume, and resumed: each time exactly one image, one volume and one server carry the host's
and the run's marks, and build, convert and smoke are never done twice.

Raw uploads (every byte of the disk) keep the upload and the volume's copy long enough to be
killed in their middle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import P2VIMAGE, REPO, needs_root, p2v
from tests.rig.openstack import Rig

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.fixture, pytest.mark.openstack,
              needs_root]
HOST = "runhost"
MiB = 1 << 20
EARLY = ("build", "convert", "smoke")


def _marked(rig: Rig, run: str) -> dict[str, list[dict[str, Any]]]:
    """The images, volumes and servers that carry HOST's and ``run``'s marks, as the services
    list them (deleted ones aside)."""
    marks = {"p2vimage:host": HOST, "p2vimage:run": run}
    query = urllib.parse.urlencode([("tag", f"{k}={v}") for k, v in marks.items()])
    images = rig.api("GET", f"{rig.url('glance')}/v2/images?{query}")["images"]
    volumes = rig.api("GET", f"{rig.url('cinder')}/v3/{rig.project_id}/volumes/detail")
    servers = rig.api("GET", f"{rig.url('nova')}/v2.1/servers/detail")
    return {"images": images,
            "volumes": [v for v in volumes["volumes"] if v["metadata"] == marks and
                        v["status"] != "deleting"],
            "servers": [s for s in servers["servers"] if s["metadata"] == marks]}


def _kill_when(argv: list[str | os.PathLike[str]], rig: Rig, log: Path, ready: Callable[[], bool],
               timeout: float) -> None:
    """Start the CLI, SIGKILL it as soon as ``ready()`` (polled), and wait for it to die."""
    with open(log, "w") as out:
        proc = subprocess.Popen([*P2VIMAGE, *map(os.fspath, argv)], env=rig.env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"it ended before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)


def _mtimes(work: Path) -> dict[str, int]:
    return {stage: (work / f"{stage}.stamp.json").stat().st_mtime_ns for stage in EARLY}


@pytest.mark.timeout(3600)
def test_killed_mid_upload_and_mid_volume_then_resumed_makes_each_once(
        cloud_rig: Rig, bullseye_tree: Path, tmp_path: Path) -> None:
    rig = cloud_rig
    image, work = tmp_path / f"{HOST}.img", tmp_path / "work"
    argv: list[str | os.PathLike[str]] = [
        "--workdir", work, "run", bullseye_tree, "-o", image, "--until", "boot",
        "--os-cloud", "rig", "--flavor", "m1.small", "--network", "none", "--az", "nova",
        "--disk-format", "raw", "--probe", "http:80:/:200:fixture bullseye-i386 OK"]

    # 1. from the tree; killed while the image's bytes stream into Glance
    store = rig.top / "glance/images"
    before = set(store.iterdir())

    def streaming() -> bool:
        return any(p.stat().st_size > 8 * MiB for p in set(store.iterdir()) - before)

    _kill_when(argv, rig, tmp_path / "first.log", streaming, timeout=2400)
    run = json.loads((work / "cloud-run.json").read_text())["run"]
    early = _mtimes(work)
    assert not (work / "upload.stamp.json").exists()
    made = _marked(rig, run)
    assert [i["status"] for i in made["images"]] in (["queued"], ["saving"]), made["images"]
    assert made["volumes"] == made["servers"] == []
    partial = made["images"][0]["id"]

    # 2. resumed: the partial image is deleted, a new one uploaded; killed once Cinder has the
    # volume record (it goes on copying the image into it without its client)
    def volume_made() -> bool:
        return bool(_marked(rig, run)["volumes"])

    _kill_when([*argv, "--resume"], rig, tmp_path / "second.log", volume_made, timeout=900)
    assert _mtimes(work) == early  # build, convert and smoke were not done again
    made = _marked(rig, run)
    assert [(i["id"] != partial, i["status"]) for i in made["images"]] == [(True, "active")]
    uploaded = json.loads((work / "upload.stamp.json").read_text())["report"]
    assert uploaded["image_id"] == made["images"][0]["id"] and not uploaded["adopted"]
    assert [r["id"] for r in uploaded["replaced"]] == [partial]
    assert len(made["volumes"]) == 1 and made["servers"] == []
    volume = made["volumes"][0]["id"]
    assert not (work / "volume.stamp.json").exists()

    # 3. resumed again: the volume of the killed attempt is waited for and adopted, the server
    # made; one of each
    proc = p2v("--json", *argv, "--resume", env=rig.env)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{rig.tail('cinder', 'nova')}"
    result = json.loads(proc.stdout)
    stages = result["stages"]
    assert all(stages[s]["skipped"] for s in (*EARLY, "upload"))
    assert stages["volume"]["adopted"] and stages["volume"]["volume_id"] == volume
    assert not stages["boot"]["adopted"] and stages["boot"]["status"] == "ACTIVE"
    assert result["marks"] == {"host": HOST, "run": run} and result["verdict"] == "pass"
    assert _mtimes(work) == early
    made = _marked(rig, run)
    assert [i["id"] for i in made["images"]] == [uploaded["image_id"]]
    assert [v["id"] for v in made["volumes"]] == [volume]
    assert [s["id"] for s in made["servers"]] == [stages["boot"]["server_id"]]
    server = made["servers"][0]
    assert server["status"] == "ACTIVE"
    assert [a["id"] for a in server["os-extended-volumes:volumes_attached"]] == [volume]
    assert made["volumes"][0]["volume_image_metadata"]["image_id"] == uploaded["image_id"]

    # 4. the same stages again without the stamps (--from upload, no --resume): the three are
    # found complete and adopted, nothing is made or deleted
    again = p2v("--json", *argv, "--from", "upload", env=rig.env)
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads(again.stdout)["stages"]
    assert [(s, redo[s]["adopted"], redo[s]["replaced"]) for s in ("upload", "volume", "boot")
            ] == [("upload", True, []), ("volume", True, []), ("boot", True, [])]
    assert (redo["upload"]["image_id"], redo["volume"]["volume_id"],
            redo["boot"]["server_id"]) == (uploaded["image_id"], volume, server["id"])
    now = _marked(rig, run)
    assert {kind: [r["id"] for r in items] for kind, items in now.items()} == {
        "images": [uploaded["image_id"]], "volumes": [volume], "servers": [server["id"]]}
    assert _mtimes(work) == early

    cleaned = p2v("--json", "cloud", "cleanup", "--source-host", HOST, "--os-cloud", "rig",
                  env=rig.env)
    assert cleaned.returncode == 0, cleaned.stderr
