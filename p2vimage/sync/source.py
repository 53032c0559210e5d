"""What ``sync`` is given: where the source is (``ssh://…`` or a local directory) and the
rate limit, read and checked before anything connects or is written."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from p2vimage.core.errors import InputError

_SOURCE = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[^\]\s]+\]|[^@/:\s]+)"
                     r"(?::(?P<port>\d+))?(?P<path>/.*)?$")
# rsync's --bwlimit: a number, an optional size letter (K when none), then B (powers of 1000)
# or iB, then +1/-1 (its parse_size_arg); at least 512 bytes/s, or 0 for no limit.
_RATE = re.compile(r"(?P<int>\d*)(?:\.(?P<frac>\d*))?(?:(?P<unit>[bkmgtp])(?P<base>b|ib)?)?"
                   r"(?P<adjust>[+-]1)?", re.I)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the legacy root filesystem is: a host over ssh, or a local directory."""

    host: str | None
    user: str | None
    port: int | None
    path: str

    @property
    def remote(self) -> bool:
        """Whether the source is reached over ssh."""
        return self.host is not None

    def rsync_spec(self) -> str:
        """The rsync source argument (with a trailing slash: copy the contents)."""
        path = self.path.rstrip("/") + "/"
        if not self.remote:
            return path
        return f"{self.user + '@' if self.user else ''}{self.host}:{path}"


def parse_source(text: str) -> Source:
    """``ssh://[user@]host[:port]/[path]`` or a local directory. Raises InputError."""
    if text.startswith("ssh://"):
        m = _SOURCE.match(text)
        if not m:
            raise InputError(f"cannot read source {text!r}",
                             hint="write it as ssh://[user@]host[:port]/[path]")
        host = m.group("host").strip("[]")
        if host.startswith("-"):
            raise InputError(f"bad host in {text!r}", hint="a host cannot start with '-'")
        port = int(m.group("port")) if m.group("port") else None
        if port is not None and not 1 <= port <= 65535:
            raise InputError(f"port {port} in {text!r} is not a TCP port",
                             hint="give a port from 1 to 65535, or none for ssh's own")
        return Source(host, m.group("user"), port, m.group("path") or "/")
    if "://" in text:
        raise InputError(f"unsupported source {text!r}", hint="use ssh:// or a local path")
    path = Path(text)
    if not path.is_dir():
        raise InputError(f"source {text} is not a directory",
                         hint="give ssh://host/ or a local root directory")
    return Source(None, None, None, os.fspath(path.resolve()))


def bwlimit_bytes(text: str) -> int:
    """Bytes per second in an rsync ``--bwlimit`` value (0: no limit). Raises InputError for
    what rsync would refuse, so that a typo never starts (or records) a pass."""
    m = _RATE.fullmatch(text.strip())
    if not m or not (m.group("int") or m.group("frac")):
        raise InputError(f"cannot read --bwlimit {text!r}",
                         hint="write a rate like 20m (MiB/s), 500k or 1.5M; a bare number "
                              "is KiB/s")
    value = float(f"{m.group('int') or 0}.{m.group('frac') or 0}")
    base = 1000 if (m.group("base") or "").lower() == "b" else 1024
    nbytes = int(value * base ** "bkmgtp".index((m.group("unit") or "k").lower()))
    nbytes += int(m.group("adjust") or 0)
    if 0 < nbytes < 512 or nbytes < 0:
        raise InputError(f"--bwlimit {text!r} is below rsync's minimum of 512 bytes/s",
                         hint="give at least 1k, or 0 for no limit")
    return nbytes


def check_apart(source: Source, staging: Path) -> None:
    """Refuse a local source and a staging tree that overlap (after symlinks and ``..``):
    rsync --delete would empty the source, or copy the staging tree into itself."""
    src, dst = Path(source.path).resolve(), staging.resolve()
    if src == dst:
        raise InputError(f"source {source.path} and staging {staging} are the same directory",
                         hint="give a new directory for the staging tree")
    if src in dst.parents:
        raise InputError(f"staging {staging} is inside the source {source.path}",
                         hint="put the staging tree outside the tree it copies")
    if dst in src.parents:
        raise InputError(f"source {source.path} is inside the staging {staging}",
                         hint="put the staging tree outside the tree it copies: rsync --delete "
                              "would remove the source")
