"""rsync prints its figures in the user's locale ("2.000.000" under de_DE): p2vimage runs
every rsync with the C locale, so a German (or any decimal-comma) operator gets the same
statistics, change lists and progress as everyone else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import p2v


@pytest.fixture(scope="module")
def german(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in de_DE.UTF-8, compiled into a private LOCPATH (no root needed)."""
    if not Path("/usr/share/i18n/locales/de_DE").exists() or not shutil.which("localedef"):
        pytest.skip("needs the locales package (localedef and its sources)")
    top = tmp_path_factory.mktemp("locales")
    subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(top / "de_DE.UTF-8")],
                   check=True, capture_output=True)
    env = {**os.environ, "LOCPATH": str(top), "LC_ALL": "de_DE.UTF-8", "LANG": "de_DE.UTF-8"}
    probe = subprocess.run(["rsync", "--stats", "-a", "--dry-run", "/etc/hostname", str(top)],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert "Total file size" in probe
    return env


def test_sync_stats_are_right_under_a_decimal_comma_locale(german: dict[str, str],
                                                          tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "etc").mkdir(parents=True)
    (source / "data.bin").write_bytes(os.urandom(2_000_000))
    (source / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    # rsync itself prints the figure with thousands separators under this locale ...
    raw = subprocess.run(["rsync", "-a", "--stats", "--dry-run", f"{source}/",
                          str(tmp_path / "probe")], capture_output=True, text=True,
                         env=german, check=True).stdout
    assert "2.000.0" in raw  # (2.000.031 bytes with the fstab)
    # ... and p2vimage still reads two million bytes, not 2
    proc = p2v("--json", "sync", source, tmp_path / "staging", env=german)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    assert stats["total_size"] >= 2_000_000, stats
    assert stats["files_transferred"] == 2, stats
    assert (tmp_path / "staging/data.bin").read_bytes() == (source / "data.bin").read_bytes()
