"""``smoke``: boot the image under qemu (no external kernel, image never modified), watch the
serial console through its phases, probe services on the guest's own addresses, report.

The guest keeps its own network configuration: each configured interface gets a NIC on a
user-mode network whose subnet and gateway match it, with host ports forwarded to the
guest's own address. Phases fail fast on the console's known failure lines. The VM always
dies with the run (also on Ctrl-C or when the runner is killed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from p2vimage.core.errors import InputError, StageError
from p2vimage.core.log import log, step
from p2vimage.core.text import printable
from p2vimage.disk.e2fs import E2fsFiles
from p2vimage.guest import record as guestrecord
from p2vimage.guest.netconf import Iface
from p2vimage.host import accel as accelmod
from p2vimage.host import run as runmod
from p2vimage.smoke.options import Probe, ProbeKind, SmokeOptions

TOOLS = ("qemu-system-x86_64", "qemu-img")
BOOTLOADER_OK = re.compile(r"Linux version|Decompressing Linux|Booting the kernel|"
                           r"Loading Linux|early console|Probing EDD")
# The real init has started (the initramfs, where a missing root shows, is still "kernel").
KERNEL_OK = re.compile(r"INIT: version|Run /sbin/init|systemd\[1\]|Welcome to|Starting init")
FAILURES = [
    (re.compile(r"Kernel panic[^\n]*"), "kernel panic"),
    (re.compile(r"VFS: Unable to mount root[^\n]*"), "cannot mount the root filesystem"),
    (re.compile(r"Gave up waiting for root[^\n]*|ALERT![^\n]*does not exist[^\n]*"),
     "root device not found"),
    (re.compile(r"Give root password for maintenance|Dropping to a shell|\(initramfs\) "),
     "boot stopped in a maintenance shell"),
    (re.compile(r"Could not find (?:kernel|ramdisk) image[^\n]*|error: file [^\n]*not found"
                r"|Loading \S+\.\.\.failed[^\n]*"
                r"|error: no such partition[^\n]*|Boot failed[^\n]*|No bootable device[^\n]*"
                r"|Missing operating system|Invalid partition table"), "bootloader error"),
]


@dataclasses.dataclass
class Check:
    """One phase or probe: its verdict, time and detail."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (chosen by the kernel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Nic:
    """One VM NIC on a user-mode network matching a guest interface."""

    iface: Iface
    netdev: str
    forwards: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)

    def address(self) -> str:
        """The address the guest will have on this NIC."""
        return self.iface.address or "10.0.2.15"


def plan_nics(ifaces: list[Iface]) -> list[Nic]:
    """One NIC per interface (a DHCP NIC when the guest configures none)."""
    if not ifaces:
        ifaces = [Iface("eth0", "dhcp")]
    return [Nic(iface, f"n{i}") for i, iface in enumerate(ifaces)]


def netdev_arg(nic: Nic) -> str:
    """The ``-netdev user,…`` argument for a NIC and its port forwards."""
    parts = [f"user,id={nic.netdev}"]
    net = nic.iface.network
    if net is not None and nic.iface.address:
        guest = ipaddress.IPv4Address(nic.iface.address)
        # user-mode networking needs room for its host and DNS addresses: at least a /24
        slirp = net if net.prefixlen <= 24 else net.supernet(new_prefix=24)
        gateway = ipaddress.IPv4Address(nic.iface.gateway) if nic.iface.gateway else None
        on_link = [h for h in net.hosts() if h != guest] or [
            h for h in slirp.hosts() if h != guest]
        host = gateway if gateway is not None and gateway in net and gateway != guest \
            else on_link[0]
        free = (h for h in slirp.hosts() if h not in (guest, host))
        dns = next(free)
        parts += [f"net={slirp}", f"host={host}", f"dns={dns}", f"dhcpstart={next(free)}"]
    for (addr, port), host_port in nic.forwards.items():
        parts.append(f"hostfwd=tcp:127.0.0.1:{host_port}-{addr}:{port}")
    return ",".join(parts)


def qemu_argv(opts: SmokeOptions, chosen: accelmod.Accel, overlay: Path, console: Path,
              firmware: Path, nics: list[Nic]) -> list[str]:
    """The qemu command line: the image's overlay on virtio, serial console to a file."""
    argv = ["qemu-system-x86_64", *chosen.qemu_args(), "-smp", str(opts.settings.smp),
            "-m", str(opts.settings.memory_mib), "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-chardev", f"file,id=fw,path={firmware}",
            "-device", "isa-debugcon,iobase=0x402,chardev=fw"]
    for i, nic in enumerate(nics):
        argv += ["-netdev", netdev_arg(nic),
                 "-device", f"virtio-net-pci,netdev={nic.netdev},mac=52:54:00:12:34:{i + 0x56:02x}"]
    return argv


