"""From a checkout without .venv: ci/setup, then the README's demo command, succeed; a second
ci/setup changes nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_root

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]


def test_fresh_checkout_setup_and_demo(tmp_path: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    clone = tmp_path / "clone"
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if not src.is_file():
            continue
        dst = clone / os.fsdecode(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        dst.chmod(src.stat().st_mode)
    assert not (clone / ".venv").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    first = subprocess.run(["bash", "ci/setup"], cwd=clone, capture_output=True, text=True,
                           env=env, check=False)
    assert first.returncode == 0, first.stderr
    version = subprocess.run([str(clone / ".venv/bin/p2vimage"), "--version"],
                             capture_output=True, text=True, check=False)
    assert version.returncode == 0 and "p2vimage" in version.stdout
    stamp = (clone / ".venv/.p2vimage-installed").stat().st_mtime_ns
    second = subprocess.run(["bash", "ci/setup"], cwd=clone, capture_output=True, text=True,
                            env=env, check=False)
    assert second.returncode == 0
    assert "installing" not in second.stderr  # nothing to install twice
    assert (clone / ".venv/.p2vimage-installed").stat().st_mtime_ns == stamp
    demo = subprocess.run(["bash", "ci/demo"], cwd=clone, capture_output=True, text=True,
                          env={**env, "P2VIMAGE_DEMO_DIR": str(tmp_path / "demo")},
                          check=False)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "verdict: pass" in demo.stdout and "probe http 80/" in demo.stdout
    assert (tmp_path / "demo/bullseye-i386.raw").is_file()
    assert (tmp_path / "demo/work/smoke/junit.xml").is_file()
