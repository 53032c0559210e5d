"""``batch plan``, ``batch run`` and ``batch status``: a fleet's hosts through ``p2vimage run``,
stage by stage, in parallel, each host in its own folder under the batch directory
(BATCH_DIR/hosts/NAME/: image, staging tree, stamps, logs).

What is done is what each host's stamps say (the pipeline's rule, pipeline.finished): a
rerun after a crash or a ``kill -9`` of the runner redoes only the stages not finished.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from p2vimage import pipeline
from p2vimage.core.errors import InputError, StageError
from p2vimage.core.log import log
from p2vimage.fleet import hostrun, report, state
from p2vimage.fleet.inventory import Fleet, FleetHost
from p2vimage.fleet.live import Live, clock, counts, iso
from p2vimage.fleet.scheduler import Limits, Scheduler, Unit


def this_host() -> str:
    """This conversion host's name (the short host name)."""
    return socket.gethostname().split(".")[0]


def mine(fleet: Fleet, here: str) -> tuple[list[FleetHost], list[FleetHost]]:
    """The selected hosts this conversion host runs, and those pinned to another
    (p2v_conversion_host)."""
    ours: list[FleetHost] = []
    theirs: list[FleetHost] = []
    for host in fleet.hosts:
        pinned = host.options.conversion_host
        (theirs if pinned is not None and pinned != here else ours).append(host)
    return ours, theirs


# -- plan
def plan(fleet: Fleet, batch_dir: Path, until: str | None, here: str) -> dict[str, Any]:
    """Hosts by stages: done (its stamp), to run, or not this host's."""
    ours, theirs = mine(fleet, here)
    hostrun.check_apart(ours, batch_dir)
    rows = []
    for host in ours:
        where = hostrun.paths(host, batch_dir)
        chosen = hostrun.runnable(host, until)
        done = hostrun.done(host, where)
        rows.append({"name": host.name, "wave": _wave(host), "dir": os.fspath(where.root),
                     "stages": {s: ("done" if s in done else "run") if s in chosen else "-"
                                for s in pipeline.STAGES},
                     "to_run": [s for s in chosen if s not in done],
                     "not_available": list(hostrun.unavailable(host))})
    return {"inventory": os.fspath(fleet.path), "batch_dir": os.fspath(batch_dir),
            "conversion_host": here, "stages": list(pipeline.STAGES), "hosts": rows,
            "elsewhere": {h.name: h.options.conversion_host for h in theirs}}


def plan_lines(data: dict[str, Any]) -> list[str]:
    stages: list[str] = data["stages"]
    width = max([16, *(len(h["name"]) for h in data["hosts"])])
    out = [f"{'HOST':{width}} " + " ".join(f"{s:8}" for s in stages)]
    for row in data["hosts"]:
        out.append(f"{row['name']:{width}} " + " ".join(f"{row['stages'][s]:8}" for s in stages))
    hosts = data["hosts"]
    runs = sum(len(h["to_run"]) for h in hosts)
    out.append(f"{len(hosts)} hosts, {runs} stage run(s) to do, in {data['batch_dir']}")
    later = sorted({s for h in hosts for s in h["not_available"]})
    if later:
        out.append(f"not run by this version: {', '.join(later)}")
    if data["elsewhere"]:
        out.append(f"left to other conversion hosts: {len(data['elsewhere'])} "
                   f"({', '.join(sorted(set(data['elsewhere'].values())))})")
    return out


def _wave(host: FleetHost) -> str:
    return host.waves[0] if host.waves else "ungrouped"


