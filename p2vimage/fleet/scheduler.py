"""Run many hosts' stages as child processes, in parallel within limits, recording everything
in the batch state file.

Each host has a queue of units (one stage each), run one after the other; hosts run side by
side, at most ``in_flight`` children at once, and at most ``caps[R]`` at once of the units
that need the scarce resource R (a qemu or libguestfs boot, an upload). A host that cannot
start says why it waits. A failed unit fails its host (its later units are not run); the other
hosts go on — unless ``max_fail`` is set (cutover waves): once more than that share of the
hosts failed, no further host starts.

A child runs in its own session (a process group of its own, killed as a whole on Ctrl-C or
SIGTERM) and dies with the runner (PR_SET_PDEATHSIG, host/run.py): ``kill -9`` of the runner
leaves no orphan. Its stderr goes to LOGS/STAGE.log (appended, one header per attempt), its
stdout (``--json``: the result, or the error with its partial report) to LOGS/STAGE.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2vimage.core.errors import Interrupted, P2VError
from p2vimage.fleet import state as statemod
from p2vimage.fleet.live import Live
from p2vimage.host import run as runmod

# What is scarce on a conversion host, by stage: the stages that boot qemu (libguestfs'
# appliance for convert, the guest itself for smoke), and those that upload.
SCARCE: Mapping[str, str] = {"convert": "boot", "smoke": "boot", "upload": "upload"}
OPTION = {"in-flight": "--max-in-flight", "boot": "--max-boots", "upload": "--max-uploads"}
TICK = 0.25  # seconds between polls
GRACE = 15.0  # seconds a child gets to clean up after SIGTERM


@dataclasses.dataclass(frozen=True)
class Unit:
    """One stage of one host: the child's command line and where its output goes."""

    host: str
    stage: str
    argv: tuple[str, ...]
    log: Path
    result: Path


@dataclasses.dataclass(frozen=True)
class Limits:
    in_flight: int
    caps: Mapping[str, int] = dataclasses.field(default_factory=dict)  # resource → at most
    max_fail: float | None = None  # share of hosts (0-1) failed beyond which none starts


@dataclasses.dataclass
class _Child:
    unit: Unit
    proc: runmod.Popen[bytes]
    started: float


