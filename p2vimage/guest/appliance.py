"""The libguestfs session: the only module that imports guestfs.

One appliance launch per image: ``Guest`` opens the image, and is both the FileView the
fixups read and the writer the applier uses. Every launch is counted (``launches()``), so
tests and reports can prove a conversion needed exactly one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from p2vimage.core.errors import PreconditionError, StageError
from p2vimage.core.log import log
from p2vimage.host import run as runmod
from p2vimage.host.accel import Accel

_LAUNCHES = [0]
LAUNCH_BUDGET = 300  # seconds; a launch takes 8–20 s under TCG
SESSION_BUDGET = 1500  # seconds; a convert with an appliance initramfs rebuild takes ~600
READ_LIMIT = 2 << 20  # bigger files are downloaded, not read over the protocol


def launches() -> int:
    """How many appliances this process has launched."""
    return _LAUNCHES[0]


def _guestfs() -> Any:
    try:
        import guestfs
    except ImportError:
        raise PreconditionError("the libguestfs Python bindings are missing",
                                hint="install python3-guestfs and use a venv made with "
                                "--system-site-packages (ci/setup does)") from None
    return guestfs


class Guest:
    """An image opened in a libguestfs appliance, with its root filesystem mounted at /."""

    def __init__(self, image: Path, accel: Accel, readonly: bool, smp: int = 2,
                 memsize: int = 1024, image_format: str = "raw") -> None:
        self.image = image
        self.readonly = readonly
        self._setup: list[tuple[str, tuple[tuple[Any, ...], dict[str, Any]]]] = [
            ("set_backend", (("direct",), {})),
            ("set_backend_settings", ((["force_tcg"] if accel.guestfs == "tcg" else [],), {})),
            ("set_smp", ((smp,), {})), ("set_memsize", ((memsize,), {})),
            ("add_drive_opts", ((os.fspath(image),),
                                {"format": image_format, "readonly": readonly})),
        ]
        g = _guestfs().GuestFS(python_return_dict=True)
        for call, args in self._setup:
            getattr(g, call)(*args[0], **args[1])
        self.g = g
        self._dirs: dict[str, dict[str, str]] = {}
        self._files: dict[str, bytes] = {}
        self.root_device = ""

    def __enter__(self) -> Guest:
        # An appliance under TCG on a loaded host has hung in launch (seen once in CI); its
        # calls hold the GIL, so a watchdog process kills a hung one and launch is tried again.
        for attempt in (1, 2):
            with runmod.watchdog(LAUNCH_BUDGET) as dog:
                try:
                    self.g.launch()
                    break
                except RuntimeError as exc:
                    fired = dog.poll() is not None and dog.returncode == 0
                    if fired and attempt == 1:
                        log.warning("warning: the libguestfs appliance hung for %d s at "
                                    "launch; trying once more", LAUNCH_BUDGET)
                        self._reopen()
                        continue
                    self.g.close()
                    raise StageError(f"libguestfs could not open {self.image}: {exc}",
                                     hint="run 'p2vimage doctor' and 'libguestfs-test-tool'"
                                     ) from exc
        _LAUNCHES[0] += 1
        log.debug("libguestfs appliance launched for %s (launch %d)", self.image, launches())
        self._dog = runmod.watchdog(SESSION_BUDGET)
        self._dog_proc = self._dog.__enter__()
        return self

    def _reopen(self) -> None:
        self.g.close()
        g = _guestfs().GuestFS(python_return_dict=True)
        for call, args in self._setup:
            getattr(g, call)(*args[0], **args[1])
        self.g = g

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fired = self._dog_proc.poll() is not None and self._dog_proc.returncode == 0
        self._dog.__exit__(None, None, None)
        with contextlib.suppress(RuntimeError):
            if not self.readonly and kind is None:
                self.g.sync()
            self.g.shutdown()
        self.g.close()
        if fired and (kind is None or issubclass(kind, RuntimeError)):
            raise StageError(f"the libguestfs appliance for {self.image} stopped answering "
                             f"and was stopped after {SESSION_BUDGET} s",
                             hint="run the same command again; if it hangs again, run "
                                  "'libguestfs-test-tool'") from exc

    # -- inspection -------------------------------------------------------------------
    def filesystems(self) -> dict[str, str]:
        """device → filesystem type of everything libguestfs can see."""
        return dict(self.g.list_filesystems())

    def inspect_roots(self) -> list[str]:
        """The root filesystems of the operating systems libguestfs finds (only to know which
        filesystem is the root: what the guest is comes from its files, guest/record.py)."""
        return list(self.g.inspect_os())

    def mount_root(self, device: str, writable: bool = False) -> None:
        """Mount ``device`` at /: read-only until ``writable`` (a refused image stays as is)."""
        if writable and self.readonly:
            raise StageError("cannot write in a read-only session", hint="this is a bug")
        with contextlib.suppress(RuntimeError):
            self.g.umount("/")
        if writable:
            self.g.mount(device, "/")
        else:
            self.g.mount_ro(device, "/")
        self.root_device = device

    def uuid(self, device: str) -> str:
        """The filesystem UUID of ``device``."""
        return str(self.g.vfs_uuid(device))

    def fstype(self, device: str) -> str:
        """The filesystem type of ``device``."""
        return str(self.g.vfs_type(device))

    def boot_sector(self, device: str) -> bytes:
        """The first sector of ``device`` (a partition's boot record)."""
        return bytes(self.g.pread_device(device, 512, 0))

    def sector0(self) -> bytes:
        """The disk's first sector: boot code and partition table."""
        return bytes(self.g.pread_device("/dev/sda", 512, 0))

    # -- FileView (directory listings and small files are cached; writes invalidate) -----
    def _entries(self, directory: str) -> dict[str, str]:
        """name → type letter ('r' file, 'd' dir, 'l' symlink, …) of one directory."""
        directory = directory.rstrip("/") or "/"
        cached = self._dirs.get(directory)
        if cached is None:
            try:
                cached = {e["name"]: e["ftyp"] for e in self.g.readdir(directory)
                          if e["name"] not in (".", "..")}
            except RuntimeError:
                cached = {}
            self._dirs[directory] = cached
        return cached

    def _type(self, path: str) -> str | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name:
            return "d"
        parent_type = self._type(parent) if parent else "d"
        if parent_type != "d":
            return None
        return self._entries(parent or "/").get(name)

    def read_bytes(self, path: str, limit: int | None = None) -> bytes | None:
        if not self.is_file(path):
            return None
        if path in self._files and limit is None:
            return self._files[path]
        size = self.size(path) or 0
        if limit is not None and size > limit:
            return bytes(self.g.pread(path, limit, 0))
        if size <= READ_LIMIT:
            data = bytes(self.g.read_file(path))
        else:
            with self.downloaded(path) as local:
                data = local.read_bytes()
        self._files[path] = data
        return data

    def is_file(self, path: str) -> bool:
        return self._type(path) == "r"

    def is_dir(self, path: str) -> bool:
        return self._type(path) == "d"

    def listdir(self, path: str) -> list[str]:
        return sorted(self._entries(path)) if self.is_dir(path) else []

    def readlink(self, path: str) -> str | None:
        return str(self.g.readlink(path)) if self._type(path) == "l" else None

    def size(self, path: str) -> int | None:
        return int(self.g.filesize(path)) if self._type(path) is not None else None

    def _changed(self, path: str) -> None:
        self._files.pop(path, None)
        self._dirs.pop(os.path.dirname(path) or "/", None)

    def _mkdir_p(self, directory: str) -> None:
        """mkdir -p; the listing of each directory that gains an entry is forgotten (a new
        /boot/extlinux must show in /boot's listing too)."""
        if self.is_dir(directory):
            return
        self.g.mkdir_p(directory)
        while directory not in ("", "/"):
            directory = os.path.dirname(directory)
            self._dirs.pop(directory or "/", None)

    @contextlib.contextmanager
    def downloaded(self, path: str) -> Iterator[Path]:
        """A guest file copied to a temporary host file for the duration of the block."""
        with tempfile.TemporaryDirectory(prefix="p2vimage-") as tmp:
            local = Path(tmp) / Path(path).name
            self.g.download(path, os.fspath(local))
            yield local

    # -- writing ----------------------------------------------------------------------
    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file; an existing file keeps its inode, owner and mode."""
        existed = self.is_file(path)
        if self._type(path) == "l":
            self.g.rm(path)
        self._mkdir_p(os.path.dirname(path))
        self.g.write(path, data)
        if not existed:
            self.g.chmod(mode, path)
        self._changed(path)

    def remove(self, path: str) -> None:
        """Remove a file or symlink."""
        self.g.rm_f(path)
        self._changed(path)

    def symlink(self, target: str, path: str) -> None:
        """Make ``path`` a symlink to ``target`` (replacing what was there)."""
        self._mkdir_p(os.path.dirname(path))
        self.g.rm_f(path)
        self.g.ln_s(target, path)
        self._changed(path)

    def command(self, argv: list[str]) -> str:
        """Run a program from the guest's own filesystem (chrooted, /dev /proc /sys bound)."""
        self._dirs.clear()  # it may change anything
        self._files.clear()
        try:
            return str(self.g.command(argv))
        except RuntimeError as exc:
            raise StageError(f"{argv[0]} in the guest failed: {str(exc).strip()[-300:]}",
                             hint="run with --debug; the guest's tool may need repair") from exc

    def install_extlinux(self, directory: str) -> None:
        """Install extlinux (the appliance's, i.e. the host's syslinux) into ``directory``."""
        self._mkdir_p(directory)
        self.g.extlinux(directory)
        self._dirs.pop(directory, None)

    def write_mbr(self, code: bytes) -> None:
        """Write boot code into the first 440 bytes of the disk (the table is kept)."""
        self.g.pwrite_device("/dev/sda", code[:440], 0)

    def set_bootable(self, partition: int = 1) -> None:
        """Set the boot flag of ``partition``."""
        self.g.part_set_bootable("/dev/sda", partition, True)

    def swapfile(self, path: str, mib: int) -> None:
        """Create a swap file of ``mib`` MiB."""
        self.g.fallocate64(path, mib << 20)
        self.g.chmod(0o600, path)
        self.g.mkswap_file(path)
        self._changed(path)
