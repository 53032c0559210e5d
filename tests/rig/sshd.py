"""A real OpenSSH server on 127.0.0.1 with its own host key and an authorised test key: the
legacy host of the fast sync tier (the source path is a local tree), also used by the bench."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time
from pathlib import Path


@dataclasses.dataclass
class Sshd:
    port: int
    key: Path
    known_hosts: Path
    top: Path

    def args(self, *extra: str) -> list[str]:
        return ["--identity", str(self.key), "--ssh-option",
                f"UserKnownHostsFile={self.known_hosts}", *extra]

    def url(self, path: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(top: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], Sshd]:
    top.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "user_key"):
        if not (top / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(top / name)], check=True)
    shutil.copy(top / "user_key.pub", top / "authorized_keys")
    port = free_port()
    (top / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {top / 'host_key'}\n"
        f"AuthorizedKeysFile {top / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile {top / 'sshd.pid'}\nLogLevel ERROR\n{extra}")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(top / "sshd_config")])
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None and time.monotonic() < deadline, "sshd did not start"
        time.sleep(0.1)
    host_pub = (top / "host_key.pub").read_text().split()
    (top / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return proc, Sshd(port, top / "user_key", top / "known_hosts", top)
