"""Shared test fixtures: the CLI as a real process, legacy trees, the small hard tree."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    from p2vimage.demo.hard import make_hard_content

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
    from p2vimage.demo.examples import ensure_fixture

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


@pytest.fixture(scope="session")
def hv_wrapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qemu wrapper for libguestfs (LIBGUESTFS_HV) that logs every appliance boot."""
    # The accelerator probe boots an appliance once per host (then cached): probe now, so
    # that only conversions are counted.
    assert p2v("doctor").returncode == 0
    top = tmp_path_factory.mktemp("hv")
    log = top / "launches.log"
    wrapper = top / "qemu"
    # libguestfs also runs the hypervisor to query its features: a boot has -kernel
    wrapper.write_text("#!/bin/sh\n"
                       f"case \" $* \" in *' -kernel '*) echo launch >> {log};; esac\n"
                       f"exec {shutil.which('qemu-system-x86_64')} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def launches(wrapper: Path) -> int:
    """Appliance boots logged by ``hv_wrapper`` so far."""
    log = wrapper.parent / "launches.log"
    return log.read_text().count("launch") if log.exists() else 0


@dataclasses.dataclass
class Converted:
    """A fixture built and converted once per session; tests must not modify the image."""

    name: str
    tree: Path
    image: Path
    report: dict[str, Any]
    launches: int


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory,
              hv_wrapper: Path) -> Callable[[str], Converted]:
    """name → the fixture tree built and converted (once per session)."""
    cache: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in cache:
            tree = _fixture(name)
            image = tmp_path_factory.mktemp(name) / f"{name}.img"
            assert p2v("build", tree, "-o", image).returncode == 0
            before = launches(hv_wrapper)
            proc = p2v("--json", "convert", image,
                       env={**os.environ, "LIBGUESTFS_HV": str(hv_wrapper)})
            assert proc.returncode == 0, proc.stderr[-3000:]
            cache[name] = Converted(name, tree, image, json.loads(proc.stdout),
                                    launches(hv_wrapper) - before)
        return cache[name]

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The network-namespace cutover tier runs first. In one whole-suite run (.ci/run, after
    the other integration tiers) every rollback that restarts the legacy host's service left
    that host unanswering, while the same tests pass alone and after any single other tier
    tried; the cause is not found yet (see the session's closing note). Running the tier on
    a fresh host keeps its proofs meaningful meanwhile."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("netns") else 1)
