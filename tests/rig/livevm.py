"""A legacy host, live: a converted fixture image booted under qemu (user-mode network,
hostfwd for ssh), with a throwaway root key written into its overlay only and its own host
keys pinned. ``p2vimage sync`` then copies its real ``/`` while /proc, /sys, /dev and /run are
mounted there."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from p2vimage.disk.e2fs import E2fsFiles
from p2vimage.guest import record as guestrecord
from p2vimage.host import accel
from p2vimage.smoke import stage as smoke
from p2vimage.smoke.options import Probe, ProbeKind, SmokeOptions


@dataclasses.dataclass
class LiveVM:
    port: int
    key: Path
    known_hosts: Path
    console: Path

    def url(self, path: str = "/") -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def args(self) -> list[str]:
        return ["--identity", str(self.key), "--ssh-option",
                f"UserKnownHostsFile={self.known_hosts}"]

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
             "root@127.0.0.1", command], capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def live_vm(image: Path, tmp: Path) -> Iterator[LiveVM]:
    """Boot ``image`` (never modified: a qcow2 overlay takes the writes) until ssh answers."""
    view = E2fsFiles(image)
    chosen = accel.detect(guestfs=True)
    nics = smoke.plan_nics(list(guestrecord.for_image(image).interfaces))
    nic = next((n for n in nics if n.iface.method == "static"), nics[0])
    port = smoke.free_port()
    nic.forwards[(nic.address(), 22)] = port
    overlay = tmp / "live.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw",
                    str(overlay)], check=True)
    opts = SmokeOptions(image=image)
    smoke.ssh_access(opts, chosen, overlay, tmp, view, [port])
    console, firmware = tmp / "console.log", tmp / "firmware.log"
    for path in (console, firmware):
        path.write_text("")
    argv = smoke.qemu_argv(opts, chosen, overlay, console, firmware, nics)
    with smoke.vm(argv) as proc:
        check, _ = smoke.watch(smoke.Console(console), proc, re.compile(r"login:\s*$", re.M),
                               400, "login")
        assert check.ok, (check.detail, console.read_text()[-3000:])
        live = LiveVM(port, tmp / "id_ed25519", tmp / "known_hosts", console)
        probe = smoke.run_probes([(Probe(ProbeKind.TCP, 22, "SSH-2.0"), port)], 120, None)
        assert probe[0].ok, probe[0].detail
        yield live