class Console:
    """The serial log, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> list[str]:
        """The last lines, safe for JSON, JUnit and the one-line error (no escapes)."""
        clean = printable(self.text())
        return [line.rstrip() for line in clean.splitlines() if line.strip()][-lines:]


def _failure(text: str) -> str | None:
    for pattern, reason in FAILURES:
        m = pattern.search(text)
        if m:
            return f"{reason}: {m.group(0).strip()[:160]}"
    return None


def watch(console: Console | _Both, proc: Any, pattern: re.Pattern[str], timeout: float,
          name: str, since: int = 0) -> tuple[Check, int]:
    """Wait for ``pattern`` on the console after offset ``since``; fail fast on failures.

    Returns where the match starts: a marker that ends this phase may be a later phase's
    own (a quiet kernel prints nothing before ``login:``), and that phase must see it too.
    """
    started = time.monotonic()
    while True:
        text = console.text()
        m = pattern.search(text, since)
        failure = _failure(text[since:])
        if failure:
            return Check(name, False, time.monotonic() - started, failure), len(text)
        if m:
            return Check(name, True, time.monotonic() - started), m.start()
        if proc.poll() is not None:
            return Check(name, False, time.monotonic() - started,
                         f"the VM stopped (qemu exit {proc.returncode})"), len(text)
        if time.monotonic() - started > timeout:
            return Check(name, False, time.monotonic() - started,
                         f"no progress within {timeout:g} s"), len(text)
        time.sleep(0.25)


def probe_once(probe: Probe, port: int, ssh: list[str] | None) -> tuple[bool, str]:
    """Try a probe once through its forwarded host port."""
    try:
        if probe.kind == ProbeKind.TCP:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(5)
                banner = s.recv(256).decode("utf-8", "replace").strip()
            return banner.startswith(probe.expect), banner[:80] or "no banner"
        if probe.kind == ProbeKind.HTTP:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", probe.path, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read(1 << 20).decode("utf-8", "replace")
            conn.close()
            ok = resp.status == probe.status and probe.expect in body
            return ok, f"HTTP {resp.status}, {len(body)} bytes"
        assert ssh is not None
        proc = runmod.run([*ssh, "-p", str(port), "root@127.0.0.1", probe.command],
                          check=False, timeout=30, what="ssh probe")
        return proc.returncode == 0 and probe.expect in proc.stdout, \
            (proc.stdout.strip() or proc.stderr.strip())[-120:]
    except (OSError, http.client.HTTPException, StageError) as exc:
        return False, str(exc)[:120]


def run_probes(probes: list[tuple[Probe, int]], timeout: float,
               ssh: list[str] | None) -> list[Check]:
    """Retry every probe until it passes or the probe phase times out."""
    started = time.monotonic()
    pending = dict(enumerate(probes))
    checks: dict[int, Check] = {}
    last: dict[int, str] = {}
    while pending and time.monotonic() - started < timeout:
        for i, (probe, port) in list(pending.items()):
            ok, detail = probe_once(probe, port, ssh)
            last[i] = detail
            if ok:
                checks[i] = Check(f"probe {probe.name}", True, time.monotonic() - started,
                                  detail)
                del pending[i]
        if pending:
            time.sleep(1.0)
    for i, (probe, _) in pending.items():
        checks[i] = Check(f"probe {probe.name}", False, time.monotonic() - started,
                          f"not answering as expected within {timeout:g} s: {last.get(i)}")
    return [checks[i] for i in sorted(checks)]


@contextlib.contextmanager
def vm(argv: list[str]) -> Iterator[Any]:
    """Run qemu; kill it on the way out, whatever happens."""
    proc = runmod.popen(argv, stdout=runmod.DEVNULL, stderr=runmod.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except runmod.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _addresses(nics: list[Nic]) -> dict[str, Nic]:
    return {nic.address(): nic for nic in nics}


def ssh_access(opts: SmokeOptions, chosen: accelmod.Accel, overlay: Path, tmp: Path,
               view: E2fsFiles, ports: list[int]) -> list[str]:
    """A throwaway key authorised for root in the overlay only; the guest's own host keys
    pinned in a known_hosts file (host keys are verified, as always)."""
    from p2vimage.guest.appliance import Guest

    key = tmp / "id_ed25519"
    runmod.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], what="ssh-keygen")
    known = []
    for name in ("ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key.pub", "ssh_host_rsa_key.pub"):
        data = view.read_bytes(f"/etc/ssh/{name}")
        if data:
            kind, blob = data.decode().split()[:2]
            known += [f"[127.0.0.1]:{port} {kind} {blob}" for port in ports]
    if not known:
        raise InputError(f"{opts.image} has no ssh host key", hint="drop the ssh probes")
    (tmp / "known_hosts").write_text("\n".join(known) + "\n")
    with Guest(overlay, chosen, readonly=False, image_format="qcow2") as guest:
        root = guest.inspect_roots()
        guest.mount_root(root[0] if root else "/dev/sda1", writable=True)
        old = guest.read_bytes("/root/.ssh/authorized_keys") or b""
        guest.write("/root/.ssh/authorized_keys", old + (tmp / "id_ed25519.pub").read_bytes(),
                    mode=0o600)
    return ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o",
            "IdentitiesOnly=yes", "-o", "ConnectTimeout=5", "-F", "/dev/null"]


def report_dir_of(opts: SmokeOptions) -> Path:
    """Where the reports go: ``--report-dir``, else ``IMAGE.smoke`` beside the image."""
    image = opts.image.resolve()
    return opts.report_dir or image.with_name(image.name + ".smoke")


def check_options(opts: SmokeOptions) -> None:
    """Refuse bad settings before anything starts: the login pattern, the timeouts, the
    report directory (a file in the way, no writable directory to make it in)."""
    try:
        re.compile(opts.settings.login_regex, re.M)
    except re.error as exc:
        raise InputError(f"--login-regex {opts.settings.login_regex!r} is not a regular "
                         "expression "
                         f"({exc})", hint="write a Python regular expression, like "
                         "'login:\\s*$'") from None
    for name in ("bootloader_timeout", "kernel_timeout", "login_timeout", "probe_timeout"):
        value = getattr(opts.settings, name)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{name.replace('_', ' ')} {value} is not a number of seconds",
                             hint="give more than 0 seconds")
    report_dir = report_dir_of(opts)
    existing = next(p for p in (report_dir, *report_dir.parents) if p.exists())
    where = f"report directory {report_dir}" + (
        "" if existing == report_dir else f" cannot be made: {existing}")
    if not existing.is_dir():
        raise InputError(f"{where} is not a directory", hint="give another --report-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{where} is not writable",
                         hint="give another --report-dir or fix its permissions")


def smoke(opts: SmokeOptions) -> dict[str, Any]:
    """Boot, watch, probe; return the report (also written as JSON and JUnit XML)."""
    check_options(opts)
    image = opts.image.resolve()
    if not image.is_file():
        raise InputError(f"image {opts.image} does not exist", hint="give the converted image")
    runmod.require_tools(TOOLS)
    view = E2fsFiles(image)  # also refuses what is not a raw image with an ext filesystem
    settings = opts.settings
    chosen = accelmod.detect(guestfs=any(p.kind == ProbeKind.SSH for p in settings.probes))
    report_dir = report_dir_of(opts)
    report_dir.mkdir(parents=True, exist_ok=True)
    nics = plan_nics(list(guestrecord.for_image(image).interfaces))
    by_addr = _addresses(nics)
    default_addr = next((n.address() for n in nics if n.iface.method == "static"),
                        nics[0].address())
    probes = ([Probe(ProbeKind.TCP, 22, "SSH-2.0")] if settings.default_probe else []) + list(
        settings.probes)
    targets: list[tuple[Probe, int]] = []
    for probe in probes:
        addr = probe.address or default_addr
        if addr not in by_addr:
            raise InputError(f"no interface of the guest in {opts.image} has address {addr}",
                             hint=f"its addresses: {', '.join(by_addr)}")
        port = by_addr[addr].forwards.setdefault((addr, probe.port), free_port())
        targets.append((probe, port))
    console_log, firmware_log = report_dir / "console.log", report_dir / "firmware.log"
    for path in (console_log, firmware_log):
        path.write_text("")
    checks: list[Check] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p2vimage-smoke-") as tmpdir:
        tmp = Path(tmpdir)
        overlay = tmp / "overlay.qcow2"
        runmod.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw",
                    str(overlay)], what="qemu-img create")
        ssh = None
        if any(p.kind == ProbeKind.SSH for p in probes):
            ssh = ssh_access(opts, chosen, overlay, tmp, view,
                             [port for p, port in targets if p.kind == ProbeKind.SSH])
        argv = qemu_argv(opts, chosen, overlay, console_log, firmware_log, nics)
        log.info("smoke: %s, NICs %s", chosen.describe(),
                 "; ".join(f"{n.iface.name} {n.iface.method} {n.address()}" for n in nics))
        with step(f"Booting {opts.image}"), vm(argv) as proc:
            console = _Both(Console(console_log), Console(firmware_log))
            login = re.compile(settings.login_regex, re.M)
            phases = [("bootloader", BOOTLOADER_OK, settings.bootloader_timeout),
                      ("kernel", KERNEL_OK, settings.kernel_timeout),
                      ("login", login, settings.login_timeout)]
            since = 0
            for i, (name, _, timeout) in enumerate(phases):
                pattern = re.compile("|".join(f"(?:{p.pattern})" for _, p, _ in phases[i:]),
                                     re.M)
                check, since = watch(console, proc, pattern, timeout, f"phase {name}", since)
                checks.append(check)
                log.info("  %s: %s (%.1f s)%s", check.name, "ok" if check.ok else "FAILED",
                         check.seconds, f" {check.detail}" if check.detail else "")
                if not check.ok:
                    break
            if all(c.ok for c in checks):
                checks += run_probes(targets, settings.probe_timeout, ssh)
    tail = Console(console_log).tail()
    report = {
        "image": os.fspath(opts.image), "verdict": "pass" if all(c.ok for c in checks)
        else "fail", "accelerator": chosen.describe(),
        "seconds": round(time.monotonic() - started, 2),
        "nics": [{"name": n.iface.name, "method": n.iface.method, "address": n.address(),
                  "forwards": {f"{a}:{p}": hp for (a, p), hp in n.forwards.items()}}
                 for n in nics],
        "checks": [dataclasses.asdict(c) | {"seconds": round(c.seconds, 2)} for c in checks],
        "console_log": os.fspath(console_log), "console_tail": tail,
        "report": os.fspath(report_dir / "report.json"),
        "junit": os.fspath(report_dir / "junit.xml"),
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (report_dir / "junit.xml").write_text(junit(report))
    return report


class _Both:
    """The console and the firmware log, watched as one text (failures can be in either)."""

    def __init__(self, console: Console, firmware: Console) -> None:
        self.console, self.firmware = console, firmware

    def text(self) -> str:
        return self.console.text() + "\n" + self.firmware.text()


def junit(report: dict[str, Any]) -> str:
    """The report as JUnit XML: one testcase per phase and probe."""
    name = quoteattr(f"smoke.{Path(report['image']).name}")
    failures = sum(1 for c in report["checks"] if not c["ok"])
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="p2vimage.smoke" '
           f'tests="{len(report["checks"])}" failures="{failures}" time="{report["seconds"]}">']
    for c in report["checks"]:
        out.append(f'  <testcase classname={name} name={quoteattr(c["name"])} '
                   f'time="{c["seconds"]}">')
        if not c["ok"]:
            out.append(f'    <failure message={quoteattr(printable(c["detail"]))}/>')
        out.append("  </testcase>")
    tail = printable("\n".join(report["console_tail"])).replace("]]>", "]] >")
    out.append(f"  <system-out><![CDATA[{tail}]]></system-out>\n</testsuite>\n")
    return "\n".join(out)


def failure_error(report: dict[str, Any]) -> StageError:
    """The one-line error for a failed smoke, with the console's last lines."""
    failed = next((c for c in report["checks"] if not c["ok"]), None)
    what = f"{failed['name']}: {failed['detail']}" if failed else "no check ran"
    tail = " | ".join(report["console_tail"][-5:])
    return StageError(f"smoke of {report['image']} failed at {what}; console: {tail}",
                      hint=f"full console log: {report['console_log']}")


def lines(report: dict[str, Any]) -> list[str]:
    """The human form of the report."""
    out = [f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']} ({c['seconds']} s)"
           + (f": {c['detail']}" if c["detail"] else "") for c in report["checks"]]
    out.append(f"smoke: {report['verdict']} in {report['seconds']} s ({report['accelerator']});"
               f" report {report['report']}, JUnit {report['junit']}")
    return out
