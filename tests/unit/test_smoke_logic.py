"""smoke's pure parts: probe specs, user-mode networks matching the guest, console verdicts,
JUnit output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from p2vimage.core.errors import InputError
from p2vimage.guest.netconf import Iface
from p2vimage.smoke.options import Phase, Probe, ProbeKind, parse_probe, parse_timeout
from p2vimage.smoke.stage import Console, Nic, _failure, junit, netdev_arg, plan_nics


def test_parse_probe() -> None:
    assert parse_probe("tcp:22:SSH-2.0") == Probe(ProbeKind.TCP, 22, "SSH-2.0")
    assert parse_probe("http:80:/index.html:200:It works") == Probe(
        ProbeKind.HTTP, 80, "It works", path="/index.html", status=200)
    assert parse_probe("http:8080") == Probe(ProbeKind.HTTP, 8080, "", path="/", status=200)
    assert parse_probe("ssh:uname -m:i686") == Probe(ProbeKind.SSH, 22, "i686",
                                                     command="uname -m")
    assert type(parse_probe("ssh:true").kind) is ProbeKind
    assert parse_probe("tcp:25:220@192.0.2.5").address == "192.0.2.5"
    for bad in ("ftp:21", "tcp:x", "http:", "ssh:"):
        with pytest.raises(InputError):
            parse_probe(bad)
    assert parse_probe("tcp:25:220 mail: ready").expect == "220 mail: ready"


@pytest.mark.parametrize("bad,word", [
    ("tcp:99999", "99999"), ("tcp:0", "port 0"), ("tcp:65536", "65536"),
    ("http:80:/:99", "status 99"), ("http:80:/:600", "status 600"),
    ("http:80:nopath", "'nopath'"), ("http:0", "port 0"),
    ("tcp:22@999.1.1.1", "999.1.1.1"), ("ssh:uptime@10.0.0.256", "10.0.0.256"),
])
def test_probe_values_out_of_range(bad: str, word: str) -> None:
    """These were accepted: qemu then died on the port, or the VM booted for nothing."""
    with pytest.raises(InputError) as exc:
        parse_probe(bad)
    assert word in exc.value.message


def test_parse_timeout() -> None:
    assert parse_timeout("login=300") == (Phase.LOGIN, 300.0)
    assert parse_timeout("probes=2.5") == (Phase.PROBES, 2.5)
    for bad in ("login", "login=", "boot=5", "kernel=-1", "kernel=0", "kernel=inf", "=5"):
        with pytest.raises(InputError):
            parse_timeout(bad)


def test_netdev_matches_the_static_interface() -> None:
    nic = Nic(Iface("eth1", "static", "203.0.113.10", 24, "203.0.113.1"), "n1")
    nic.forwards[("203.0.113.10", 22)] = 40022
    assert netdev_arg(nic) == (
        "user,id=n1,net=203.0.113.0/24,host=203.0.113.1,dns=203.0.113.2,"
        "dhcpstart=203.0.113.3,hostfwd=tcp:127.0.0.1:40022-203.0.113.10:22")


def test_netdev_when_the_gateway_is_the_guest_or_missing() -> None:
    nic = Nic(Iface("eth0", "static", "192.0.2.1", 30, None), "n0")
    assert netdev_arg(nic) == "user,id=n0,net=192.0.2.0/24,host=192.0.2.2,dns=192.0.2.3," \
                              "dhcpstart=192.0.2.4"
    nic = Nic(Iface("eth0", "static", "198.51.100.20", 24, "198.51.100.1"), "n0")
    assert netdev_arg(nic) == "user,id=n0,net=198.51.100.0/24,host=198.51.100.1," \
                              "dns=198.51.100.2,dhcpstart=198.51.100.3"


def test_dhcp_nic_and_default() -> None:
    assert netdev_arg(Nic(Iface("eth0", "dhcp"), "n0")) == "user,id=n0"
    assert [n.iface for n in plan_nics([])] == [Iface("eth0", "dhcp")]
    assert plan_nics([])[0].address() == "10.0.2.15"


@pytest.mark.parametrize("text,reason", [
    ("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs", "kernel panic"),
    ("Gave up waiting for root file system device.", "root device not found"),
    ("ALERT!  UUID=dead does not exist.  Dropping to a shell!", "root device not found"),
    ("Give root password for maintenance", "boot stopped in a maintenance shell"),
    ("Could not find ramdisk image: /boot/initrd.img-5.10", "bootloader error"),
    ("Loading /boot/initrd.img-5.10.0-32-686...failed: No such file or directory",
     "bootloader error"),
    ("error: file '/boot/vmlinuz-6.1' not found.", "bootloader error"),
    ("Boot failed: not a bootable disk", "bootloader error"),
])
def test_console_failures(text: str, reason: str) -> None:
    found = _failure(f"noise\n{text}\nmore")
    assert found is not None and found.startswith(reason)


def test_healthy_console_is_not_a_failure() -> None:
    assert _failure("Linux version 5.10\nINIT: version 2.96 booting\nns1 login: ") is None


def test_junit() -> None:
    report = {"image": "/x/ns1.img", "seconds": 30.5, "console_tail": ["a]]>b"],
              "checks": [{"name": "phase login", "ok": True, "seconds": 20.0, "detail": ""},
                         {"name": "probe http 80/", "ok": False, "seconds": 9.0,
                          "detail": 'HTTP 500 "oops" <b>'}]}
    root = ET.fromstring(junit(report))
    assert root.attrib == {"name": "p2vimage.smoke", "tests": "2", "failures": "1",
                           "time": "30.5"}
    cases = root.findall("testcase")
    assert [c.attrib["name"] for c in cases] == ["phase login", "probe http 80/"]
    failure = cases[1].find("failure")
    assert failure is not None and failure.attrib["message"] == 'HTTP 500 "oops" <b>'


# What a real serial console sends besides text: cursor saves and resets, charset shifts,
# colours, a title, NULs and bells (seen from getty, systemd and GRUB).
NOISY = ("\x1b7\x1b[1;24r\x1b8Debian GNU/Linux 11 ns1 ttyS0\x1bc\x0f\x1b(B\x1b[0;1;31mFAILED"
         "\x1b[0m unit\x07\x00 \x1b]0;title\x07login: \x9b2J\ufffe")


def test_console_noise_never_breaks_junit_or_json(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(NOISY.encode("utf-8", "surrogatepass") + b"\r\nlast line\x1b[K\r\n")
    tail = Console(log).tail()
    assert tail == ["Debian GNU/Linux 11 ns1 ttyS0FAILED unit login:", "last line"]
    report = {"image": "/x/ns1.img", "seconds": 1.0, "console_tail": [NOISY, "x]]>y"],
              "checks": [{"name": "phase login", "ok": False, "seconds": 1.0,
                          "detail": f"no login prompt; console: {NOISY}"}]}
    root = ET.fromstring(junit(report))  # the old junit() made unparseable XML of this
    out = root.find("system-out")
    assert out is not None and out.text is not None and "login:" in out.text
    assert "\x1b" not in out.text and "\x0f" not in out.text
    failure = root.find("testcase/failure")
    assert failure is not None and "FAILED unit" in failure.attrib["message"]
    assert "\x1b" not in json.dumps({"tail": tail})
