"""The cutover host spec: one TOML file → frozen dataclasses, every value validated.

Unknown keys are refused (a typo is an error before anything runs). Names, interfaces and
addresses are checked against strict patterns; free text (commands, probe text, ssh options,
paths) may contain anything but NUL, and is only ever quoted into commands (see steps.py).
Errors are one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import re
import sys
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError
from p2vimage.cutover.steps import Command


class Profile(enum.StrEnum):
    """The cutover plan's order of steps."""

    FAST = "fast"  # the default plan: the address leaves before the services stop
    SEED = "seed"  # the seed's steps in its order


PERSIST = ("rc.local", "files", "none")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*=[^\n\r\0]*")
_PROGRAM = re.compile(r"[A-Za-z0-9_./+][A-Za-z0-9_./+-]*")


@dataclasses.dataclass(frozen=True)
class Ssh:
    """How to reach a host with the system OpenSSH client (host keys always verified)."""

    host: str
    user: str | None = None
    port: int | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    options: tuple[str, ...] = ()
    accept_new_host_key: bool = False


@dataclasses.dataclass(frozen=True)
class Access:
    """A target reached over ssh, or locally (optionally through an argv prefix such as
    ``ip netns exec NAME`` or ``sudo``)."""

    ssh: Ssh | None = None
    prefix: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Legacy:
    """The legacy host: where the public IP lives before the cutover."""

    access: Access
    interface: str
    maintenance_ip: ipaddress.IPv4Interface
    stop: tuple[Command, ...]
    start: tuple[Command, ...]


@dataclasses.dataclass(frozen=True)
class Node:
    """The OpenStack node: the tenant bridge, proxy ARP and the route for the public IP."""

    access: Access
    interface: str
    maintenance_ip: ipaddress.IPv4Interface
    bridge: str
    arping: str


@dataclasses.dataclass(frozen=True)
class Probe:
    """Where the public IP is checked from, and what it must answer."""

    access: Access
    url: str
    expect: str
    legacy_expect: str
    timeout: float


