"""build --refresh of a converted image: the delta goes in, convert's rewrites stay, and
convert runs again only when a file one of its fixups reads has changed (then only that
fixup has work to do)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from p2vimage.disk.e2fs import E2fsFiles
from p2vimage.disk.state import source_identity
from tests.conftest import Converted, needs_root, p2v

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]


def _copy(converted: Converted, tmp_path: Path) -> tuple[Path, Path]:
    staging = tmp_path / "staging"
    subprocess.run(["cp", "-a", "--sparse=always", str(converted.tree), str(staging)],
                   check=True)
    img = tmp_path / "host.img"
    subprocess.run(["cp", "--sparse=always", str(converted.image), str(img)], check=True)
    state = json.loads(converted.image.with_name(converted.image.name + ".state.json")
                       .read_text())
    state.update(source_identity(staging))  # as if built from the copy
    img.with_name("host.img.state.json").write_text(json.dumps(state))
    return staging, img


def _refresh(staging: Path, img: Path) -> dict[str, object]:
    proc = p2v("--json", "build", staging, "-o", img, "--refresh")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout))


def test_refresh_keeps_conversion_and_reconverts_only_on_input_change(
        converted: Callable[[str], Converted], tmp_path: Path) -> None:
    fixture = converted("bullseye-i386")
    staging, img = _copy(fixture, tmp_path)
    converted_fstab = E2fsFiles(img).read_bytes("/etc/fstab")
    assert converted_fstab is not None

    # 1. data changes only: copied in, convert's files untouched, no appliance launch
    (staging / "srv/new-data.txt").write_text("written after the first pass\n")
    shutil.rmtree(staging / "usr/share/doc/rsync", ignore_errors=True)
    report = _refresh(staging, img)
    assert report["method"] == "loop" and report["converted_again"] is False
    assert report["changed_inputs"] == []
    files = E2fsFiles(img)
    assert files.read_bytes("/srv/new-data.txt") == b"written after the first pass\n"
    assert files.read_bytes("/etc/fstab") == converted_fstab
    assert not files.is_dir("/usr/share/doc/rsync")
    result = json.loads(p2v("--json", "verify", staging, img).stdout)
    assert result["differences"] == []  # everything but convert's documented rewrites

    # 2. the legacy host's fstab changed: the new original goes in, only fstab is redone
    fstab = staging / "etc/fstab"
    fstab.write_text(fstab.read_text() + "tmpfs /mnt/scratch tmpfs defaults 0 0\n")
    report = _refresh(staging, img)
    assert report["changed_inputs"] == ["etc/fstab"] and report["restored"] == ["etc/fstab"]
    assert report["converted_again"] is True and report["fixups_changed"] == ["fstab"]
    new_fstab = (E2fsFiles(img).read_bytes("/etc/fstab") or b"").decode()
    assert "/mnt/scratch" in new_fstab
    root_line = [line for line in new_fstab.splitlines() if line.split()[1:2] == ["/"]]
    assert root_line and root_line[0].startswith("UUID=")  # converted again

    # 3. nothing changed: convert does not run, and the only file sent again is the one whose
    # mtime (after 2038) a 128-byte inode cannot hold, so it never looks up to date
    report = _refresh(staging, img)
    assert report["converted_again"] is False
    assert report["stats"]["files_transferred"] == 1  # type: ignore[index]


def test_refresh_refuses_image_without_state(hard_tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    assert p2v("build", hard_tree, "-o", img).returncode == 0
    img.with_name("x.img.state.json").unlink()
    proc = p2v("build", hard_tree, "-o", img, "--refresh")
    assert proc.returncode == 2 and "no p2vimage state" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
