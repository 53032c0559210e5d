"""smoke on real converted images under qemu (slow: TCG boots): both fixtures pass on their
own static addresses, broken images fail fast with the reason, two smokes at once, and a
killed runner leaves no qemu behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import P2VIMAGE, REPO, Converted, assert_one_line_error, needs_root, p2v

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]
PAGES = {"bullseye-i386": "p2vimage fixture bullseye-i386 OK",
         "bookworm-amd64": "p2vimage fixture bookworm-amd64 OK"}
STATIC = {"bullseye-i386": "203.0.113.10", "bookworm-amd64": "198.51.100.20"}


def smoke(image: Path, report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return p2v("--json", "smoke", image, "--report-dir", report_dir, *args)


@pytest.mark.parametrize("name", ["bullseye-i386", "bookworm-amd64"])
def test_fixture_boots_and_answers_on_its_own_address(
        converted: Callable[[str], Converted], tmp_path: Path, name: str) -> None:
    image = converted(name).image
    before = os.stat(image)
    # bullseye also runs a command over ssh: a throwaway key, written into the overlay only
    ssh = ["--probe", "ssh:cat /etc/hostname:ns1"] if name.startswith("bullseye") else []
    proc = smoke(image, tmp_path / "r", "--probe", f"http:80:/:200:{PAGES[name]}", *ssh)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["verdict"] == "pass"
    assert [c["name"] for c in report["checks"]] == [
        "phase bootloader", "phase kernel", "phase login", "probe tcp 22", "probe http 80/",
        *(["probe ssh cat /etc/hostname"] if ssh else [])]
    assert report["checks"][3]["detail"].startswith("SSH-2.0")
    static = next(n for n in report["nics"] if n["method"] == "static")
    assert static["address"] == STATIC[name]
    assert set(static["forwards"]) == {f"{STATIC[name]}:22", f"{STATIC[name]}:80"}
    if name.startswith("bullseye"):  # eth0 on DHCP without a DHCP client, eth1 static
        assert [n["name"] for n in report["nics"]] == ["eth0", "eth1"]
    junit = (tmp_path / "r/junit.xml").read_text()
    assert f'tests="{5 + len(ssh) // 2}" failures="0"' in junit
    assert 'name="probe http 80/"' in junit
    assert "login:" in (tmp_path / "r/console.log").read_text()
    after = os.stat(image)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


def debugfs(image: Path, *commands: str) -> None:
    subprocess.run(["debugfs", "-w", "-f", "-", f"{image}?offset=1048576"], check=True,
                   input="\n".join(commands) + "\n", text=True, capture_output=True)


def extlinux_conf(image: Path) -> str:
    return subprocess.run(["debugfs", "-R", "cat /boot/extlinux/extlinux.conf",
                           f"{image}?offset=1048576"], capture_output=True, text=True,
                          check=True).stdout


def break_image(image: Path, how: str, tmp: Path) -> None:
    if how == "no-bootloader":
        with open(image, "r+b") as f:
            f.write(bytes(440))
        return
    if how == "missing-initrd":
        debugfs(image, "rm /boot/initrd.img-5.10.0-32-686")
        return
    conf = extlinux_conf(image)
    if how == "wrong-root":
        conf = conf.replace("root=UUID=", "root=UUID=0000dead-")
    else:  # a kernel that panics: booted without its initrd, virtio_blk is a module it lacks
        conf = re.sub(r"initrd=\S+ ", "", conf)
    local = tmp / "extlinux.conf"
    local.write_text(conf)
    debugfs(image, "rm /boot/extlinux/extlinux.conf",
            f"write {local} /boot/extlinux/extlinux.conf")


@pytest.mark.parametrize("how,phase,reason", [
    ("no-bootloader", "phase bootloader", ""),
    ("wrong-root", "phase kernel", "root device not found"),
    ("missing-initrd", "phase bootloader", "bootloader error"),
    ("kernel-panic", "phase kernel", "kernel panic"),
])
def test_broken_images_fail_fast(converted: Callable[[str], Converted], tmp_path: Path,
                                 how: str, phase: str, reason: str) -> None:
    image = tmp_path / "broken.img"
    subprocess.run(["cp", "--sparse=always", str(converted("bullseye-i386").image), str(image)],
                   check=True)
    break_image(image, how, tmp_path)
    started = time.monotonic()
    proc = p2v("smoke", image, "--report-dir", tmp_path / "r", "--timeout", "bootloader=40",
               "--timeout", "kernel=150", "--timeout", "login=200")
    elapsed = time.monotonic() - started
    assert_one_line_error(proc, 1, f"failed at {phase}", reason, "console:")
    report = json.loads((tmp_path / "r/report.json").read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == [phase]
    limit = {"phase bootloader": 40, "phase kernel": 40 + 150}[phase]
    assert elapsed < limit + 30  # within the phase timeout (plus start and report)
    assert 'failures="1"' in (tmp_path / "r/junit.xml").read_text()


def test_two_smokes_at_once_and_no_qemu_left(converted: Callable[[str], Converted],
                                             tmp_path: Path) -> None:
    image = converted("bullseye-i386").image
    procs = [subprocess.Popen([*P2VIMAGE, "--json", "smoke", str(image), "--report-dir",
                               str(tmp_path / f"r{i}")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    ports = [json.loads(out)["nics"][1]["forwards"] for out, _ in outs]
    assert ports[0] != ports[1]
    assert not _qemus(tmp_path)


def _qemus(tmp_path: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if str(tmp_path) in line]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_runner_leaves_no_qemu(converted: Callable[[str], Converted], tmp_path: Path,
                                      sig: signal.Signals) -> None:
    image = converted("bullseye-i386").image
    proc = subprocess.Popen([*P2VIMAGE, "smoke", str(image), "--report-dir",
                             str(tmp_path / "r")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _qemus(tmp_path):
        assert time.monotonic() < deadline, "qemu never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
    time.sleep(1.0)
    assert not _qemus(tmp_path)


def test_bad_probe_and_unknown_address(converted: Callable[[str], Converted]) -> None:
    assert_one_line_error(p2v("smoke", "/nonexistent.img"), 2, "does not exist")
    proc = p2v("smoke", converted("bullseye-i386").image, "--probe", "bogus:1")
    assert_one_line_error(proc, 2, "bogus")
    proc = p2v("smoke", converted("bullseye-i386").image, "--probe", "tcp:22@192.0.2.99")
    assert_one_line_error(proc, 2, "192.0.2.99")
