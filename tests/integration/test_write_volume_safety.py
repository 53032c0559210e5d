"""write-volume never writes into its own image, and writes a file only when told to.

Real loop devices (losetup), device-mapper (dmsetup), hard and symbolic links and /proc fd
paths. Every refused command leaves the image and the file beside it byte for byte as they
were, real run and dry run alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, needs_root, p2v

pytestmark = [pytest.mark.root, needs_root]
MiB = 1 << 20


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(path: Path) -> None:
    """8 MiB of random data with an MBR and one partition (1 MiB at 1 MiB … 5 MiB)."""
    path.write_bytes(os.urandom(8 * MiB))
    subprocess.run(["sfdisk", "-q", path], input="start=2048, size=8192, type=83\n",
                   text=True, check=True, capture_output=True)


def _wait_for(path: Path) -> Path:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    return path


@contextlib.contextmanager
def _loop(backing: Path, *args: str) -> Iterator[Path]:
    dev = subprocess.run(["losetup", "-f", "--show", *args, backing], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def _linear(dev: Path, sectors: int) -> Iterator[Path]:
    if subprocess.run(["dmsetup", "targets"], capture_output=True, check=False).returncode:
        pytest.skip("no device-mapper in this kernel")
    name = f"p2vtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["dmsetup", "create", "--noudevsync", name, "--table",
                    f"0 {sectors} linear {dev} 0"], check=True, capture_output=True)
    try:
        yield _wait_for(Path("/dev/mapper") / name)
    finally:
        subprocess.run(["dmsetup", "remove", "--noudevsync", name], check=False,
                       capture_output=True)


@dataclass
class Ctx:
    """What a case builds its DEVICE from, and what the p2v child gets."""

    image: Path
    tmp: Path
    stack: contextlib.ExitStack
    kwargs: dict[str, object] = field(default_factory=dict)


def _dotted(c: Ctx) -> Path:
    (c.tmp / "sub").mkdir()
    return c.tmp / "sub" / ".." / c.image.name


def _symlink(c: Ctx) -> Path:
    (c.tmp / "link").symlink_to(c.image.name)
    return c.tmp / "link"


def _hardlink(c: Ctx) -> Path:
    os.link(c.image, c.tmp / "hard")
    return c.tmp / "hard"


def _proc_fd(c: Ctx) -> Path:
    fd = os.open(c.image, os.O_RDONLY)
    c.stack.callback(os.close, fd)
    c.kwargs["pass_fds"] = (fd,)
    return Path(f"/proc/self/fd/{fd}")


def _loop_removed_link(c: Ctx) -> Path:
    """A loop device over a hard link whose name is gone: sysfs says "(deleted)"."""
    link = c.tmp / "was-here"
    os.link(c.image, link)
    dev = c.stack.enter_context(_loop(link))
    link.unlink()
    return dev


def _loop_partition(c: Ctx) -> Path:
    dev = c.stack.enter_context(_loop(c.image, "-P"))
    # the scan losetup asks for does not always happen here; partx adds what is missing
    subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
    return _wait_for(Path(f"{dev}p1"))


def _dm_over_loop(c: Ctx) -> Path:
    return c.stack.enter_context(_linear(c.stack.enter_context(_loop(c.image)), 16384))


THE_IMAGE: list[tuple[str, Callable[[Ctx], Path], str]] = [
    ("same path", lambda c: c.image, "is the image"),
    ("path through ..", _dotted, "is the image"),
    ("symbolic link", _symlink, "is the image"),
    ("hard link", _hardlink, "is the image"),
    ("/proc/self/fd", _proc_fd, "is the image"),
    ("loop device", lambda c: c.stack.enter_context(_loop(c.image)), "is backed by the image"),
    ("loop device at an offset",
     lambda c: c.stack.enter_context(_loop(c.image, "-o", str(MiB))), "is backed by the image"),
    ("loop device over a removed hard link", _loop_removed_link, "is backed by the image"),
    ("partition of a loop device", _loop_partition, "is backed by the image"),
    ("device-mapper over a loop device", _dm_over_loop, "is backed by the image"),
]


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in THE_IMAGE],
                         ids=[c[0] for c in THE_IMAGE])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_write_volume_refuses_the_image_itself(tmp_path: Path, make: Callable[[Ctx], Path],
                                               words: str, dry_run: bool) -> None:
    image, beside = tmp_path / "disk.img", tmp_path / "beside.img"
    _image(image)
    beside.write_bytes(os.urandom(3 * MiB))
    before = {p: _sha(p) for p in (image, beside)}
    with contextlib.ExitStack() as stack:
        ctx = Ctx(image, tmp_path, stack)
        device = make(ctx)
        flags = ["--dry-run"] if dry_run else []
        proc = p2v("write-volume", image, device, *flags, **ctx.kwargs)
        assert_one_line_error(proc, 2, words, str(image))
        assert proc.stdout == ""
        assert {p: _sha(p) for p in (image, beside)} == before


# -- what DEVICE may be: a block device; a new file with --create; a file with --force ------


@dataclass(frozen=True)
class Kind:
    """One kind of DEVICE, and what a run and a dry run do with it."""

    name: str
    make: Callable[[Ctx], Path]
    options: tuple[str, ...]
    code: int
    words: tuple[str, ...]  # in the error line, or in the dry run's line when code is 0
    written: bool = False  # the run leaves the image's bytes in DEVICE


def _old_file(c: Ctx) -> Path:
    (c.tmp / "old").write_bytes(os.urandom(10 * MiB))
    return c.tmp / "old"


def _dev_typo(c: Ctx) -> Path:
    path = Path(f"/dev/vdzz-p2vtest-{uuid.uuid4().hex[:6]}")
    c.stack.callback(lambda: path.unlink(missing_ok=True))  # the old code made a file there
    return path


def _loop_volume(c: Ctx) -> Path:
    (c.tmp / "volume").write_bytes(os.urandom(16 * MiB))
    return c.stack.enter_context(_loop(c.tmp / "volume"))


def _loop_file(c: Ctx) -> Path:
    c.stack.enter_context(_loop(_old_file(c)))
    return c.tmp / "old"


KINDS = [
    Kind("missing file", lambda c: c.tmp / "new", (), 2, ("does not exist", "--create")),
    Kind("missing file --create", lambda c: c.tmp / "new", ("--create",), 0,
         ("would create file",), written=True),
    Kind("existing file", _old_file, (), 2, ("existing file", "--force")),
    Kind("existing file --create", _old_file, ("--create",), 2, ("existing file", "--force")),
    Kind("existing file --force", _old_file, ("--force",), 0,
         ("would overwrite file", "(--force)"), written=True),
    Kind("missing /dev path", _dev_typo, (), 2, ("no such device", "lsblk")),
    Kind("missing /dev path --create", _dev_typo, ("--create",), 2, ("no such device",)),
    Kind("directory", lambda c: c.tmp, ("--force",), 2, ("is a directory",)),
    Kind("character device", lambda c: Path("/dev/null"), ("--force",), 2,
         ("character device",)),
    Kind("block device", _loop_volume, (), 0, ("would write", "into block device"),
         written=True),
    Kind("file of a loop device --force", _loop_file, ("--force",), 3, ("loop device",)),
]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_write_volume_target_kinds(tmp_path: Path, kind: Kind) -> None:
    """The dry run says what it would do and refuses what the run refuses; a refused run
    changes nothing and creates nothing."""
    image, beside = tmp_path / "disk.img", tmp_path / "beside.img"
    _image(image)
    beside.write_bytes(os.urandom(3 * MiB))
    with contextlib.ExitStack() as stack:
        device = kind.make(Ctx(image, tmp_path, stack))
        existed = device.exists()
        before = {p: _sha(p) for p in (image, beside, device) if p.is_file()}
        names = sorted(p.name for p in tmp_path.iterdir())
        for dry_run in (True, False):
            proc = p2v("write-volume", image, device, *kind.options,
                       *(["--dry-run"] if dry_run else []))
            if kind.code:
                assert_one_line_error(proc, kind.code, *kind.words)
            elif dry_run:
                assert proc.returncode == 0, proc.stderr
                assert all(w in proc.stdout for w in kind.words), proc.stdout
                assert str(device) in proc.stdout
            else:
                assert proc.returncode == 0, proc.stderr
            if dry_run or kind.code:
                assert device.exists() == existed
                assert {p: _sha(p) for p in (image, beside, device) if p.is_file()} == before
                assert sorted(p.name for p in tmp_path.iterdir()) == names
        assert _sha(image) == before[image] and _sha(beside) == before[beside]
        if kind.written:
            with open(device, "rb") as f:
                assert f.read(8 * MiB) == image.read_bytes()
            # no temporary file is left beside a new one
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
                {*names, device.name} if device.parent == tmp_path else names)
