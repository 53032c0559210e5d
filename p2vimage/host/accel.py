"""Which accelerator really works here, for qemu and for libguestfs, found by trying it.

``/dev/kvm`` existing proves nothing: under broken nested virtualisation qemu aborts
(``failed to set MSR 0x10a`` with ``-cpu host``) or hangs with other CPU models. So the probe
boots the host's own kernel with no root filesystem under each candidate and waits, with a
timeout, for the kernel to reach its "cannot mount root" panic: only a kernel that ran all of its
early init proves the accelerator. Without a readable host kernel a tiny boot sector that writes
to the serial port is the fallback probe. libguestfs is then launched with the chosen
accelerator (``LIBGUESTFS_BACKEND_SETTINGS=force_tcg`` for TCG). Results are cached per host,
keyed by hostname, kernel release, qemu version and /dev/kvm, so the cost is paid once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from p2vimage.core.errors import PreconditionError, StageError
from p2vimage.core.paths import cache_dir
from p2vimage.host import run as runmod

log = logging.getLogger("p2vimage")

QEMU = "qemu-system-x86_64"
PROBE_OK = ("VFS: Unable to mount root", "Kernel panic", "P2VOK")
KVM_TIMEOUT = 12.0
TCG_TIMEOUT = 120.0
GUESTFS_TIMEOUT = 300.0

# 16-bit boot sector: xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8; print loop; cli; hlt.
_BOOT_CODE = bytes.fromhex("31c08ed8be167cbaf803ac84c07403eeebf8faf4ebfc") + b"P2VOK\r\n\0"
BOOT_SECTOR = _BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa"


class NoAccelerator(PreconditionError):
    """qemu boots the probe under no accelerator at all (not even TCG)."""


@dataclasses.dataclass(frozen=True)
class Accel:
    """The accelerator choice for qemu and libguestfs on this host."""

    qemu: str  # "kvm" or "tcg"
    cpu: str  # the -cpu model that worked
    guestfs: str  # "kvm" or "tcg"
    key: Mapping[str, str]
    tried: tuple[str, ...] = ()

    def qemu_args(self) -> list[str]:
        """The qemu arguments selecting the accelerator and CPU model."""
        return ["-accel", self.qemu, "-cpu", self.cpu]

    def guestfs_env(self) -> dict[str, str]:
        """Environment for libguestfs so its appliance uses the same accelerator."""
        env = {"LIBGUESTFS_BACKEND": "direct"}
        if self.guestfs == "tcg":
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        return env

    def describe(self) -> str:
        """One line for logs and reports."""
        return f"qemu: {self.qemu} (-cpu {self.cpu}); libguestfs: {self.guestfs}"


def host_kernel() -> Path | None:
    """The newest readable kernel image under /boot (libguestfs's appliance needs one too)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    for kernel in reversed(kernels):
        if os.access(kernel, os.R_OK):
            return kernel
    return None


def _qemu_version() -> str:
    proc = runmod.run([QEMU, "--version"], check=False)
    return proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else "unknown"


def probe_key() -> dict[str, str]:
    """What the cached result depends on."""
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "qemu": _qemu_version(),
        "kvm_device": str(os.access("/dev/kvm", os.R_OK | os.W_OK)),
    }


def probe_qemu(accel: str, cpu: str, timeout: float) -> tuple[bool, str]:
    """Boot a probe under ``accel``/``cpu``; return (worked, detail)."""
    with tempfile.TemporaryDirectory(prefix="p2vimage-accel-") as tmp:
        serial = Path(tmp) / "serial.log"
        kernel = host_kernel()
        argv = [QEMU, "-accel", accel, "-cpu", cpu, "-m", "256", "-nodefaults",
                "-display", "none", "-no-reboot", "-serial", f"file:{serial}"]
        if kernel is not None:
            argv += ["-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 quiet loglevel=4"]
        else:
            disk = Path(tmp) / "boot.img"
            disk.write_bytes(BOOT_SECTOR)
            argv += ["-drive", f"file={disk},format=raw,if=ide"]
        proc = runmod.popen(argv, stdout=runmod.DEVNULL)
        started = time.monotonic()
        try:
            while time.monotonic() - started < timeout:
                text = serial.read_text(errors="replace") if serial.exists() else ""
                if any(marker in text for marker in PROBE_OK):
                    return True, f"booted in {time.monotonic() - started:.1f} s"
                if proc.poll() is not None:
                    err = runmod.last_line(proc.stderr.read() if proc.stderr else b"")
                    return False, f"qemu exited {proc.returncode}: {err}"
                time.sleep(0.1)
            return False, f"no progress within {timeout:g} s (hung)"
        finally:
            runmod.stop(proc)


