"""run: the pipeline from a tree to a smoke-tested image, resumable from its stamps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, needs_root, p2v

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]


def test_run_until_then_resume(bullseye_tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "ns1.raw"
    work = tmp_path / "work"
    first = p2v("--json", "--workdir", work, "run", bullseye_tree, "-o", image,
                "--until", "convert")
    assert first.returncode == 0, first.stderr[-2000:]
    stages = json.loads(first.stdout)["stages"]
    assert list(stages) == ["build", "convert"] and json.loads(first.stdout)["verdict"] == \
        "not smoked"
    assert {p.name for p in work.iterdir()} == {"build.stamp.json", "convert.stamp.json"}
    again = p2v("--json", "--workdir", work, "run", bullseye_tree, "-o", image, "--resume",
                "--probe", "http:80:/:200:fixture bullseye-i386 OK")
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads(again.stdout)
    assert result["stages"]["build"]["skipped"] and result["stages"]["convert"]["skipped"]
    assert "skipped" not in result["stages"]["smoke"]
    assert result["verdict"] == "pass"
    assert (work / "smoke/junit.xml").exists()
    last = p2v("--workdir", work, "run", bullseye_tree, "-o", image, "--resume", "--probe",
               "http:80:/:200:fixture bullseye-i386 OK")
    assert last.returncode == 0
    assert last.stdout.count("skipped (done before)") == 3 and "verdict: pass" in last.stdout
    # a changed image invalidates the stamps after the stage that changes it
    with open(image, "r+b") as f:
        f.seek(100 << 20)
        f.write(b"x")
    redo = json.loads(p2v("--json", "--workdir", work, "run", bullseye_tree, "-o", image,
                          "--resume", "--until", "build").stdout)
    assert "skipped" not in redo["stages"]["build"]
    assert not (work / "convert.stamp.json").exists()


def test_run_refuses_bad_slices(bullseye_tree: Path, tmp_path: Path) -> None:
    proc = p2v("run", bullseye_tree, "-o", tmp_path / "x.raw", "--from", "smoke",
               "--until", "build")
    assert_one_line_error(proc, 2, "comes after")
    proc = p2v("run", bullseye_tree, "-o", tmp_path / "x.raw", "--from", "convert")
    assert_one_line_error(proc, 2, "does not exist")


def test_run_from_a_host_syncs_first(bullseye_tree: Path, tmp_path: Path) -> None:
    from tests.rig.sshd import start_sshd

    proc, server = start_sshd(tmp_path / "sshd")
    try:
        image, work, staging = tmp_path / "ns1.raw", tmp_path / "work", tmp_path / "staging"
        argv = ["--json", "--workdir", work, "run", server.url(bullseye_tree), "-o", image,
                "--staging", staging, *server.args(), "--until", "convert"]
        first = p2v(*argv)
        assert first.returncode == 0, first.stderr[-2000:]
        stages = json.loads(first.stdout)["stages"]
        assert set(stages) == {"sync", "build", "convert"}  # (--json sorts the keys)
        assert stages["sync"]["stats"]["files_transferred"] > 1000
        assert (staging / "etc/fstab").read_bytes() == (bullseye_tree / "etc/fstab").read_bytes()
        again = json.loads(p2v(*argv, "--resume").stdout)
        assert all(again["stages"][s].get("skipped") for s in ("sync", "build", "convert"))
    finally:
        proc.kill()
        proc.wait()
    # without a staging tree an ssh:// source is a usage error
    assert_one_line_error(p2v("run", "ssh://root@127.0.0.1/", "-o", image), 2, "--staging")
