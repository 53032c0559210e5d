"""Steps of a cutover: each a list of commands to do, to undo and to check, on named targets.

A :class:`Command` is either an argv list (never seen by a local shell; over ssh it is sent as
``shlex.join(argv)``, which the remote shell splits back into exactly those words) or an
explicit shell string (run as ``sh -c STRING``; over ssh STRING travels as one quoted word).
Values from the host spec are only ever placed in commands through these two forms, so a
hostile value is data, never code.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Literal

Target = Literal["legacy", "node", "local", "probe"]
TARGETS: tuple[Target, ...] = ("legacy", "node", "local", "probe")


@dataclasses.dataclass(frozen=True)
class Command:
    """One command: an argv list, or a shell string run by ``sh -c``."""

    argv: tuple[str, ...] = ()
    shell: str | None = None

    def __post_init__(self) -> None:
        if bool(self.argv) == (self.shell is not None):
            raise ValueError("a command is either an argv list or a shell string")

    @classmethod
    def sh(cls, text: str) -> Command:
        """An explicit shell command."""
        return cls(shell=text)

    @classmethod
    def of(cls, *argv: str) -> Command:
        """An argv command."""
        return cls(argv=tuple(argv))

    def local_argv(self) -> list[str]:
        """The argv to execute on this host (no shell unless it is a shell string)."""
        return list(self.argv) if self.argv else ["sh", "-c", str(self.shell)]

    def line(self) -> str:
        """The command as one shell line (what ssh sends, what the rendered scripts run)."""
        return shlex.join(self.argv) if self.argv else shlex.join(["sh", "-c", str(self.shell)])


@dataclasses.dataclass(frozen=True)
class Cmd:
    """A command placed on a target.

    ``retry``: keep running it until it succeeds, for at most that many seconds (probes).
    ``via``: for the legacy host, ``maintenance`` uses its maintenance address (the public
    address is about to move), ``direct`` the address it is reached by before the cutover.
    """

    target: Target
    command: Command
    retry: float = 0.0
    via: Literal["direct", "maintenance"] = "maintenance"


@dataclasses.dataclass(frozen=True)
class Need:
    """Something a step's shell commands need on a target, checked before the first step:
    a program (a name looked up on PATH, or a path that must be executable) or a path that
    must be writable. ``optional`` (why it may be missing) makes a missing one a warning."""

    target: Target
    program: str = ""
    writable: str = ""
    optional: str = ""


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the cutover. ``do`` makes the change, ``check`` proves it (and tells a
    resumed run that an interrupted step took effect), ``undo`` reverts it (and must also work
    on a half-done step: its commands tolerate the change being absent). ``needs``: what its
    shell commands run besides ``sh`` (an argv command's program is read from its argv)."""

    name: str
    title: str
    do: tuple[Cmd, ...]
    undo: tuple[Cmd, ...] = ()
    check: tuple[Cmd, ...] = ()
    starts_downtime: bool = False  # the services stop here
    ends_downtime: bool = False  # the probe that proves the public IP answers again
    needs: tuple[Need, ...] = ()


STEP_NAMES = ("maintenance", "bridge", "proxy-arp", "stop", "remove-ip", "boot", "route",
              "garp", "verify")