_GUESTFS_PROBE = """
import guestfs
g = guestfs.GuestFS(python_return_dict=True)
g.add_drive_scratch(16 * 1024 * 1024)
g.launch()
g.shutdown()
g.close()
print("ok")
"""


def probe_guestfs(accel: str, timeout: float = GUESTFS_TIMEOUT) -> tuple[bool, str]:
    """Launch a libguestfs appliance under ``accel`` in a child process (it may hang)."""
    env = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": ""}
    if accel == "tcg":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    started = time.monotonic()
    try:
        proc = runmod.run([sys.executable, "-c", _GUESTFS_PROBE], check=False, env=env,
                          timeout=timeout, what="libguestfs probe")
    except StageError as exc:
        return False, exc.message
    if proc.returncode == 0 and "ok" in proc.stdout:
        return True, f"launched in {time.monotonic() - started:.1f} s"
    return False, runmod.last_line(proc.stderr) or f"exit {proc.returncode}"


def _cache_file() -> Path:
    return cache_dir() / "accel" / f"{platform.node() or 'localhost'}.json"


def detect(refresh: bool = False, guestfs: bool = True) -> Accel:
    """The working accelerators, from the cache when its key still matches."""
    runmod.require_tools([QEMU])
    key = probe_key()
    cache = _cache_file()
    if not refresh and cache.exists():
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key and (data.get("guestfs") or not guestfs):
                return Accel(data["qemu"], data["cpu"], data.get("guestfs") or "tcg", key,
                             tuple(data.get("tried", ())))
        except (ValueError, KeyError, TypeError):
            log.debug("ignoring unreadable accelerator cache %s", cache)
    tried: list[str] = []
    candidates: list[tuple[str, str, float]] = []
    if key["kvm_device"] == "True":
        candidates += [("kvm", "host", KVM_TIMEOUT), ("kvm", "qemu64", KVM_TIMEOUT)]
    candidates.append(("tcg", "max", TCG_TIMEOUT))
    chosen: tuple[str, str] | None = None
    for accel, cpu, timeout in candidates:
        ok, detail = probe_qemu(accel, cpu, timeout)
        tried.append(f"qemu {accel} -cpu {cpu}: {'ok' if ok else 'failed'} ({detail})")
        log.info("accelerator probe: qemu %s -cpu %s: %s", accel, cpu, detail)
        if ok:
            chosen = (accel, cpu)
            break
    if chosen is None:
        raise NoAccelerator(
            "qemu cannot boot a probe kernel with any accelerator",
            hint="check qemu-system-x86 is installed; run 'p2vimage --debug doctor --refresh'",
        )
    gfs_accel = ""
    if guestfs:
        # libguestfs runs the same qemu: only try KVM for it when qemu's KVM probe passed.
        for accel in (["kvm"] if chosen[0] == "kvm" else []) + ["tcg"]:
            ok, detail = probe_guestfs(accel)
            tried.append(f"libguestfs {accel}: {'ok' if ok else 'failed'} ({detail})")
            log.info("accelerator probe: libguestfs %s: %s", accel, detail)
            if ok:
                gfs_accel = accel
                break
        if not gfs_accel:
            raise PreconditionError(
                "libguestfs cannot launch its appliance with any accelerator",
                hint="run 'libguestfs-test-tool' to see why (a readable /boot/vmlinuz-* is needed)",
            )
    result = Accel(chosen[0], chosen[1], gfs_accel or "tcg", key, tuple(tried))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "qemu": result.qemu, "cpu": result.cpu,
                               "guestfs": gfs_accel, "tried": tried}, indent=2))
    tmp.replace(cache)
    return result
