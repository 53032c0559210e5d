"""A hung libguestfs appliance cannot be timed out from Python (its calls hold the GIL): a
watchdog process kills it, launch is tried once more, and a hung session ends in one clear
StageError instead of a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from p2vimage.core.errors import StageError
from p2vimage.guest import appliance as guest
from p2vimage.host import accel

pytestmark = [pytest.mark.slow]


def _disk(tmp_path: Path) -> Path:
    disk = tmp_path / "blank.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    return disk


def test_hung_launch_is_killed_retried_then_reported(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "LAUNCH_BUDGET", 1)  # every launch "hangs" past 1 s
    reopened: list[int] = []
    real_reopen = guest.Guest._reopen

    def counting_reopen(self: guest.Guest) -> None:
        reopened.append(1)
        real_reopen(self)

    monkeypatch.setattr(guest.Guest, "_reopen", counting_reopen)
    with pytest.raises(StageError, match="could not open"), \
            guest.Guest(_disk(tmp_path), accel.detect(guestfs=True), readonly=True):
        pass
    assert reopened == [1]  # killed, tried once more, killed again, reported


def test_hung_session_is_killed_and_reported(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "SESSION_BUDGET", 2)
    with pytest.raises(StageError, match="stopped answering"), \
            guest.Guest(_disk(tmp_path), accel.detect(guestfs=True), readonly=True) as g:
        time.sleep(4)  # the watchdog fires meanwhile
        g.filesystems()