@dataclasses.dataclass(frozen=True)
class Hooks:
    """Commands run on the runner's host: the final sync and image refresh, the volume
    update, and booting / stopping the instance."""

    final_sync: tuple[Command, ...]
    refresh: tuple[Command, ...]
    volume: tuple[Command, ...]
    boot: tuple[Command, ...]
    unboot: tuple[Command, ...]


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated cutover spec."""

    path: Path
    digest: str
    name: str
    public_ip: ipaddress.IPv4Interface
    profile: Profile
    persist: str
    rc_local: Path
    sysctl_dir: Path
    networkd_dir: Path
    legacy: Legacy
    node: Node
    probe: Probe
    hooks: Hooks

    @property
    def address(self) -> str:
        """The public IP without its prefix."""
        return str(self.public_ip.ip)


class _Table:
    """A TOML table being read: every key must be used, unknown ones are refused."""

    def __init__(self, path: Path | str, where: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise InputError(f"{path}: {where or 'top level'} must be a table",
                             hint="see the Cutover section of README.md")
        self.path, self.where, self.data = path, where, dict(data)

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str, hint: str = "fix the spec") -> InputError:
        return InputError(f"{self.path}: {self.key(key)}: {problem}", hint=hint)

    def raw(self, key: str, default: Any = None, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                raise self.fail(key, "missing", hint="add it to the spec")
            return default
        return self.data.pop(key)

    def text(self, key: str, default: str | None = None, required: bool = False,
             pattern: re.Pattern[str] | None = None, oneline: bool = True) -> str:
        value = self.raw(key, default, required)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        if "\0" in value or (oneline and ("\n" in value or "\r" in value)):
            raise self.fail(key, f"control characters in {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not a valid value",
                            hint=f"use only {pattern.pattern}")
        return value

    def sub(self, key: str, required: bool = False) -> _Table | None:
        value = self.raw(key, None, required)
        return None if value is None else _Table(self.path, self.key(key), value)

    def done(self) -> None:
        if self.data:
            extra = sorted(self.data)[0]
            raise self.fail(extra, "unknown key", hint="remove it or fix its spelling")


def _iface(table: _Table, key: str, required: bool = True,
           default: str | None = None) -> ipaddress.IPv4Interface:
    text = table.text(key, default, required)
    try:
        value = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise table.fail(key, f"{text!r} is not an IPv4 address/prefix",
                         hint="write it like 192.0.2.10/24") from exc
    if "/" not in text:
        raise table.fail(key, f"{text!r} has no prefix length", hint="write it like 192.0.2.10/24")
    return value


def _commands(table: _Table, key: str, default: tuple[Command, ...] | None) -> tuple[Command, ...]:
    value = table.raw(key, None)
    if value is None:
        if default is None:
            raise table.fail(key, "missing", hint="give the commands (a list; [] for none)")
        return default
    if not isinstance(value, list):
        raise table.fail(key, "must be a list of commands (argv lists or shell strings)")
    out = []
    for item in value:
        if isinstance(item, str):
            if not item.strip() or "\0" in item:
                raise table.fail(key, f"bad shell command {item!r}")
            out.append(Command.sh(item))
        elif isinstance(item, list) and item and all(isinstance(w, str) for w in item):
            if any("\0" in w for w in item):
                raise table.fail(key, "NUL in a command")
            out.append(Command(argv=tuple(item)))
        else:
            raise table.fail(key, f"bad command {item!r}",
                             hint="write a shell string or a non-empty list of strings")
    return tuple(out)


def _access(table: _Table) -> Access:
    ssh = table.sub("ssh")
    local = table.sub("local")
    if (ssh is None) == (local is None):
        raise table.fail("ssh", "give exactly one of [.ssh] or [.local]",
                         hint="ssh for a remote host, local (with an optional prefix) otherwise")
    if local is not None:
        prefix = local.raw("prefix", [])
        if not isinstance(prefix, list) or not all(isinstance(w, str) and w and "\0" not in w
                                                   for w in prefix):
            raise local.fail("prefix", "must be a list of non-empty strings")
        local.done()
        return Access(prefix=tuple(prefix))
    assert ssh is not None
    host = ssh.text("host", required=True)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise ssh.fail("host", f"{host!r} is not a host name or address",
                           hint="letters, digits, dots and dashes only") from None
    user = ssh.text("user", "root", pattern=_USER)
    port = ssh.raw("port", None)
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                             or not 0 < port < 65536):
        raise ssh.fail("port", f"{port!r} is not a port number")
    identity = ssh.text("identity", "") or None
    known = ssh.text("known_hosts", "") or None
    options = ssh.raw("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) and _OPTION.fullmatch(o)
                                                for o in options):
        raise ssh.fail("options", f"{options!r}: each must be Key=value on one line")
    accept = ssh.raw("accept_new_host_key", False)
    if not isinstance(accept, bool):
        raise ssh.fail("accept_new_host_key", "must be true or false")
    ssh.done()
    return Access(ssh=Ssh(host, user, port, Path(identity) if identity else None,
                          Path(known) if known else None, tuple(options), accept))


def load(path: Path, profile: Profile | None = None) -> Spec:
    """Read and validate a spec file. Raises InputError (one line: file, key, problem)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read cutover spec {path}: {exc.strerror}",
                         hint="give the path of a TOML host spec") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}", hint="fix the syntax") from exc
    return from_dict(data, path, raw, profile)


