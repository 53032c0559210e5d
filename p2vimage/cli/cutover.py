"""The cutover verbs (registered on the main click group by cli.py)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from p2vimage.cli.options import enum_option
from p2vimage.core.errors import Interrupted
from p2vimage.cutover import journal as jmod
from p2vimage.cutover import plan as planmod
from p2vimage.cutover import render as rendermod
from p2vimage.cutover import runner
from p2vimage.cutover import spec as specmod


def _settings() -> Any:
    from p2vimage.cli.options import Settings

    settings = click.get_current_context().find_object(Settings)
    assert settings is not None
    return settings


def _emit(data: dict[str, Any], lines: list[str]) -> None:
    from p2vimage.cli.options import emit

    emit(_settings(), data, lines)


def _workdir(spec: specmod.Spec) -> Path:
    workdir: Path | None = _settings().workdir
    return workdir or spec.path.with_name(spec.path.stem + ".work")


def _interrupted(spec: specmod.Spec, verb: str, profile: str | None) -> Interrupted:
    """The error for a run or rollback stopped by Ctrl-C or SIGTERM: the journal keeps what
    was begun; the hint gives the exact commands that show it and undo it (not 'start
    over': the network is half moved)."""
    workdir = _workdir(spec)
    st = jmod.state(workdir)
    at = f" during step {st.current}" if st.current else ""
    given = _settings().workdir
    head = shlex.join(["p2vimage", *(["--workdir", str(given)] if given else []), "cutover"])
    tail = shlex.join([str(spec.path), *(["--profile", profile] if profile else [])])
    return Interrupted(
        f"cutover {verb} of {spec.name} interrupted{at}; the journal keeps every step begun",
        hint=f"see '{head} status {tail}', then undo them with '{head} rollback {tail}' "
             f"(or resume with '{head} run {tail}')")


_SPEC = click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
_PROFILE = enum_option("--profile", values=specmod.Profile,
                       help="Override the spec's profile (fast: the default plan; seed: the "
                       "seed's steps in its order).")


def _plan_data(spec: specmod.Spec) -> tuple[dict[str, Any], list[str]]:
    steps = planmod.build(spec)
    data: dict[str, Any] = {"name": spec.name, "profile": spec.profile.value, "steps": []}
    lines = [f"cutover plan for {spec.name} ({spec.profile} profile), "
             f"public IP {spec.public_ip}:"]
    for n, step in enumerate(steps, 1):
        entry: dict[str, Any] = {"name": step.name, "title": step.title}
        lines.append(f"{n}. {step.name}: {step.title}")
        for part in ("do", "check", "undo"):
            cmds = getattr(step, part)
            entry[part] = [{"target": c.target, "via": c.via, "retry": c.retry,
                            "command": c.command.line(),
                            "line": rendermod._line(spec, c)} for c in cmds]
            for c in cmds:
                where = c.target + ("@direct" if c.target == "legacy" and c.via == "direct"
                                    else "")
                lines.append(f"   {part:5} {where:14} {c.command.line()}")
        data["steps"].append(entry)
    return data, lines


def register(group: click.Group) -> None:
    """Add the cutover verbs to GROUP."""

    @group.group("cutover")
    def cutover() -> None:
        """Move the public IP from the legacy host to the instance (reversibly)."""

    @cutover.command("plan")
    @_SPEC
    @_PROFILE
    def plan_cmd(spec_path: Path, profile: specmod.Profile | None) -> None:
        """Print every command of the cutover, per step and host (a dry run)."""
        data, lines = _plan_data(specmod.load(spec_path, profile))
        _emit(data, lines)

    @cutover.command("render")
    @_SPEC
    @_PROFILE
    @click.option("-o", "--output", "outdir", type=click.Path(path_type=Path, file_okay=False),
                  required=True, help="Directory for run.sh and rollback.sh.")
    @click.option("--force", is_flag=True, help="Replace existing scripts.")
    def render_cmd(spec_path: Path, profile: specmod.Profile | None, outdir: Path,
                   force: bool) -> None:
        """Write run.sh and rollback.sh: the same commands, to read and run by hand."""
        written = rendermod.render(specmod.load(spec_path, profile), outdir, force)
        _emit(written, [f"{name}: {path}" for name, path in written.items()])

    @cutover.command("run")
    @_SPEC
    @_PROFILE
    @click.option("--inject", help="Rehearse a failure: STEP:KIND, KIND fail (a command "
                  "fails), drop (the ssh connection dies) or check (the check or probe fails);"
                  " the run rolls back.")
    def run_cmd(spec_path: Path, profile: specmod.Profile | None, inject: str | None) -> None:
        """Cut over (or resume an interrupted cutover); roll back by itself on failure."""
        spec = specmod.load(spec_path, profile)
        fault = planmod.parse_inject(inject) if inject else None
        try:
            report = runner.run(spec, _workdir(spec), fault)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM (cli.main turns it into this)
            raise _interrupted(spec, "run", profile) from None
        _emit(report, runner.lines(report))

    @cutover.command("rollback")
    @_SPEC
    @_PROFILE
    def rollback_cmd(spec_path: Path, profile: specmod.Profile | None) -> None:
        """Undo what the journal says the cutover did, newest first."""
        spec = specmod.load(spec_path, profile)
        try:
            report = runner.rollback(spec, _workdir(spec))
        except KeyboardInterrupt:
            raise _interrupted(spec, "rollback", profile) from None
        _emit(report, runner.lines(report))

    @cutover.command("status")
    @_SPEC
    @_PROFILE
    def status_cmd(spec_path: Path, profile: specmod.Profile | None) -> None:
        """Where the cutover is, from its journal (also while a runner works)."""
        spec = specmod.load(spec_path, profile)
        report = runner.report(spec, _workdir(spec))
        _emit(report, runner.lines(report))
