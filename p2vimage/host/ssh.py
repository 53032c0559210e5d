"""The system OpenSSH client, one way for every verb that reaches another host (sync's
source, the cutover's legacy host and node): BatchMode, host keys verified (a host never
seen before is trusted only when asked), the user's ~/.ssh/config or another one applies."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from p2vimage.core.errors import P2VError, PreconditionError, StageError
from p2vimage.host import run as runmod


@dataclasses.dataclass(frozen=True)
class SshTarget:
    """How to reach one host over ssh (everything but the command)."""

    host: str
    user: str | None = None
    port: int | None = None
    identity: Path | None = None
    config: Path | None = None  # instead of ~/.ssh/config (ssh -F)
    options: tuple[str, ...] = ()  # ssh -o OPTION, in order
    accept_new_host_key: bool = False

    @property
    def destination(self) -> str:
        """user@host (or host)."""
        return f"{self.user}@{self.host}" if self.user else self.host


def argv(target: SshTarget) -> list[str]:
    """The ssh command line up to (not including) the destination."""
    out = ["ssh", "-o", "BatchMode=yes", "-o",
           f"StrictHostKeyChecking={'accept-new' if target.accept_new_host_key else 'yes'}"]
    if target.config:
        out += ["-F", os.fspath(target.config)]
    if target.port:
        out += ["-p", str(target.port)]
    if target.identity:
        out += ["-i", os.fspath(target.identity), "-o", "IdentitiesOnly=yes"]
    for option in target.options:
        out += ["-o", option]
    return out


def error(host: str, stderr: str, code: int) -> P2VError:
    """The one-line error for a failed ssh connection (host key, login, reachability)."""
    last = runmod.last_line(stderr)
    if "Host key verification failed" in stderr or "No ED25519 host key is known" in stderr \
            or "host key for" in stderr.lower():
        return PreconditionError(
            f"the host key of {host} is unknown or changed",
            hint="check it, then add it with ssh-keyscan to known_hosts (or pass "
                 "--accept-new-host-key for a host never seen before)")
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return PreconditionError(f"{host} refused the ssh login ({last})",
                                 hint="check the user, key (--identity) and ~/.ssh/config")
    if code == 255:
        return PreconditionError(f"cannot reach {host} over ssh ({last})",
                                 hint="check the host name, port and network")
    return StageError(f"ssh to {host} failed (exit {code}): {last}", hint="run with --debug")
