"""sync from a live legacy host: the converted bullseye fixture booted under qemu, its real
``/`` copied over ssh while /proc, /sys, /dev and /run are mounted there; nothing of those
leaks into the staging tree, and the image built from it converts and boots."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Converted, needs_root, p2v
from tests.rig.livevm import live_vm

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]


def test_sync_from_live_vm_then_convert_and_smoke(converted: Callable[[str], Converted],
                                                  tmp_path: Path) -> None:
    fixture = converted("bullseye-i386")
    staging, work = tmp_path / "staging", tmp_path / "work"
    with live_vm(fixture.image, tmp_path) as vm:
        # a second local disk filesystem (crossed, like the seed's seven partitions) and a
        # tmpfs (only its mount point kept), mounted while the host runs
        marker = vm.ssh(
            "set -e; echo written-while-live | tee /root/live-marker > /var/www/live.html; "
            "dd if=/dev/zero of=/var/part.img bs=1M count=16 2>/dev/null; "
            "mkfs.ext3 -q -F /var/part.img; mkdir -p /srv/part /srv/scratch; "
            "mount -o loop /var/part.img /srv/part; echo on-another-fs > /srv/part/file; "
            "mount -t tmpfs tmpfs /srv/scratch; echo in-tmpfs > /srv/scratch/file; "
            "cat /proc/mounts")
        assert marker.returncode == 0, marker.stderr
        live_mounts = {line.split()[2] for line in marker.stdout.splitlines()}
        assert {"proc", "sysfs", "devtmpfs", "tmpfs"} <= live_mounts  # it is really live
        proc = p2v("--json", "--workdir", work, "sync", vm.url(), staging, *vm.args())
        assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [m["mountpoint"] for m in report["crossed_mounts"]] == ["/", "/srv/part"]
    assert (staging / "root/live-marker").read_text() == "written-while-live\n"
    assert (staging / "srv/part/file").read_text() == "on-another-fs\n"
    assert (staging / "srv/scratch").is_dir() and os.listdir(staging / "srv/scratch") == []
    # nothing of the pseudo filesystems leaked in; their mount points are kept
    for pseudo in ("proc", "sys", "run", "dev"):
        assert (staging / pseudo).is_dir(), pseudo
        assert os.listdir(staging / pseudo) == [], (pseudo, os.listdir(staging / pseudo))
    facts = json.loads((work / "source.json").read_text())
    assert {"proc", "sysfs", "devtmpfs"} <= {m["type"] for m in facts["mounts"]}
    root = next(m for m in facts["mounts"] if m["mountpoint"] == "/")
    assert root["type"] == "ext3" and root["size_kib"] > root["used_kib"] > 100_000
    assert facts["kernel"].endswith("-686") and facts["bootloader"] == "grub-legacy"

    img = tmp_path / "from-live.img"
    assert p2v("build", staging, "-o", img).returncode == 0
    conv = p2v("--json", "convert", img)
    assert conv.returncode == 0, conv.stderr[-3000:]
    smoke = p2v("--json", "smoke", img, "--probe", "http:80:/live.html:200:written-while-live")
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert json.loads(smoke.stdout)["verdict"] == "pass"
