"""Standalone shell scripts of a cutover plan: ``run.sh`` and ``rollback.sh``.

An operator can read them, rehearse with them and run them by hand with only ssh and a POSIX
shell: every command is the one the runner would run (connection sharing aside), every value
passed through :func:`shlex.quote`. ``run.sh`` stops at the first failure and names the step;
``rollback.sh`` undoes every step, newest first, carrying on past undos that find nothing to
undo (it may follow a run.sh that stopped half-way).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from p2vimage.core.output import atomic_output
from p2vimage.cutover import plan as planmod
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
    """Write run.sh and rollback.sh into OUTDIR (each written whole, then renamed)."""
    steps = planmod.build(spec)
    outdir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in (("run.sh", run_script(spec, steps)),
                       ("rollback.sh", rollback_script(spec, steps))):
        final = outdir / name
        with atomic_output(final, force) as partial:
            partial.write_text(text)
            partial.chmod(0o755)
        written[name] = str(final)
    return written
