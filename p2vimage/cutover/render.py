"""Standalone shell scripts of a cutover plan: ``run.sh`` and ``rollback.sh``.

An operator can read them, rehearse with them and run them by hand with only ssh and a POSIX
shell: every command is the one the runner would run (connection sharing aside), every value
passed through :func:`shlex.quote`. ``run.sh`` stops at the first failure and names the step;
``rollback.sh`` undoes every step, newest first, carrying on past undos that find nothing to
undo (it may follow a run.sh that stopped half-way). ``run.sh`` opens with the runner's
preflight: what every step needs, checked on each host before anything changes.

The two are a pair: both are written or neither (an existing one is never left beside a new
other one).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from pathlib import Path

from p2vimage.core.errors import InputError
from p2vimage.core.output import check_output
from p2vimage.cutover import plan as planmod
from p2vimage.cutover import preflight
from p2vimage.cutover.spec import Spec
from p2vimage.cutover.steps import Cmd, Step
from p2vimage.cutover.transport import Local, SshHost

_HEAD = """#!/bin/sh
# {what} for the cutover of {name} ({profile} profile), made by p2vimage from {spec}.
# Public IP {ip}; legacy {legacy}; node {node}; probe {url} from {probe}.
# Every value is quoted; read it before running it.
set -eu

retry() {{  # retry SECONDS COMMAND...: run COMMAND until it succeeds, at most SECONDS long
  _end=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$_end" ] || return 1; sleep 0.05; done
}}
"""


def _where(access_ssh: object, prefix: tuple[str, ...], label: str) -> str:
    return label if access_ssh else ("this host" + (f" via {shlex.join(prefix)}"
                                                    if prefix else ""))


def _line(spec: Spec, cmd: Cmd) -> str:
    if cmd.target == "local":
        argv = Local().argv(cmd.command)
    else:
        access = {"legacy": spec.legacy.access, "node": spec.node.access,
                  "probe": spec.probe.access}[cmd.target]
        if access.ssh is None:
            argv = Local(access.prefix).argv(cmd.command)
        else:
            address = str(spec.legacy.maintenance_ip.ip) \
                if cmd.target == "legacy" and cmd.via == "maintenance" else None
            argv = SshHost(access.ssh, None, address).display_argv(cmd.command)
    line = shlex.join(argv)
    return f"retry {cmd.retry:g} {line}" if cmd.retry else line


def _header(spec: Spec, what: str) -> str:
    lg, nd, pr = spec.legacy.access, spec.node.access, spec.probe.access
    return _HEAD.format(
        what=what, name=spec.name, profile=spec.profile, spec=spec.path, ip=spec.public_ip,
        legacy=_where(lg.ssh, lg.prefix, f"ssh {lg.ssh.host}" if lg.ssh else ""),
        node=_where(nd.ssh, nd.prefix, f"ssh {nd.ssh.host}" if nd.ssh else ""),
        url=spec.probe.url,
        probe=_where(pr.ssh, pr.prefix, f"ssh {pr.ssh.host}" if pr.ssh else ""))


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())  # one line whatever the title holds


def run_script(spec: Spec, steps: list[Step]) -> str:
    """run.sh: every step's commands and checks, in order."""
    out = [_header(spec, "Run")]
    out.append("step=start\ntrap 'echo \"run.sh: stopped at step $step; rollback.sh undoes "
               "what was done\" >&2' EXIT\n")
    out.append("# 0. preflight: what the steps need, on each host (nothing changes here)")
    out.append("step=preflight")
    for target, group in preflight.by_target(preflight.needs(spec, steps)).items():
        out.append(_line(spec, Cmd(target, preflight.command(group), via="direct")))
    for n, step in enumerate(steps, 1):
        out.append(f"\n{_comment(f'{n}. {step.name}: {step.title}')}")
        if step.starts_downtime:
            out.append("# the downtime starts here: the services stop")
        out.append(f"step={step.name}")
        out += [_line(spec, c) for c in step.do]
        if step.check:
            out.append("# check")
            out += [_line(spec, c) for c in step.check]
    out.append("\ntrap - EXIT\necho 'run.sh: cutover done' >&2\n")
    return "\n".join(out)


def rollback_script(spec: Spec, steps: list[Step]) -> str:
    """rollback.sh: every step's undo, newest first, failures reported and passed over."""
    out = [_header(spec, "Rollback"), "failed=0"]
    for n, step in reversed(list(enumerate(steps, 1))):
        if not step.undo:
            continue
        out.append(f"\n{_comment(f'undo {n}. {step.name}: {step.title}')}")
        for cmd in step.undo:
            out.append(f"{_line(spec, cmd)} || {{ failed=1; echo 'rollback.sh: undo "
                       f"{step.name}: a command failed (nothing to undo?)' >&2; }}")
    probe = Cmd("probe", planmod.probe_command(spec, spec.probe.legacy_expect),
                retry=spec.probe.timeout)
    out.append(f"\n{_comment(f'the legacy host answers {spec.probe.legacy_expect!r} again')}")
    out.append(_line(spec, probe))
    out.append("echo 'rollback.sh: done' >&2\nexit $failed\n")
    return "\n".join(out)


def render(spec: Spec, outdir: Path, force: bool) -> dict[str, str]:
    """Write run.sh and rollback.sh into OUTDIR: both or neither. Both are checked before
    either is written, written whole under temporary names, then renamed (rollback.sh first:
    a run.sh never stands without its rollback.sh). Raises InputError when either exists
    (without FORCE) or cannot be written; OUTDIR is then left as it was."""
    steps = planmod.build(spec)
    texts = {"rollback.sh": rollback_script(spec, steps), "run.sh": run_script(spec, steps)}
    finals = {name: outdir / name for name in texts}
    if outdir.exists():
        for final in finals.values():
            check_output(final, force)
    partials: dict[str, Path] = {}
    placed: list[Path] = []
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            fd, made = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=outdir)
            partials[name] = Path(made)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fchmod(f.fileno(), 0o755)
                os.fsync(f.fileno())
        for name, final in finals.items():
            if force:
                os.replace(partials[name], final)
            else:  # a link fails if the name appeared since the check: never replaced
                os.link(partials[name], final)
            placed.append(final)
    except OSError as exc:
        for final in placed:  # ours, made a moment ago (without --force nothing was replaced)
            if not force:
                final.unlink()
        if isinstance(exc, FileExistsError):
            raise InputError(f"output {exc.filename2 or exc.filename} already exists",
                             hint="add --force to replace it") from exc
        raise InputError(f"cannot write the scripts into {outdir}: {exc.strerror or exc}",
                         hint="choose another -o directory or fix its permissions") from exc
    finally:
        for tmp in partials.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    dirfd = os.open(outdir, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return {name: str(finals[name]) for name in ("run.sh", "rollback.sh")}
