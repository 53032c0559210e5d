"""Where a step's commands run: locally (argv, optionally behind a prefix such as
``ip netns exec NAME``) or over the system OpenSSH client.

ssh is host/ssh.py's command line, the one sync uses too (BatchMode, host keys verified,
the user's ~/.ssh/config), plus connection sharing: one ControlMaster per host, so each
command costs a round trip, not a handshake. The remote command is one shell line
(:meth:`Command.line`), every word quoted.
The legacy host is reached at its maintenance address once that exists (its public address is
about to move), with ``HostKeyAlias`` so the known_hosts entry of its usual name verifies it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from p2vimage.core.errors import PreconditionError, StageError
from p2vimage.cutover.spec import Access, Ssh
from p2vimage.cutover.steps import Command
from p2vimage.host import run as runmod
from p2vimage.host import ssh as sshmod

SSH_EXIT = 255  # ssh's own failure (connection refused, dropped, host key)


@dataclasses.dataclass(frozen=True)
class Result:
    """What one command did."""

    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether it exited 0."""
        return self.code == 0


class Transport(Protocol):
    """Runs commands on one target."""

    def argv(self, command: Command) -> list[str]:
        """The local argv that runs COMMAND on the target."""

    def run(self, command: Command, timeout: float) -> Result:
        """Run COMMAND to completion (never raises for a non-zero exit)."""

    def close(self) -> None:
        """Release connections."""


class Local:
    """Commands run on this host, behind an optional argv prefix."""

    def __init__(self, prefix: tuple[str, ...] = ()) -> None:
        self.prefix = prefix

    def argv(self, command: Command) -> list[str]:
        return [*self.prefix, *command.local_argv()]

    def run(self, command: Command, timeout: float) -> Result:
        return _run(self.argv(command), timeout)

    def close(self) -> None:
        pass


class SshHost:
    """Commands run on a remote host over one shared ssh connection."""

    def __init__(self, ssh: Ssh, control_dir: Path | None, address: str | None = None) -> None:
        self.ssh = ssh
        self.address = address or ssh.host
        self.control_dir = control_dir

    def base(self, multiplex: bool = True) -> list[str]:
        """ssh and its options, up to (not including) the destination."""
        opts = list(self.ssh.options)
        if self.ssh.known_hosts:
            opts.append(f"UserKnownHostsFile={self.ssh.known_hosts}")
        if self.address != self.ssh.host:  # known_hosts names it [host]:port off port 22
            port = self.ssh.port or 22
            alias = self.ssh.host if port == 22 else f"[{self.ssh.host}]:{port}"
            opts.append(f"HostKeyAlias={alias}")
        # a dropped connection must fail a step within seconds, not hang it
        opts += ["ConnectTimeout=5", "ServerAliveInterval=2", "ServerAliveCountMax=2"]
        if multiplex and self.control_dir is not None:
            opts += ["ControlMaster=auto", f"ControlPath={self.control_dir}/%C",
                     "ControlPersist=60"]
        return sshmod.argv(sshmod.SshTarget(
            host=self.address, user=self.ssh.user, port=self.ssh.port,
            identity=self.ssh.identity, options=tuple(opts),
            accept_new_host_key=self.ssh.accept_new_host_key))

    @property
    def destination(self) -> str:
        """user@address."""
        return f"{self.ssh.user}@{self.address}" if self.ssh.user else self.address

    def argv(self, command: Command) -> list[str]:
        return [*self.base(), "--", self.destination, command.line()]

    def display_argv(self, command: Command) -> list[str]:
        """The command as an operator would type it (no connection sharing)."""
        return [*self.base(multiplex=False), "--", self.destination, command.line()]

    def run(self, command: Command, timeout: float) -> Result:
        return _run(self.argv(command), timeout)

    def close(self) -> None:
        if self.control_dir is not None and any(self.control_dir.iterdir()):
            _run([*self.base(), "-O", "exit", "--", self.destination], 10)


def _run(argv: list[str], timeout: float) -> Result:
    """Run ARGV; a program that cannot be started is a failed command (127 not found, 126
    not executable, as sh reports them), never an exception: the runner rolls back."""
    try:
        proc = runmod.run(argv, check=False, timeout=timeout, what=Path(argv[0]).name)
    except StageError as exc:  # the timeout
        return Result(124, "", exc.message)
    except PreconditionError as exc:  # not on PATH
        return Result(127, "", exc.message)
    except OSError as exc:  # removed, not executable, not a program
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return Result(code, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    return Result(proc.returncode, proc.stdout or "", proc.stderr or "")


class Transports:
    """The transports of one run, by target (and, for the legacy host, by address)."""

    def __init__(self, legacy: Access, node: Access, probe: Access,
                 legacy_maintenance: str) -> None:
        self._dir: Path | None = None
        self.legacy_direct = self._make(legacy)
        self.legacy = self._make(legacy, legacy_maintenance)
        self.node = self._make(node)
        self.probe = self._make(probe)
        self.local = Local()

    def _make(self, access: Access, address: str | None = None) -> Any:
        if access.ssh is None:
            return Local(access.prefix)
        if self._dir is None:
            # short: a unix socket path must stay under 108 bytes
            self._dir = Path(tempfile.mkdtemp(prefix="p2v-ssh-"))
        return SshHost(access.ssh, self._dir, address)

    def get(self, target: str, via: str = "maintenance") -> Transport:
        """The transport for TARGET."""
        if target == "legacy":
            t: Transport = self.legacy if via == "maintenance" else self.legacy_direct
            return t
        return {"node": self.node, "probe": self.probe}.get(target, self.local)  # type: ignore

    def close(self) -> None:
        """Stop the shared ssh connections and remove their sockets."""
        for t in (self.legacy_direct, self.legacy, self.node, self.probe):
            t.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def shell_line(argv: list[str]) -> str:
    """ARGV as one quoted shell line."""
    return shlex.join(os.fspath(a) for a in argv)
