"""sync --accept-new-host-key against the real loopback sshd (tests/rig/sshd.py), as README
promises: a host never seen before is refused without the flag and trusted with it (its key
recorded), and a host whose key CHANGED is refused even with the flag."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, needs_root, p2v
from tests.rig.sshd import start_sshd

pytestmark = [pytest.mark.root, needs_root]


def manifest(root: Path) -> dict[str, tuple[str, int, int]]:
    """path → (sha256 or link target, mode, mtime_ns) of everything under ``root``."""
    out: dict[str, tuple[str, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        what = os.readlink(path) if path.is_symlink() else (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
        out[str(path.relative_to(root))] = (what, st.st_mode, st.st_mtime_ns)
    return out


def known_keys(known_hosts: Path, port: int) -> list[str]:
    """The key blobs known_hosts holds for 127.0.0.1:port (hashed names too)."""
    proc = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{port}", "-f", known_hosts],
                          capture_output=True, text=True, check=False)
    return [line.split()[2] for line in proc.stdout.splitlines()
            if line.strip() and not line.startswith("#")]


def new_host_key(top: Path, proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """Stop sshd, give it a new host key and start it again on the same address and port."""
    proc.kill()
    proc.wait()
    for name in ("host_key", "host_key.pub"):
        (top / name).unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", top / "host_key"],
                   check=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(top / "sshd_config")])
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert proc.poll() is None and time.monotonic() < deadline, "sshd did not restart"
        time.sleep(0.1)


def test_accept_new_host_key_trusts_a_new_host_never_a_changed_key(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc/hostname").write_text("legacy\n")
    (source / "srv").mkdir()
    (source / "srv/data").write_bytes(os.urandom(100_000))
    top = tmp_path / "sshd"
    proc, server = start_sshd(top)
    try:
        known = tmp_path / "known_hosts"
        known.write_text("")
        staging, work = tmp_path / "staging", tmp_path / "staging.sync"
        args = [server.url(source), staging, "--identity", server.key,
                "--ssh-option", f"UserKnownHostsFile={known}"]
        # a host never seen before: refused without the flag, nothing written
        assert_one_line_error(p2v("sync", *args), 3, "host key", "127.0.0.1")
        assert known.read_text() == ""
        assert not staging.exists() and not work.exists()
        # ... trusted with it: the sync succeeds and the host's key is recorded
        accepted = p2v("--json", "sync", *args, "--accept-new-host-key")
        assert accepted.returncode == 0, accepted.stderr[-2000:]
        assert json.loads(accepted.stdout)["unreadable"] == []
        assert manifest(staging) == manifest(source)
        host_key = (top / "host_key.pub").read_text().split()[1]
        assert known_keys(known, server.port) == [host_key]
        # the recorded key is what ssh checks from now on: a plain sync passes
        again = p2v("sync", *args)
        assert again.returncode == 0, again.stderr[-2000:]
        # the host key changes: refused even with the flag; known_hosts and staging untouched
        proc = new_host_key(top, proc, server.port)
        assert (top / "host_key.pub").read_text().split()[1] != host_key
        (source / "srv/after-the-change").write_text("must not arrive\n")
        known_before, staging_before = known.read_bytes(), manifest(staging)
        changed = p2v("sync", *args, "--accept-new-host-key")
        assert_one_line_error(changed, 3, "host key", "changed", "127.0.0.1")
        assert known.read_bytes() == known_before
        assert manifest(staging) == staging_before
        assert not (staging / "srv/after-the-change").exists()
    finally:
        proc.kill()
        proc.wait()
