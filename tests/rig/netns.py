"""The cutover test rig: network namespaces, a switch bridge, documentation addresses only.

```
 client 203.0.113.10 ── router ─┬─ 192.0.2.1 ┐
                                │            │ switch bridge (namespace "sw")
 desk  192.0.2.5, 198.51.100.1 ─┤            │ (the runner's host: p2vimage runs here)
 legacy 192.0.2.10 (public IP) ─┤  HTTP "legacy", sshd
 node   192.0.2.20 (eth0) ──────┘  sshd, tenant bridge br2004 made by the cutover
   └─ tap0 ═ veth ═ instance eth0 192.0.2.10 (static, HTTP "instance" once booted)
```

The client is behind the router, as the Internet is: its own neighbour entry is the router's
and never changes. The entry that moves is the **router's** neighbour entry for the public IP
(the one L2 neighbour on the client's path): legacy's MAC before, the node's eth0 MAC after
the cutover (proxy ARP + gratuitous ARP), legacy's again after rollback. The tests check that.

Every namespace name carries a random suffix (parallel or leftover runs never collide) and
:meth:`Rig.close` removes all of them and stops every process the rig started.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO
from tests.rig.sshd import Sshd, start_sshd

PUBLIC_IP = "192.0.2.10"
ROUTER_IP = "192.0.2.1"
DESK_IP = "192.0.2.5"
NODE_IP = "192.0.2.20"
DESK_MAINT = "198.51.100.1"
LEGACY_MAINT = "198.51.100.10"
NODE_MAINT = "198.51.100.20"
CLIENT_IP = "203.0.113.10"
CLIENT_GW = "203.0.113.1"
BRIDGE = "br2004"
ROLES = ("sw", "client", "router", "desk", "legacy", "node", "instance")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Move the calling thread into network namespace NAME for the block (sockets opened and
    processes started inside stay there)."""
    own = os.open(f"/proc/self/task/{_tid()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(own)


def _tid() -> int:
    return int(_libc.syscall(186))  # gettid


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a rig command (real tools; failing loudly by default)."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def http_get(ns: str, host: str = PUBLIC_IP, timeout: float = 1.0) -> str | None:
    """The body of http://HOST/ fetched from namespace NS, or None when nothing answers."""
    with in_netns(ns):
        conn = http.client.HTTPConnection(host, 80, timeout=timeout)
        try:
            conn.connect()
        except OSError:
            return None
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.read().decode().strip() if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


@dataclasses.dataclass
class Rig:
    """One rig: namespace names by role, the sshds, and the files the spec points at."""

    top: Path
    ns: dict[str, str]
    legacy_ssh: Sshd
    node_ssh: Sshd
    known_hosts: Path
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def exec(self, role: str) -> list[str]:
        """argv prefix running a command in ROLE's namespace."""
        return ["ip", "netns", "exec", self.ns[role]]

    def run(self, role: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside ROLE's namespace."""
        return sh(*self.exec(role), *argv, check=check)

    def get(self, role: str = "client", timeout: float = 1.0) -> str | None:
        """What the public IP answers to ROLE (None: nothing)."""
        return http_get(self.ns[role], timeout=timeout)

    def wait_for(self, body: str, role: str = "client", seconds: float = 10.0) -> float:
        """Poll until the public IP answers BODY; return the seconds it took (fails after)."""
        started = time.monotonic()
        while self.get(role, timeout=0.5) != body:
            assert time.monotonic() - started < seconds, f"{role} never got {body!r}"
            time.sleep(0.05)
        return time.monotonic() - started

    def mac(self, role: str, ifname: str = "eth0") -> str:
        """The MAC address of IFNAME in ROLE's namespace."""
        out = sh("ip", "-n", self.ns[role], "-o", "link", "show", ifname).stdout
        m = re.search(r"link/ether ([0-9a-f:]{17})", out)
        assert m, out
        return m.group(1)

    def neigh(self, role: str, address: str = PUBLIC_IP) -> str:
        """The MAC in ROLE's neighbour entry for ADDRESS ('' when none)."""
        out = sh("ip", "-n", self.ns[role], "neigh", "show", address).stdout
        m = re.search(r"lladdr ([0-9a-f:]{17})", out)
        return m.group(1) if m else ""

    def addresses(self, role: str, ifname: str = "eth0") -> list[str]:
        """The IPv4 addresses (with prefix) on IFNAME in ROLE's namespace."""
        out = sh("ip", "-n", self.ns[role], "-o", "-4", "addr", "show", "dev", ifname).stdout
        return re.findall(r"inet (\S+)", out)

    def service(self, name: str, action: str) -> list[str]:
        """argv of the rig's service script for legacy/instance ('start' or 'stop')."""
        return [str(self.top / f"{name}-service"), action]

    def spec(self, path: Path, *, node_ssh: bool = False, profile: str = "fast",
             arping: str = "arping", name: str | None = None, **hooks: object) -> Path:
        """Write a cutover spec for this rig to PATH: legacy over ssh, the node over ssh or
        locally through ``ip netns exec``, the probe from the client; HOOKS override the
        hooks table (values: lists of commands)."""
        q = json.dumps
        suffix = self.ns["sw"].split("-")[0][3:]
        node_exec = self.exec("node")
        table = {"final_sync": [["true"]], "refresh": [], "volume": [],
                 "boot": [["ip", "-n", self.ns["node"], "link", "set", "tap0", "master", BRIDGE],
                          self.service("instance", "start")],
                 "unboot": [self.service("instance", "stop"),
                            ["ip", "-n", self.ns["node"], "link", "set", "tap0", "nomaster"]]}
        table.update(hooks)  # type: ignore[arg-type]

        def ssh(server: Sshd, host: str) -> str:
            return (f"host = {q(host)}\nport = {server.port}\nidentity = {q(str(server.key))}\n"
                    f"known_hosts = {q(str(self.known_hosts))}\n")

        node_access = f"[node.ssh]\n{ssh(self.node_ssh, NODE_IP)}" if node_ssh else \
            f"[node.local]\nprefix = {q(node_exec)}\n"
        text = f"""name = {q(name or "ns1-" + suffix)}
public_ip = "{PUBLIC_IP}/24"
profile = {q(profile)}
persist = "rc.local"
rc_local = {q(str(self.top / "rc.local"))}
sysctl_dir = {q(str(self.top / "sysctl.d"))}
networkd_dir = {q(str(self.top / "network"))}

[legacy]
interface = "eth0"
maintenance_ip = "{LEGACY_MAINT}/24"
stop = [{q(self.service("legacy", "stop"))}]
start = [{q(self.service("legacy", "start"))}]
[legacy.ssh]
{ssh(self.legacy_ssh, PUBLIC_IP)}
[node]
interface = "eth0"
maintenance_ip = "{NODE_MAINT}/24"
bridge = "{BRIDGE}"
arping = {q(arping)}
{node_access}
[probe]
url = "http://{PUBLIC_IP}/"
expect = "instance"
legacy_expect = "legacy"
timeout = 5
[probe.local]
prefix = {q(self.exec("client"))}

[hooks]
""" + "".join(f"{k} = {q(v)}\n" for k, v in table.items())
        path.write_text(text)
        return path

    def cli(self, *args: str | os.PathLike[str], workdir: Path | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run the p2vimage CLI on the desk (the runner's host, on the switch)."""
        work = ["--workdir", str(workdir)] if workdir else []
        return subprocess.run([*self.exec("desk"), sys.executable, "-m", "p2vimage", *work,
                               *map(os.fspath, args)], capture_output=True, text=True,
                              check=False, cwd=REPO, **kwargs)  # type: ignore[call-overload]

    def close(self) -> None:
        """Stop every process the rig started and delete its namespaces."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        for name in ("legacy", "instance"):
            pidfile = self.top / f"{name}.pid"
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
        for ns in self.ns.values():
            # processes still inside (a killed runner's children) would keep it alive
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "delete", ns, check=False)


def _service_script(path: Path, ns: str, body: Path, pidfile: Path) -> None:
    """A tiny init script: busybox httpd on port 80 in NS (start/stop, idempotent)."""
    path.write_text(f"""#!/bin/sh
# rig service: busybox httpd serving {body} in namespace {ns}
case "$1" in
start)
  if [ -s {pidfile} ] && kill -0 "$(cat {pidfile})" 2>/dev/null; then exit 0; fi
  ip netns exec {ns} setsid busybox httpd -f -p 80 -h {body} </dev/null >/dev/null 2>&1 &
  echo $! > {pidfile}
  # ready when the port listens (busybox binds at once; a few ms)
  i=0; while ! ip netns exec {ns} ss -Hltn 'sport = :80' | grep -q .; do
    i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.01; done ;;
stop)
  if [ -s {pidfile} ]; then kill "$(cat {pidfile})" 2>/dev/null || true; fi
  rm -f {pidfile} ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
""")
    path.chmod(0o755)


def make_rig(top: Path) -> Rig:
    """Build the rig under TOP (spec files, keys, pid files); the caller must close() it."""
    top.mkdir(parents=True, exist_ok=True)
    suffix = secrets.token_hex(3)
    ns = {role: f"p2v{suffix}-{role}" for role in ROLES}
    for name in ns.values():
        sh("ip", "netns", "add", name)
    rig: Rig | None = None
    try:
        _wire(ns)
        # HOME: this machine's root has a slow ~/.bashrc (pyenv, 0.13 s) that bash sources for
        # every ssh command; the rig's hosts get an empty home instead
        (top / "home").mkdir(exist_ok=True)
        env = f"SetEnv HOME={top / 'home'}\n"
        procs = []
        servers = {}
        # start_sshd listens on 127.0.0.1 (its readiness check), a wildcard would clash
        # with it: listen on the public and maintenance addresses too (the maintenance one
        # is added by the cutover, hence ip_nonlocal_bind in those two namespaces).
        for role, addrs in (("legacy", (PUBLIC_IP, LEGACY_MAINT)), ("node", (NODE_IP,))):
            sh("ip", "netns", "exec", ns[role], "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")
            listen = "".join(f"ListenAddress {a}\n" for a in addrs)
            with in_netns(ns[role]):
                proc, server = start_sshd(top / f"sshd-{role}", extra=listen + env)
            procs.append(proc)
            servers[role] = server
        known = top / "known_hosts"
        lines = []
        for role, address in (("legacy", PUBLIC_IP), ("node", NODE_IP)):
            key = (top / f"sshd-{role}" / "host_key.pub").read_text().split()
            lines.append(f"[{address}]:{servers[role].port} {key[0]} {key[1]}\n")
        known.write_text("".join(lines))
        rig = Rig(top, ns, servers["legacy"], servers["node"], known, procs)
        for name, role, text in (("legacy", "legacy", "legacy"),
                                 ("instance", "instance", "instance")):
            www = top / f"www-{name}"
            www.mkdir(exist_ok=True)
            (www / "index.html").write_text(text + "\n")
            _service_script(top / f"{name}-service", ns[role], www, top / f"{name}.pid")
        sh(*rig.service("legacy", "start"))
        rig.wait_for("legacy")
        return rig
    except BaseException:
        if rig is not None:
            rig.close()
        else:
            for name in ns.values():
                sh("ip", "netns", "delete", name, check=False)
        raise


def _wire(ns: dict[str, str]) -> None:
    sw = ns["sw"]
    sh("ip", "-n", sw, "link", "add", "sw0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "sw0", "up")
    for role in ("router", "desk", "legacy", "node"):
        sh("ip", "link", "add", "eth0", "netns", ns[role], "type", "veth", "peer", "name",
           role, "netns", sw)
        sh("ip", "-n", sw, "link", "set", role, "master", "sw0", "up")
    sh("ip", "link", "add", "eth1", "netns", ns["router"], "type", "veth", "peer", "name",
       "eth0", "netns", ns["client"])
    sh("ip", "link", "add", "tap0", "netns", ns["node"], "type", "veth", "peer", "name",
       "eth0", "netns", ns["instance"])
    addresses = {"router": [f"{ROUTER_IP}/24"], "desk": [f"{DESK_IP}/24", f"{DESK_MAINT}/24"],
                 "legacy": [f"{PUBLIC_IP}/24"], "node": [f"{NODE_IP}/24"],
                 "client": [f"{CLIENT_IP}/24"], "instance": [f"{PUBLIC_IP}/24"]}
    for role, addrs in addresses.items():
        n = ns[role]
        sh("ip", "-n", n, "link", "set", "lo", "up")
        for addr in addrs:
            sh("ip", "-n", n, "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", n, "link", "set", "eth0", "up")
    sh("ip", "-n", ns["router"], "addr", "add", f"{CLIENT_GW}/24", "dev", "eth1")
    sh("ip", "-n", ns["router"], "link", "set", "eth1", "up")
    sh("ip", "-n", ns["node"], "link", "set", "tap0", "up")
    for role in ("legacy", "node", "instance", "desk"):
        sh("ip", "-n", ns[role], "route", "add", "default", "via", ROUTER_IP)
    sh("ip", "-n", ns["client"], "route", "add", "default", "via", CLIENT_GW)
    for role in ("router", "node"):
        sh("ip", "netns", "exec", ns[role], "sysctl", "-qw", "net.ipv4.ip_forward=1")


def habets_arping(cache: Path) -> Path | None:
    """A directory whose ``arping`` is Thomas Habets' arping (the Debian ``arping`` package,
    which conflicts with iputils-arping): unpacked from the .deb files ci/setup downloads, or
    None when they are not there."""
    root = cache / "habets-arping"
    binary = root / "usr/sbin/arping"
    if not binary.exists():
        return None
    wrapper_dir = root / "bin"
    wrapper_dir.mkdir(exist_ok=True)
    wrapper = wrapper_dir / "arping"
    wrapper.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={root}/usr/lib/x86_64-linux-gnu "
                       f"exec {binary} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper_dir


def have_netns() -> bool:
    """Whether this host can make network namespaces (root, iproute2, busybox, sshd)."""
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "busybox", "ss")) \
        and Path("/usr/sbin/sshd").exists()
