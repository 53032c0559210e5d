"""Run, resume, roll back and report a cutover, keeping the journal.

``run`` first checks that every host has what the plan's commands need (preflight.py: a
missing program is refused before anything changes), then executes the steps in order: for
each, a ``do-start`` record, its commands, its checks, a ``do-done`` record. A failing command
or check, a dropped ssh connection, a program that cannot be started, or any other error
stops it and rolls back at once: the undo of every step begun, newest first — a half-done
step included, whose undo tolerates what never happened. A runner that died (SIGKILL) leaves the
journal in progress: ``run`` resumes (an interrupted step whose check passes counts as done,
otherwise it is undone and done again); ``rollback`` undoes exactly the steps the journal
says were begun. The downtime window is from the services' stop to the probe answering.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

from p2vimage.core.errors import P2VError, PreconditionError, StageError
from p2vimage.core.log import log
from p2vimage.cutover import journal as jmod
from p2vimage.cutover import plan as planmod
from p2vimage.cutover import preflight
from p2vimage.cutover.spec import Spec
from p2vimage.cutover.steps import Cmd, Step
from p2vimage.cutover.transport import SSH_EXIT, Result, Transports
from p2vimage.host import run as runmod

TOOLS = ("ip", "sh")


class StepFailed(Exception):
    """A step's command or check failed (message: what, where, the command's last words)."""


def _transports(spec: Spec) -> Transports:
    return Transports(spec.legacy.access, spec.node.access, spec.probe.access,
                      str(spec.legacy.maintenance_ip.ip))


def _describe(spec: Spec, cmd: Cmd, result: Result) -> str:
    where = {"legacy": "the legacy host", "node": "the node", "probe": "the probe point",
             "local": "this host"}[cmd.target]
    line = cmd.command.line()
    line = line if len(line) <= 70 else line[:67] + "..."
    detail = runmod.last_line(result.stderr) or runmod.last_line(result.stdout)
    if result.code == SSH_EXIT and cmd.target in ("legacy", "node"):
        what = f"ssh to {where} failed"
    elif result.code == 124:
        what = f"timed out on {where}"
    else:
        what = f"exit {result.code} on {where}"
    return f"{what} running {line!r}" + (f": {detail}" if detail else "")


def execute(spec: Spec, transports: Transports, cmd: Cmd, timeout: float) -> Result:
    """Run one command on its target (retrying until its deadline when it has one). A program
    that cannot be started is a failed result (see transport.py), not an exception."""
    transport = transports.get(cmd.target, cmd.via)
    if not cmd.retry:
        return transport.run(cmd.command, timeout)
    deadline = time.monotonic() + cmd.retry
    while True:
        result = transport.run(cmd.command, min(timeout, max(cmd.retry, 1.0)))
        if result.ok or time.monotonic() >= deadline:
            return result
        time.sleep(0.05)


def _timeout(step: Step, cmd: Cmd) -> float:
    return 3600.0 if cmd.target == "local" or step.name == "stop" else 120.0


def _do(spec: Spec, transports: Transports, journal: jmod.Journal, step: Step) -> None:
    journal.write("do-start", step=step.name, starts_downtime=step.starts_downtime)
    started = time.monotonic()
    log.info("‣ %s: %s", step.name, step.title)
    for cmd in (*step.do, *step.check):
        result = execute(spec, transports, cmd, _timeout(step, cmd))
        if not result.ok:
            kind = " (check)" if cmd in step.check and cmd not in step.do else ""
            raise StepFailed(f"step {step.name}{kind}: {_describe(spec, cmd, result)}")
    journal.write("do-done", step=step.name, seconds=round(time.monotonic() - started, 3),
                  ends_downtime=step.ends_downtime)


def _attempt(spec: Spec, transports: Transports, cmd: Cmd, timeout: float) -> Result:
    """:func:`execute` for a rollback: whatever goes wrong is a failed result, never an
    exception that would leave the other undos undone."""
    try:
        return execute(spec, transports, cmd, timeout)
    except Exception as exc:  # the rollback must go on
        return Result(1, "", _error_text(exc))


def _error_text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, P2VError) else f"{type(exc).__name__}: {exc}"


def _checks_pass(spec: Spec, transports: Transports, step: Step) -> bool:
    return bool(step.check) and all(execute(spec, transports, c, 60).ok for c in step.check)


def _undo(spec: Spec, transports: Transports, journal: jmod.Journal, step: Step,
          partial: bool) -> str | None:
    """Undo one step; returns the error (None when undone). A partial step's undo may find
    its change absent: failures are logged, not errors."""
    journal.note("undo-start", step=step.name, partial=partial)
    log.info("‣ undo %s%s", step.name, " (half done)" if partial else "")
    for cmd in step.undo:
        result = _attempt(spec, transports, cmd, _timeout(step, cmd))
        if not result.ok:
            message = _describe(spec, cmd, result)
            if not partial:
                journal.note("undo-failed", step=step.name, error=message)
                return f"undo {step.name}: {message}"
            log.debug("  (tolerated) %s", message)
    journal.note("undo-done", step=step.name)
    return None


def _rollback(spec: Spec, transports: Transports, journal: jmod.Journal,
              since: float) -> dict[str, Any]:
    st = jmod.replay(journal.records())
    by_name = planmod.steps(spec)
    errors = []
    undone = []
    for name in reversed(st.started):
        partial = name not in st.done or name == st.current
        error = _undo(spec, transports, journal, by_name[name], partial)
        if error:
            errors.append(error)
            log.warning("warning: %s", error)
        else:
            undone.append(name)
    probe = Cmd("probe", planmod.probe_command(spec, spec.probe.legacy_expect),
                retry=spec.probe.timeout)
    answered = _attempt(spec, transports, probe, 10).ok
    recovery = round(time.time() - since, 3) if answered else None
    journal.note("rolled-back", incomplete=bool(errors) or not answered, recovery=recovery,
                 undone=undone)
    return {"undone": undone, "errors": errors, "legacy_answers": answered,
            "recovery_seconds": recovery}


def _step(spec: Spec, transports: Transports, journal: jmod.Journal, step: Step,
          begun: bool) -> None:
    """Do STEP; BEGUN: a resumed run found it interrupted (done when its check passes, else
    undone and done again)."""
    if begun:
        if _checks_pass(spec, transports, step):
            journal.write("do-done", step=step.name, resumed=True,
                          ends_downtime=step.ends_downtime)
            return
        _undo(spec, transports, journal, step, partial=True)
    _do(spec, transports, journal, step)


def _fail(spec: Spec, transports: Transports, journal: jmod.Journal, step: Step,
          exc: Exception) -> NoReturn:
    """Roll back after EXC stopped STEP, and raise the StageError that reports it."""
    failed_at = time.time()
    error = str(exc) if isinstance(exc, StepFailed) else f"step {step.name}: {_error_text(exc)}"
    journal.note("failed", step=step.name, error=error)
    log.error("%s: rolling back", error)
    rb = _rollback(spec, transports, journal, failed_at)
    back = (f"rolled back, {spec.probe.url} answers {spec.probe.legacy_expect!r}"
            f" again {rb['recovery_seconds']} s after the failure"
            if rb["legacy_answers"] and not rb["errors"] else
            "ROLLBACK INCOMPLETE: " + "; ".join(
                rb["errors"] or ["the legacy host does not answer the probe"]))
    if journal.lost:
        back += f"; the journal could not be written ({journal.lost}): its status is stale"
    failure = StageError(f"cutover of {spec.name} failed at {error}; {back}",
                         hint="see 'p2vimage cutover status'; fix the cause and run again"
                         if rb["legacy_answers"] else "run 'p2vimage cutover rollback' again")
    failure.report = {"name": spec.name, "failed": step.name, "error": error,
                      "rollback": rb}  # for --json: what happened, up to the legacy probe
    raise failure from exc


def run(spec: Spec, workdir: Path, inject: tuple[str, str] | None = None) -> dict[str, Any]:
    """Cut over (or resume the interrupted cutover). Raises PreconditionError before any
    change when a host lacks what a step needs, another runner holds the lock or the journal
    belongs to another spec; StageError after an automatic rollback (whatever stopped a
    step: a command, a check, or an unexpected error)."""
    runmod.require_tools(TOOLS)
    steps = planmod.build(spec, inject)
    journal = jmod.Journal(workdir)
    with jmod.locked(workdir):
        st = jmod.state(workdir)
        if st.status == "rollback-incomplete":
            raise PreconditionError(f"the last rollback of {spec.name} did not finish",
                                    hint="run 'p2vimage cutover rollback' again")
        if st.status == "done":
            jmod.check_digest(st, spec.digest)
            log.info("%s is already cut over (see 'cutover status')", spec.name)
            steps = []
        resuming = st.status == "in-progress"
        if resuming:
            jmod.check_digest(st, spec.digest)
        transports = _transports(spec)
        try:
            if steps:  # nothing has changed yet: refuse what would fail half-way
                preflight.check(spec, transports, steps, "maintenance"
                                if resuming and "maintenance" in st.done else "direct")
            if resuming:
                log.info("resuming the interrupted cutover %s (done: %s)", st.run,
                         ", ".join(st.done) or "nothing")
            elif steps:
                journal.write("begin", run=uuid.uuid4().hex[:12], digest=spec.digest,
                              profile=spec.profile, steps=[s.name for s in steps],
                              pid=os.getpid(), inject=":".join(inject) if inject else None)
            for step in steps:
                if step.name in st.done and step.name != st.current:
                    continue
                try:
                    _step(spec, transports, journal, step, resuming and step.name in st.started)
                except Exception as exc:  # whatever it was, undo what was done
                    _fail(spec, transports, journal, step, exc)
            if steps:
                journal.write("finished")
        finally:
            transports.close()
    return report(spec, workdir)


def rollback(spec: Spec, workdir: Path) -> dict[str, Any]:
    """Undo every step the journal records as begun, newest first. Raises StageError when an
    undo fails or the legacy host does not answer afterwards."""
    runmod.require_tools(TOOLS)
    journal = jmod.Journal(workdir)
    with jmod.locked(workdir):
        st = jmod.state(workdir)
        if st.status in ("none", "rolled-back") and not st.started:
            log.info("nothing to undo: the journal records no change in place")
            rb: dict[str, Any] = {"errors": [], "legacy_answers": True, "undone": []}
        else:
            jmod.check_digest(st, spec.digest)
            journal.write("rollback-start")
            transports = _transports(spec)
            try:
                rb = _rollback(spec, transports, journal, time.time())
            finally:
                transports.close()
    if rb["errors"] or not rb["legacy_answers"]:
        raise StageError(f"rollback of {spec.name} incomplete: " + "; ".join(
            rb["errors"] or [f"{spec.probe.url} does not answer "
                             f"{spec.probe.legacy_expect!r}"]),
            hint="fix the cause (see --debug) and run 'p2vimage cutover rollback' again")
    return {**report(spec, workdir), **rb}


def report(spec: Spec, workdir: Path) -> dict[str, Any]:
    """The journal's state of SPEC's host, for status and the end of run/rollback."""
    st = jmod.state(workdir)
    order = planmod.ORDER.get(st.profile or spec.profile, planmod.ORDER[spec.profile])
    return {"name": spec.name, "journal": str(jmod.Journal(workdir).path),
            "runner_active": jmod.is_locked(workdir), **st.as_dict(), "order": list(order)}


def lines(rep: dict[str, Any]) -> list[str]:
    """Human lines for a report."""
    out = [f"cutover {rep['name']}: {rep['status']}"
           + (" (a runner is working on it now)" if rep["runner_active"] else "")]
    for name in rep["order"]:
        info = rep["steps"].get(name, {})
        if name in rep["done"]:
            mark = "done"
        elif name == rep["current"]:
            mark = f"INTERRUPTED during {rep['phase']}" if rep["status"] == "in-progress" \
                else f"failed ({rep['phase']})"
        elif name in rep["started"]:
            mark = "begun"
        else:
            mark = "-"
        seconds = f" ({info['seconds']} s)" if info.get("seconds") is not None and \
            name in rep["done"] else ""
        out.append(f"  {name:12} {mark}{seconds}")
    if rep.get("failed"):
        out.append(f"failed at {rep['failed']}: {rep['error']}")
    if rep.get("downtime") is not None:
        out.append(f"downtime (services stopped → probe OK): {rep['downtime']} s")
    if rep.get("recovery") is not None:
        out.append(f"rolled back: the legacy host answered {rep['recovery']} s after the "
                   "rollback began")
    if rep["status"] == "in-progress" and not rep["runner_active"]:
        out.append("the runner stopped mid-cutover: 'cutover run' resumes, 'cutover rollback' "
                   "undoes the steps begun")
    return out
