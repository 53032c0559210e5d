"""What ``smoke`` is asked for: the probes and limits a user chooses (the same for ``smoke``
and ``run``) and the image they apply to."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path

from p2vimage.core.errors import InputError


class ProbeKind(enum.StrEnum):
    """How a probe checks a service."""

    TCP = "tcp"  # the banner a TCP connection gets
    HTTP = "http"  # an HTTP GET
    SSH = "ssh"  # a command over ssh


class Phase(enum.StrEnum):
    """The phases ``--timeout PHASE=SECONDS`` limits."""

    BOOTLOADER = "bootloader"
    KERNEL = "kernel"
    LOGIN = "login"
    PROBES = "probes"


@dataclasses.dataclass(frozen=True)
class Probe:
    """A check of a service: ``tcp`` banner, ``http`` GET, or ``ssh`` command."""

    kind: ProbeKind
    port: int
    expect: str  # banner prefix / body substring / command output substring
    path: str = "/"  # http path
    status: int = 200  # http status
    command: str = ""  # ssh command
    address: str | None = None  # default: the guest's first address

    @property
    def name(self) -> str:
        """A short name for reports."""
        match self.kind:
            case ProbeKind.HTTP:
                return f"http {self.port}{self.path}"
            case ProbeKind.SSH:
                return f"ssh {self.command}"
        return f"tcp {self.port}"


_HINT = "use tcp:22:SSH-2.0, http:80:/:200:TEXT or ssh:COMMAND:TEXT, optionally @ADDRESS"


def parse_probe(spec: str) -> Probe:
    """``tcp:PORT[:BANNER]``, ``http:PORT[:PATH[:STATUS[:TEXT]]]``, ``ssh:COMMAND[:TEXT]``,
    each optionally ending in ``@ADDRESS`` (an IPv4 address). Raises InputError for anything
    else: a port outside 1-65535, an HTTP status outside 100-599, a path not starting with /."""
    address = None
    if "@" in spec and re.fullmatch(r"\d+(?:\.\d+){3}", spec.rsplit("@", 1)[1]):
        spec, address = spec.rsplit("@", 1)
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise InputError(f"bad address {address!r} in probe {spec}@{address}",
                             hint="give the guest's IPv4 address, like @192.0.2.10") from None
    kind, _, rest = spec.partition(":")
    parts = rest.split(":")
    probe: Probe | None = None
    try:
        if kind == ProbeKind.TCP:
            probe = Probe(ProbeKind.TCP, int(parts[0]), ":".join(parts[1:]), address=address)
        elif kind == ProbeKind.HTTP:
            probe = Probe(ProbeKind.HTTP, int(parts[0]), ":".join(parts[3:]),
                          path=parts[1] if len(parts) > 1 and parts[1] else "/",
                          status=int(parts[2]) if len(parts) > 2 and parts[2] else 200,
                          address=address)
        elif kind == ProbeKind.SSH and parts[0]:
            probe = Probe(ProbeKind.SSH, 22, ":".join(parts[1:]), command=parts[0],
                          address=address)
    except (ValueError, IndexError):
        pass
    if probe is None:
        raise InputError(f"cannot read probe {spec!r}", hint=_HINT)
    if not 1 <= probe.port <= 65535:
        raise InputError(f"port {probe.port} in probe {spec!r} is not a TCP port",
                         hint="give a port from 1 to 65535")
    if not 100 <= probe.status <= 599:
        raise InputError(f"HTTP status {probe.status} in probe {spec!r} does not exist",
                         hint="give a status from 100 to 599, like 200")
    if not probe.path.startswith("/"):
        raise InputError(f"HTTP path {probe.path!r} in probe {spec!r} does not start with /",
                         hint="write it like http:80:/index.html:200")
    return probe


def parse_timeout(spec: str) -> tuple[Phase, float]:
    """``PHASE=SECONDS``. Raises InputError for anything else."""
    name, _, value = spec.partition("=")
    try:
        phase, seconds = Phase(name), float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and seconds > 0:
            return phase, seconds
    raise InputError(f"cannot read timeout {spec!r}",
                     hint=f"use {'|'.join(Phase)}=SECONDS")


@dataclasses.dataclass(frozen=True)
class SmokeSettings:
    """The user's choices for a smoke run (the same for ``smoke`` and ``run``)."""

    probes: tuple[Probe, ...] = ()
    default_probe: bool = True  # ssh banner on the guest's first address
    login_regex: str = r"login:\s*$"
    bootloader_timeout: float = 90.0
    kernel_timeout: float = 240.0
    login_timeout: float = 300.0
    probe_timeout: float = 120.0
    memory_mib: int = 1024
    smp: int = 2

    def with_timeouts(self, limits: Mapping[Phase, float]) -> SmokeSettings:
        """These settings with the phase limits in ``limits`` replaced."""
        return dataclasses.replace(
            self, bootloader_timeout=limits.get(Phase.BOOTLOADER, self.bootloader_timeout),
            kernel_timeout=limits.get(Phase.KERNEL, self.kernel_timeout),
            login_timeout=limits.get(Phase.LOGIN, self.login_timeout),
            probe_timeout=limits.get(Phase.PROBES, self.probe_timeout))


@dataclasses.dataclass(frozen=True)
class SmokeOptions:
    """One smoke run: the image, where its reports go, the settings."""

    image: Path
    report_dir: Path | None = None  # default: IMAGE.smoke/ beside the image
    settings: SmokeSettings = dataclasses.field(default_factory=SmokeSettings)