def from_dict(data: Mapping[str, Any], path: Path, raw: bytes, profile: Profile | None = None,
              where: str | None = None) -> Spec:
    """Validate a spec already read into plain values (a TOML file's tables, or an inline
    table of a fleet inventory). ``raw`` is what the digest is taken of; errors name
    ``where`` (default: ``path``). Raises InputError (one line: where, key, problem)."""
    top = _Table(where or path, "", data)
    name = top.text("name", required=True, pattern=_NAME)
    public_ip = _iface(top, "public_ip")
    given = top.text("profile", Profile.FAST.value)
    if given not in {p.value for p in Profile}:
        raise top.fail("profile", f"{given!r} is not one of {', '.join(Profile)}")
    chosen = Profile(given)
    persist = top.text("persist", "rc.local")
    if persist not in PERSIST:
        raise top.fail("persist", f"{persist!r} is not one of {', '.join(PERSIST)}")
    paths = {}
    for key, default in (("rc_local", "/etc/rc.local"), ("sysctl_dir", "/etc/sysctl.d"),
                         ("networkd_dir", "/etc/systemd/network")):
        value = top.text(key, default)
        if not value.startswith("/"):
            raise top.fail(key, f"{value!r} is not an absolute path")
        paths[key] = Path(value)

    lt = top.sub("legacy", required=True)
    assert lt is not None
    legacy = Legacy(
        access=_access(lt), interface=lt.text("interface", "eth0", pattern=_IFNAME),
        maintenance_ip=_iface(lt, "maintenance_ip"),
        stop=_commands(lt, "stop", (Command.of("/etc/init.d/util-vserver", "stop"),)),
        start=_commands(lt, "start", (Command.of("/etc/init.d/util-vserver", "start"),)))
    lt.done()
    if legacy.maintenance_ip.ip == public_ip.ip:
        raise lt.fail("maintenance_ip", f"{legacy.maintenance_ip.ip} is the public IP",
                      hint="the maintenance address must stay on the legacy host when the "
                           "public IP leaves it: give another address")

    nt = top.sub("node", required=True)
    assert nt is not None
    node = Node(access=_access(nt), interface=nt.text("interface", "eth0", pattern=_IFNAME),
                maintenance_ip=_iface(nt, "maintenance_ip"),
                bridge=nt.text("bridge", required=True, pattern=_IFNAME),
                arping=nt.text("arping", "arping", pattern=_PROGRAM))
    nt.done()
    for other, what in ((public_ip, "the public IP"),
                        (legacy.maintenance_ip, "the legacy host's maintenance address")):
        if node.maintenance_ip.ip == other.ip:
            raise nt.fail("maintenance_ip", f"{node.maintenance_ip.ip} is {what}",
                          hint="give the node an address of its own")

    pt = top.sub("probe", required=True)
    assert pt is not None
    url = pt.text("url", f"http://{public_ip.ip}/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in url:
        raise pt.fail("url", f"{url!r} is not an http(s) URL")
    timeout = pt.raw("timeout", 10.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise pt.fail("timeout", f"{timeout!r} is not a positive number of seconds")
    expects = {}
    for key in ("expect", "legacy_expect"):
        expects[key] = pt.text(key, required=True)
        if not expects[key].strip():  # grep -F '' matches anything: a check that always passes
            raise pt.fail(key, "is empty or blank",
                          hint="give text the answer contains (and the other host's does not)")
    new, old = expects["expect"], expects["legacy_expect"]
    if new in old or old in new:  # one answer would pass both checks: no telling them apart
        raise pt.fail("legacy_expect", f"{old!r} and expect {new!r} cannot tell the hosts apart "
                      "(one contains the other)",
                      hint="give text only the instance's answer has, and text only the "
                           "legacy host's has")
    probe = Probe(access=_access(pt), url=url, expect=expects["expect"],
                  legacy_expect=expects["legacy_expect"], timeout=float(timeout))
    pt.done()

    ht = top.sub("hooks", required=True)
    assert ht is not None
    source = ht.text("source", "")
    staging = ht.text("staging", "")
    image = ht.text("image", "")
    # this very p2vimage (its interpreter), not whatever is called p2vimage on PATH
    self_argv = (sys.executable, "-m", "p2vimage")
    sync_default = (Command.of(*self_argv, "sync", "--final", source, staging),) \
        if source and staging else None
    refresh_default = (Command.of(*self_argv, "build", "--refresh", staging, "-o", image),) \
        if staging and image else None
    hooks = Hooks(final_sync=_commands(ht, "final_sync", sync_default),
                  refresh=_commands(ht, "refresh", refresh_default),
                  volume=_commands(ht, "volume", None), boot=_commands(ht, "boot", None),
                  unboot=_commands(ht, "unboot", None))
    ht.done()
    top.done()
    chosen = profile or chosen
    digest = hashlib.sha256(raw + chosen.value.encode()).hexdigest()[:16]
    return Spec(path=path, digest=digest, name=name, public_ip=public_ip, profile=chosen,
                persist=persist, rc_local=paths["rc_local"], sysctl_dir=paths["sysctl_dir"],
                networkd_dir=paths["networkd_dir"], legacy=legacy, node=node, probe=probe,
                hooks=hooks)
