"""doctor: tools, and an accelerator that really works, found by trying (slow: boots)."""

from __future__ import annotations

import json
import os
import time

import pytest

from p2vimage.host import accel
from tests.conftest import p2v

pytestmark = pytest.mark.slow


def test_doctor_probes_and_caches() -> None:
    proc = p2v("--json", "doctor", "--refresh")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["missing"] == []
    chosen = report["accelerator"]
    assert chosen["qemu"] in ("kvm", "tcg") and chosen["guestfs"] in ("kvm", "tcg")
    # Independent check of the verdict: the chosen accelerator boots a kernel here ...
    ok, detail = accel.probe_qemu(chosen["qemu"], chosen["cpu"], accel.TCG_TIMEOUT)
    assert ok, detail
    # ... and when KVM was passed over although /dev/kvm exists, KVM really is broken.
    if chosen["qemu"] == "tcg" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        ok, detail = accel.probe_qemu("kvm", "host", accel.KVM_TIMEOUT)
        assert not ok, "doctor chose TCG but KVM boots"
        assert any("kvm" in t and "failed" in t for t in chosen["tried"])
    started = time.monotonic()
    again = json.loads(p2v("--json", "doctor").stdout)
    assert time.monotonic() - started < 10  # cached: no probe boots again
    assert again["accelerator"]["summary"] == chosen["summary"]
    human = p2v("doctor")
    assert "accelerator: qemu: " in human.stdout
