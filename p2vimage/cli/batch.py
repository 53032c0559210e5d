"""The batch verbs (registered on the main click group by main.py): a fleet inventory's hosts
through ``p2vimage run`` in parallel, their status, reports and cutover waves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from p2vimage import pipeline
from p2vimage.cli.options import Settings, as_json, emit
from p2vimage.core.errors import InputError, Interrupted
from p2vimage.fleet import batch as batchmod
from p2vimage.fleet import hostrun, inventory, report, waves
from p2vimage.fleet.scheduler import Limits


def _settings() -> Settings:
    settings = click.get_current_context().find_object(Settings)
    assert settings is not None
    if settings.workdir is not None:
        raise click.UsageError("batch keeps each host's work directory under --batch-dir: "
                               "drop --workdir")
    return settings


def _dir(inventory_path: Path, batch_dir: Path | None) -> Path:
    return (batch_dir or hostrun.default_batch_dir(inventory_path)).absolute()


_INVENTORY = click.argument("inventory_path", metavar="INVENTORY",
                            type=click.Path(path_type=Path))
_LIMIT = click.option("--limit", help="Only these hosts: an Ansible host pattern (wave1, web*, "
                      "wave1:!db, a,b).")
_BATCH_DIR = click.option("--batch-dir", type=click.Path(path_type=Path, file_okay=False),
                          help="Where the hosts' images, stamps and logs, the state file and "
                          "the reports go (default: INVENTORY.batch beside the inventory).")
_HERE = click.option("--conversion-host", "here", default=None, metavar="NAME",
                     help="This conversion host's name, for p2v_conversion_host (default: "
                     "the short host name).")
_UNTIL = click.option("--until", type=click.Choice(pipeline.STAGES), default=None,
                      help="Last stage to run (default: each host's last).")


def register(group: click.Group) -> None:
    """Add the batch verbs to GROUP."""

    @group.group("batch")
    def batch() -> None:
        """A fleet inventory's hosts through the pipeline in parallel; status, reports,
        cutover waves. Exit 0: every host passed; 1: a host failed; 2: bad input; 3: could
        not start."""

    @batch.command("plan")
    @_INVENTORY
    @_LIMIT
    @_UNTIL
    @_BATCH_DIR
    @_HERE
    def plan_cmd(inventory_path: Path, limit: str | None, until: str | None,
                 batch_dir: Path | None, here: str | None) -> None:
        """Hosts by stages: what each host's stamps show done, and what a run would do."""
        settings = _settings()
        fleet = inventory.load(inventory_path, limit)
        data = batchmod.plan(fleet, _dir(inventory_path, batch_dir), until,
                             here or batchmod.this_host())
        emit(settings, data, batchmod.plan_lines(data))

    @batch.command("run")
    @_INVENTORY
    @_LIMIT
    @_UNTIL
    @click.option("--max-in-flight", type=click.IntRange(min=1), default=4, show_default=True,
                  help="Stages running at once (one per host).")
    @click.option("--max-boots", type=click.IntRange(min=1), default=None,
                  help="At most this many qemu/libguestfs boots at once (convert and smoke "
                  "stages; default: the number of CPUs).")
    @click.option("--max-uploads", type=click.IntRange(min=1), default=2, show_default=True,
                  help="At most this many uploads at once.")
    @_BATCH_DIR
    @_HERE
    def run_cmd(inventory_path: Path, limit: str | None, until: str | None,
                max_in_flight: int, max_boots: int | None, max_uploads: int,
                batch_dir: Path | None, here: str | None) -> None:
        """Run the hosts' stages that are not done, in parallel; one host's failure never
        stops the others. Rerun the same command after a crash: finished stages are kept."""
        settings = _settings()
        fleet = inventory.load(inventory_path, limit)
        limits = Limits(in_flight=max_in_flight,
                        caps={"boot": max_boots or os.cpu_count() or 1, "upload": max_uploads})
        result = batchmod.run(fleet, _dir(inventory_path, batch_dir), limits, until,
                              here or batchmod.this_host())
        emit(settings, result, batchmod.run_lines(result))

    @batch.command("status")
    @_INVENTORY
    @_BATCH_DIR
    def status_cmd(inventory_path: Path, batch_dir: Path | None) -> None:
        """Where the batch is, from its state file (also while a runner works)."""
        settings = _settings()
        data = batchmod.status(_dir(inventory_path, batch_dir))
        emit(settings, data, batchmod.status_lines(data))

    @batch.command("report")
    @_INVENTORY
    @_BATCH_DIR
    @click.option("--merge", "merged", multiple=True, type=click.Path(path_type=Path),
                  metavar="REPORT", help="A report.json of another conversion host to "
                  "merge in. Repeatable.")
    @click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False),
                  help="Where report.json, junit.xml, report.md and report.html go "
                  "(default: BATCH_DIR/report).")
    @_HERE
    def report_cmd(inventory_path: Path, batch_dir: Path | None, merged: tuple[Path, ...],
                   output: Path | None, here: str | None) -> None:
        """The batch's report as JSON, JUnit, Markdown and HTML; --merge adds other
        conversion hosts' reports (the result equals one report over all their hosts)."""
        settings = _settings()
        where = _dir(inventory_path, batch_dir)
        others = [report.load(path) for path in merged]
        own = report.from_batch(where, here or batchmod.this_host())
        if own is None and not others:
            raise InputError(f"no batch has run in {where}, and no --merge report given",
                             hint="run 'p2vimage batch run INVENTORY' first, or give the "
                                  "right --batch-dir")
        result = report.merge([*([own] if own else []), *others])
        written = report.write_all(result, output or where / "report")
        if settings.json:
            click.echo(as_json(result))
        else:
            s = result["summary"]
            click.echo(f"{s['hosts']} hosts: {s['pass']} pass, {s['fail']} fail, "
                       f"{s['incomplete']} incomplete, {s['not run']} not run")
            for form, path in written.items():
                click.echo(f"{form}: {path}")

    def _wave_cmd(verb: str, inventory_path: Path, limit: str, max_in_flight: int,
                  max_fail: float | None, batch_dir: Path | None, here: str | None) -> None:
        settings = _settings()
        fleet = inventory.load(inventory_path, limit)
        result = waves.run(fleet, _dir(inventory_path, batch_dir), verb,
                           Limits(in_flight=max_in_flight, max_fail=max_fail),
                           here or batchmod.this_host())
        emit(settings, result, waves.lines(result))

    @batch.command("cutover")
    @_INVENTORY
    @click.option("--limit", required=True, help="The wave (an Ansible host pattern).")
    @click.option("--max-in-flight", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Hosts cut over at once (1: one after another, in inventory order).")
    @click.option("--max-fail-percentage", type=click.IntRange(0, 100), default=0,
                  show_default=True, help="Stop the wave (start no further host) once more "
                  "than this share of its hosts failed.")
    @_BATCH_DIR
    @_HERE
    def cutover_cmd(inventory_path: Path, limit: str, max_in_flight: int,
                    max_fail_percentage: int, batch_dir: Path | None,
                    here: str | None) -> None:
        """Cut over a wave: each host's p2v_cutover spec; a failed host rolls itself back."""
        _wave_cmd("cutover", inventory_path, limit, max_in_flight, max_fail_percentage / 100,
                  batch_dir, here)

    @batch.command("rollback")
    @_INVENTORY
    @click.option("--limit", required=True, help="The wave (an Ansible host pattern).")
    @click.option("--max-in-flight", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Hosts rolled back at once.")
    @_BATCH_DIR
    @_HERE
    def rollback_cmd(inventory_path: Path, limit: str, max_in_flight: int,
                     batch_dir: Path | None, here: str | None) -> None:
        """Roll back a wave's cutovers (every host, whatever fails)."""
        _wave_cmd("rollback", inventory_path, limit, max_in_flight, None, batch_dir, here)

    @batch.command("host-cutover", hidden=True)
    @_INVENTORY
    @click.option("--host", "name", required=True)
    @_BATCH_DIR
    @click.option("--rollback", is_flag=True)
    def host_cutover_cmd(inventory_path: Path, name: str, batch_dir: Path | None,
                         rollback: bool) -> None:
        """One host's cutover or rollback (what batch cutover runs per host)."""
        settings = _settings()
        host = inventory.load(inventory_path, name).host(name)
        try:
            result: dict[str, Any] = waves.one(host, _dir(inventory_path, batch_dir),
                                               rollback)
        except KeyboardInterrupt:
            raise Interrupted(f"cutover of {name} interrupted; its journal keeps every step "
                              "begun", hint="run 'p2vimage batch rollback' (or 'batch "
                              "cutover' again) for it") from None
        emit(settings, result, [f"{name}: {result['status']}"])
