"""The cutover preflight on this host: specs whose targets are all local, so its checks run
through the real transports (sh, an argv prefix) — they only look (command -v, test -w),
never change anything. The netns tier proves the runner refuses before any change."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from p2vimage.core.errors import PreconditionError
from p2vimage.cutover import plan as planmod
from p2vimage.cutover import preflight, runner
from p2vimage.cutover import spec as specmod
from p2vimage.cutover.steps import Need
from tests.unit.test_cutover_spec import SPEC, write

LOCAL = """
name = "ns1"
public_ip = "192.0.2.10/24"
rc_local = "{rc}"
[legacy]
interface = "lo"
maintenance_ip = "198.51.100.10/24"
stop = [["true"]]
start = [["true"]]
[legacy.{legacy}]
[node]
interface = "lo"
maintenance_ip = "198.51.100.20/24"
bridge = "br2004"
arping = "{arping}"
[node.local]
[probe]
expect = "instance"
legacy_expect = "legacy"
[probe.local]
[hooks]
final_sync = [["true"]]
refresh = []
volume = []
boot = [["true"]]
unboot = [{unboot}]
"""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="/proc/sys knobs: root only")


def local_spec(tmp_path: Path, *, arping: str = "true", unboot: str = '["true"]',
               legacy: str = "local") -> specmod.Spec:
    text = LOCAL.format(rc=tmp_path / "rc.local", arping=arping, unboot=unboot, legacy=legacy)
    return specmod.load(write(tmp_path, text))


def check(spec: specmod.Spec) -> None:
    transports = runner._transports(spec)
    try:
        preflight.check(spec, transports, planmod.build(spec))
    finally:
        transports.close()


def test_needs_cover_every_host_and_the_undos(tmp_path: Path) -> None:
    spec = specmod.load(write(tmp_path, SPEC))
    needs = preflight.needs(spec, planmod.build(spec))
    programs = {(n.target, n.program) for n in needs if n.program}
    assert {("legacy", "ip"), ("legacy", "/etc/init.d/util-vserver"), ("node", "ip"),
            ("node", "arping"), ("probe", "curl"), ("local", "ssh"),
            ("local", "ip")} <= programs  # ip: the probe's prefix, ip netns exec
    unboot = next(n for n in needs if n.target == "local" and n.program == "sh")
    assert not unboot.optional  # the undo of boot, a shell string: sh on this host
    assert ("node", "/proc/sys/net/ipv4/conf/eth0/proxy_arp") in \
        {(n.target, n.writable) for n in needs}
    (legacy_arping,) = [n for n in needs if n.target == "legacy" and n.program == "arping"]
    assert legacy_arping.optional  # the rollback's gratuitous ARP: useful, not required


def test_check_command_reports_each_unmet_need(tmp_path: Path) -> None:
    tool = tmp_path / "tool with space"
    tool.write_text("#!/bin/sh\n")
    group = [Need("local", "sh"), Need("local", "p2vimage-no-such-program"),
             Need("local", str(tool)), Need("local", writable=str(tmp_path / "nowhere/x")),
             Need("local", "p2vimage-no-such-either", optional="it would be nice")]
    proc = subprocess.run(["sh", "-c", preflight.command(group).shell or ""],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "p2vimage-preflight: p2vimage-no-such-program not found",
        f"p2vimage-preflight: {tool} missing or not executable",
        f"p2vimage-preflight: {tmp_path / 'nowhere/x'} not writable",
        "p2vimage-preflight: p2vimage-no-such-either not found (optional: it would be nice)"]
    tool.chmod(0o755)
    only_optional = [group[0], group[2], group[4]]
    proc = subprocess.run(["sh", "-c", preflight.command(only_optional).shell or ""],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "optional" in proc.stdout


@needs_root
def test_check_passes_when_everything_is_there(tmp_path: Path) -> None:
    check(local_spec(tmp_path))


@needs_root
def test_check_refuses_naming_host_and_program(tmp_path: Path) -> None:
    spec = local_spec(tmp_path, arping="p2vimage-no-such-arping",
                      unboot='["p2vimage-no-such-unboot", "x"]')
    with pytest.raises(PreconditionError) as err:
        check(spec)
    line = err.value.one_line()
    assert "\n" not in line and "nothing changed" in line
    assert "this host: p2vimage-no-such-unboot not found" in line  # needed by a rollback
    assert "the node (this host): p2vimage-no-such-arping not found" in line
    assert err.value.exit_code == 3


@needs_root
def test_check_refuses_a_host_it_cannot_run_commands_on(tmp_path: Path) -> None:
    text = LOCAL.format(rc=tmp_path / "rc.local", arping="true", unboot='["true"]',
                        legacy="local").replace("[legacy.local]",
                                                '[legacy.local]\nprefix = ["false"]')
    with pytest.raises(PreconditionError, match=r"the legacy host \(this host via false\): "
                                                r"cannot run commands"):
        check(specmod.load(write(tmp_path, text)))
