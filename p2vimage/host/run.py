"""The one wrapper around subprocess: argv lists only, logged, with timeouts and clear errors.

Nothing else in p2vimage imports :mod:`subprocess`. Every command is logged as
``+ shlex.join(argv)`` at debug level, gets ``/dev/null`` as stdin unless input is given, and a
missing binary becomes a :class:`PreconditionError` that names the Debian package to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from p2vimage.core.errors import PreconditionError, StageError

log = logging.getLogger("p2vimage")

StrPath = str | os.PathLike[str]

# Which Debian package brings each host tool (for the hint of a missing-tool error).
PACKAGES: Mapping[str, str] = {
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "sfdisk": "fdisk",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-i386": "qemu-system-x86",
    "virt-make-fs": "libguestfs-tools",
    "rsync": "rsync",
    "ssh": "openssh-client",
    "debootstrap": "debootstrap",
    "extlinux": "extlinux",
    "setfacl": "acl",
    "getfacl": "acl",
    "setfattr": "attr",
    "setcap": "libcap2-bin",
}

Completed = subprocess.CompletedProcess
Popen = subprocess.Popen
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
TimeoutExpired = subprocess.TimeoutExpired


def which(tool: str) -> str | None:
    """Absolute path of ``tool`` on PATH (also /sbin and /usr/sbin), or None."""
    path = os.environ.get("PATH", os.defpath)
    extra = ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path + extra)


def missing_tool(tool: str) -> PreconditionError:
    """The error for a host tool that is not installed."""
    package = PACKAGES.get(tool)
    hint = f"install the {package} package (ci/setup does)" if package else "install it"
    return PreconditionError(f"{tool} not found on this host", hint=hint)


def require_tools(tools: Iterable[str]) -> dict[str, str]:
    """Check that every tool exists before any work starts; return name → path."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for tool in tools:
        path = which(tool)
        if path is None:
            missing.append(tool)
        else:
            found[tool] = path
    if len(missing) == 1:
        raise missing_tool(missing[0])
    if missing:
        packages = sorted({PACKAGES.get(t, t) for t in missing})
        raise PreconditionError(
            f"host tools not found: {', '.join(missing)}",
            hint=f"install {' '.join(packages)} (ci/setup does)",
        )
    return found


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when p2vimage dies, even by SIGKILL (never orphan a writer)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _argv(argv: Sequence[StrPath]) -> list[str]:
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    if os.sep not in args[0]:
        resolved = which(args[0])
        if resolved is None:
            raise missing_tool(args[0])
        args[0] = resolved
    return args


def _last_line(text: str | bytes | None) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# Programs whose output p2vimage parses and which print numbers in the user's locale (rsync
# writes "2.000.000" under de_DE): they always run with the C locale.
C_LOCALE_PROGRAMS = frozenset({"rsync"})


def _environment(args: list[str], env: Mapping[str, str] | None) -> dict[str, str] | None:
    """The child's environment: ours plus ``env``; the C locale for C_LOCALE_PROGRAMS."""
    if Path(args[0]).name in C_LOCALE_PROGRAMS:
        env = {**(env or {}), "LC_ALL": "C", "LANG": "C"}
    return {**os.environ, **env} if env is not None else None


def run(
    argv: Sequence[StrPath],
    *,
    check: bool = True,
    capture: bool = True,
    text: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    cwd: StrPath | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run a command to completion.

    Raises PreconditionError when the binary is missing, StageError when it exits non-zero
    (with ``check``) or runs past ``timeout``. ``what`` names the action in the error message.
    """
    args = _argv(argv)
    log.debug("+ %s", shlex.join(args))
    full_env = _environment(args, env)
    try:
        proc = subprocess.run(
            args,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=text,
            timeout=timeout,
            env=full_env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            preexec_fn=_die_with_parent,
        )
    except subprocess.TimeoutExpired as exc:
        name = what or Path(args[0]).name
        raise StageError(
            f"{name} did not finish within {timeout:g} s",
            hint="run with --debug to see the command; the host may be overloaded",
        ) from exc
    if check and proc.returncode != 0:
        name = what or Path(args[0]).name
        detail = _last_line(proc.stderr) or _last_line(proc.stdout)
        raise StageError(
            f"{name} failed (exit {proc.returncode})" + (f": {detail}" if detail else ""),
            hint="run with --debug to see the full command and its output",
        )
    return proc


def popen(
    argv: Sequence[StrPath],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    stdin: int | None = subprocess.DEVNULL,
    new_session: bool = False,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-running command (the caller waits, polls and always cleans up)."""
    args = _argv(argv)
    log.debug("+ %s &", shlex.join(args))
    return subprocess.Popen(
        args,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=_environment(args, env),
        start_new_session=new_session,
        pass_fds=tuple(pass_fds),
        preexec_fn=_die_with_parent,
    )


def last_line(text: str | bytes | None) -> str:
    """The last non-empty line of a tool's output (for one-line error messages)."""
    return _last_line(text)


# One-second sleeps, not one long one: a sleep has no PR_SET_PDEATHSIG of its own, so when
# p2vimage is killed (and the shell with it) what is left ends within a second.
_WATCHDOG = """n=$1; while [ "$n" -gt 0 ]; do sleep 1; n=$((n - 1)); done
fired=3; for p in /proc/[0-9]*; do
  read -r _ comm _ ppid _ < "$p/stat" 2>/dev/null || continue
  case "$ppid:$comm" in "$2:(qemu"*) kill -9 "${p#/proc/}" && fired=0;; esac
done; exit $fired"""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """SIGKILL this process's qemu children if the block runs longer than ``seconds``.

    For libguestfs, whose calls hold Python's GIL (no thread can time them out): a killed
    appliance makes the pending call fail. The watchdog exits 0 when it killed something;
    it is stopped when the block ends.
    """
    proc = popen(["sh", "-c", _WATCHDOG, "watchdog", f"{seconds:.0f}", str(os.getpid())])
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
