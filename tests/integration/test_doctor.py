"""doctor: tools, and an accelerator that really works, found by trying (slow: boots).

The verdict is checked with this file's own probe, not the product's: qemu run directly on
the host's kernel with no root filesystem, its console on stdout. A kernel that ran its early
init under an accelerator reaches the "cannot mount root" panic; one that aborts (nested KVM
with ``-cpu host``: "failed to set MSR 0x10a") or hangs never does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import p2v

pytestmark = pytest.mark.slow

# The candidates in doctor's order of preference (README, "doctor and accelerators").
CANDIDATES = [("kvm", "host"), ("kvm", "qemu64"), ("tcg", "max")]
KERNEL_RAN = re.compile(rb"VFS: Unable to mount root|Kernel panic|cannot open root device",
                        re.IGNORECASE)
TIMEOUT = {"kvm": 20.0, "tcg": 180.0}  # a working KVM panics in about a second, TCG in ~10 s


def host_kernel() -> Path:
    kernels = [k for k in Path("/boot").glob("vmlinuz-*") if os.access(k, os.R_OK)]
    assert kernels, "no readable /boot/vmlinuz-* (ci/setup installs linux-image-amd64)"
    return max(kernels, key=lambda k: k.stat().st_mtime)


def kernel_boots(accelerator: str, cpu: str) -> tuple[bool, str]:
    """Boot the host kernel under ``accelerator``/``cpu``: (reached its root panic, detail)."""
    argv = ["qemu-system-x86_64", "-accel", accelerator, "-cpu", cpu, "-m", "256",
            "-nographic", "-no-reboot", "-kernel", str(host_kernel()),
            "-append", "console=ttyS0 panic=-1"]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=TIMEOUT[accelerator], check=False)
        out, end = proc.stdout + proc.stderr, f"qemu exit {proc.returncode}"
    except subprocess.TimeoutExpired as exc:  # run() has killed qemu
        out, end = (exc.stdout or b"") + (exc.stderr or b""), "hung (killed)"
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    detail = f"{accelerator} -cpu {cpu}: {end} after {time.monotonic() - started:.1f} s; " \
             f"last lines: {lines[-3:]}"
    return KERNEL_RAN.search(out) is not None, detail


def test_doctor_probes_and_caches() -> None:
    proc = p2v("--json", "doctor", "--refresh")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["missing"] == []
    chosen = report["accelerator"]
    assert chosen["qemu"] in ("kvm", "tcg") and chosen["guestfs"] in ("kvm", "tcg")
    # The chosen accelerator boots a kernel by this test's own probe ...
    ok, detail = kernel_boots(chosen["qemu"], chosen["cpu"])
    assert ok, detail
    # ... and every candidate doctor passed over for it does not.
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    passed_over = [c for c in CANDIDATES[:CANDIDATES.index((chosen["qemu"], chosen["cpu"]))]
                   if c[0] != "kvm" or kvm_usable]
    for accelerator, cpu in passed_over:
        ok, detail = kernel_boots(accelerator, cpu)
        assert not ok, f"doctor passed over {accelerator} -cpu {cpu}, but it boots: {detail}"
        assert f"qemu {accelerator} -cpu {cpu}: failed" in "\n".join(chosen["tried"])
    if chosen["qemu"] == "tcg" and kvm_usable:
        assert ("kvm", "host") in passed_over
    started = time.monotonic()
    again = json.loads(p2v("--json", "doctor").stdout)
    assert time.monotonic() - started < 10  # cached: no probe boots again
    assert again["accelerator"]["summary"] == chosen["summary"]
    human = p2v("doctor")
    assert "accelerator: qemu: " in human.stdout
