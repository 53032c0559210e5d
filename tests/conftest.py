"""Shared test fixtures: the CLI as a real process, legacy trees, the small hard tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
P2VIMAGE = [sys.executable, "-m", "p2vimage"]


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (device nodes, xattrs)")


def p2v(*args: str | os.PathLike[str], check: bool = False,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process; returns its exit code, stdout and stderr."""
    proc = subprocess.run([*P2VIMAGE, *map(os.fspath, args)], capture_output=True, text=True,
                          cwd=REPO, check=False, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"p2vimage {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int,
                          *words: str) -> None:
    """The CLI failed with ``code`` and printed exactly one 'error: … (hint: …)' line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "(hint: " in errors[0], errors[0]
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.fixture(scope="session")
def hard_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tree with every hard kind of file and metadata (no debootstrap needed)."""
    if not is_root():
        pytest.skip("needs root")
    from tests.fixtures.mkfixture import make_hard_content

    root = tmp_path_factory.mktemp("hard") / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    make_hard_content(root)
    stamp = root / "srv/ns-mtime"
    stamp.write_text("a file with a nanosecond mtime\n")
    os.utime(stamp, ns=(1_234_567_890_123_456_789, 1_234_567_890_123_456_789))
    os.utime(root / "srv", ns=(1_300_000_000_987_654_321,) * 2)
    return root


@pytest.fixture(scope="session")
def bullseye_tree() -> Path:
    """The bullseye i386 sysvinit legacy fixture (built with debootstrap once, cached)."""
    return _fixture("bullseye-i386")


@pytest.fixture(scope="session")
def bookworm_tree() -> Path:
    """The bookworm amd64 systemd grub2 fixture (built with debootstrap once, cached)."""
    return _fixture("bookworm-amd64")


def _fixture(name: str) -> Path:
    if not is_root():
        pytest.skip("fixtures need root (debootstrap)")
    from tests.fixtures.mkfixture import ensure_fixture

    return ensure_fixture(name)


@pytest.fixture
def copy_tree(tmp_path: Path) -> Iterator[object]:
    """Copy a tree with everything (cp -a keeps xattrs, ACLs, links, sparseness)."""

    def copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)
        return dst

    yield copy
    shutil.rmtree(tmp_path, ignore_errors=True)
