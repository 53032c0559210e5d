"""Before the first step: everything the plan's commands need, checked on the host that runs
them, through the same transport (ssh, or a local prefix), so a missing program is refused
with one line naming the host and the program before anything changes — not found half-way
through the downtime.

What is checked: the program of every argv command (do, check and undo: a rollback needs its
undos), ``sh`` for every shell command, what each step declares in ``Step.needs`` (programs
its shell commands run, paths they write), and on this host what reaches the others (ssh, or
a prefix such as ``ip netns exec``). ``run.sh`` opens with the same check (see render.py).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from p2vimage.core.errors import PreconditionError
from p2vimage.core.log import log
from p2vimage.cutover.spec import Access, Spec
from p2vimage.cutover.steps import TARGETS, Command, Need, Step, Target
from p2vimage.cutover.transport import SSH_EXIT, Transports
from p2vimage.host import run as runmod

MARK = "p2vimage-preflight: "
q = shlex.quote


def _access(spec: Spec, target: Target) -> Access | None:
    return {"legacy": spec.legacy.access, "node": spec.node.access,
            "probe": spec.probe.access}.get(target)


def where(spec: Spec, target: Target) -> str:
    """The host a target names, for messages."""
    if target == "local":
        return "this host"
    access = _access(spec, target)
    assert access is not None
    name = {"legacy": "the legacy host", "node": "the node", "probe": "the probe point"}[target]
    if access.ssh is not None:
        return f"{name} {access.ssh.host}"
    return f"{name} (this host" + (f" via {shlex.join(access.prefix)})" if access.prefix
                                   else ")")


def needs(spec: Spec, steps: Sequence[Step]) -> list[Need]:
    """What STEPS need, in plan order, each once (a required need wins over an optional one)."""
    out: dict[tuple[str, str, str], Need] = {}

    def add(need: Need) -> None:
        key = (need.target, need.program, need.writable)
        if key not in out or (out[key].optional and not need.optional):
            out[key] = need

    for target in ("legacy", "node", "probe"):
        access = _access(spec, target)
        assert access is not None
        if access.ssh is not None:
            add(Need("local", "ssh"))
        elif access.prefix:
            add(Need("local", access.prefix[0]))
    for step in steps:
        for cmd in (*step.do, *step.check, *step.undo):
            add(Need(cmd.target, cmd.command.argv[0] if cmd.command.argv else "sh"))
        for need in step.needs:
            add(need)
    return list(out.values())


def label(need: Need) -> str:
    """What is wrong when NEED is not met."""
    if need.writable:
        return f"{need.writable} not writable"
    if "/" in need.program:
        return f"{need.program} missing or not executable"
    return f"{need.program} not found"


def _report(need: Need) -> str:
    """The line the check prints for NEED unmet (words single-spaced: echo rejoins them)."""
    text = MARK + label(need) + (f" (optional: {need.optional})" if need.optional else "")
    return " ".join(text.split())


def command(group: Sequence[Need]) -> Command:
    """One shell command checking GROUP (needs of one target): prints a line for each one
    not met and exits 1 when a required one is among them."""
    tests = []
    for need in group:
        if need.writable:
            test = f"[ -w {q(need.writable)} ]"
        elif "/" in need.program:
            test = f"{{ [ -f {q(need.program)} ] && [ -x {q(need.program)} ]; }}"
        else:
            test = f"command -v {q(need.program)} >/dev/null 2>&1"
        # word by word: plain words stay unquoted, so run.sh stays readable
        tests.append(f"{test} || {{ echo {shlex.join(_report(need).split())}; "
                     f"{'' if need.optional else 'rc=1; '}}}")
    return Command.sh("rc=0; " + "; ".join(tests) + "; exit $rc")


def by_target(group: Sequence[Need]) -> dict[Target, list[Need]]:
    """GROUP split by target (targets in TARGETS order, those with needs only)."""
    out: dict[Target, list[Need]] = {}
    for target in TARGETS:
        mine = [n for n in group if n.target == target]
        if mine:
            out[target] = mine
    return out


def _unmet_here(need: Need) -> bool:
    """Whether NEED is unmet on this host, as run.py would run the program (argv, no shell)."""
    if need.writable:
        return not os.access(need.writable, os.W_OK)
    if "/" in need.program:
        return not (Path(need.program).is_file() and os.access(need.program, os.X_OK))
    return runmod.which(need.program) is None


def check(spec: Spec, transports: Transports, steps: Sequence[Step],
          legacy_via: str = "direct") -> None:
    """Check every need of STEPS where it applies; warn about the optional ones missing.
    Raises PreconditionError (one line: each host and what it lacks, or that it cannot be
    reached) when a required one is not met. LEGACY_VIA: how the legacy host is reached now
    (``maintenance`` once its public address may be gone, on a resumed run)."""
    problems = []
    for target, group in by_target(needs(spec, steps)).items():
        host = where(spec, target)
        if target == "local":
            unmet = [n for n in group if _unmet_here(n)]
        else:
            result = transports.get(target, legacy_via).run(command(group), 60)
            reports = {_report(n): n for n in group}
            printed = (" ".join(line.split()) for line in result.stdout.splitlines())
            unmet = [reports[line] for line in printed if line in reports]
            if not result.ok and not any(not n.optional for n in unmet):
                detail = runmod.last_line(result.stderr) or f"exit {result.code}"
                access = _access(spec, target)
                over_ssh = access is not None and access.ssh is not None
                what = "unreachable over ssh" if over_ssh and result.code == SSH_EXIT \
                    else "cannot run commands"
                problems.append(f"{host}: {what}: {detail}")
                continue
        for need in unmet:
            if need.optional:
                log.warning("warning: %s: %s: %s", host, label(need), need.optional)
        required = [label(n) for n in unmet if not n.optional]
        if required:
            problems.append(f"{host}: {', '.join(required)}")
    if problems:
        raise PreconditionError(
            f"cutover of {spec.name} refused, nothing changed: " + "; ".join(problems),
            hint="install what is missing on that host (or fix the spec), then run again")