def outcome(unit: Unit, code: int) -> dict[str, Any]:
    """What a finished child left: ``ok``, ``skipped`` (done before), ``error`` (its one
    line), ``report`` (its JSON result, or the partial report of its error)."""
    try:
        data = json.loads(unit.result.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    if code == 0:
        stage = data.get("stages", {}).get(unit.stage, {}) if isinstance(
            data.get("stages"), dict) else {}
        return {"ok": True, "skipped": bool(isinstance(stage, dict) and stage.get("skipped")),
                "error": None, "report": data}
    if code < 0:
        error = f"killed by {signal.Signals(-code).name}"
    elif data.get("error"):
        error = str(data["error"]) + (f" (hint: {data['hint']})" if data.get("hint") else "")
    else:
        error = statemod.last_line(unit.log) or f"exit {code}"
    report = data.get("report")
    return {"ok": False, "skipped": False, "error": error.removeprefix("error: "),
            "exit_code": code, "report": report if isinstance(report, dict) else {}}


class Scheduler:
    """Runs the queues of ``hosts`` (records of one state section, in the order they are
    served; the section gets ``finished`` and ``stopped``); ``save`` writes the state file;
    ``prepare(unit)`` runs before a unit starts (an error there fails the unit);
    ``finish(host, unit, outcome)`` adds what a finished unit tells (e.g. the smoke
    report's paths) to the host's record."""

    def __init__(self, section: statemod.Record, hosts: dict[str, statemod.Record],
                 queues: dict[str, list[Unit]], limits: Limits, save: Callable[[], None],
                 live: Live,
                 finish: Callable[[statemod.Record, Unit, dict[str, Any]], None] | None = None,
                 prepare: Callable[[Unit], None] | None = None) -> None:
        self.section, self.hosts, self.queues, self.limits = section, hosts, queues, limits
        self.save, self.live, self.finish, self.prepare = save, live, finish, prepare
        self.running: dict[str, _Child] = {}
        self.stopped: str | None = None  # why no further host starts (max_fail)

    # -- the loop
    def run(self) -> None:
        """Until every queue is empty and every child ended. On KeyboardInterrupt (Ctrl-C,
        or SIGTERM as cli.main turns it), stop the children, record them interrupted and
        raise Interrupted."""
        try:
            self._start()
            self.save()
            while self.running or any(self.queues.values()):
                if self.running:
                    time.sleep(TICK)
                changed = self._reap()
                changed = self._start() or changed
                if changed:
                    self.save()
                elif not self.running:
                    break  # nothing runs and nothing can start (not expected)
                self.live.refresh(self.hosts, self.running_rows())
        except KeyboardInterrupt:
            self._interrupt()
            raise Interrupted(
                f"batch interrupted; {self.interrupted} stage(s) stopped and recorded",
                hint="run the same command again: finished stages are kept, the stopped "
                     "ones are redone") from None
        finally:
            self.live.close()
        self.section["finished"] = time.time()
        self.save()

    def running_rows(self) -> list[tuple[str, str, float, Path]]:
        return [(c.unit.host, c.unit.stage, c.started, c.unit.log)
                for c in self.running.values()]

    # -- starting
    def _blocked(self, unit: Unit) -> str | None:
        """Why ``unit`` cannot start now (None: it can)."""
        if self.stopped:
            return self.stopped
        if len(self.running) >= self.limits.in_flight:
            return (f"{len(self.running)} in flight ({OPTION['in-flight']} "
                    f"{self.limits.in_flight})")
        resource = SCARCE.get(unit.stage)
        cap = self.limits.caps.get(resource or "")
        if resource and cap is not None:
            busy = sum(1 for c in self.running.values()
                       if SCARCE.get(c.unit.stage) == resource)
            if busy >= cap:
                return (f"{busy} {resource}(s) running ({OPTION[resource]} {cap}) before "
                        f"{unit.stage}")
        return None

    def _start(self) -> bool:
        changed = False
        self._check_failures()
        for name, host in self.hosts.items():
            queue = self.queues.get(name)
            if name in self.running or not queue:
                continue
            if self.stopped and not host.get("started"):
                self._drop(name, self.stopped)
                changed = True
                continue
            reason = self._blocked(queue[0])
            if reason is None:
                self._launch(queue.pop(0))
                changed = True
            elif host["waiting"] != reason or host["status"] != "waiting":
                host.update(status="waiting", waiting=reason)
                changed = True
        return changed

    def _launch(self, unit: Unit) -> None:
        host = self.hosts[unit.host]
        unit.log.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        host.update(status="running", stage=unit.stage, waiting=None,
                    started=host.get("started") or now, finished=None)
        entry = host["stages"][unit.stage]
        entry.update(status="running", started=now, finished=None, pid=None,
                     log=os.fspath(unit.log), result=os.fspath(unit.result), error=None,
                     attempts=entry.get("attempts", 0) + 1)
        with open(unit.log, "ab") as log, open(unit.result, "wb") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            log.write(f"=== {stamp} {unit.stage}: {' '.join(unit.argv)}\n".encode())
            log.flush()
            try:
                if self.prepare is not None:
                    self.save()  # (status shows the stage begun while it is prepared)
                    self.prepare(unit)
                proc = runmod.popen(unit.argv, stdout=out.fileno(), stderr=log.fileno(),
                                    new_session=True)
            except (P2VError, OSError) as exc:
                error = exc.one_line() if isinstance(exc, P2VError) else str(exc)
                log.write(f"error: {error}\n".encode())
                self._record(unit, now, {"ok": False, "skipped": False, "error": error,
                                         "exit_code": 1, "report": {}})
                return
        self.running[unit.host] = _Child(unit, proc, now)
        entry["pid"] = proc.pid
        self.live.event(f"{unit.host}: {unit.stage} started")

    # -- finishing
    def _reap(self) -> bool:
        changed = False
        for name, child in list(self.running.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.running[name]
            self._record(child.unit, child.started, outcome(child.unit, code))
            changed = True
        return changed

    def _record(self, unit: Unit, started: float, result: dict[str, Any]) -> None:
        host = self.hosts[unit.host]
        now = time.time()
        entry = host["stages"][unit.stage]
        entry.update(finished=now, pid=None, seconds=round(now - started, 1))
        if self.finish is not None:
            self.finish(host, unit, result)
        if result["ok"]:
            entry["status"] = "done-before" if result["skipped"] else "passed"
            self.live.event(f"{unit.host}: {unit.stage} "
                            + ("done before" if result["skipped"] else "passed")
                            + f" in {now - started:.0f} s")
            if not self.queues.get(unit.host):
                host.update(status="passed", stage=None, finished=now)
                self.live.event(f"{unit.host}: PASSED")
            else:
                host["status"] = "queued"
            return
        entry.update(status="failed", error=result["error"])
        host.update(status="failed", failed_stage=unit.stage, error=result["error"],
                    finished=now, stage=unit.stage)
        for later in self.queues.pop(unit.host, []):
            host["stages"][later.stage]["status"] = "not-run"
        self.live.event(f"{unit.host}: {unit.stage} FAILED: {result['error']}")

    def _check_failures(self) -> None:
        if self.limits.max_fail is None or self.stopped:
            return
        failed = sum(1 for h in self.hosts.values() if h["status"] == "failed")
        total = len(self.hosts)
        if total and failed / total > self.limits.max_fail:
            self.stopped = (f"wave stopped: {failed} of {total} host(s) failed, more than "
                            f"{self.limits.max_fail:.0%}")
            self.section["stopped"] = self.stopped
            self.live.event(self.stopped)

    def _drop(self, name: str, reason: str) -> None:
        host = self.hosts[name]
        for unit in self.queues.pop(name, []):
            host["stages"][unit.stage]["status"] = "not-run"
        host.update(status="not-run", waiting=None, error=reason)

    # -- interruption
    interrupted = 0

    def _interrupt(self) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after GRACE seconds;
        record the stopped stages as interrupted."""
        for child in self.running.values():
            _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        for child in self.running.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except runmod.TimeoutExpired:
                _signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            # what the group's members left behind goes too
            _signal_group(child.proc.pid, signal.SIGKILL)
        now = time.time()
        for name, child in self.running.items():
            host = self.hosts[name]
            host["stages"][child.unit.stage].update(status="interrupted", finished=now,
                                                    pid=None)
            host.update(status="interrupted", waiting=None)
            self.live.event(f"{name}: {child.unit.stage} interrupted")
        self.interrupted = len(self.running)
        self.running.clear()
        for host in self.hosts.values():
            if host["status"] in ("queued", "waiting"):
                host.update(status="interrupted" if host.get("started") else "queued",
                            waiting=None)
        self.section["finished"] = now
        self.save()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
