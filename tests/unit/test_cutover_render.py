"""cutover render: run.sh and rollback.sh are a pair, written both or neither, through the
real CLI; run.sh opens with the runner's preflight."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, p2v
from tests.unit.test_cutover_spec import SPEC, write


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every entry of DIRECTORY (hidden ones too): sha256 and mode."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("existing", [("rollback.sh",), ("run.sh",), ("run.sh", "rollback.sh")])
def test_render_refuses_when_either_script_exists(tmp_path: Path,
                                                  existing: tuple[str, ...]) -> None:
    """An existing rollback.sh alone used to get a fresh run.sh beside it before the
    refusal: a run.sh whose rollback.sh undoes another plan."""
    spec = write(tmp_path, SPEC)
    out = tmp_path / "out"
    out.mkdir()
    for name in existing:
        (out / name).write_text(f"#!/bin/sh\necho 'an older {name}'\n")
    (out / "notes.txt").write_text("the operator's notes\n")
    before = snapshot(out)
    spec_sum = hashlib.sha256(spec.read_bytes()).hexdigest()

    proc = p2v("cutover", "render", spec, "-o", out)
    assert_one_line_error(proc, 2, "already exists", "--force")
    assert snapshot(out) == before  # no run.sh, no partial file, nothing replaced
    assert hashlib.sha256(spec.read_bytes()).hexdigest() == spec_sum


def test_render_writes_both_and_force_replaces_both(tmp_path: Path) -> None:
    spec = write(tmp_path, SPEC)
    out = tmp_path / "new" / "out"
    proc = p2v("cutover", "render", spec, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["rollback.sh", "run.sh"]
    first = snapshot(out)
    for name in ("run.sh", "rollback.sh"):
        assert os.access(out / name, os.X_OK)
        (out / name).write_text("stale\n")
    proc = p2v("cutover", "render", spec, "-o", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(out) == first  # both replaced, no partial file left


def test_run_sh_opens_with_the_preflight(tmp_path: Path) -> None:
    spec = write(tmp_path, SPEC)
    out = tmp_path / "out"
    assert p2v("cutover", "render", spec, "-o", out).returncode == 0
    run_sh = (out / "run.sh").read_text()
    subprocess.run(["sh", "-n", str(out / "run.sh")], check=True)
    assert run_sh.index("step=preflight") < run_sh.index("step=maintenance")
    block = run_sh[run_sh.index("step=preflight"):run_sh.index("step=maintenance")]
    # the legacy host through its usual address (the maintenance one is not there yet)
    assert " -- root@ns1.example.org " in block and "command -v curl" in block
    assert "/proc/sys/net/ipv4/conf/eth0/proxy_arp" in block