# -- run
def _host_record(host: FleetHost, where: hostrun.HostPaths, chosen: tuple[str, ...],
                 done: dict[str, dict[str, Any]], old: dict[str, Any] | None,
                 here: str) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for name in chosen:
        before = (old or {}).get("stages", {}).get(name)
        if name in done and before and before.get("status") in ("passed", "done-before"):
            stages[name] = before  # finished earlier in this batch: keep its times and logs
        elif name in done:
            stages[name] = {"status": "done-before", "finished": done[name].get("finished")}
        else:  # to run (again: its attempts so far are counted on)
            stages[name] = {"status": "pending", "attempts": (before or {}).get("attempts", 0)}
    record = {"name": host.name, "wave": _wave(host), "waves": list(host.waves),
              "dir": os.fspath(where.root), "image": os.fspath(where.image),
              "conversion_host": here, "status": "queued", "stage": None, "waiting": None,
              "error": None, "failed_stage": None, "started": None, "finished": None,
              "stages": stages}
    for key in ("console_log", "smoke_report"):
        if old and old.get(key) and "smoke" in done:
            record[key] = old[key]
    return record


def _smoke_paths(host: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Keep the smoke report's and console log's paths (from the child's result, or from
    the partial report of its error)."""
    stages = outcome.get("report", {}).get("stages")
    smoke = stages.get("smoke") if isinstance(stages, dict) else None
    if isinstance(smoke, dict):
        if smoke.get("console_log"):
            host["console_log"] = smoke["console_log"]
        if smoke.get("report"):
            host["smoke_report"] = smoke["report"]


def run(fleet: Fleet, batch_dir: Path, limits: Limits, until: str | None, here: str,
        live: Live | None = None) -> dict[str, Any]:
    """Run the selected hosts' stages (those not done) up to ``until``. Returns the summary;
    raises StageError (exit 1) when a host failed, with the summary as its report."""
    ours, theirs = mine(fleet, here)
    if not ours:
        raise InputError(f"every selected host is pinned to another conversion host "
                         f"({', '.join(sorted({str(h.options.conversion_host) for h in theirs}))})",
                         hint=f"run it there, or give --conversion-host (this one: {here})")
    hostrun.check_apart(ours, batch_dir)
    if theirs:
        log.info("%d host(s) pinned to other conversion hosts left out", len(theirs))
    with state.locked(batch_dir):
        data = state.read(batch_dir) or state.new(fleet.path)
        old = state.settled(data["sections"].get("run") or {"hosts": {}}, active=False)
        hosts: dict[str, Any] = {}
        queues: dict[str, list[Unit]] = {}
        places = {host.name: hostrun.paths(host, batch_dir) for host in ours}
        for host in ours:
            where = places[host.name]
            chosen = hostrun.runnable(host, until)
            if hostrun.restore_built(host, where):
                log.info("%s: convert was stopped half-way; the built image is back in "
                         "place", host.name)
            done = hostrun.done(host, where)
            if "convert" in done:  # (a runner killed right after convert passed kept it)
                hostrun.drop_built(where)
            record = _host_record(host, where, chosen, done, old["hosts"].get(host.name), here)
            queue = [Unit(host.name, s, tuple(hostrun.stage_argv(host, where, s)),
                          where.log(s), where.result(s)) for s in chosen if s not in done]
            if not chosen:
                later = hostrun.unavailable(host)
                record.update(status="not-run", error="no stage to run" + (
                    f" up to --until {until}" if until else "") + (
                    f" (not run by this version: {', '.join(later)})" if later else ""))
            elif not queue:
                record["status"] = "passed"
                record["finished"] = max((d.get("finished") or 0 for d in done.values()),
                                         default=None)
            queues[host.name] = queue
            hosts[host.name] = record
        for name, record in old["hosts"].items():  # hosts of earlier runs stay reported
            hosts.setdefault(name, record)
        section = {"verb": "run", "pid": os.getpid(), "started": time.time(),
                   "finished": None, "until": until, "selected": [h.name for h in ours],
                   "limits": {"in_flight": limits.in_flight, **limits.caps}, "hosts": hosts}
        data["sections"]["run"] = section
        data["inventory"] = os.fspath(fleet.path)

        def save() -> None:
            state.write(batch_dir, data)

        def prepare(unit: Unit) -> None:
            if unit.stage == "convert":  # a convert stopped half-way is redone from it
                hostrun.keep_built(places[unit.host])

        def finish(record: dict[str, Any], unit: Unit, outcome: dict[str, Any]) -> None:
            if unit.stage == "convert" and outcome["ok"]:
                hostrun.drop_built(places[unit.host])
            _smoke_paths(record, outcome)

        save()
        todo = sum(len(q) for q in queues.values())
        log.info("batch: %d host(s), %d stage run(s) to do, in %s", len(ours), todo, batch_dir)
        Scheduler(section, {h.name: hosts[h.name] for h in ours},
                  {n: q for n, q in queues.items() if q}, limits, save, live or Live(),
                  finish=finish, prepare=prepare).run()
        written = report.write_all(report.build(data, here), batch_dir / "report")
    return _summary(section, [h.name for h in ours], written)


def _summary(section: dict[str, Any], names: list[str],
             written: dict[str, str]) -> dict[str, Any]:
    hosts = section["hosts"]
    result = {"hosts": {n: {k: hosts[n].get(k) for k in ("status", "failed_stage", "error")}
                        for n in names}, "reports": written}
    failed = [n for n in names if hosts[n]["status"] == "failed"]
    passed = [n for n in names if hosts[n]["status"] == "passed"]
    result.update(passed=len(passed), failed=len(failed), total=len(names))
    if failed:
        shown = "; ".join(f"{n} ({hosts[n]['failed_stage']}: {hosts[n]['error']})"
                          for n in failed[:3]) + ("; …" if len(failed) > 3 else "")
        error = StageError(f"{len(failed)} of {len(names)} host(s) failed: {shown}",
                           hint=f"see {written.get('markdown', 'the batch report')}; fix "
                           "them and run the same command again (what passed is kept)")
        error.report = result
        raise error
    return result


def run_lines(result: dict[str, Any]) -> list[str]:
    out = [f"{name}: {info['status']}" + (f" at {info['failed_stage']}: {info['error']}"
                                          if info["status"] == "failed" else "")
           for name, info in result["hosts"].items()]
    out.append(f"{result['passed']} of {result['total']} host(s) passed; reports: "
               + ", ".join(result["reports"].values()))
    return out


# -- status
def status(batch_dir: Path) -> dict[str, Any]:
    """The batch state as a reader sees it now (while a runner works, or after)."""
    data = state.read(batch_dir)
    if data is None:
        raise InputError(f"no batch has run in {batch_dir} (no {state.STATE})",
                         hint="start one with 'p2vimage batch run INVENTORY', or give the "
                              "right --batch-dir")
    active = state.runner_active(batch_dir)
    now = time.time()
    for section in data["sections"].values():
        state.settled(section, active)
        for host in section["hosts"].values():
            stage = host["stages"].get(host.get("stage") or "", {})
            if stage.get("status") == "running":
                host["elapsed"] = round(now - stage["started"], 1)
                host["last_line"] = state.last_line(Path(stage["log"]))
    data["runner_active"] = active
    return data


def status_lines(data: dict[str, Any]) -> list[str]:
    out = [f"batch of {data['inventory']}: "
           + ("a runner is working on it now" if data["runner_active"] else "no runner")]
    for verb, section in data["sections"].items():
        hosts = section["hosts"]
        when = f"started {iso(section['started'])}" + (
            f", ended {iso(section['finished'])}" if section.get("finished") else "")
        out.append(f"{verb}: {counts(hosts)} ({when})")
        if section.get("stopped"):
            out.append(f"  {section['stopped']}")
        width = max([12, *(len(n) for n in hosts)])
        for name, host in hosts.items():
            what = host["status"]
            if what == "running":
                what += f" {host['stage']} {clock(host.get('elapsed', 0))}  {host['last_line']}"
            elif what == "waiting":
                what += f": {host['waiting']}"
            elif host.get("error"):
                at = host.get("failed_stage") or host.get("stage")
                what += (f" at {at}" if at else "") + f": {host['error']}"
            out.append(f"  {name:{width}} {what}")
    if not data["runner_active"] and any(
            h["status"] == "interrupted" for s in data["sections"].values()
            for h in s["hosts"].values()):
        out.append("the runner stopped before the end: run the same command again to go on")
    return out
