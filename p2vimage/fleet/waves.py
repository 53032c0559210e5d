"""``batch cutover`` and ``batch rollback``: a wave's hosts cut over (or rolled back) with their
own cutover specs (p2v_cutover), one after another in inventory order or a few at a time.

Each host is one child process (``p2vimage batch host-cutover``, which runs the cutover
runner in it: journal, resume, automatic rollback of a failed host). A cutover wave stops —
no further host starts, those running finish — once more than ``--max-fail-percentage`` of
its hosts failed (0: at the first failure). A rollback goes through every host.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, StageError
from p2vimage.cutover import runner
from p2vimage.fleet import hostrun, report, state
from p2vimage.fleet.inventory import Fleet, FleetHost
from p2vimage.fleet.live import Live
from p2vimage.fleet.scheduler import Limits, Scheduler, Unit

VERBS = ("cutover", "rollback")


def _argv(fleet: Fleet, host: FleetHost, batch_dir: Path, verb: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "p2vimage", "--json", "batch", "host-cutover",
            os.fspath(fleet.path.absolute()), "--host", host.name,
            "--batch-dir", os.fspath(batch_dir.absolute()),
            *(["--rollback"] if verb == "rollback" else []))


def run(fleet: Fleet, batch_dir: Path, verb: str, limits: Limits, here: str,
        live: Live | None = None) -> dict[str, Any]:
    """Cut over (or roll back) the selected hosts. Raises InputError before anything runs
    when a host has no cutover spec; StageError (exit 1) when a host failed."""
    missing = [h.name for h in fleet.hosts if h.options.cutover is None]
    if missing:
        raise InputError(f"no p2v_cutover for {', '.join(missing[:5])}"
                         + (" …" if len(missing) > 5 else ""),
                         hint="give each host of the wave its cutover spec, or --limit the "
                              "wave to those that have one")
    with state.locked(batch_dir):
        data = state.read(batch_dir) or state.new(fleet.path)
        old = state.settled(data["sections"].get("cutover") or {"hosts": {}}, active=False)
        hosts: dict[str, Any] = {}
        queues: dict[str, list[Unit]] = {}
        for host in fleet.hosts:
            where = hostrun.paths(host, batch_dir)
            record = old["hosts"].get(host.name) or {"stages": {}}
            record.update(name=host.name, wave=host.waves[0] if host.waves else "ungrouped",
                          waves=list(host.waves), dir=os.fspath(where.root),
                          conversion_host=here, status="queued", stage=None, waiting=None,
                          error=None, failed_stage=None, started=None, finished=None)
            record["stages"][verb] = {"status": "pending"}
            hosts[host.name] = record
            queues[host.name] = [Unit(host.name, verb, _argv(fleet, host, batch_dir, verb),
                                      where.log(verb), where.result(verb))]
        for name, record in old["hosts"].items():
            hosts.setdefault(name, record)
        section = {"verb": verb, "pid": os.getpid(), "started": time.time(), "finished": None,
                   "selected": list(queues), "limits": {"in_flight": limits.in_flight,
                                                        "max_fail": limits.max_fail},
                   "hosts": hosts}
        data["sections"]["cutover"] = section

        def save() -> None:
            state.write(batch_dir, data)

        save()
        names = list(queues)
        scheduler = Scheduler(section, {n: hosts[n] for n in names}, queues, limits, save,
                              live or Live())
        scheduler.run()
        written = report.write_all(report.build(data, here), batch_dir / "report")
    result = {"verb": verb, "hosts": {n: {k: hosts[n].get(k) for k in ("status", "error")}
                                      for n in names},
              "stopped": scheduler.stopped, "reports": written}
    failed = [n for n in names if hosts[n]["status"] == "failed"]
    if failed or scheduler.stopped:
        shown = "; ".join(f"{n}: {hosts[n]['error']}" for n in failed[:3])
        error = StageError(f"{verb} failed on {len(failed)} of {len(names)} host(s): {shown}"
                           + (f"; {scheduler.stopped}" if scheduler.stopped else ""),
                           hint=f"see 'p2vimage batch status' and {written['markdown']}")
        error.report = result
        raise error
    return result


def lines(result: dict[str, Any]) -> list[str]:
    out = [f"{name}: {info['status']}" + (f": {info['error']}" if info["error"] else "")
           for name, info in result["hosts"].items()]
    if result["stopped"]:
        out.append(result["stopped"])
    return out


def one(host: FleetHost, batch_dir: Path, rollback: bool) -> dict[str, Any]:
    """Cut over (or roll back) one host in this process, its journal in
    BATCH_DIR/hosts/NAME/cutover/ (what ``batch host-cutover`` runs)."""
    spec = host.options.cutover
    if spec is None:
        raise InputError(f"host {host.name} has no p2v_cutover",
                         hint="give the host its cutover spec")
    workdir = hostrun.paths(host, batch_dir).cutover
    workdir.mkdir(parents=True, exist_ok=True)
    return runner.rollback(spec, workdir) if rollback else runner.run(spec, workdir)
